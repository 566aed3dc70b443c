"""monitoring: monitor scopes, dashboards, alerts and the Prometheus export."""

from __future__ import annotations

from libs.grpc_server import ServiceBinding
from platformq.analytics.v1 import monitoring_service_pb2, monitoring_service_pb2_grpc
from services.context import ServiceContext
from services.monitoring.alerts import AlertEngine
from services.monitoring.core import MonitoringCore
from services.monitoring.dashboards import Dashboards
from services.monitoring.export import PrometheusExport
from services.monitoring.scopes import Scopes
from services.monitoring.servicer import MonitoringServicer

FULL_NAME = monitoring_service_pb2.DESCRIPTOR.services_by_name["MonitoringService"].full_name


def binding(context: ServiceContext) -> ServiceBinding:
    """Build the monitoring core from its components; start opens their stores and loops."""
    alerts = AlertEngine(context)
    dashboards = Dashboards(context)
    scopes = Scopes(context, alerts)
    export = PrometheusExport(context)
    servicer = MonitoringServicer(MonitoringCore(scopes, dashboards, alerts, export))

    async def start() -> None:
        await dashboards.start()
        await alerts.start()

    async def stop() -> None:
        await alerts.stop()
        await dashboards.stop()
        await scopes.close()
        await export.close()

    return ServiceBinding(
        name="monitoring",
        full_name=FULL_NAME,
        register=lambda server: monitoring_service_pb2_grpc.add_MonitoringServiceServicer_to_server(
            servicer, server
        ),
        start=start,
        stop=stop,
    )
