"""The demo feed: backfill recent history of the simulated platform, then stream it live.

Everything goes through the public RealtimeService.IngestMetrics RPC, as any client would. The feed
runs inside the host process (`make up`), so no transient failure may escape it: UNIMPLEMENTED
(ingest not built yet) stops it with one warning, UNAVAILABLE and other transient codes are retried
with backoff, any other refusal skips that request with an error log.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time

import grpc
from grpc import aio

from libs.identity import SYSTEM
from platformq.analytics.v1 import common_pb2, realtime_service_pb2, realtime_service_pb2_grpc
from services.demo.machines import DegradingMachines
from services.demo.simulation import HOUR_MS, SeriesBatch, SimulatedPlatform

log = logging.getLogger(__name__)

DEFAULT_DATASOURCE = "platform_metrics"
MAX_POINTS_PER_REQUEST = 50_000
"""Backfill and catch-up requests carry at most this many points (about 1 MB on the wire)."""
RPC_TIMEOUT_S = 30.0
READY_ATTEMPTS = 8
READY_FIRST_WAIT_S = 0.5
READY_MAX_WAIT_S = 8.0
RETRY_FIRST_DELAY_S = 0.5
RETRY_MAX_DELAY_S = 30.0
# Codes where the same request may succeed later; anything else will fail the same way again.
TRANSIENT_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
    }
)


# Two days of history and two hours more: `auto` forecasts at a 1 h step need two daily seasons
# (48 points), so the README's forecast example answers on a fresh `make up`; about 2.5 million
# points, sent in about 2 s.
BACKFILL_HOURS = 50.0


class _Outcome(enum.Enum):
    # OK means carry on: the request was sent, or skipped after a refusal retrying cannot fix.
    OK = "ok"
    STOPPED = "stopped"
    UNIMPLEMENTED = "unimplemented"


def to_request(
    batches: list[SeriesBatch], datasource: str = DEFAULT_DATASOURCE
) -> realtime_service_pb2.IngestMetricsRequest:
    """An IngestMetricsRequest in columnar form: one Series per non-empty batch."""
    return realtime_service_pb2.IngestMetricsRequest(
        datasource=datasource,
        series=[
            common_pb2.Series(
                name=batch.name,
                labels=batch.labels,
                timestamps_ms=batch.timestamps_ms.tolist(),
                values=batch.values.tolist(),
            )
            for batch in batches
            if len(batch)
        ],
    )


def _now_ms() -> int:
    return int(time.time() * 1000)


async def _wait(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep `seconds` unless `stop` is set first; True when stopped."""
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        return False
    return True


async def _channel_ready(channel: aio.Channel, target: str, stop: asyncio.Event) -> bool:
    """Wait for the channel to connect, with growing waits; False when stopped or given up."""
    wait_s = READY_FIRST_WAIT_S
    for attempt in range(1, READY_ATTEMPTS + 1):
        ready = asyncio.ensure_future(channel.channel_ready())
        stopped = asyncio.ensure_future(stop.wait())
        done, pending = await asyncio.wait(
            {ready, stopped}, timeout=wait_s, return_when=asyncio.FIRST_COMPLETED
        )
        for task in pending:
            task.cancel()
        if ready in done:
            return True
        if stopped in done:
            return False
        log.info(
            "demo feed: realtime not reachable yet",
            extra={"target": target, "attempt": attempt, "waited_s": wait_s},
        )
        wait_s = min(wait_s * 2, READY_MAX_WAIT_S)
    log.error("demo feed: gave up waiting for realtime", extra={"target": target, "attempts": READY_ATTEMPTS})
    return False


