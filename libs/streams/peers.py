"""What the hub asks other services over gRPC: whether a metric or a dashboard exists (when a
channel opens) and the answers of analytics queries. In mode all the peers are this process.
Every call is made on behalf of the subscriber's tenant (its identity headers, read scope): a
channel's reruns happen outside any request, so the tenant is passed, never taken from a call."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import grpc
from grpc import aio

from libs.errors import AnalyticsError, InvalidArgument, NotFound, Unavailable
from libs.identity import reader_of
from libs.peers import PeerChannels
from platformq.analytics.v1 import (
    monitoring_service_pb2,
    monitoring_service_pb2_grpc,
    query_service_pb2,
    query_service_pb2_grpc,
)

log = logging.getLogger(__name__)

METADATA_TTL_SECONDS = 5.0
# Statuses meaning "the peer cannot tell now": the stream is then accepted unchecked.
_CANNOT_CHECK = (
    grpc.StatusCode.UNIMPLEMENTED,
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
)


def _query_error(exc: aio.AioRpcError) -> AnalyticsError:
    """A query-router refusal, re-rooted under the subscription's `query` field."""
    details = exc.details() or exc.code().name
    if exc.code() == grpc.StatusCode.INVALID_ARGUMENT:
        name, sep, reason = details.partition(": ")
        if sep and " " not in name:
            return InvalidArgument(reason, f"query.{name}")
        return InvalidArgument(details, "query")
    if exc.code() == grpc.StatusCode.NOT_FOUND:
        return NotFound(details, "query")
    return Unavailable(f"the query-router did not answer: {exc.code().name} {details}")


def _on_behalf_of(tenant: str) -> tuple[tuple[str, str], ...]:
    # A subscriber only reads: its channel's calls carry its tenant and the read scope.
    return reader_of(tenant).metadata()


class StreamPeers:
    """Lazily connected clients of the query-router and the monitoring service."""

    def __init__(self, address_of: Callable[[str], str], timeout: float) -> None:
        # Resolved on first use: in mode all the port is known only once the server has started.
        self._address_of = address_of
        self.timeout = timeout
        self._channels = PeerChannels()
        self._metrics: dict[tuple[str, str], tuple[float, frozenset[str]]] = {}
        self._fetching: dict[tuple[str, str], asyncio.Task[frozenset[str]]] = {}

    def _channel(self, service: str) -> aio.Channel:
        return self._channels.to(self._address_of(service))

    async def metric_exists(self, datasource: str, metric: str, tenant: str) -> bool | None:
        """Whether the tenant's datasource holds the metric; None when the query-router cannot tell.
        An unknown datasource is NotFound naming `datasource`."""
        key = (tenant, datasource)
        cached = self._metrics.get(key)
        if cached is not None and cached[0] > time.monotonic() and metric in cached[1]:
            return True
        # One metadata call at a time per datasource, however many clients connect at once.
        task = self._fetching.get(key)
        if task is None:
            task = asyncio.ensure_future(self._fetch_metrics(datasource, tenant))
            self._fetching[key] = task
            task.add_done_callback(lambda _: self._fetching.pop(key, None))
        try:
            known = await asyncio.shield(task)
        except aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                raise NotFound(exc.details() or f"{datasource!r} does not exist", "datasource") from None
            log.warning("cannot check a metric stream: %s", exc.code().name, extra={"datasource": datasource})
            return None
        return metric in known

    async def _fetch_metrics(self, datasource: str, tenant: str) -> frozenset[str]:
        stub = query_service_pb2_grpc.QueryServiceStub(self._channel("query-router"))
        reply = await stub.GetMetadata(
            query_service_pb2.GetMetadataRequest(datasource=datasource),
            timeout=self.timeout,
            metadata=_on_behalf_of(tenant),
        )
        known = frozenset(m.name for m in reply.metrics)
        self._metrics[(tenant, datasource)] = (time.monotonic() + METADATA_TTL_SECONDS, known)
        return known

    async def dashboard(self, key: str, tenant: str) -> monitoring_service_pb2.GetDashboardResponse | None:
        """The tenant's dashboard `key` names; None when the monitoring service cannot tell (not built,
        unreachable). An unknown dashboard is NotFound naming `stream_id`."""
        stub = monitoring_service_pb2_grpc.MonitoringServiceStub(self._channel("monitoring"))
        try:
            return await stub.GetDashboard(
                monitoring_service_pb2.GetDashboardRequest(type=key),
                timeout=self.timeout,
                metadata=_on_behalf_of(tenant),
            )
        except aio.AioRpcError as exc:
            if exc.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT):
                raise NotFound(f"no dashboard {key!r}: {exc.details()}", "stream_id") from None
            if exc.code() in _CANNOT_CHECK:
                log.warning("cannot check a dashboard stream: %s", exc.code().name, extra={"dashboard": key})
                return None
            raise Unavailable(f"the monitoring service did not answer: {exc.code().name}") from None

    async def query(
        self, request: query_service_pb2.QueryRequest, tenant: str
    ) -> query_service_pb2.QueryResponse:
        """Run an analytics stream's query over the tenant's data; refusals name `query.<field>`."""
        stub = query_service_pb2_grpc.QueryServiceStub(self._channel("query-router"))
        try:
            return await stub.Query(request, timeout=self.timeout, metadata=_on_behalf_of(tenant))
        except aio.AioRpcError as exc:
            raise _query_error(exc) from None

    async def close(self) -> None:
        """Close every channel."""
        for task in list(self._fetching.values()):
            task.cancel()
        await self._channels.close()
