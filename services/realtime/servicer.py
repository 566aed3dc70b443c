"""RealtimeService over gRPC: validate, convert, delegate to the RealtimeCore."""

from __future__ import annotations

from collections.abc import AsyncIterator

from grpc import aio

from libs.errors import InvalidArgument
from platformq.analytics.v1 import realtime_service_pb2 as pb
from platformq.analytics.v1 import realtime_service_pb2_grpc
from services.realtime.core import RealtimeCore

MAX_STREAM_ERRORS = 100
STREAM_TYPES = ("dashboard", "metrics", "anomalies", "analytics")


def check_stream(stream_type: str, stream_id: str) -> None:
    """Reject unknown stream types and empty stream ids, naming the field."""
    if stream_type not in STREAM_TYPES:
        raise InvalidArgument(
            f"{stream_type!r} is not a stream type; use one of {', '.join(STREAM_TYPES)}", "stream_type"
        )
    if not stream_id:
        raise InvalidArgument("must not be empty", "stream_id")


class RealtimeServicer(realtime_service_pb2_grpc.RealtimeServiceServicer):
    """Thin transport layer over RealtimeCore."""

    def __init__(self, core: RealtimeCore) -> None:
        self.core = core

    async def IngestMetrics(
        self, request: pb.IngestMetricsRequest, context: aio.ServicerContext
    ) -> pb.IngestMetricsResponse:
        return await self.core.ingest(request)

    async def IngestMetricsStream(
        self, request_iterator: AsyncIterator[pb.IngestMetricsStreamRequest], context: aio.ServicerContext
    ) -> pb.IngestMetricsStreamResponse:
        total = pb.IngestMetricsStreamResponse()
        async for item in request_iterator:
            # Each batch is durable before the next is read; the answer totals them all.
            reply = await self.core.ingest(item.batch)
            total.accepted += reply.accepted
            total.rejected += reply.rejected
            room = MAX_STREAM_ERRORS - len(total.errors)
            total.errors.extend(reply.errors[:room])
        return total

    async def Subscribe(
        self, request: pb.SubscribeRequest, context: aio.ServicerContext
    ) -> AsyncIterator[pb.SubscribeResponse]:
        check_stream(request.stream_type, request.stream_id)
        await self.core.subscribe(request.stream_type, request.stream_id)
        # Unreachable until subscriptions are built; keeps this an async generator.
        yield pb.SubscribeResponse()