class _Sender:
    """Sends windows of the platform in bounded requests, retrying transient failures."""

    def __init__(
        self,
        stub: realtime_service_pb2_grpc.RealtimeServiceStub,
        platform: SimulatedPlatform | DegradingMachines,
        datasource: str,
        max_points: int,
        stop: asyncio.Event,
    ) -> None:
        self.stub = stub
        self.platform = platform
        self.datasource = datasource
        self.stop = stop
        steps = max(1, max_points // len(platform.series_keys()))
        self.chunk_ms = steps * platform.step_ms
        self.requests = self.points = self.accepted = self.rejected = 0
        self._warned_rejects = False

    def _build(self, start_ms: int, end_ms: int) -> realtime_service_pb2.IngestMetricsRequest:
        return to_request(self.platform.window(start_ms, end_ms), self.datasource)

    async def send_range(self, start_ms: int, end_ms: int) -> _Outcome:
        """Send every point with start_ms <= t < end_ms, oldest first, in chunks of whole steps."""
        for chunk_start in range(start_ms, end_ms, self.chunk_ms):
            if self.stop.is_set():
                return _Outcome.STOPPED
            chunk_end = min(chunk_start + self.chunk_ms, end_ms)
            # Generating and encoding ~50k points takes tens of ms; keep it off the event loop,
            # which in `make up` also serves every gRPC call.
            request = await asyncio.to_thread(self._build, chunk_start, chunk_end)
            if not request.series:
                continue
            outcome = await self._send(request)
            if outcome is not _Outcome.OK:
                return outcome
        return _Outcome.OK

    async def _send(self, request: realtime_service_pb2.IngestMetricsRequest) -> _Outcome:
        points = sum(len(series.values) for series in request.series)
        attempt = 0
        while True:
            try:
                # Straight to the service's port, not through the gateway: it says who it is as
                # Envoy would (tenant default, every scope), so it also feeds an AUTH_MODE=jwt stack.
                response = await self.stub.IngestMetrics(
                    request, timeout=RPC_TIMEOUT_S, metadata=SYSTEM.metadata()
                )
            except aio.AioRpcError as exc:
                code = exc.code()
                if code == grpc.StatusCode.UNIMPLEMENTED:
                    log.warning(
                        "demo feed stopped: metric ingest is not available",
                        extra={"code": code.name, "details": exc.details()},
                    )
                    return _Outcome.UNIMPLEMENTED
                if code not in TRANSIENT_CODES:
                    # A refusal that retrying cannot fix: drop this request, keep the feed going.
                    log.error(
                        "demo feed: ingest refused a request; skipping it",
                        extra={"code": code.name, "details": exc.details(), "points": points},
                    )
                    return _Outcome.OK
                attempt += 1
                delay = min(RETRY_FIRST_DELAY_S * 2 ** (attempt - 1), RETRY_MAX_DELAY_S)
                log.warning(
                    "demo feed: ingest failed; retrying",
                    extra={"code": code.name, "details": exc.details(), "attempt": attempt, "delay_s": delay},
                )
                if await _wait(self.stop, delay):
                    return _Outcome.STOPPED
                continue
            self.requests += 1
            self.points += points
            self.accepted += response.accepted
            self.rejected += response.rejected
            log.debug(
                "demo feed: sent",
                extra={"points": points, "accepted": response.accepted, "rejected": response.rejected},
            )
            if response.rejected and not self._warned_rejects:
                self._warned_rejects = True
                first = response.errors[0] if response.errors else None
                log.warning(
                    "demo feed: ingest rejected points",
                    extra={
                        "rejected": response.rejected,
                        "first_error": f"{first.field}: {first.reason}" if first else "",
                    },
                )
            return _Outcome.OK


async def run_feed(
    target: str,
    *,
    backfill_hours: float = BACKFILL_HOURS,
    interval_s: float = 10.0,
    datasource: str = DEFAULT_DATASOURCE,
    seed: int = 7,
    stop: asyncio.Event | None = None,
    step_ms: int = 10_000,
    max_points_per_request: int = MAX_POINTS_PER_REQUEST,
    machines: bool = False,
) -> None:
    """Feed the simulated platform to the realtime service at `target` (host:port) until `stop` is set.

    Backfills the last `backfill_hours`, logs a summary, then every `interval_s` sends the points
    that came due since the last send. Returns when `stop` is set, when ingest answers
    UNIMPLEMENTED, or when realtime never becomes reachable; transient errors are retried.
    With `machines`, the degrading machines (services/demo/machines.py) are sent too.
    """
    if backfill_hours < 0:
        raise ValueError(f"backfill_hours must not be negative, got {backfill_hours}")
    if interval_s <= 0:
        raise ValueError(f"interval_s must be positive, got {interval_s}")
    if max_points_per_request <= 0:
        raise ValueError(f"max_points_per_request must be positive, got {max_points_per_request}")
    stop = stop if stop is not None else asyncio.Event()
    backfill_start = max(0, _now_ms() - round(backfill_hours * HOUR_MS))
    platform = SimulatedPlatform(seed=seed, step_ms=step_ms, start_ms=backfill_start)
    async with aio.insecure_channel(target) as channel:
        if not await _channel_ready(channel, target, stop):
            return
        stub = realtime_service_pb2_grpc.RealtimeServiceStub(channel)
        sender = _Sender(stub, platform, datasource, max_points_per_request, stop)
        sources = [sender]
        if machines:
            machine_park = DegradingMachines(seed=seed, step_ms=step_ms)
            sources.append(_Sender(stub, machine_park, datasource, max_points_per_request, stop))
        started = time.monotonic()
        # Windows are half-open: sending up to now + 1 includes a point stamped exactly now.
        cursor = _now_ms() + 1
        for source in sources:
            if await source.send_range(backfill_start, cursor) is not _Outcome.OK:
                return
        log.info(
            "demo feed: backfill done",
            extra={
                "target": target,
                "datasource": datasource,
                "from_ms": backfill_start,
                "to_ms": cursor,
                "requests": sender.requests,
                "points": sender.points,
                "accepted": sender.accepted,
                "rejected": sender.rejected,
                "seconds": round(time.monotonic() - started, 3),
            },
        )
        while not await _wait(stop, interval_s):
            now = _now_ms() + 1
            for source in sources:
                if await source.send_range(cursor, now) is not _Outcome.OK:
                    return
            cursor = now
