"""Scale of the live path: 1,000 WebSocket clients following metric streams while 20,000 points/s
are ingested, through Envoy and, as the baseline in the same run, straight to the ws bridge.

    .venv/bin/python -m benchmarks.streams [--docs] [--clients 1000] [--rate 20000] [--seconds 20]

The stack is started the way `make up` starts it (`analytics up`: Envoy and `serve all`, demo off,
the live anomaly scorer on as by default). A separate process ingests the load through Envoy's
native gRPC port in batches (columnar, 1,000 series) and records when each batch was acknowledged;
the clients (one asyncio process) record when the frame carrying each batch arrived. Latency is
frame received minus ingest acknowledged, on the same machine clock; a frame can beat the
acknowledgement back to the ingester, so small negative values are real.

Per path: idle connections (memory per connection), then the load twice with one more client that
follows every series: reading, then never reading (it must not move the others' p99; the stack's
bounds are set small so the server drops and closes it within the phase). The server's share of the
latency comes from its own histogram, `analytics_stream_send_delay_seconds`. `ANOMALY_STREAM=0`
in the environment runs the stack without the live anomaly scorer, to see what it costs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import platform
import resource
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from benchmarks.procs import (
    Latency,
    launch_stack,
    log_tail,
    mib,
    stop_process,
    tree_rss_kib,
    wait_http_ok,
)
from benchmarks.report import add_docs_flag, publish

SECTION = "## Live streams"
DATASOURCE = "bench_streams"
METRIC = "stream_load"
SERIES = 1000
CHANNELS = 100
"""Clients follow one of this many label-filtered channels (`?series=s<k>`), 10 each at 1,000."""
SLOW_QUEUE_FRAMES = 16
SLOW_MAX_LAG_SECONDS = 5
POINT_TIME = '"points":[{"timestamp_ms":"'
BATCHES_PER_SECOND = 4
"""20,000 points/s arrive as 4 batches a second (a collector flushing every 250 ms)."""


@dataclass
class PhaseResult:
    """What one phase measured."""

    path: str
    clients: int
    slow_client: bool
    points_per_s: float
    frames: int
    latency: Latency | None
    lagged_frames: int
    slow_client_outcome: str
    server_p50_ms: float | None
    server_p99_ms: float | None


def _start_stack(data_dir: Path) -> tuple[subprocess.Popen, dict[str, str], Path]:
    log = data_dir / "stack.log"
    process, env = launch_stack(
        data_dir,
        log,
        SHUTDOWN_GRACE_SECONDS="1",
        # Small bounds, so that the client that never reads meets them within a phase.
        WS_CLIENT_QUEUE_FRAMES=str(SLOW_QUEUE_FRAMES),
        WS_CLIENT_MAX_LAG_SECONDS=str(SLOW_MAX_LAG_SECONDS),
    )
    wait_http_ok(f"http://127.0.0.1:{env['GATEWAY_PORT']}/health", process, log, "the stack")
    return process, env, log


def _ingester(target: str, rate: int, seconds: float, start_ms: int, acks: Any, ready: Any) -> None:
    """Child process: ingest `rate` points/s for `seconds`; put (batch, ack wall time) on `acks`."""
    import grpc

    from platformq.analytics.v1 import common_pb2, realtime_service_pb2, realtime_service_pb2_grpc

    per_series = max(1, rate // BATCHES_PER_SECOND // SERIES)
    period = 1.0 / BATCHES_PER_SECOND
    spacing = int(period * 1000) // per_series
    channel = grpc.insecure_channel(target)
    stub = realtime_service_pb2_grpc.RealtimeServiceStub(channel)
    ready.set()
    t0 = time.monotonic()
    batch = 0
    while time.monotonic() - t0 < seconds:
        base = start_ms + batch * int(period * 1000)
        stamps = [base + k * spacing for k in range(per_series)]
        series = [
            common_pb2.Series(
                name=METRIC,
                labels={"series": f"s{i % CHANNELS}", "instance": f"i{i}"},
                timestamps_ms=stamps,
                values=[float(i + k) for k in range(per_series)],
            )
            for i in range(SERIES)
        ]
        stub.IngestMetrics(realtime_service_pb2.IngestMetricsRequest(datasource=DATASOURCE, series=series))
        acks.put((batch, time.time()))
        batch += 1
        pause = t0 + batch * period - time.monotonic()
        if pause > 0:
            time.sleep(pause)
    acks.put(None)
    channel.close()


def _seed_metric(target: str) -> None:
    """One point of every benchmark series, an hour old, so the streams' metric is known."""
    import grpc

    from platformq.analytics.v1 import common_pb2, realtime_service_pb2, realtime_service_pb2_grpc

    then = int(time.time() * 1000) - 3_600_000
    series = [
        common_pb2.Series(
            name=METRIC,
            labels={"series": f"s{i % CHANNELS}", "instance": f"i{i}"},
            timestamps_ms=[then],
            values=[0.0],
        )
        for i in range(SERIES)
    ]
    with grpc.insecure_channel(target) as channel:
        stub = realtime_service_pb2_grpc.RealtimeServiceStub(channel)
        stub.IngestMetrics(
            realtime_service_pb2.IngestMetricsRequest(datasource=DATASOURCE, series=series), timeout=30
        )


