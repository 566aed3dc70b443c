"""MonitoringService over gRPC: validate, delegate to the MonitoringCore, for the caller's tenant
(reads of peers made for a call carry its identity: services/monitoring/reader.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from google.api import httpbody_pb2
from grpc import aio

from libs.errors import DeadlineExceeded
from libs.identity import current_identity
from platformq.analytics.v1 import monitoring_service_pb2 as pb
from platformq.analytics.v1 import monitoring_service_pb2_grpc
from services.monitoring import spec
from services.monitoring.core import MonitoringCore

T = TypeVar("T")


async def _within(context: aio.ServicerContext, work: Awaitable[T]) -> T:
    """Run `work` no longer than the call's deadline: its peer queries end with the call."""
    remaining = context.time_remaining()
    if remaining is None:
        return await work
    try:
        async with asyncio.timeout(remaining):
            return await work
    except TimeoutError:
        raise DeadlineExceeded("the call's deadline passed before the answer was ready") from None


class MonitoringServicer(monitoring_service_pb2_grpc.MonitoringServiceServicer):
    """Thin transport layer over MonitoringCore."""

    def __init__(self, core: MonitoringCore) -> None:
        self.core = core

    async def Monitor(self, request: pb.MonitorRequest, context: aio.ServicerContext) -> pb.MonitorResponse:
        spec.check_monitor(request)
        return await _within(context, self.core.monitor(request))

    async def GetDashboard(
        self, request: pb.GetDashboardRequest, context: aio.ServicerContext
    ) -> pb.GetDashboardResponse:
        spec.check_dashboard_key(request.type, "type")
        return await _within(context, self.core.get_dashboard(request.type, current_identity().tenant))

    async def ListDashboards(
        self, request: pb.ListDashboardsRequest, context: aio.ServicerContext
    ) -> pb.ListDashboardsResponse:
        return await self.core.list_dashboards(request, current_identity().tenant)

    async def CreateDashboard(
        self, request: pb.CreateDashboardRequest, context: aio.ServicerContext
    ) -> pb.CreateDashboardResponse:
        spec.check_create_dashboard(request)
        return await _within(context, self.core.create_dashboard(request, current_identity().tenant))

    async def UpdateDashboard(
        self, request: pb.UpdateDashboardRequest, context: aio.ServicerContext
    ) -> pb.UpdateDashboardResponse:
        spec.check_update_dashboard(request)
        return await _within(context, self.core.update_dashboard(request, current_identity().tenant))

    async def DeleteDashboard(
        self, request: pb.DeleteDashboardRequest, context: aio.ServicerContext
    ) -> pb.DeleteDashboardResponse:
        spec.check_dashboard_key(request.id, "id")
        return await self.core.delete_dashboard(request.id, current_identity().tenant)

    async def ListAlerts(
        self, request: pb.ListAlertsRequest, context: aio.ServicerContext
    ) -> pb.ListAlertsResponse:
        spec.check_list_alerts(request)
        return await self.core.list_alerts(request, current_identity().tenant)

    async def ExportPrometheus(
        self, request: pb.ExportPrometheusRequest, context: aio.ServicerContext
    ) -> httpbody_pb2.HttpBody:
        spec.check_export(request)
        return await self.core.export_prometheus(request, context.time_remaining())
