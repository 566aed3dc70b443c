"""What the monitoring service reads from its peers over gRPC: queries, SQL over the series
catalog and metadata from the query-router, anomalies from the ml service, and every peer's gRPC
health. Never segment files, so it runs the same in both modes.

Every call carries the identity of the request it is made for (libs/identity.py: the caller's
tenant and scopes, forwarded unchanged), or the service's own (tenant `default`) for background
work such as the alert rules and the dashboards' live refresh."""

from __future__ import annotations

from collections.abc import Callable

import grpc
from google.protobuf import json_format
from grpc import aio

from libs.errors import DeadlineExceeded, InvalidArgument, NotFound, Unavailable
from libs.identity import PermissionDenied, Unauthenticated, outgoing_metadata
from libs.peers import PeerChannels, replicas
from platformq.analytics.v1 import (
    ml_service_pb2,
    ml_service_pb2_grpc,
    query_service_pb2,
    query_service_pb2_grpc,
)
from services.monitoring.panels import Known, known_from_metadata


def _domain_error(exc: aio.AioRpcError, peer: str) -> Exception:
    """A peer's gRPC error as the domain error the interceptor maps back to a status."""
    code = exc.code()
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return InvalidArgument(f"the {peer} refused it: {exc.details()}")
    if code == grpc.StatusCode.NOT_FOUND:
        return NotFound(exc.details() or f"not found by the {peer}")
    if code == grpc.StatusCode.PERMISSION_DENIED:
        return PermissionDenied(exc.details() or f"refused by the {peer}")
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return Unauthenticated(exc.details() or f"refused by the {peer}")
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return DeadlineExceeded(f"the request's deadline passed while the {peer} answered")
    return Unavailable(f"the {peer} did not answer: {code.name} {exc.details()}")


class PeerReader:
    """Lazily connected clients of the query-router and the ml service."""

    def __init__(self, address_of: Callable[[str], str], max_message_bytes: int) -> None:
        # Addresses are resolved on first use: in mode all the peers are this process, on a port
        # known only once the server has started.
        self._address_of = address_of
        self._channels = PeerChannels(max_message_bytes)

    def _channel(self, service: str) -> aio.Channel:
        # A comma-separated address lists replicas; queries go to the first.
        return self._channels.to(replicas(self._address_of(service))[0])

    async def health(self, service: str, timeout: float = 2.0) -> dict[str, str]:
        """The gRPC health status of each replica of a peer, by address: "SERVING", "NOT_SERVING",
        ..., or "UNREACHABLE (<code>)" when it does not answer within `timeout` seconds."""
        return await self._channels.health(service, self._address_of(service), timeout)

    async def query(
        self, request: query_service_pb2.QueryRequest, timeout: float | None = None
    ) -> query_service_pb2.QueryResponse:
        """Run a query on the query-router; an unknown datasource is NotFound."""
        stub = query_service_pb2_grpc.QueryServiceStub(self._channel("query-router"))
        try:
            return await stub.Query(
                request, timeout=timeout, wait_for_ready=True, metadata=outgoing_metadata()
            )
        except aio.AioRpcError as exc:
            raise _domain_error(exc, "query-router") from None

    async def sql(
        self, sql: str, params: list[object], timeout: float | None = None
    ) -> list[dict[str, object]]:
        """Rows of a read-only SELECT over the tenant's views, as dicts by column. The text comes
        from this service's code; values are bound parameters, never spliced."""
        # batch: never a cached answer, which may predate a write it raced with.
        request = query_service_pb2.QueryRequest(sql=sql, mode="batch")
        for value in params:
            item = request.params.add()
            if isinstance(value, str):
                item.string_value = value
            else:
                item.number_value = float(value)  # type: ignore[arg-type]
        reply = await self.query(request, timeout)
        columns = list(reply.columns)
        return [dict(zip(columns, json_format.MessageToDict(row), strict=True)) for row in reply.rows]

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
                metadata=outgoing_metadata(),
            )
        except aio.AioRpcError as exc:
            raise _domain_error(exc, "query-router") from None

    async def known(self, datasource: str, timeout: float | None = None) -> Known | None:
        """What a datasource holds for the layouts (its metrics, which layout labels its series
        carry), from the query-router's catalog; None when it holds no series or does not exist."""
        try:
            return known_from_metadata(await self.metadata(datasource, timeout))
        except NotFound:
            return None

    async def anomalies(
        self, request: ml_service_pb2.ListAnomaliesRequest, timeout: float | None = None
    ) -> ml_service_pb2.ListAnomaliesResponse:
        """Stored anomalies from the ml service."""
        stub = ml_service_pb2_grpc.MLServiceStub(self._channel("ml"))
        try:
            return await stub.ListAnomalies(
                request, timeout=timeout, wait_for_ready=True, metadata=outgoing_metadata()
            )
        except aio.AioRpcError as exc:
            raise _domain_error(exc, "ml service") from None

    async def close(self) -> None:
        """Close every channel."""
        await self._channels.close()
