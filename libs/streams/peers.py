"""What the hub asks other services over gRPC: whether a metric or a dashboard exists (when a
channel opens) and the answers of analytics queries. In mode all the peers are this process."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import grpc
from grpc import aio

from libs.errors import AnalyticsError, InvalidArgument, NotFound, Unavailable
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


class StreamPeers:
    """Lazily connected clients of the query-router and the monitoring service."""

    def __init__(self, address_of: Callable[[str], str], timeout: float) -> None:
        # Resolved on first use: in mode all the port is known only once the server has started.
        self._address_of = address_of
        self.timeout = timeout
        self._channels = PeerChannels()
        self._metrics: dict[str, tuple[float, frozenset[str]]] = {}
        self._fetching: dict[str, asyncio.Task[frozenset[str]]] = {}

    def _channel(self, service: str) -> aio.Channel:
        return self._channels.to(self._address_of(service))

    async def metric_exists(self, datasource: str, metric: str) -> bool | None:
        """Whether the datasource holds the metric; None when the query-router cannot tell.
        An unknown datasource is NotFound naming `datasource`."""
        cached = self._metrics.get(datasource)
        if cached is not None and cached[0] > time.monotonic() and metric in cached[1]:
            return True
        # One metadata call at a time per datasource, however many clients connect at once.
        task = self._fetching.get(datasource)
        if task is None:
            task = asyncio.ensure_future(self._fetch_metrics(datasource))
            self._fetching[datasource] = task
            task.add_done_callback(lambda _: self._fetching.pop(datasource, None))
        try:
            known = await asyncio.shield(task)
        except aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                raise NotFound(exc.details() or f"{datasource!r} does not exist", "datasource") from None
            log.warning("cannot check a metric stream: %s", exc.code().name, extra={"datasource": datasource})
            return None
        return metric in known

    async def _fetch_metrics(self, datasource: str) -> frozenset[str]:
        stub = query_service_pb2_grpc.QueryServiceStub(self._channel("query-router"))
        reply = await stub.GetMetadata(
            query_service_pb2.GetMetadataRequest(datasource=datasource), timeout=self.timeout
        )
        known = frozenset(m.name for m in reply.metrics)
        self._metrics[datasource] = (time.monotonic() + METADATA_TTL_SECONDS, known)
        return known

    async def dashboard(self, key: str) -> monitoring_service_pb2.GetDashboardResponse | None:
        """The dashboard `key` names; None when the monitoring service cannot tell (not built,
        unreachable). An unknown dashboard is NotFound naming `stream_id`."""
        stub = monitoring_service_pb2_grpc.MonitoringServiceStub(self._channel("monitoring"))
        try:
            return await stub.GetDashboard(
                monitoring_service_pb2.GetDashboardRequest(type=key), timeout=self.timeout
            )
        except aio.AioRpcError as exc:
            if exc.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT):
                raise NotFound(f"no dashboard {key!r}: {exc.details()}", "stream_id") from None
            if exc.code() in _CANNOT_CHECK:
                log.warning("cannot check a dashboard stream: %s", exc.code().name, extra={"dashboard": key})
                return None
            raise Unavailable(f"the monitoring service did not answer: {exc.code().name}") from None

    async def query(self, request: query_service_pb2.QueryRequest) -> query_service_pb2.QueryResponse:
        """Run an analytics stream's query; refusals name `query.<field>`."""
        stub = query_service_pb2_grpc.QueryServiceStub(self._channel("query-router"))
        try:
            return await stub.Query(request, timeout=self.timeout)
        except aio.AioRpcError as exc:
            raise _query_error(exc) from None

    async def close(self) -> None:
        """Close every channel."""
        for task in list(self._fetching.values()):
            task.cancel()
        await self._channels.close()