def _export(base: str) -> str:
    with urllib.request.urlopen(f"{base}/api/v1/export/prometheus", timeout=30) as reply:
        return reply.read().decode()


def _lagged_closes(base: str) -> float:
    """Subscribers the server closed for being too slow (analytics_stream_clients_closed_total)."""
    for family in text_string_to_metric_families(_export(base)):
        if family.name == "analytics_stream_clients_closed":
            return sum(s.value for s in family.samples if s.labels.get("reason") == "lagged")
    return 0.0


def _send_delay_buckets(base: str) -> dict[float, float]:
    """analytics_stream_send_delay_seconds{stream_type="metrics"} buckets from the export."""
    buckets: dict[float, float] = {}
    for family in text_string_to_metric_families(_export(base)):
        if family.name != "analytics_stream_send_delay_seconds":
            continue
        for sample in family.samples:
            if sample.name.endswith("_bucket") and sample.labels.get("stream_type") == "metrics":
                le = float(sample.labels["le"])
                buckets[le] = buckets.get(le, 0.0) + sample.value
    return buckets


def _quantile(q: float, before: dict[float, float], after: dict[float, float]) -> float | None:
    """histogram_quantile over the increase between two readings, in milliseconds."""
    bounds = sorted(after)
    counts = [after[b] - before.get(b, 0.0) for b in bounds]
    if not counts or counts[-1] <= 0:
        return None
    rank = q * counts[-1]
    lower, below = 0.0, 0.0
    for bound, count in zip(bounds, counts, strict=True):
        if count >= rank:
            if bound == float("inf"):
                return lower * 1000
            return (lower + (bound - lower) * (rank - below) / max(count - below, 1e-12)) * 1000
        lower, below = bound, count
    return None


