"""REST ingest through the real Envoy, beside VictoriaMetrics' JSON import of the same data.

    .venv/bin/python -m benchmarks.ingest_rest [--docs] [--points 1000000] [--bodies 200] [--connections 4] [--rounds 3]

What a new user does: `POST /api/v1/metrics/ingest` on the gateway of the stack as `make up` starts
it (`analytics up`: Envoy and `serve all`, demo off), with bodies encoded before the clock starts,
over a few keep-alive connections on loopback. Two body forms of the same points: columnar
(`series`: per series its labels once, then `timestamps_ms` and `values`) and rows (`points`: one
object per point with its name and labels); the same two as gRPC `IngestMetrics` requests through
the same Envoy, for reference. Each form goes to a fresh stack (fresh DATA_DIR). In the
same run VictoriaMetrics takes the same series as `/api/v1/import` JSON lines (one line per series
and body, its own columnar format), into a fresh instance; its time ends after
`/internal/force_flush` (then the points are searchable), ours at the last answer (then they are
durable and queryable). Each system runs alone, one after the other, on the same cores.

The data is TSBS cpu-only shaped: hosts with TSBS's ten tags, ten `cpu_*` fields each, one point
every 10 s, integer-valued random walks in [0, 100] (fixed seed), ending a minute ago. A body holds
`hosts_per_body` hosts x 10 fields over a slice of the time range.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

from benchmarks import victoria
from benchmarks.procs import (
    NotReady,
    launch_stack,
    mib,
    proc_status_kib,
    stop_process,
    tree_rss_kib,
    wait_http_ok,
)
from benchmarks.report import add_docs_flag, publish

SECTION = "## REST ingest"
DATASOURCE = "bench_rest"
FIELDS = ("usage_user", "usage_system", "usage_idle", "usage_nice", "usage_iowait")
FIELDS += ("usage_irq", "usage_softirq", "usage_steal", "usage_guest", "usage_guest_nice")
INTERVAL_MS = 10_000
HOSTS_PER_BODY = 5
BEFORE = (
    "Before the ingest path wrote WAL records straight from the arrays (issue 11, item 6), the same "
    "command on the same machine (2026-11-30 04:12 UTC, load average 0.55) gave: VictoriaMetrics 1,470,220 "
    "points/s (929,907 per server CPU s); ours columnar 533,106 (0.36x; 458,525 per CPU s, 0.49x), rows "
    "250,174 (0.17x), native gRPC 616,957 (0.42x; 606,707 per CPU s, 0.65x)."
)
"""This benchmark's figures before the change it measures (see the report's last paragraph)."""

WORKER_START_SECONDS = 3.0
"""Time given to the service's JSON worker process (if a body started one) before the clock starts."""


@dataclass
class Data:
    """The points, as series: names, labels, and one shared time axis."""

    names: list[str]
    labels: list[dict[str, str]]
    ts: np.ndarray  # int64 ms, shared by every series
    values: np.ndarray  # (series, time) float64

    @property
    def points(self) -> int:
        """How many points in all."""
        return int(self.values.size)


