"""query-router: plans queries onto engines, runs them in parallel, merges and caches."""

from __future__ import annotations

from libs.config import Settings
from libs.grpc_server import ServiceBinding
from platformq.analytics.v1 import query_service_pb2, query_service_pb2_grpc
from services.query_router.core import QueryRouter
from services.query_router.servicer import QueryServicer

FULL_NAME = query_service_pb2.DESCRIPTOR.services_by_name["QueryService"].full_name


def binding(settings: Settings) -> ServiceBinding:
    """Build the query-router's core and servicer, ready to be added to a server."""
    servicer = QueryServicer(QueryRouter())
    return ServiceBinding(
        name="query-router",
        full_name=FULL_NAME,
        register=lambda server: query_service_pb2_grpc.add_QueryServiceServicer_to_server(servicer, server),
    )
