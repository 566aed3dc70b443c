"""MonitoringService over gRPC: validate, delegate to the MonitoringCore."""

from __future__ import annotations

from google.api import httpbody_pb2
from grpc import aio

from libs.errors import InvalidArgument
from platformq.analytics.v1 import monitoring_service_pb2 as pb
from platformq.analytics.v1 import monitoring_service_pb2_grpc
from services.monitoring import spec
from services.monitoring.core import MonitoringCore


class MonitoringServicer(monitoring_service_pb2_grpc.MonitoringServiceServicer):
    """Thin transport layer over MonitoringCore."""

    def __init__(self, core: MonitoringCore) -> None:
        self.core = core

    async def Monitor(self, request: pb.MonitorRequest, context: aio.ServicerContext) -> pb.MonitorResponse:
        spec.check_monitor(request)
        return await self.core.monitor(request)

    async def GetDashboard(
        self, request: pb.GetDashboardRequest, context: aio.ServicerContext
    ) -> pb.GetDashboardResponse:
        if not request.type:
            raise InvalidArgument("must not be empty", "type")
        return await self.core.get_dashboard(request.type)

    async def CreateDashboard(
        self, request: pb.CreateDashboardRequest, context: aio.ServicerContext
    ) -> pb.CreateDashboardResponse:
        spec.check_create_dashboard(request)
        return await self.core.create_dashboard(request)

    async def ExportPrometheus(
        self, request: pb.ExportPrometheusRequest, context: aio.ServicerContext
    ) -> httpbody_pb2.HttpBody:
        return await self.core.export_prometheus()