class Client:
    """One WebSocket client following a channel; records when each batch's frame arrived."""

    def __init__(self, url: str, start_ms: int, read: bool = True) -> None:
        self.url = url
        self.start_ms = start_ms
        self.read = read
        self.received: dict[int, float] = {}
        self.lagged = 0
        self.closed_reason = ""
        self.ws: aiohttp.ClientWebSocketResponse | None = None

    async def connect(self, session: aiohttp.ClientSession) -> None:
        # A slow client's receive buffer stays small so the server side sees it back up.
        self.ws = await session.ws_connect(self.url, max_msg_size=0, autoping=True, heartbeat=None)
        hello = await self.ws.receive(timeout=30)
        assert json.loads(hello.data)["type"] == "hello", hello.data

    async def run(self) -> None:
        assert self.ws is not None
        if not self.read:
            await asyncio.Event().wait()  # never reads; cancelled at the end
        period_ms = int(1000 / BATCHES_PER_SECOND)
        async for msg in self.ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                break
            now = time.time()
            text = msg.data
            if '"type":"data"' in text:
                # The first point's time names the batch; no need to parse the whole frame (the
                # clients share the machine with the server: their cost is kept small).
                at = text.find(POINT_TIME)
                if at >= 0:
                    stamp = int(text[at + len(POINT_TIME) : text.index('"', at + len(POINT_TIME))])
                    self.received.setdefault((stamp - self.start_ms) // period_ms, now)
                continue
            frame = json.loads(text)
            kind = frame.get("type")
            if kind == "lagged":
                self.lagged += int(frame.get("dropped", 0))
            elif kind == "closing":
                self.closed_reason = frame.get("reason", "")


async def _phase(
    path: str,
    ws_base: str,
    http_base: str,
    grpc_target: str,
    clients: int,
    rate: int,
    seconds: float,
    slow: bool,
) -> tuple[PhaseResult, Client | None]:
    start_ms = (int(time.time() * 1000) // 1000 + 2) * 1000
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        crowd = [
            Client(
                f"{ws_base}/api/v1/ws/metrics/{METRIC}?datasource={DATASOURCE}&series=s{i % CHANNELS}",
                start_ms,
            )
            for i in range(clients)
        ]
        for i in range(0, clients, 50):
            await asyncio.gather(*(c.connect(session) for c in crowd[i : i + 50]))
        # One more client follows every series (frames 100 times larger than the others'): reading
        # in one phase, never reading in the other, so the two differ only by its slowness.
        laggard = Client(
            f"{ws_base}/api/v1/ws/metrics/{METRIC}?datasource={DATASOURCE}", start_ms, read=not slow
        )
        await laggard.connect(session)
        readers = [asyncio.create_task(c.run()) for c in crowd]
        slow_task = asyncio.create_task(laggard.run())

        loop = asyncio.get_running_loop()
        delays_before = await loop.run_in_executor(None, _send_delay_buckets, http_base)
        closed_before = await loop.run_in_executor(None, _lagged_closes, http_base)
        ctx = multiprocessing.get_context("spawn")
        acks_q, ready = ctx.Queue(), ctx.Event()
        ingester = ctx.Process(target=_ingester, args=(grpc_target, rate, seconds, start_ms, acks_q, ready))
        ingester.start()
        acks: dict[int, float] = {}
        while True:
            item = await loop.run_in_executor(None, acks_q.get)
            if item is None:
                break
            acks[item[0]] = item[1]
        ingester.join()
        await asyncio.sleep(1.0)  # let the last frames arrive before counting
        delays_after = await loop.run_in_executor(None, _send_delay_buckets, http_base)
        closed = await loop.run_in_executor(None, _lagged_closes, http_base) - closed_before
        slow_outcome = ("closed by the server as too slow" if closed else "still open") if slow else "reading"
        for task in [*readers, slow_task]:
            task.cancel()
        await asyncio.gather(*readers, slow_task, return_exceptions=True)
        for c in [*crowd, laggard]:
            if c.ws is not None:
                await c.ws.close()
    latencies = [got - acks[b] for c in crowd for b, got in c.received.items() if b in acks]
    result = PhaseResult(
        path=path,
        clients=clients,
        slow_client=slow,
        points_per_s=len(acks) * SERIES * max(1, rate // BATCHES_PER_SECOND // SERIES) / seconds,
        frames=sum(len(c.received) for c in crowd),
        latency=Latency.of_seconds(latencies),
        lagged_frames=sum(c.lagged for c in crowd),
        slow_client_outcome=slow_outcome,
        server_p50_ms=_quantile(0.5, delays_before, delays_after),
        server_p99_ms=_quantile(0.99, delays_before, delays_after),
    )
    return result, laggard


async def _memory_per_connection(ws_base: str, pids: list[int], clients: int) -> dict[str, float]:
    before = sum(tree_rss_kib(p) for p in pids)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        crowd = [
            Client(f"{ws_base}/api/v1/ws/metrics/{METRIC}?datasource={DATASOURCE}", 0) for _ in range(clients)
        ]
        for i in range(0, clients, 50):
            await asyncio.gather(*(c.connect(session) for c in crowd[i : i + 50]))
        await asyncio.sleep(2.0)
        after = sum(tree_rss_kib(p) for p in pids)
        for c in crowd:
            await c.ws.close()
    return {
        "before_mib": mib(before),
        "after_mib": mib(after),
        "kib_per_connection": (after - before) / clients,
    }


def _pids_of(process: subprocess.Popen) -> dict[str, int]:
    """The stack's Envoy and Python server pids (children of the launcher)."""
    out = subprocess.run(
        ["ps", "-o", "pid=,args=", "--ppid", str(process.pid)], capture_output=True, text=True
    )
    pids = {}
    for line in out.stdout.splitlines():
        pid, _, args = line.strip().partition(" ")
        pids["envoy" if "envoy" in args else "services"] = int(pid)
    return pids


def _raise_open_files(clients: int) -> None:
    """Each connection costs a descriptor in the clients, two in Envoy and one in the bridge; the
    stack inherits this process's limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, max(soft, 4 * clients + 1024))
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


async def _run(clients: int, rate: int, seconds: float) -> dict[str, Any]:
    _raise_open_files(clients)
    with tempfile.TemporaryDirectory(prefix="bench-streams-") as tmp:
        process, env, log = _start_stack(Path(tmp))
        try:
            gateway = f"ws://127.0.0.1:{env['GATEWAY_PORT']}"
            bridge = f"ws://127.0.0.1:{env['WS_BRIDGE_PORT']}"
            grpc_target = f"127.0.0.1:{env['GATEWAY_PORT']}"
            pids = _pids_of(process)
            # The metric exists before anyone subscribes (an unknown metric is refused), then a warm-up.
            _seed_metric(grpc_target)
            http_base = f"http://127.0.0.1:{env['GATEWAY_PORT']}"
            await _phase("warm-up", gateway, http_base, grpc_target, 1, rate // 10, 2, slow=False)
            memory = {
                "envoy": await _memory_per_connection(gateway, [pids["services"], pids["envoy"]], clients),
                "direct": await _memory_per_connection(bridge, [pids["services"]], clients),
            }
            phases = []
            for path, base in (("envoy", gateway), ("direct", bridge)):
                for slow in (False, True):
                    result, _ = await _phase(path, base, http_base, grpc_target, clients, rate, seconds, slow)
                    phases.append(result)
                    print(json.dumps(asdict(result)), flush=True)
        finally:
            stop_process(process, 30, signal.SIGTERM)
            if process.returncode not in (0, -signal.SIGTERM):
                print(log_tail(log), file=sys.stderr)
    return {
        "clients": clients,
        "rate": rate,
        "seconds": seconds,
        "memory": memory,
        "phases": [asdict(p) for p in phases],
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
    }


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def render(r: dict[str, Any]) -> str:
    """The docs section."""
    lines = [
        SECTION,
        "",
        f"`python -m benchmarks.streams` (part of `make bench`): {r['clients']} WebSocket clients follow "
        f"`metrics/{METRIC}` streams (one of {CHANNELS} label-filtered channels each) while {r['rate']:,} "
        f"points/s are ingested ({BATCHES_PER_SECOND} batches/s of {SERIES} series) for {r['seconds']:g} s, "
        "through Envoy and, as the baseline in the same run, straight to the ws bridge. One more client "
        "follows every series (frames 100 times larger): reading in one phase, never reading in the other. "
        "Latency: frame received minus ingest acknowledged, measured by clients on the same 2 cores as the "
        "server; the server's share is the time a frame waited in its subscriber's queue until written "
        "(`analytics_stream_send_delay_seconds`, read from the export). The stack runs with "
        f"`WS_CLIENT_QUEUE_FRAMES={SLOW_QUEUE_FRAMES}` and `WS_CLIENT_MAX_LAG_SECONDS={SLOW_MAX_LAG_SECONDS}` "
        f"so the client that never reads meets its bound within a phase. Machine: {r['machine']}.",
        "",
        "| path | the all-series client | points/s ingested | frames received | p50 ms | p99 ms | max ms | server's share "
        "p50 / p99 ms | frames dropped (lagged) for the 1,000 | what became of the all-series client |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for p in r["phases"]:
        lat = p["latency"] or {}
        lines.append(
            f"| {p['path']} | {'never reads' if p['slow_client'] else 'reads'} | {p['points_per_s']:,.0f} | {p['frames']:,} | "
            f"{_ms(lat.get('p50_ms'))} | {_ms(lat.get('p99_ms'))} | {_ms(lat.get('max_ms'))} | "
            f"{_ms(p['server_p50_ms'])} / {_ms(p['server_p99_ms'])} | "
            f"{p['lagged_frames']} | {p['slow_client_outcome'] or '-'} |"
        )
    m = r["memory"]
    lines += [
        "",
        f"Memory per idle connection: {m['envoy']['kib_per_connection']:.1f} KiB through Envoy (services and "
        f"Envoy together), {m['direct']['kib_per_connection']:.1f} KiB straight to the bridge.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--rate", type=int, default=20_000, help="points per second")
    parser.add_argument("--seconds", type=float, default=20)
    add_docs_flag(parser)
    args = parser.parse_args(argv)
    results = asyncio.run(_run(args.clients, args.rate, args.seconds))
    publish(SECTION, render(results), args.docs, results, "streams")


if __name__ == "__main__":
    main()
