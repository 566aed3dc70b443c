"""RealtimeService over gRPC: validate, convert, delegate to the RealtimeCore, for the caller's tenant."""

from __future__ import annotations

from collections.abc import AsyncIterator

from grpc import aio

from libs.identity import current_identity
from libs.interceptor import SerializedRequest, takes_serialized
from libs.streams import STREAM_TYPES, parse_subscription
from platformq.analytics.v1 import realtime_service_pb2 as pb
from platformq.analytics.v1 import realtime_service_pb2_grpc
from services.realtime.core import RealtimeCore

MAX_STREAM_ERRORS = 100
__all__ = ["STREAM_TYPES", "RealtimeServicer"]  # the stream types live with the stream hub


class RealtimeServicer(realtime_service_pb2_grpc.RealtimeServiceServicer):
    """Thin transport layer over RealtimeCore."""

    def __init__(self, core: RealtimeCore) -> None:
        self.core = core

    @takes_serialized
    async def IngestMetrics(
        self, request: SerializedRequest, context: aio.ServicerContext
    ) -> pb.IngestMetricsResponse:
        # The bytes as they came: the compiled reader takes most batches without a message built.
        return await self.core.ingest_serialized(request.data, request.message, current_identity().tenant)

    async def IngestMetricsStream(
        self, request_iterator: AsyncIterator[pb.IngestMetricsStreamRequest], context: aio.ServicerContext
    ) -> pb.IngestMetricsStreamResponse:
        total = pb.IngestMetricsStreamResponse()
        tenant = current_identity().tenant
        async for item in request_iterator:
            # Each batch is durable before the next is read; the answer totals them all.
            reply = await self.core.ingest(item.batch, tenant)
            total.accepted += reply.accepted
            total.rejected += reply.rejected
            room = MAX_STREAM_ERRORS - len(total.errors)
            total.errors.extend(reply.errors[:room])
        return total

    async def Subscribe(
        self, request: pb.SubscribeRequest, context: aio.ServicerContext
    ) -> AsyncIterator[pb.SubscribeResponse]:
        # Ends when the client cancels (the generator is closed and the subscriber removed).
        async for frame in self.core.subscribe(parse_subscription(request, current_identity().tenant)):
            yield frame
