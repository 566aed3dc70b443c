"""ml: anomaly detection, forecasting, predictive maintenance and online training."""

from __future__ import annotations

from libs.grpc_server import ServiceBinding
from platformq.analytics.v1 import ml_service_pb2, ml_service_pb2_grpc
from services.context import ServiceContext
from services.ml.core import MLCore
from services.ml.servicer import MLServicer

FULL_NAME = ml_service_pb2.DESCRIPTOR.services_by_name["MLService"].full_name


def binding(context: ServiceContext) -> ServiceBinding:
    """Build the ML core and servicer, ready to be added to a server."""
    servicer = MLServicer(MLCore())
    return ServiceBinding(
        name="ml",
        full_name=FULL_NAME,
        register=lambda server: ml_service_pb2_grpc.add_MLServiceServicer_to_server(servicer, server),
    )
