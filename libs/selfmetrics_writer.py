"""Writes a process's self-metrics into the store, as datasource `analytics_self`, through the
realtime service's public IngestMetrics RPC (so they are durable, queryable and streamed like any
other metrics, in both modes).

One stored series per exposition sample: metric = the sample name (`..._total`, `..._bucket`,
...), labels = the sample's labels plus `instance` (the process: "all", a service name or
"bridge") and `replica` (host:port of the process, which tells replicas of one service apart).
Counters are stored cumulative, as Prometheus stores them.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable, Iterable, Mapping

import grpc
from grpc import aio

from libs.config import SERVICE_NAMES
from libs.identity import SYSTEM
from libs.peers import PeerChannels
from libs.selfmetrics import SELF_DATASOURCE, SelfMetrics, SelfSample
from platformq.analytics.v1 import realtime_service_pb2, realtime_service_pb2_grpc

log = logging.getLogger(__name__)

MIN_TIMEOUT_SECONDS = 5.0


def process_labels(hosted: Iterable[str], port: int | None) -> dict[str, str]:
    """The labels that tell this process's samples apart: `instance` ("all" when it hosts every
    service, else the services it hosts joined by "+", or "bridge") and `replica` (host:port)."""
    hosted = tuple(hosted)
    instance = "all" if set(hosted) == set(SERVICE_NAMES) else "+".join(hosted)
    return {"instance": instance, "replica": f"{socket.gethostname()}:{port or 0}"}


def ingest_request(
    samples: Iterable[SelfSample], timestamp_ms: int
) -> realtime_service_pb2.IngestMetricsRequest:
    """The IngestMetrics request that stores `samples` at `timestamp_ms`, one series each."""
    request = realtime_service_pb2.IngestMetricsRequest(datasource=SELF_DATASOURCE)
    for s in samples:
        request.series.add(name=s.name, labels=s.labels, timestamps_ms=[timestamp_ms], values=[s.value])
    return request


class SelfMetricsWriter:
    """Every `interval` seconds, ingests the registry's samples into `analytics_self`.

    `realtime_address` and `labels` are called at each write (in mode all the address is this
    process's own port, known only once its server has started); a comma-separated address lists
    replicas, tried in turn until one acknowledges. `labels` (see `process_labels`) are added to
    every sample."""

    def __init__(
        self,
        metrics: SelfMetrics,
        realtime_address: Callable[[], str],
        labels: Callable[[], Mapping[str, str]],
        interval: float,
        max_message_bytes: int = 64 * 1024 * 1024,
    ) -> None:
        self.metrics = metrics
        self.realtime_address = realtime_address
        self.labels = labels
        self.interval = interval
        self._channels = PeerChannels(max_message_bytes)
        self._task: asyncio.Task[None] | None = None
        self._failing = False

    async def start(self) -> None:
        """Start writing every interval (an interval of 0 writes nothing)."""
        if self.interval > 0 and self._task is None:
            self._task = asyncio.create_task(self._loop(), name="self-metrics-writer")

    async def stop(self) -> None:
        """Stop writing (an unfinished write is abandoned) and close the channels."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        await self._channels.close()

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self.write_once()

    async def write_once(self) -> bool:
        """Collect and ingest the samples once; False (logged and counted) when no replica took them."""
        # Collecting reads /proc and the anomaly store: a worker thread keeps the loop free.
        samples = await asyncio.to_thread(self.metrics.samples, self.labels())
        request = ingest_request(samples, int(time.time() * 1000))
        addresses = [a.strip() for a in self.realtime_address().split(",") if a.strip()]
        problem = "no realtime address is configured"
        for address in addresses:
            stub = realtime_service_pb2_grpc.RealtimeServiceStub(self._channels.to(address))
            try:
                # The service's own metrics, written as the service (tenant `default`, AUTH_MODE=jwt too).
                reply = await stub.IngestMetrics(
                    request, timeout=max(self.interval, MIN_TIMEOUT_SECONDS), metadata=SYSTEM.metadata()
                )
            except aio.AioRpcError as exc:
                if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                    self.metrics.engine_connection_failures.labels("realtime").inc()
                problem = f"{address}: {exc.code().name} {exc.details()}"
                continue
            if reply.rejected:
                log.warning(
                    "some self-metrics were rejected",
                    extra={"rejected": reply.rejected, "first": str(reply.errors[0]) if reply.errors else ""},
                )
            self.metrics.self_metrics_writes.labels("ok").inc()
            if self._failing:
                log.info("self-metrics are written again", extra={"address": address})
            self._failing = False
            return True
        self.metrics.self_metrics_writes.labels("failed").inc()
        # Logged once per outage, not on every interval while the realtime service is down.
        if not self._failing:
            log.warning("self-metrics could not be written", extra={"reason": problem})
        self._failing = True
        return False