def make_data(points: int, hosts: int, seed: int = 123) -> Data:
    """TSBS cpu-only shaped series holding `points` points in all (rounded to whole time steps)."""
    series = hosts * len(FIELDS)
    steps = max(1, points // series)
    rng = np.random.default_rng(seed)
    end = (int(time.time() * 1000) // INTERVAL_MS - 6) * INTERVAL_MS
    ts = end - INTERVAL_MS * np.arange(steps, dtype=np.int64)[::-1]
    walk = np.clip(50 + np.cumsum(rng.integers(-2, 3, size=(series, steps)), axis=1), 0, 100)
    names, labels = [], []
    for h in range(hosts):
        tags = {
            "hostname": f"host_{h}",
            "region": f"region-{h % 7}",
            "datacenter": f"dc-{h % 13}",
            "rack": str(h % 97),
            "os": f"Ubuntu{h % 3}",
            "arch": "x64" if h % 2 else "x86",
            "team": f"team-{h % 5}",
            "service": str(h % 19),
            "service_version": str(h % 2),
            "service_environment": ("production", "staging", "test")[h % 3],
        }
        for f in FIELDS:
            names.append(f"cpu_{f}")
            labels.append(tags)
    return Data(names, labels, ts, walk.astype(np.float64))


def _slices(data: Data, bodies: int) -> list[tuple[range, slice]]:
    """(series range, time slice) of each body: HOSTS_PER_BODY hosts x every field, a time slice."""
    per_body = HOSTS_PER_BODY * len(FIELDS)
    groups = [range(i, min(i + per_body, len(data.names))) for i in range(0, len(data.names), per_body)]
    chunks = max(1, bodies // len(groups))
    edges = np.linspace(0, len(data.ts), chunks + 1).astype(int)
    return [(g, slice(int(a), int(b))) for a, b in itertools.pairwise(edges) for g in groups]


def _values(row: np.ndarray) -> list[Any]:
    # The values are whole numbers: written as ints, as a client's JSON encoder writes them.
    return row.astype(np.int64).tolist()


def columnar_bodies(data: Data, bodies: int) -> list[bytes]:
    """`{"datasource", "series": [...]}` bodies."""
    out = []
    for group, span in _slices(data, bodies):
        ts = data.ts[span].tolist()
        series = [
            {
                "name": data.names[i],
                "labels": data.labels[i],
                "timestamps_ms": ts,
                "values": _values(data.values[i, span]),
            }
            for i in group
        ]
        out.append(json.dumps({"datasource": DATASOURCE, "series": series}, separators=(",", ":")).encode())
    return out


def row_bodies(data: Data, bodies: int) -> list[bytes]:
    """`{"datasource", "points": [...]}` bodies: one object per point, time-major as a scraper sends."""
    out = []
    for group, span in _slices(data, bodies):
        ts = data.ts[span].tolist()
        rows = [
            {"name": data.names[i], "value": v, "timestamp_ms": t, "labels": data.labels[i]}
            for j, t in enumerate(ts)
            for i in group
            for v in (int(data.values[i, span.start + j]),)
        ]
        out.append(json.dumps({"datasource": DATASOURCE, "points": rows}, separators=(",", ":")).encode())
    return out


def vm_bodies(data: Data, bodies: int) -> list[bytes]:
    """The same bodies as VictoriaMetrics `/api/v1/import` JSON lines: one line per series."""
    out = []
    for group, span in _slices(data, bodies):
        ts = data.ts[span].tolist()
        lines = [
            json.dumps(
                {
                    "metric": {"__name__": data.names[i], **data.labels[i]},
                    "values": _values(data.values[i, span]),
                    "timestamps": ts,
                },
                separators=(",", ":"),
            )
            for i in group
        ]
        out.append(("\n".join(lines) + "\n").encode())
    return out


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU time of pid and its descendants so far (from /proc/<pid>/stat)."""
    total, stack, tick = 0, [pid], os.sysconf("SC_CLK_TCK")
    while stack:
        current = stack.pop()
        try:
            with open(f"/proc/{current}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
        for task in Path(f"/proc/{current}/task").glob("*/children"):
            with contextlib.suppress(FileNotFoundError):
                stack.extend(int(x) for x in task.read_text().split())
    return total / tick


def grpc_requests(data: Data, bodies: int, rows: bool = False) -> list[bytes]:
    """The bodies as serialised `IngestMetricsRequest`s, for the gRPC loads: columnar `series`, or
    with `rows` one `Point` a point."""
    from platformq.analytics.v1 import common_pb2, realtime_service_pb2

    out = []
    for group, span in _slices(data, bodies):
        ts = data.ts[span].tolist()
        request = realtime_service_pb2.IngestMetricsRequest(datasource=DATASOURCE)
        for i in group:
            values = data.values[i, span].tolist()
            if rows:
                request.points.extend(
                    common_pb2.Point(name=data.names[i], labels=data.labels[i], timestamp_ms=t, value=v)
                    for t, v in zip(ts, values, strict=True)
                )
            else:
                request.series.add(name=data.names[i], labels=data.labels[i], timestamps_ms=ts, values=values)
        out.append(request.SerializeToString())
    return out


async def call_all(target: str, requests: list[bytes], concurrency: int) -> tuple[float, int, int]:
    """IngestMetrics for every serialised request, `concurrency` calls in flight on one channel:
    (seconds, accepted, failures)."""
    import grpc

    queue = list(reversed(requests))
    accepted = failures = 0
    options = [("grpc.max_send_message_length", 64 << 20), ("grpc.max_receive_message_length", 64 << 20)]
    async with grpc.aio.insecure_channel(target, options=options) as channel:
        # Requests go as they are: serialised before the clock starts, like the REST bodies.
        ingest = channel.unary_unary(
            "/platformq.analytics.v1.RealtimeService/IngestMetrics",
            request_serializer=lambda b: b,
            response_deserializer=_ingest_response,
        )

        async def worker() -> None:
            nonlocal accepted, failures
            while queue:
                body = queue.pop()
                try:
                    reply = await ingest(body, timeout=300)
                    accepted += reply.accepted
                except grpc.aio.AioRpcError:
                    failures += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        seconds = time.perf_counter() - t0
    return seconds, accepted, failures


def _ingest_response(data: bytes) -> Any:
    from platformq.analytics.v1 import realtime_service_pb2

    return realtime_service_pb2.IngestMetricsResponse.FromString(data)


@dataclass
class Load:
    """One timed load."""

    system: str
    body_form: str
    points: int
    bodies: int
    mib_sent: float
    seconds: float
    accepted: int
    failures: int
    peak_rss_mib: float | None
    cpu_seconds: float
    """CPU time the server processes spent during the load: steadier than wall time on a busy machine."""

    @property
    def points_per_s(self) -> float:
        """Points per second."""
        return self.points / self.seconds if self.seconds else 0.0


async def post_all(url: str, bodies: list[bytes], connections: int) -> tuple[float, int, int, list[str]]:
    """POST every body over `connections` keep-alive connections: (seconds, accepted, failures, first errors)."""
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for b in bodies:
        queue.put_nowait(b)
    accepted = failures = 0
    errors: list[str] = []
    connector = aiohttp.TCPConnector(limit=connections)
    headers = {"content-type": "application/json"}
    async with aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=900)
    ) as session:

        async def worker() -> None:
            nonlocal accepted, failures
            while not queue.empty():
                body = queue.get_nowait()
                async with session.post(url, data=body, headers=headers) as resp:
                    text = await resp.read()
                    if resp.status >= 300:
                        failures += 1
                        if len(errors) < 3:
                            errors.append(f"{resp.status} {text[:300]!r}")
                    elif text:
                        accepted += int(json.loads(text).get("accepted", 0))

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(connections)))
        seconds = time.perf_counter() - t0
    return seconds, accepted, failures, errors


def _start_stack(data_dir: Path, attempts: int = 2) -> tuple[subprocess.Popen, str, Path]:
    """`analytics up` on fresh ports, healthy; tried again once (the ports are picked free a moment
    before the stack binds them, and other work on a shared machine may take one in between)."""
    for attempt in range(attempts):
        try:
            return _start_stack_once(data_dir / f"try{attempt}")
        except RuntimeError as exc:
            print(f"the stack did not start (attempt {attempt + 1}): {exc}", file=sys.stderr)
    raise RuntimeError(f"the stack did not start in {attempts} attempts; logs under {data_dir}")


def _start_stack_once(data_dir: Path) -> tuple[subprocess.Popen, str, Path]:
    data_dir.mkdir(parents=True, exist_ok=True)
    log = data_dir / "stack.log"
    process, env = launch_stack(
        data_dir,
        log,
        SHUTDOWN_GRACE_SECONDS="1",
        # The live anomaly scorer follows every ingested point; this measures ingest alone.
        ANOMALY_STREAM="0",
        SELF_METRICS_INTERVAL_SECONDS="0",
    )
    base = f"http://127.0.0.1:{env['GATEWAY_PORT']}"
    try:
        wait_http_ok(f"{base}/health", process, log, "the stack")
    except NotReady:
        stop_process(process, 10)
        raise
    return process, base, log


async def load_ours(form: str, bodies: list[bytes], points: int, connections: int, work: Path) -> Load:
    """One body form into a fresh stack through Envoy."""
    data_dir = Path(tempfile.mkdtemp(prefix=f"rest-{form}-", dir=work))
    process, base, _ = _start_stack(data_dir)
    try:
        # One body first, so connection set-up and first-use costs are not timed. A body the compiled
        # fast path leaves to the Python parsers would also start the service's JSON worker process
        # (INGEST_JSON_WORKERS), which takes about a second to come up (a running server has it): the
        # clock starts after that time. These bodies the fast path takes, so no worker starts.
        await post_all(f"{base}/api/v1/metrics/ingest", bodies[:1], 1)
        await asyncio.sleep(WORKER_START_SECONDS)
        cpu0 = tree_cpu_seconds(process.pid)
        seconds, accepted, failures, errors = await post_all(
            f"{base}/api/v1/metrics/ingest", bodies[1:], connections
        )
        cpu = tree_cpu_seconds(process.pid) - cpu0
        rss = tree_rss_kib(process.pid)
    finally:
        stop_process(process, 30)
    if errors:
        print(f"{form}: {failures} failures, e.g. {errors}", file=sys.stderr)
    timed = points - points_in(bodies[0], form)
    return Load(
        "ours (POST /api/v1/metrics/ingest through Envoy)",
        form,
        timed,
        len(bodies) - 1,
        sum(len(b) for b in bodies[1:]) / 2**20,
        seconds,
        accepted,
        failures,
        mib(rss),
        cpu,
    )


async def load_grpc(requests: list[bytes], points: int, connections: int, work: Path) -> Load:
    """The columnar series as native gRPC IngestMetrics calls through the same Envoy (the reference)."""
    from platformq.analytics.v1 import realtime_service_pb2

    data_dir = Path(tempfile.mkdtemp(prefix="rest-grpc-", dir=work))
    process, base, _ = _start_stack(data_dir)
    target = base.removeprefix("http://")
    try:
        await call_all(target, requests[:1], 1)
        cpu0 = tree_cpu_seconds(process.pid)
        seconds, accepted, failures = await call_all(target, requests[1:], connections)
        cpu = tree_cpu_seconds(process.pid) - cpu0
        rss = tree_rss_kib(process.pid)
    finally:
        stop_process(process, 30)
    first = realtime_service_pb2.IngestMetricsRequest.FromString(requests[0])
    timed = points - sum(len(s.values) for s in first.series) - len(first.points)
    return Load(
        "ours (IngestMetrics, native gRPC through Envoy)",
        "rows (protobuf)" if first.points else "columnar (protobuf)",
        timed,
        len(requests) - 1,
        sum(len(r) for r in requests[1:]) / 2**20,
        seconds,
        accepted,
        failures,
        mib(rss),
        cpu,
    )


def points_in(body: bytes, form: str) -> int:
    """How many points a body of `form` carries: "rows", "columnar", or "vm" (/api/v1/import JSON
    lines)."""
    if form == "vm":
        return sum(len(json.loads(line)["values"]) for line in body.splitlines())
    doc = json.loads(body)
    return len(doc["points"]) if form == "rows" else sum(len(s["values"]) for s in doc["series"])


async def load_vm(bodies: list[bytes], points: int, connections: int, work: Path) -> Load:
    """The same series into a fresh VictoriaMetrics through /api/v1/import."""
    vm_dir = Path(tempfile.mkdtemp(prefix="rest-vm-", dir=work))
    vm = victoria.VictoriaMetrics(vm_dir / "data", vm_dir / "vm.log")
    vm.start()
    try:
        await vm.wait_ready()
        await post_all(f"{vm.url}/api/v1/import", bodies[:1], 1)
        cpu0 = tree_cpu_seconds(vm.pid)
        t0 = time.perf_counter()
        _, _, failures, errors = await post_all(f"{vm.url}/api/v1/import", bodies[1:], connections)
        async with aiohttp.ClientSession() as session, session.get(f"{vm.url}/internal/force_flush") as resp:
            await resp.read()
        seconds = time.perf_counter() - t0
        cpu = tree_cpu_seconds(vm.pid) - cpu0
        rss = proc_status_kib(vm.pid, "VmRSS")
    finally:
        vm.stop()
    if errors:
        print(f"vm: {failures} failures, e.g. {errors}", file=sys.stderr)
    timed = points - points_in(bodies[0], "vm")
    return Load(
        "VictoriaMetrics (/api/v1/import, JSON lines)",
        "columnar (one line per series)",
        timed,
        len(bodies) - 1,
        sum(len(b) for b in bodies[1:]) / 2**20,
        seconds,
        timed if not failures else 0,
        failures,
        mib(rss),
        cpu,
    )


async def run(
    points: int, bodies: int, connections: int, forms: list[str], with_vm: bool, rounds: int = 1
) -> dict[str, Any]:
    """Every load of the run, and its facts."""
    data = make_data(points, hosts=max(1, min(100, points // (len(FIELDS) * 100))))
    encoded: dict[str, list[bytes]] = {}
    t0 = time.perf_counter()
    if "columnar" in forms:
        encoded["columnar"] = columnar_bodies(data, bodies)
    if "rows" in forms:
        encoded["rows"] = row_bodies(data, bodies)
    if with_vm:
        encoded["vm"] = vm_bodies(data, bodies)
    if "grpc" in forms:
        encoded["grpc"] = grpc_requests(data, bodies)
    if "grpc-rows" in forms:
        encoded["grpc-rows"] = grpc_requests(data, bodies, rows=True)
    encode_s = time.perf_counter() - t0
    load_start = os.getloadavg()[0]
    loads: list[Load] = []
    with tempfile.TemporaryDirectory(prefix="bench-ingest-rest-") as tmp:
        work = Path(tmp)
        # Rounds alternate the systems, so that a busy spell of the shared machine falls on each.
        for round_ in range(rounds):
            if with_vm:
                loads.append(await load_vm(encoded["vm"], data.points, connections, work))
                print(f"round {round_ + 1}: vm: {loads[-1].points_per_s:,.0f} points/s", flush=True)
            for form in forms:
                if form.startswith("grpc"):
                    loads.append(await load_grpc(encoded[form], data.points, connections, work))
                else:
                    loads.append(await load_ours(form, encoded[form], data.points, connections, work))
                print(f"round {round_ + 1}: {form}: {loads[-1].points_per_s:,.0f} points/s", flush=True)
    return {
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "load_average": os.getloadavg()[0],
        "points": data.points,
        "series": len(data.names),
        "bodies": bodies,
        "connections": connections,
        "rounds": rounds,
        "encode_seconds": encode_s,
        "vm_version": victoria.version() if with_vm else None,
        "loads": [{**asdict(x), "points_per_s": x.points_per_s} for x in loads],
        "load_average_start": load_start,
    }


def _median(xs: list[float]) -> float:
    return float(np.median(xs)) if xs else 0.0


def render(r: dict[str, Any]) -> str:
    """The docs section: per system and body form, the median of the rounds."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for x in r["loads"]:
        groups.setdefault((x["system"], x["body_form"]), []).append(x)
    vm = next((g for (system, _), g in groups.items() if system.startswith("Victoria")), None)
    vm_rate = _median([x["points_per_s"] for x in vm]) if vm else 0.0
    vm_cpu = _median([x["cpu_seconds"] for x in vm]) if vm else 0.0
    rounds = r.get("rounds", 1)
    lines = [
        SECTION,
        "",
        f"`python -m benchmarks.ingest_rest` (part of `make bench`), run {r['when']} on {r['machine']} "
        f"(1-minute load average {r['load_average_start']:.2f} at the start and {r['load_average']:.2f} at the "
        "end: the machine is shared, so wall-clock rates are noisy; compare the rows of one run, and the "
        "server CPU time, which other processes disturb less). "
        f"{r['points']:,} points of {r['series']:,} TSBS cpu-only shaped series in {r['bodies']} bodies "
        f"encoded before the clock started ({r['encode_seconds']:.1f} s, not counted), "
        f"{r['connections']} keep-alive connections on loopback. {rounds} round{'s' if rounds > 1 else ''}, "
        "each loading every system and form once into a fresh instance in turn; the table gives each one's "
        "median, the rates of every round beside it, and each round's rate over VictoriaMetrics' in the "
        "same round. The first body of each load is sent "
        "alone before the clock starts (connection set-up), so the timed loads carry one body fewer; "
        f"then the clock waits {WORKER_START_SECONDS:g} s on our REST loads, the time a JSON worker "
        "process takes to start for a body the compiled fast path leaves to the Python parsers (these "
        "bodies it takes: no worker starts).",
        "",
        "| system | body form | points | bodies | MiB sent | seconds | points/s | each round (K points/s) | "
        "vs VictoriaMetrics | each round vs VictoriaMetrics' | server CPU s | points per server CPU s | "
        "vs VictoriaMetrics (CPU) | failed requests | RSS MiB after |",
        "|---|---|---:|---:|---:|---:|---:|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for (system, form), runs in groups.items():
        first = runs[0]
        rate = _median([x["points_per_s"] for x in runs])
        cpu = _median([x["cpu_seconds"] for x in runs])
        each = ", ".join(f"{x['points_per_s'] / 1000:,.0f}" for x in runs)
        ratio = f"{rate / vm_rate:.2f}x" if vm_rate else ""
        per_round = (
            ", ".join(f"{x['points_per_s'] / v['points_per_s']:.2f}x" for x, v in zip(runs, vm, strict=False))
            if vm and vm is not runs
            else ""
        )
        per_cpu = first["points"] / cpu if cpu else 0.0
        vm_per_cpu = vm[0]["points"] / vm_cpu if vm and vm_cpu else 0.0
        cpu_ratio = f"{per_cpu / vm_per_cpu:.2f}x" if vm_per_cpu and per_cpu else ""
        rss = max((x["peak_rss_mib"] for x in runs if x["peak_rss_mib"] is not None), default=None)
        lines.append(
            f"| {system} | {form} | {first['points']:,} | {first['bodies']} | {first['mib_sent']:,.1f} | "
            f"{_median([x['seconds'] for x in runs]):.2f} | {rate:,.0f} | {each} | {ratio} | {per_round} | "
            f"{cpu:.2f} | {per_cpu:,.0f} | {cpu_ratio} | {sum(x['failures'] for x in runs)} | "
            f"{'' if rss is None else f'{rss:,.0f}'} |"
        )
    lines += [
        "",
        "Ours: time from the first POST to the last answer; each answer comes after the batch is "
        "fsynced in the WAL (durable) and in the hot tier (queryable). VictoriaMetrics: first POST "
        f"to the end of `/internal/force_flush` ({r['vm_version'] or 'not run'}). RSS: the stack's "
        "processes (Envoy and `serve all`) after the load, the largest of the rounds; VictoriaMetrics' "
        "process. Server CPU: user + system time of those processes during the load (Envoy included for "
        "ours), the median of the rounds.",
        "",
        BEFORE,
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark; print the section, and with --docs write it into docs/benchmarks.md."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--points", type=int, default=1_000_000)
    parser.add_argument("--bodies", type=int, default=200)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument(
        "--forms",
        default="columnar,rows,grpc,grpc-rows",
        help="loads of ours: columnar, rows (REST), grpc (the reference), grpc-rows (gRPC, one Point a point)",
    )
    parser.add_argument("--skip-vm", action="store_true", help="leave VictoriaMetrics out")
    parser.add_argument("--rounds", type=int, default=3, help="loads of each system and form, alternated")
    parser.add_argument("--quick", action="store_true", help="100,000 points in 40 bodies, one round")
    add_docs_flag(parser)
    args = parser.parse_args(argv)
    if args.quick:
        args.points, args.bodies, args.rounds = 100_000, 40, 1
    forms = [f.strip() for f in args.forms.split(",") if f.strip()]
    result = asyncio.run(
        run(args.points, args.bodies, args.connections, forms, not args.skip_vm, max(1, args.rounds))
    )
    publish(SECTION, render(result), args.docs)


if __name__ == "__main__":
    main()
