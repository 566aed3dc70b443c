"""Our service under test: `analytics serve all` as a subprocess, ingest and queries over gRPC.

Until the ingest and query RPCs are built they answer UNIMPLEMENTED; probe_ingest() and the
first query find that out and the benchmark reports "not available" for our columns.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
from google.protobuf import struct_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from benchmarks.answers import Answer
from benchmarks.procs import LOOPBACK, free_port, log_tail, proc_status_kib, stop_process
from benchmarks.tsbs_data import Dataset
from platformq.analytics.v1 import query_service_pb2, query_service_pb2_grpc, realtime_service_pb2

INGEST_METHOD = "/platformq.analytics.v1.RealtimeService/IngestMetrics"
# Big enough for any batch the benchmark builds and any answer it asks for.
_CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", 256 << 20),
    ("grpc.max_receive_message_length", 256 << 20),
]
# Codes on which an ingest call is retried: the service pushing back, not failing.
_RETRYABLE = (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE)


@dataclass(frozen=True)
class Availability:
    """Whether an RPC works, and the status that says so."""

    available: bool
    detail: str


class OurService:
    """`analytics serve all` in its own process group, on loopback ports chosen here."""

    def __init__(self, data_dir: Path, log_path: Path, extra_env: dict[str, str] | None = None) -> None:
        self.data_dir = data_dir
        self.log_path = log_path
        self.extra_env = extra_env or {}
        self.grpc_port = free_port()
        self.ws_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def target(self) -> str:
        """host:port of the gRPC server."""
        return f"{LOOPBACK}:{self.grpc_port}"

    @property
    def pid(self) -> int:
        """The service's pid."""
        assert self.proc is not None
        return self.proc.pid

    def command(self) -> list[str]:
        """The command line: the venv's `analytics` entry point."""
        exe = Path(sys.executable).parent / "analytics"
        return [str(exe), "serve", "all"]

    def start(self) -> None:
        """Start the service; wait_healthy() waits until it is SERVING."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        env.update(
            {
                "DATA_DIR": str(self.data_dir),
                "GRPC_PORT": str(self.grpc_port),
                "WS_BRIDGE_PORT": str(self.ws_port),
                "BIND_HOST": LOOPBACK,
                "DEMO": "0",
                # The storage benchmark measures the store, like VictoriaMetrics alone; the live
                # anomaly scorer's cost is measured by benchmarks.anomaly_speed.
                "ANOMALY_STREAM": "0",
                "LOG_LEVEL": "WARNING",
                **self.extra_env,
            }
        )
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.command(), env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

    async def wait_healthy(self, timeout_s: float = 120.0) -> float:
        """Poll grpc.health.v1 Check("") until SERVING; returns the seconds it took."""
        t0 = time.perf_counter()
        deadline = time.monotonic() + timeout_s
        async with grpc.aio.insecure_channel(self.target) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < deadline:
                if self.proc is not None and self.proc.poll() is not None:
                    raise RuntimeError(
                        f"the service exited with {self.proc.returncode}:\n{log_tail(self.log_path)}"
                    )
                try:
                    resp = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=2)
                    if resp.status == health_pb2.HealthCheckResponse.SERVING:
                        return time.perf_counter() - t0
                except grpc.aio.AioRpcError:
                    pass
                await asyncio.sleep(0.1)
        raise TimeoutError(f"the service was not SERVING after {timeout_s}s:\n{log_tail(self.log_path)}")

    def hwm_kib(self) -> int | None:
        """VmHWM (peak resident memory) of the service process."""
        return proc_status_kib(self.pid, "VmHWM")

    def stop(self, timeout_s: float = 900.0) -> tuple[float, int | None]:
        """SIGTERM (the service flushes its hot tier into segments) and wait: (seconds, exit code)."""
        if self.proc is None:
            return 0.0, None
        seconds = stop_process(self.proc, timeout_s, signal.SIGTERM)
        return seconds, self.proc.returncode


# --- ingest ---------------------------------------------------------------------------------------


@dataclass
class IngestPlan:
    """Pre-built, pre-serialised IngestMetrics requests, so building them is not timed."""

    payloads: list[bytes]
    points: list[int]
    build_seconds: float
    hosts_per_batch: int
    slice_ms: int

    @property
    def total_points(self) -> int:
        """Points in all requests."""
        return int(sum(self.points))

    @property
    def total_bytes(self) -> int:
        """Serialized bytes of all requests."""
        return sum(len(p) for p in self.payloads)


def build_ingest_plan(
    ds: Dataset, datasource: str, hosts_per_batch: int = 10, slice_ms: int = 3_600_000
) -> IngestPlan:
    """Cut the data into columnar batches: all fields of `hosts_per_batch` hosts over one time slice.

    Batches go time-major (every host group for slice 0, then slice 1, ...), the order a live
    feed would arrive in. With 100 hosts, 10 s rows and 1 h slices a batch holds 36,000 points.
    """
    t0 = time.perf_counter()
    by_host: dict[str, list[int]] = {}
    for i, lab in enumerate(ds.labels):
        by_host.setdefault(lab["hostname"], []).append(i)
    hosts = ds.hosts
    groups = [hosts[i : i + hosts_per_batch] for i in range(0, len(hosts), hosts_per_batch)]
    payloads, points = [], []
    for t_lo in range(ds.params.start_ms, ds.params.end_ms, slice_ms):
        for group in groups:
            req = realtime_service_pb2.IngestMetricsRequest(datasource=datasource)
            n = 0
            for host in group:
                for i in by_host[host]:
                    ts, vals = ds.series(i)
                    lo, hi = np.searchsorted(ts, [t_lo, t_lo + slice_ms])
                    if hi <= lo:
                        continue
                    s = req.series.add(name=ds.names[i])
                    s.labels.update(ds.labels[i])
                    # tolist() hands upb plain Python numbers, much faster than numpy scalars.
                    s.timestamps_ms.extend(ts[lo:hi].tolist())
                    s.values.extend(vals[lo:hi].tolist())
                    n += int(hi - lo)
            if n:
                payloads.append(req.SerializeToString())
                points.append(n)
    return IngestPlan(payloads, points, time.perf_counter() - t0, hosts_per_batch, slice_ms)


@dataclass
class IngestResult:
    """One timed ingest of the whole plan."""

    points: int
    seconds: float
    accepted: int
    rejected: int
    retries: int
    concurrency: int
    first_errors: list[str] = field(default_factory=list)

    @property
    def points_per_s(self) -> float:
        """Points per second, first send to last acknowledgement."""
        return self.points / self.seconds if self.seconds else 0.0


def _ingest_call(channel: grpc.aio.Channel) -> grpc.aio.UnaryUnaryMultiCallable:
    # No request serializer: the plan's payloads are already bytes.
    return channel.unary_unary(
        INGEST_METHOD,
        request_serializer=None,
        response_deserializer=realtime_service_pb2.IngestMetricsResponse.FromString,
    )


async def probe_ingest(target: str, datasource: str) -> Availability:
    """Send an empty batch: UNIMPLEMENTED means ingest is not built; any other answer means it is."""
    async with grpc.aio.insecure_channel(target, options=_CHANNEL_OPTIONS) as channel:
        empty = realtime_service_pb2.IngestMetricsRequest(datasource=datasource).SerializeToString()
        try:
            await _ingest_call(channel)(empty, timeout=30)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
                return Availability(False, f"UNIMPLEMENTED: {exc.details()}")
            return Availability(True, f"empty batch answered {exc.code().name}: {exc.details()}")
    return Availability(True, "empty batch answered OK")


async def ingest(
    target: str, plan: IngestPlan, concurrency: int = 8, timeout_s: float = 600.0
) -> IngestResult:
    """Send every payload with `concurrency` calls in flight; wall clock from first send to last ack."""
    next_index = 0
    accepted = rejected = retries = 0
    errors: list[str] = []
    async with grpc.aio.insecure_channel(target, options=_CHANNEL_OPTIONS) as channel:
        call = _ingest_call(channel)
        await channel.channel_ready()

        async def worker() -> None:
            nonlocal next_index, accepted, rejected, retries
            while next_index < len(plan.payloads):
                payload = plan.payloads[next_index]
                next_index += 1
                backoff = 0.05
                while True:
                    try:
                        resp = await call(payload, timeout=timeout_s)
                        break
                    except grpc.aio.AioRpcError as exc:
                        if exc.code() not in _RETRYABLE or backoff > 30:
                            raise
                        retries += 1
                        await asyncio.sleep(backoff)
                        backoff *= 2
                accepted += resp.accepted
                rejected += resp.rejected
                if resp.errors and len(errors) < 5:
                    errors.extend(f"{e.field}: {e.reason}" for e in resp.errors[: 5 - len(errors)])

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        seconds = time.perf_counter() - t0
    return IngestResult(plan.total_points, seconds, accepted, rejected, retries, concurrency, errors)


# --- queries --------------------------------------------------------------------------------------


@dataclass
class QueryOutcome:
    """One Query call as the client saw it."""

    seconds: float
    cache_hit: bool
    server_ms: float
    points_scanned: int
    engines: list[str]
    response: query_service_pb2.QueryResponse


class OurQuerier:
    """Calls QueryService/Query on one channel, timing each call at the client."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.channel: grpc.aio.Channel | None = None
        self.stub: query_service_pb2_grpc.QueryServiceStub | None = None

    async def __aenter__(self) -> OurQuerier:
        self.channel = grpc.aio.insecure_channel(self.target, options=_CHANNEL_OPTIONS)
        await self.channel.channel_ready()
        self.stub = query_service_pb2_grpc.QueryServiceStub(self.channel)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.channel is not None:
            await self.channel.close()

    async def query(self, request: query_service_pb2.QueryRequest, timeout_s: float = 300.0) -> QueryOutcome:
        """Run one query; AioRpcError propagates (UNIMPLEMENTED included)."""
        assert self.stub is not None
        t0 = time.perf_counter()
        resp = await self.stub.Query(request, timeout=timeout_s)
        seconds = time.perf_counter() - t0
        md = resp.metadata
        return QueryOutcome(
            seconds, md.cache_hit, md.total_time_ms, md.points_scanned, list(md.engines), resp
        )


def _plain(value: struct_pb2.Value) -> object:
    kind = value.WhichOneof("kind")
    if kind == "number_value":
        return value.number_value
    if kind == "string_value":
        return value.string_value
    if kind == "bool_value":
        return value.bool_value
    return None


def answer_of(resp: query_service_pb2.QueryResponse, kind: str) -> Answer:
    """A response in the normalised form of benchmarks.answers."""
    if kind == "groupby":
        out: dict[tuple[str, str], dict[int, float]] = {}
        for s in resp.series:
            points = out.setdefault((s.metric, s.group.get("hostname", "")), {})
            for p in s.points:
                points[int(p.timestamp_ms)] = p.value
        return out
    return [tuple(_plain(v) for v in row.values) for row in resp.rows]
