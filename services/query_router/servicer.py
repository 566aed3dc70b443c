"""QueryService over gRPC: validate, convert, delegate to the QueryRouter core, for the caller's tenant."""

from __future__ import annotations

from grpc import aio

from libs.errors import InvalidArgument
from libs.identity import current_identity
from platformq.analytics.v1 import query_service_pb2 as pb
from platformq.analytics.v1 import query_service_pb2_grpc
from services.query_router.core import QueryRouter
from services.query_router.spec import query_from_proto, timeseries_from_proto


class QueryServicer(query_service_pb2_grpc.QueryServiceServicer):
    """Thin transport layer over QueryRouter."""

    def __init__(self, core: QueryRouter) -> None:
        self.core = core

    async def Query(self, request: pb.QueryRequest, context: aio.ServicerContext) -> pb.QueryResponse:
        spec = query_from_proto(request)
        if spec.explain:
            # The plan alone, in the Query answer's metadata: nothing runs.
            explained = await self.core.explain(spec, current_identity().tenant)
            return pb.QueryResponse(metadata=pb.QueryMetadata(plan=explained.plan))
        # The request's deadline (None without one) bounds the query; cancelling this handler (the client
        # went away) stops it too.
        return await self.core.query(spec, current_identity().tenant, time_remaining=context.time_remaining())

    async def QueryTimeseries(
        self, request: pb.QueryTimeseriesRequest, context: aio.ServicerContext
    ) -> pb.QueryTimeseriesResponse:
        return await self.core.query_timeseries(
            timeseries_from_proto(request), current_identity().tenant, time_remaining=context.time_remaining()
        )

    async def Explain(self, request: pb.ExplainRequest, context: aio.ServicerContext) -> pb.ExplainResponse:
        return await self.core.explain(query_from_proto(request.query), current_identity().tenant)

    async def GetCapabilities(
        self, request: pb.GetCapabilitiesRequest, context: aio.ServicerContext
    ) -> pb.GetCapabilitiesResponse:
        return await self.core.capabilities()

    async def GetMetadata(
        self, request: pb.GetMetadataRequest, context: aio.ServicerContext
    ) -> pb.GetMetadataResponse:
        if not request.datasource:
            raise InvalidArgument("must not be empty", "datasource")
        return await self.core.metadata(request.datasource, current_identity().tenant)
