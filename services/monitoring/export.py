"""The Prometheus export: `GET /api/v1/export/prometheus` in the text exposition format 0.0.4.

Without `match[]`: the service's own metrics, rendered by prometheus-client from this process's
registry; in distributed mode also the newest `analytics_self` samples the other processes wrote
(read back through the query-router), so one scrape sees the whole service. Every sample carries
`instance` and `replica` (the process that counted it).

With `match[]` (like Prometheus' `/federate`): the newest stored value of every matching series
within the last 5 minutes (Prometheus' lookback), with its timestamp, as untyped samples
(`services/monitoring/exposition.py`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence

from google.api import httpbody_pb2
from google.protobuf import struct_pb2

from libs.errors import AnalyticsError
from libs.selfmetrics import EXPOSITION_CONTENT_TYPE, SELF_DATASOURCE, exposition
from libs.selfmetrics_writer import process_labels
from platformq.analytics.v1 import monitoring_service_pb2 as pb
from platformq.analytics.v1 import query_service_pb2
from services.context import ServiceContext
from services.monitoring.exposition import (
    DATASOURCE_LABEL,
    LOOKBACK_MS,
    latest_sql,
    merge_self_samples,
    select,
    stored_families,
    stored_samples,
)
from services.monitoring.reader import PeerReader
from services.monitoring.selectors import Selector, parse_selectors

log = logging.getLogger(__name__)

PEER_TIMEOUT_SECONDS = 10.0
"""The longest the export waits for the query-router when the request sets no deadline."""


def _body(data: bytes) -> httpbody_pb2.HttpBody:
    return httpbody_pb2.HttpBody(content_type=EXPOSITION_CONTENT_TYPE, data=data)


def _render_self(
    families: list, response: query_service_pb2.QueryResponse | None, own: dict[str, str]
) -> bytes:
    """This process's families, plus (distributed) the other processes' stored samples."""
    if response is not None:
        me = (own["instance"], own["replica"])
        others = [
            s for s in stored_samples(response) if (s.labels.get("instance"), s.labels.get("replica")) != me
        ]
        families = merge_self_samples(families, others)
    return exposition(families)


def _render_stored(response: query_service_pb2.QueryResponse, selectors: Sequence[Selector]) -> bytes:
    return exposition(stored_families(select(stored_samples(response), selectors)))


class PrometheusExport:
    """Renders self-metrics, or the newest stored values of selected series, for Prometheus."""

    def __init__(self, context: ServiceContext) -> None:
        self.context = context
        self.reader = PeerReader(context.address_of, 4 * context.settings.max_request_bytes)

    async def render(
        self, request: pb.ExportPrometheusRequest, timeout: float | None = None
    ) -> httpbody_pb2.HttpBody:
        """The exposition body for `request`; `timeout` is what remains of the caller's deadline."""
        timeout = PEER_TIMEOUT_SECONDS if timeout is None else timeout
        if request.match:
            return await self._stored(parse_selectors(list(request.match)), timeout)
        return await self._self_metrics(timeout)

    async def _self_metrics(self, timeout: float) -> httpbody_pb2.HttpBody:
        own = process_labels(self.context.hosted, self.context.local_port)
        # Collecting reads /proc and (in the ml process) the anomaly store: off the event loop.
        families = await asyncio.to_thread(self.context.metrics.families, own)
        note = b""
        stored = None
        if self.context.distributed:
            # Other processes' registries are not here: their newest stored samples stand in.
            try:
                stored = await self._latest([SELF_DATASOURCE], timeout)
            except AnalyticsError as exc:
                self.context.metrics.engine_connection_failures.labels("query-router").inc()
                log.warning(
                    "other instances' self-metrics are missing from the export", extra={"reason": exc.reason}
                )
                note = f"# other instances' self-metrics are missing: {exc.reason}\n".encode()
        return _body(note + await asyncio.to_thread(_render_self, families, stored, own))

    async def _stored(self, selectors: Sequence[Selector], timeout: float) -> httpbody_pb2.HttpBody:
        pinned = [sel.equal_values(DATASOURCE_LABEL) for sel in selectors]
        # The scan is narrowed to named datasources only when every selector names its own.
        datasources = None if any(p is None for p in pinned) else sorted(set().union(*pinned))
        response = await self._latest(datasources, timeout)
        note = b""
        if len(response.rows) >= self.context.settings.sql_max_rows:
            # The query-router answers at most SQL_MAX_ROWS rows: say so rather than drop series silently.
            log.warning("match[] export truncated", extra={"series": len(response.rows)})
            note = (
                f"# truncated: the query-router returned its limit of {len(response.rows)} series with "
                "recent points (SQL_MAX_ROWS); name a datasource in match[] to narrow the search\n"
            ).encode()
        # Matching and rendering many series is CPU work: a worker thread keeps the loop serving.
        return _body(note + await asyncio.to_thread(_render_stored, response, selectors))

    async def _latest(
        self, datasources: Sequence[str] | None, timeout: float
    ) -> query_service_pb2.QueryResponse:
        """The newest point within the lookback of every series of `datasources` (None: all)."""
        now = int(time.time() * 1000)
        params = [now - LOOKBACK_MS, now, *(datasources or ())]
        request = query_service_pb2.QueryRequest(
            sql=latest_sql(datasources),
            params=[
                struct_pb2.Value(number_value=p) if isinstance(p, int) else struct_pb2.Value(string_value=p)
                for p in params
            ],
            # batch never reads the cache, so exports do not count as cache misses.
            mode="batch",
        )
        return await self.reader.query(request, timeout=timeout)

    async def close(self) -> None:
        """Close the query-router channel."""
        await self.reader.close()
