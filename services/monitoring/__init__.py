"""monitoring: monitor scopes, dashboards, alerts and the Prometheus export."""

from __future__ import annotations

from libs.grpc_server import ServiceBinding
from platformq.analytics.v1 import monitoring_service_pb2, monitoring_service_pb2_grpc
from services.context import ServiceContext
from services.monitoring.core import MonitoringCore
from services.monitoring.servicer import MonitoringServicer

FULL_NAME = monitoring_service_pb2.DESCRIPTOR.services_by_name["MonitoringService"].full_name


def binding(context: ServiceContext) -> ServiceBinding:
    """Build the monitoring core and servicer, ready to be added to a server."""
    servicer = MonitoringServicer(MonitoringCore())
    return ServiceBinding(
        name="monitoring",
        full_name=FULL_NAME,
        register=lambda server: monitoring_service_pb2_grpc.add_MonitoringServiceServicer_to_server(
            servicer, server
        ),
    )
