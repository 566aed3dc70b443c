"""What the monitoring service reads from its peers over gRPC: queries and metadata from the
query-router, anomalies from the ml service. Never segment files, so it runs the same in both modes."""

from __future__ import annotations

from collections.abc import Callable

import grpc
from grpc import aio

from libs.errors import DeadlineExceeded, InvalidArgument, NotFound, Unavailable
from platformq.analytics.v1 import (
    ml_service_pb2,
    ml_service_pb2_grpc,
    query_service_pb2,
    query_service_pb2_grpc,
)


def _domain_error(exc: aio.AioRpcError, peer: str) -> Exception:
    """A peer's gRPC error as the domain error the interceptor maps back to a status."""
    code = exc.code()
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return InvalidArgument(f"the {peer} refused it: {exc.details()}")
    if code == grpc.StatusCode.NOT_FOUND:
        return NotFound(exc.details() or f"not found by the {peer}")
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return DeadlineExceeded(f"the request's deadline passed while the {peer} answered")
    return Unavailable(f"the {peer} did not answer: {code.name} {exc.details()}")


class PeerReader:
    """Lazily connected clients of the query-router and the ml service."""

    def __init__(self, address_of: Callable[[str], str], max_message_bytes: int) -> None:
        # Addresses are resolved on first use: in mode all the peers are this process, on a port
        # known only once the server has started.
        self._address_of = address_of
        self._options = [
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
        ]
        self._channels: dict[str, aio.Channel] = {}

    def _channel(self, service: str) -> aio.Channel:
        if service not in self._channels:
            self._channels[service] = aio.insecure_channel(self._address_of(service), options=self._options)
        return self._channels[service]

    async def query(
        self, request: query_service_pb2.QueryRequest, timeout: float | None = None
    ) -> query_service_pb2.QueryResponse:
        """Run a query on the query-router; an unknown datasource is NotFound."""
        stub = query_service_pb2_grpc.QueryServiceStub(self._channel("query-router"))
        try:
            return await stub.Query(request, timeout=timeout, wait_for_ready=True)
        except aio.AioRpcError as exc:
            raise _domain_error(exc, "query-router") from None

    async def metadata(
        self, datasource: str, timeout: float | None = None
    ) -> query_service_pb2.GetMetadataResponse:
        """A datasource's metrics and label keys; an unknown datasource is NotFound."""
        stub = query_service_pb2_grpc.QueryServiceStub(self._channel("query-router"))
        try:
            return await stub.GetMetadata(
                query_service_pb2.GetMetadataRequest(datasource=datasource),
                timeout=timeout,
                wait_for_ready=True,
            )
        except aio.AioRpcError as exc:
            raise _domain_error(exc, "query-router") from None

    async def anomalies(
        self, request: ml_service_pb2.ListAnomaliesRequest, timeout: float | None = None
    ) -> ml_service_pb2.ListAnomaliesResponse:
        """Stored anomalies from the ml service."""
        stub = ml_service_pb2_grpc.MLServiceStub(self._channel("ml"))
        try:
            return await stub.ListAnomalies(request, timeout=timeout, wait_for_ready=True)
        except aio.AioRpcError as exc:
            raise _domain_error(exc, "ml service") from None

    async def close(self) -> None:
        """Close every channel."""
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()
