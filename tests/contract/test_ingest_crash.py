"""The real service killed by SIGKILL during sustained gRPC ingest loses no acknowledged point and
duplicates none: after a restart on the same DATA_DIR, the Query API finds each exactly once; the
same when the kill comes during corrections of points already in segments."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import grpc
import pytest
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from platformq.analytics.v1 import (
    common_pb2,
    query_service_pb2,
    query_service_pb2_grpc,
    realtime_service_pb2,
    realtime_service_pb2_grpc,
)
from tests.helpers import REPO_ROOT, alive, descendants, free_port

DATASOURCE = "crash_test"
SERIES = [f"s{i}" for i in range(8)]
POINTS_PER_SERIES = 5  # per batch: 8 series x 5 points
BATCH_POINTS = len(SERIES) * POINTS_PER_SERIES
CLIENTS = 6
ACKED_BEFORE_KILL = 4_000
# The most batches one client sends: all of them together stay under SQL_MAX_ROWS (100,000), so
# one SQL answer holds every stored point whatever the speed.
MAX_BATCHES_PER_CLIENT = 300
assert CLIENTS * MAX_BATCHES_PER_CLIENT * BATCH_POINTS < 100_000
# Recent timestamps: the flusher applies the default 30-day retention against the real clock.
BASE_TS = (int(time.time() * 1000) // 1000 - 3 * 3600) * 1000

Key = tuple[str, int]  # (series label k, ts)


def _batch(client: int, n: int) -> tuple[realtime_service_pb2.IngestMetricsRequest, dict[Key, float]]:
    """Batch n of a client: distinct timestamps and values that no other batch uses."""
    first = BASE_TS + (client * MAX_BATCHES_PER_CLIENT + n) * POINTS_PER_SERIES
    request = realtime_service_pb2.IngestMetricsRequest(datasource=DATASOURCE)
    points: dict[Key, float] = {}
    for i, k in enumerate(SERIES):
        ts = list(range(first, first + POINTS_PER_SERIES))
        values = [float((t - BASE_TS) * 10 + i) + 0.25 for t in ts]
        request.series.append(
            common_pb2.Series(name="load", labels={"k": k}, timestamps_ms=ts, values=values)
        )
        points.update({(k, t): v for t, v in zip(ts, values, strict=True)})
    return request, points


class Service:
    """One `analytics serve all` process on DATA_DIR, with its own ports and log file."""

    def __init__(self, data_dir: Path, log: Path, **env: str) -> None:
        self.port = free_port()
        environment = {
            **os.environ,
            "DATA_DIR": str(data_dir),
            "GRPC_PORT": str(self.port),
            "WS_BRIDGE_PORT": str(free_port()),
            "LOG_LEVEL": "WARNING",
            "HOT_FLUSH_POINTS": "20000",
            "HOT_FLUSH_SECONDS": "1",
            "SHUTDOWN_GRACE_SECONDS": "1",
            **env,
        }
        self.log = log
        with log.open("w") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "services.cli", "serve", "all"],
                cwd=REPO_ROOT,
                env=environment,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def wait_serving(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        async with aio.insecure_channel(self.address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < deadline:
                assert self.proc.poll() is None, f"the service exited: {self.log.read_text()}"
                try:
                    reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.aio.AioRpcError:
                    pass
                await asyncio.sleep(0.05)
        raise AssertionError(f"the service did not serve within {timeout} s: {self.log.read_text()}")

    def stop(self) -> None:
        """SIGTERM, and a clean exit."""
        self.proc.send_signal(signal.SIGTERM)
        assert self.proc.wait(timeout=20) == 0, self.log.read_text()

    def kill_everything(self) -> None:
        """SIGKILL the service and anything it started; safe to call more than once."""
        for pid in descendants(self.proc.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)


async def _ingest(
    address: str, client: int, stop: asyncio.Event, attempted: dict[Key, float], acked: dict[Key, float]
) -> None:
    """Send batches until `stop` or the service dies. The only await is the call itself, so a
    client that has not returned always has a call in flight."""
    async with aio.insecure_channel(address) as channel:
        stub = realtime_service_pb2_grpc.RealtimeServiceStub(channel)
        for n in range(MAX_BATCHES_PER_CLIENT):
            if stop.is_set():
                return
            request, points = _batch(client, n)
            attempted.update(points)
            if not await _sent(stub, request):
                return
            acked.update(points)


async def _sent(stub: realtime_service_pb2_grpc.RealtimeServiceStub, request) -> bool:
    """One batch sent: True once acknowledged whole, False when the service died meanwhile."""
    try:
        reply = await stub.IngestMetrics(request, timeout=15)
    except grpc.aio.AioRpcError as exc:
        assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc
        return False
    assert (reply.accepted, reply.rejected) == (BATCH_POINTS, 0), reply
    return True


async def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        await asyncio.sleep(0.01)


def _committed_segments(data_dir: Path) -> list[dict]:
    """Segments of the datasource that a flush has committed to the manifest. (A Parquet file on
    disk is not enough: a flush writes its files first, and a kill before the manifest is
    replaced leaves them as orphans.)"""
    manifest = data_dir / "segments" / "manifest.json"
    if not manifest.exists():
        return []
    return [s for s in json.loads(manifest.read_text())["segments"] if s["datasource"] == DATASOURCE]


def _rows(segments: list[dict]) -> int:
    return sum(s["rows"] for s in segments)


async def _stored_points(address: str) -> list[tuple[str, int, float]]:
    async with aio.insecure_channel(address) as channel:
        stub = query_service_pb2_grpc.QueryServiceStub(channel)
        request = query_service_pb2.QueryRequest(
            sql="SELECT labels['k'] AS k, ts, value FROM metrics WHERE datasource = ? AND metric = 'load'",
        )
        request.params.add(string_value=DATASOURCE)
        reply = await stub.Query(request, timeout=30)
    assert list(reply.columns) == ["k", "ts", "value"]
    return [
        (row.values[0].string_value, int(row.values[1].number_value), row.values[2].number_value)
        for row in reply.rows
    ]


@pytest.fixture
def services():
    """The services a test starts (append them): killed, with anything they started, at its end."""
    started: list[Service] = []
    yield started
    for service in started:
        service.kill_everything()
        assert not alive(service.proc.pid)


async def _restarted_points(service: Service) -> dict[Key, float]:
    """Every stored point of the datasource, once `service` (restarted on the DATA_DIR) serves;
    fails if any key is stored twice."""
    await service.wait_serving()
    rows = await _stored_points(service.address)
    copies = Counter((k, ts) for k, ts, _ in rows)
    doubled = [key for key, n in copies.items() if n > 1]
    assert not doubled, f"{len(doubled)} points stored more than once, e.g. {doubled[:5]}"
    return {(k, ts): value for k, ts, value in rows}


@pytest.mark.timeout(90)
async def test_acknowledged_points_survive_sigkill_of_the_service_exactly_once(tmp_path, services):
    attempted: dict[Key, float] = {}
    acked: dict[Key, float] = {}
    first = Service(tmp_path, tmp_path / "first.log")
    services.append(first)
    await first.wait_serving()

    stop = asyncio.Event()
    clients = [asyncio.create_task(_ingest(first.address, c, stop, attempted, acked)) for c in range(CLIENTS)]

    def ready_to_kill() -> bool:
        # Enough acknowledged points, a committed flush, and acknowledged points after it.
        flushed = _committed_segments(tmp_path)
        return len(acked) >= ACKED_BEFORE_KILL and bool(flushed) and len(acked) > _rows(flushed)

    await _wait_for(
        lambda: ready_to_kill() or all(c.done() for c in clients), 30, "acknowledged points and a flush"
    )
    in_flight = sum(not c.done() for c in clients)  # each is awaiting an IngestMetrics call
    first.proc.send_signal(signal.SIGKILL)  # no handler, no flush, no close
    stop.set()
    await asyncio.gather(*clients)
    first.kill_everything()
    assert first.proc.returncode == -signal.SIGKILL, "the service was not running when it was killed"
    flushed = _committed_segments(tmp_path)
    assert len(acked) >= ACKED_BEFORE_KILL and flushed, (
        f"the clients ran out of batches after {len(acked)} acknowledged points "
        f"and {len(flushed)} committed segments"
    )
    assert in_flight >= 1, "no call was in flight when the service was killed"
    # Both recovery paths are exercised: acknowledged points in segments, and more (than the
    # segments hold) to replay from the WAL.
    assert _rows(flushed) < len(acked)

    second = Service(tmp_path, tmp_path / "second.log")
    services.append(second)
    stored = await _restarted_points(second)
    missing = [key for key in acked if key not in stored]
    assert not missing, f"{len(missing)} of {len(acked)} acknowledged points lost, e.g. {missing[:5]}"
    wrong = [key for key, value in acked.items() if stored[key] != value]
    assert not wrong, f"acknowledged points with other values, e.g. {wrong[:5]}"
    # In-flight batches may or may not have made it, but nothing else may appear.
    foreign = [key for key in stored if attempted.get(key) != stored[key]]
    assert not foreign, f"points nobody sent, e.g. {foreign[:5]}"

    second.stop()


async def _correct(
    address: str,
    client: int,
    batches: int,
    stop: asyncio.Event,
    possible: dict[Key, set[float]],
    corrections: list[int],
) -> None:
    """Send corrections of this client's first `batches` batches (new values for stored keys,
    most of them already flushed into segments), round after round, until `stop` or the service
    dies. `possible[key]` keeps the last acknowledged value and every value sent after it."""
    async with aio.insecure_channel(address) as channel:
        stub = realtime_service_pb2_grpc.RealtimeServiceStub(channel)
        for r in range(1, 1_000):
            for n in range(0, batches, 3):
                if stop.is_set():
                    return
                request, points = _batch(client, n)
                for series in request.series:
                    series.values[:] = [v + 1_000_000 * r for v in series.values]
                values = {key: v + 1_000_000 * r for key, v in points.items()}
                for key, value in values.items():
                    possible[key].add(value)
                if not await _sent(stub, request):
                    return
                for key, value in values.items():
                    possible[key] = {value}
                corrections.append(n)


@pytest.mark.timeout(120)
async def test_acknowledged_corrections_of_flushed_points_survive_sigkill_exactly_once(tmp_path, services):
    """Corrections of points already in segments (a segment a correction touches goes back to the
    hot tier through the WAL, or is rewritten): after a SIGKILL in the middle of them and a
    restart, each key is stored once, with its last acknowledged value or one sent after it."""
    attempted: dict[Key, float] = {}
    acked: dict[Key, float] = {}
    first = Service(tmp_path, tmp_path / "first.log")
    services.append(first)
    await first.wait_serving()
    batches = 60
    # Appends first, every one acknowledged and flushed into segments.
    await asyncio.gather(*(_ingest_n(first.address, c, batches, attempted, acked) for c in range(CLIENTS)))
    assert len(acked) == CLIENTS * batches * BATCH_POINTS
    await _wait_for(lambda: _rows(_committed_segments(tmp_path)) >= len(acked), 30, "the appends flushed")
    possible: dict[Key, set[float]] = {key: {value} for key, value in acked.items()}
    corrections: list[int] = []
    stop = asyncio.Event()
    clients = [
        asyncio.create_task(_correct(first.address, c, batches, stop, possible, corrections))
        for c in range(CLIENTS)
    ]
    await _wait_for(
        lambda: len(corrections) >= 150 or all(c.done() for c in clients), 60, "acknowledged corrections"
    )
    in_flight = sum(not c.done() for c in clients)
    first.proc.send_signal(signal.SIGKILL)
    stop.set()
    await asyncio.gather(*clients)
    first.kill_everything()
    assert first.proc.returncode == -signal.SIGKILL, "the service was not running when it was killed"
    assert len(corrections) >= 150 and in_flight >= 1

    second = Service(tmp_path, tmp_path / "second.log")
    services.append(second)
    stored = await _restarted_points(second)
    assert set(stored) == set(acked), "points lost or appearing"
    wrong = [key for key, value in stored.items() if value not in possible[key]]
    assert not wrong, (
        f"{len(wrong)} points with a value older than their last acknowledged one, e.g. {wrong[:3]}"
    )
    second.stop()


async def _ingest_n(
    address: str, client: int, batches: int, attempted: dict[Key, float], acked: dict[Key, float]
) -> None:
    """This client's first `batches` batches, each acknowledged."""
    async with aio.insecure_channel(address) as channel:
        stub = realtime_service_pb2_grpc.RealtimeServiceStub(channel)
        for n in range(batches):
            request, points = _batch(client, n)
            attempted.update(points)
            reply = await stub.IngestMetrics(request, timeout=15)
            assert (reply.accepted, reply.rejected) == (BATCH_POINTS, 0), reply
            acked.update(points)
