"""High cardinality and churn: N series of short-lived simulations, ours beside VictoriaMetrics.

    .venv/bin/python -m benchmarks.churn [--series 20000,200000,1000000] [--docs] [--skip-vm]

Tried as a new user would: the stack is started as `make up` starts it (`analytics up`: Envoy and
`serve all`, demo and live anomaly scoring off) and fed through the REST gateway
(`POST /api/v1/metrics/ingest`, columnar `series` JSON, 1,000 series a body, 4 connections).
Series carry `simulation_id` and `service_name` (10 services a simulation) and 10 points 10 s
apart; simulations start one after another over two hours and stop after their 10 points, so old
series stop and new ones start all along (churn). VictoriaMetrics then gets the same series through
`/api/v1/import` (JSON lines) in the same session, alone on the machine. Ours is timed from after a
warm-up body of another datasource and WORKER_START_SECONDS, the time a REST body worker process
takes to start for a body the compiled fast path leaves to the Python parsers (these bodies it
takes, so none starts; a running server would have it).

Per N, per system: ingest points/s (first send to last acknowledgement; VictoriaMetrics' force_flush
included), resident memory after ingest and settled (SETTLE_S after the data is stored), metadata
latency (ours: GetMetadata; VictoriaMetrics: the values of `simulation_id` over the data span),
`sum by service_name` over the whole span (60 s steps) and one series' 10 s averages over its lifetime; p50 of several runs, each uncached (ours:
a distinct window per run; VictoriaMetrics: nocache=1). The sum-by answer is checked against the
total of what was sent, on both systems.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

from benchmarks import victoria
from benchmarks.procs import (
    DATA_DIR,
    Latency,
    free_port,
    launch_stack,
    proc_status_kib,
    services_pid,
    tree_rss_kib,
    wait_http_ok,
)
from benchmarks.report import add_docs_flag, machine, publish
from libs.memory import TRIM_INTERVAL_SECONDS
from libs.timeparse import format_time_ms

SECTION = "## High cardinality and churn"
DATASOURCE = "bench_churn"
WARMUP_DATASOURCE = "bench_churn_warmup"
WORKER_START_SECONDS = 3.0
SETTLE_S = TRIM_INTERVAL_SECONDS + 2
"""How long after the data is stored memory is read again: a heap-trim round of the serving process
(libs/memory.py) later; VictoriaMetrics gets the same time."""
"""Time given to the service's JSON worker process (if a body started one) before the clock starts."""
METRIC = "sim_load"
SERVICES = 10
POINTS = 10
INTERVAL_MS = 10_000
SPAN_MS = 2 * 3_600_000
SERIES_PER_BODY = 1_000
CONCURRENCY = 4
RUNS = 7
BUDGET_S = 60.0
"""A measurement stops after this many seconds once it has 3 runs (a slow query at 1M series)."""
ISSUE_BEFORE = {
    20_000: "318 K/s, 298 MiB, 304 ms, 334 ms, 12 ms",
    200_000: "232 K/s, 1,449 MiB, 9,633 ms, 7,652 ms, 22 ms",
}
"""Our figures before this work, as issue 11 measured them (same scenario, same machine)."""
BEFORE_INGEST_REWORK = {
    20_000: "148 K/s, 340 MiB (+92)",
    200_000: "210 K/s, 520 MiB (+278)",
    1_000_000: "168 K/s, 908 MiB (+656)",
}
"""Our ingest rate and RSS in this benchmark's run of 2026-11-30 03:00 UTC, before the ingest path
wrote WAL records from the arrays and stopped keeping Python objects per series (issue 11, item 4);
VictoriaMetrics then: 385, 606 and 669 K/s."""
_T0 = time.perf_counter()


def say(text: str) -> None:
    """Progress on stdout with the elapsed time."""
    print(f"[{time.perf_counter() - _T0:7.1f}s] {text}", flush=True)


@dataclass(frozen=True)
class Churn:
    """The data set: series i belongs to simulation i // SERVICES, which lives POINTS steps."""

    n_series: int
    start_ms: int

    @property
    def n_sims(self) -> int:
        return -(-self.n_series // SERVICES)

    def sim_start(self, sim: int) -> int:
        # Starts spread evenly over the span: at any instant a small share of simulations is alive.
        return self.start_ms + (sim * (SPAN_MS - POINTS * INTERVAL_MS) // self.n_sims) // 1000 * 1000

    @property
    def end_ms(self) -> int:
        return self.start_ms + SPAN_MS

    def series(self, i: int) -> tuple[dict[str, str], list[int], list[float]]:
        sim = i // SERVICES
        t0 = self.sim_start(sim)
        labels = {"simulation_id": f"sim-{sim:07d}", "service_name": f"svc-{i % SERVICES}"}
        return (
            labels,
            [t0 + k * INTERVAL_MS for k in range(POINTS)],
            [float((i + k) % 97) for k in range(POINTS)],
        )

    def total(self) -> float:
        return float(sum((i + k) % 97 for i in range(self.n_series) for k in range(POINTS)))

    def ours_bodies(self, datasource: str = DATASOURCE) -> list[bytes]:
        bodies = []
        for first in range(0, self.n_series, SERIES_PER_BODY):
            series = []
            for i in range(first, min(first + SERIES_PER_BODY, self.n_series)):
                labels, ts, values = self.series(i)
                series.append({"name": METRIC, "labels": labels, "timestamps_ms": ts, "values": values})
            bodies.append(
                json.dumps({"datasource": datasource, "series": series}, separators=(",", ":")).encode()
            )
        return bodies

    def vm_bodies(self) -> list[bytes]:
        bodies = []
        for first in range(0, self.n_series, SERIES_PER_BODY):
            lines = []
            for i in range(first, min(first + SERIES_PER_BODY, self.n_series)):
                labels, ts, values = self.series(i)
                metric = {"__name__": METRIC, **labels}
                lines.append(
                    json.dumps({"metric": metric, "values": values, "timestamps": ts}, separators=(",", ":"))
                )
            bodies.append(("\n".join(lines) + "\n").encode())
        return bodies


async def _post_all(url: str, bodies: list[bytes], check: bool) -> tuple[float, int]:
    """POST every body over CONCURRENCY connections: (seconds, failed requests)."""
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for body in bodies:
        queue.put_nowait(body)
    failures = 0
    connector = aiohttp.TCPConnector(limit=CONCURRENCY)
    async with aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=900)
    ) as session:

        async def worker() -> None:
            nonlocal failures
            while not queue.empty():
                body = queue.get_nowait()
                async with session.post(url, data=body, headers={"content-type": "application/json"}) as resp:
                    text = await resp.read()
                    # Our answer counts rejected points (proto3 JSON leaves a zero count out).
                    if resp.status >= 300 or (check and int(json.loads(text).get("rejected", 0))):
                        failures += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
        return time.perf_counter() - t0, failures


# --- ours -----------------------------------------------------------------------------------------


class Stack:
    """`analytics up` (Envoy and `serve all`) on free loopback ports."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.log = data_dir / "stack.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.proc, _ = launch_stack(self.data_dir, self.log, self.port, ANOMALY_STREAM="0")
        await asyncio.to_thread(wait_http_ok, f"{self.base}/health", self.proc, self.log, "the stack", 120)

    def services_pid(self) -> int:
        """The Python process serving the four services (the launcher's non-Envoy child)."""
        assert self.proc is not None
        return services_pid(self.proc.pid)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=600)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


async def _timed_json(
    session: aiohttp.ClientSession, method: str, url: str, body: Any = None
) -> tuple[float, Any]:
    t0 = time.perf_counter()
    async with session.request(method, url, json=body) as resp:
        payload = await resp.json()
        if resp.status != 200:
            raise RuntimeError(f"{method} {url}: {resp.status} {payload}")
    return time.perf_counter() - t0, payload


async def run_ours(data: Churn, work: Path) -> dict[str, Any]:
    bodies = data.ours_bodies()
    stack = Stack(work / "ours")
    await stack.start()
    try:
        idle_kib = tree_rss_kib(stack.services_pid())
        # One body of another datasource first. A body the compiled fast path leaves to the Python
        # parsers would also start the service's JSON worker process (INGEST_JSON_WORKERS), which
        # takes about a second to come up (a running server has it): the clock starts after that
        # time. These bodies the fast path takes, so no worker starts.
        warm = Churn(SERIES_PER_BODY, data.start_ms).ours_bodies(WARMUP_DATASOURCE)
        await _post_all(f"{stack.base}/api/v1/metrics/ingest", warm, check=True)
        await asyncio.sleep(WORKER_START_SECONDS)
        say(f"ours: ingesting {data.n_series * POINTS:,} points through the gateway")
        seconds, failures = await _post_all(f"{stack.base}/api/v1/metrics/ingest", bodies, check=True)
        del bodies
        pid = stack.services_pid()
        out: dict[str, Any] = {
            "ingest_points_per_s": data.n_series * POINTS / seconds,
            "ingest_failures": failures,
            # The serving process and any JSON worker process (Envoy apart).
            "rss_mib": tree_rss_kib(pid) / 1024,
            "hwm_mib": (proc_status_kib(pid, "VmHWM") or 0) / 1024,
            "idle_rss_mib": idle_kib / 1024,
        }
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as session:
            # VictoriaMetrics is measured and queried after its force_flush; ours once the hot tier
            # has written this datasource's points to segments (the store's own gauge says when),
            # so both answer from their stored parts, and the figures do not depend on how much of
            # the ingest a flush had reached when the clock stopped.
            waited = await _until_flushed(session, stack.base)
            if waited is not None:
                out["flushed_after_s"] = waited
                await asyncio.sleep(SETTLE_S)
                out["settled_rss_mib"] = tree_rss_kib(pid) / 1024
                out["anon_mib"] = tree_rss_kib(pid, "RssAnon") / 1024
            url = f"{stack.base}/api/v1/analytics/metadata/{DATASOURCE}"
            first, meta = await _timed_json(session, "GET", url)
            out["metadata_first_ms"] = first * 1000
            out["metadata"] = _p50([(await _timed_json(session, "GET", url))[0] for _ in range(RUNS)])
            got = {m["name"]: int(m["series_count"]) for m in meta.get("metrics", [])}
            out["metadata_ok"] = (
                got == {METRIC: data.n_series} and int(meta["point_count"]) == data.n_series * POINTS
            )
            try:
                await _ours_queries(session, stack.base, data, out)
            except RuntimeError as exc:
                # A query the service refused or gave up on (its deadline): reported as such.
                out["query_error"] = str(exc)[:200]
    finally:
        stack.stop()
    return out


FLUSH_WAIT_S = 90.0
"""How long to wait for the service to flush the ingested points (HOT_FLUSH_SECONDS is 30)."""


async def _until_flushed(session: aiohttp.ClientSession, base: str) -> float | None:
    """Seconds until `analytics_storage_hot_points` of the datasource reads 0 in the service's
    Prometheus export (polled), or None after FLUSH_WAIT_S."""
    t0 = time.perf_counter()
    line = re.compile(
        r'^analytics_storage_hot_points\{[^}]*datasource="' + re.escape(DATASOURCE) + r'"[^}]*\} (\S+)$', re.M
    )
    while time.perf_counter() - t0 < FLUSH_WAIT_S:
        async with session.get(f"{base}/api/v1/export/prometheus") as resp:
            found = line.search(await resp.text())
        if found and float(found.group(1)) == 0:
            return time.perf_counter() - t0
        await asyncio.sleep(0.5)
    return None


async def _ours_queries(session: aiohttp.ClientSession, base: str, data: Churn, out: dict[str, Any]) -> None:
    """sum by service_name, then one series: p50 of uncached runs, into `out`."""
    sums: list[float] = []
    total = None
    for r in _runs(sums):
        # A distinct window start per run keeps the answer out of the cache.
        body = {
            "datasource": DATASOURCE,
            "metrics": [METRIC],
            "aggregation": "sum",
            "group_by": ["service_name"],
            "start": format_time_ms(data.start_ms - r * 1000),
            "end": format_time_ms(data.end_ms),
            "step": "60s",
        }
        s, answer = await _timed_json(session, "POST", f"{base}/api/v1/query", body)
        sums.append(s)
        total = sum(p["value"] for series in answer["series"] for p in series["points"])
    out["sum_by"] = _p50(sums)
    out["sum_by_ok"] = total == data.total()
    ones: list[float] = []
    for r in _runs(ones):
        i = (r * 7_919) % data.n_series
        labels, ts, _ = data.series(i)
        body = {
            "datasource": DATASOURCE,
            "metrics": [METRIC],
            "aggregation": "avg",
            "filters": [{"label": k, "op": "=", "value": v} for k, v in labels.items()],
            "start": format_time_ms(ts[0]),
            "end": format_time_ms(ts[-1] + INTERVAL_MS),
            "step": "10s",
        }
        s, answer = await _timed_json(session, "POST", f"{base}/api/v1/query", body)
        ones.append(s)
        if len(answer["series"]) != 1 or len(answer["series"][0]["points"]) != POINTS:
            raise RuntimeError(f"one-series query answered {answer}")
    out["one_series"] = _p50(ones)


# --- VictoriaMetrics ------------------------------------------------------------------------------


async def run_vm(data: Churn, work: Path) -> dict[str, Any]:
    bodies = data.vm_bodies()
    # Its default refuses a query that reads more than 300,000 series; ours bounds the groups an
    # answer holds, not the series read (and the 30 s deadline), so both get room for the same query.
    vm = victoria.VictoriaMetrics(work / "vm", work / "vm.log", ("-search.maxUniqueTimeseries=10000000",))
    vm.start()
    try:
        await vm.wait_ready()
        idle_kib = proc_status_kib(vm.pid, "VmRSS") or 0
        say(f"VictoriaMetrics: importing {data.n_series * POINTS:,} points")
        seconds, failures = await _post_all(f"{vm.url}/api/v1/import", bodies, check=False)
        del bodies
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as session:
            t0 = time.perf_counter()
            async with session.get(f"{vm.url}/internal/force_flush") as resp:
                await resp.read()
            seconds += time.perf_counter() - t0
            out: dict[str, Any] = {
                "ingest_points_per_s": data.n_series * POINTS / seconds,
                "ingest_failures": failures,
                "rss_mib": (proc_status_kib(vm.pid, "VmRSS") or 0) / 1024,
                "hwm_mib": (proc_status_kib(vm.pid, "VmHWM") or 0) / 1024,
                "idle_rss_mib": idle_kib / 1024,
            }
            await asyncio.sleep(SETTLE_S)
            out["settled_rss_mib"] = (proc_status_kib(vm.pid, "VmRSS") or 0) / 1024
            out["anon_mib"] = (proc_status_kib(vm.pid, "RssAnon") or 0) / 1024
            start_s, end_s = data.start_ms / 1000, data.end_ms / 1000
            url = f"{vm.url}/api/v1/label/simulation_id/values"
            params = {"start": f"{start_s:.0f}", "end": f"{end_s:.0f}"}
            labels = []
            for _ in range(RUNS + 1):
                t0 = time.perf_counter()
                async with session.get(url, params=params) as resp:
                    values = (await resp.json())["data"]
                labels.append(time.perf_counter() - t0)
            out["metadata_first_ms"] = labels[0] * 1000
            out["metadata"] = _p50(labels[1:])
            out["metadata_ok"] = len(values) == data.n_sims
            try:
                await _vm_queries(vm.url, data, out)
            except RuntimeError as exc:
                out["query_error"] = str(exc)[:200]
    finally:
        vm.stop()
    return out


async def _vm_queries(url: str, data: Churn, out: dict[str, Any]) -> None:
    """The same two queries in PromQL: p50 of uncached runs, into `out`."""
    start_s, end_s = data.start_ms / 1000, data.end_ms / 1000
    async with victoria.PromQuerier(url) as q:
        sums = []
        for r in _runs(sums):
            s, answer = await q.query_range(
                f"sum by (service_name) (sum_over_time({METRIC}[60s]))", start_s - r + 60, end_s, 60
            )
            sums.append(s)
        out["sum_by"] = _p50(sums)
        _, whole = await q.query_range(
            f"sum(sum_over_time({METRIC}[{SPAN_MS // 1000 + 60}s]))", end_s, end_s, 60
        )
        result = whole["data"]["result"]
        out["sum_by_ok"] = bool(result) and float(result[0]["values"][-1][1]) == data.total()
        ones = []
        for r in _runs(ones):
            i = (r * 7_919) % data.n_series
            lab, ts, _ = data.series(i)
            selector = ",".join(f'{k}="{v}"' for k, v in lab.items())
            s, answer = await q.query_range(
                f"avg_over_time({METRIC}{{{selector}}}[10s])", ts[0] / 1000, ts[-1] / 1000, 10
            )
            ones.append(s)
            if len(answer["data"]["result"]) != 1:
                raise RuntimeError(f"VictoriaMetrics' one-series query answered {answer}")
        out["one_series"] = _p50(ones)


def _runs(seconds: list[float]) -> Iterator[int]:
    """Run numbers: RUNS of them, or fewer (at least 3) once `seconds` add up to BUDGET_S."""
    for r in range(RUNS):
        if r >= 3 and sum(seconds) > BUDGET_S:
            return
        yield r


def _p50(seconds: list[float]) -> float:
    lat = Latency.of_seconds(seconds)
    assert lat is not None
    return lat.p50_ms


# --- report ---------------------------------------------------------------------------------------


def _ms(x: dict[str, Any], key: str) -> str:
    return f"{x[key]:,.1f} ms" if key in x else "failed"


def _fig(x: dict[str, Any]) -> str:
    if "error" in x:
        return f"failed: {x['error']}"
    checks = x.get("metadata_ok") and x.get("sum_by_ok", True)
    notes = ("" if checks else " (answer check failed)") + (
        f" ({x['query_error']})" if "query_error" in x else ""
    )
    settled = (
        f"; settled {x['settled_rss_mib']:,.0f} MiB (+{x['settled_rss_mib'] - x['idle_rss_mib']:,.0f}), "
        f"anonymous {x['anon_mib']:,.0f} MiB"
        if "settled_rss_mib" in x
        else ""
    )
    return (
        f"{x['ingest_points_per_s'] / 1000:,.0f} K/s, {x['rss_mib']:,.0f} MiB "
        f"(+{x['rss_mib'] - x['idle_rss_mib']:,.0f}{settled}), {x['metadata']:,.1f} ms "
        f"(first {x['metadata_first_ms']:,.0f}), {_ms(x, 'sum_by')}, {_ms(x, 'one_series')}{notes}"
    )


def render(r: dict[str, Any]) -> str:
    """The docs section."""
    lines = [
        SECTION,
        "",
        "`python -m benchmarks.churn` (part of `make bench`): N series of short-lived simulations "
        f"(`simulation_id`, `service_name`: {SERVICES} services a simulation, {POINTS} points 10 s apart; "
        "simulations start one after another over two hours and stop after their points, so series come "
        "and go all along), sent through the REST gateway as columnar JSON "
        f"({SERIES_PER_BODY:,} series a body, {CONCURRENCY} connections), then to VictoriaMetrics through "
        "`/api/v1/import` in the same session, one system at a time. Per system: ingest points/s (VM's "
        "force_flush included; ours timed from after one warm-up body of another datasource and "
        f"{WORKER_START_SECONDS:g} s, the time a REST body worker process takes to start for a body the "
        "compiled fast path leaves to Python: these it takes, so none starts), resident memory after "
        "ingest (our services process and any JSON worker process, Envoy apart; VictoriaMetrics' after "
        "its force_flush; in brackets what the ingest added to the idle process, and the settled memory: "
        f"{SETTLE_S:g} s after our hot tier has written the points to segments and after VictoriaMetrics' "
        "force_flush, with the anonymous part of it, RssAnon: what is not pages of mapped files, which "
        "the kernel can drop and read again; the queries below run after that on both), "
        "metadata p50 (ours: GetMetadata with per-metric series and point counts and label "
        "cardinalities; VM: the values of `simulation_id`; the first call in brackets), `sum by "
        "service_name` over the two hours in 60 s steps, and one series' 10 s averages; p50 of "
        f"{RUNS} uncached runs (at least 3, fewer than {RUNS} once they take {BUDGET_S:.0f} s). Both answers are checked (series and point counts, the sum-by total "
        "against what was sent). Timings on this shared 2-core machine are noisy; compare the columns of "
        f"one run. Machine: {r['machine']}; run {r['when']}.",
        "",
        "| N series | ours: ingest, RSS, metadata, sum by service_name, one series | VictoriaMetrics | "
        "ours before (issue 11) | ours before the ingest rework (2026-11-30 03:00 UTC): ingest, RSS |",
        "|---|---|---|---|---|",
    ]
    for row in r["rows"]:
        vm = _fig(row["vm"]) if row.get("vm") else "not run"
        lines.append(
            f"| {row['n']:,} | {_fig(row['ours'])} | {vm} | {ISSUE_BEFORE.get(row['n'], '-')} | "
            f"{BEFORE_INGEST_REWORK.get(row['n'], '-')} |"
        )
    lines.append("")
    return "\n".join(lines)


async def _run(sizes: list[int], skip_vm: bool) -> dict[str, Any]:
    rows = []
    for n in sizes:
        work = DATA_DIR / "churn" / str(n)
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        # Ends a few minutes ago: inside the default retention and the ingest time bounds.
        end = (int(time.time() * 1000) - 300_000) // 60_000 * 60_000
        data = Churn(n, end - SPAN_MS)
        row: dict[str, Any] = {"n": n}
        say(f"N = {n:,}")
        try:
            row["ours"] = await run_ours(data, work)
        except (RuntimeError, TimeoutError, aiohttp.ClientError) as exc:
            row["ours"] = {"error": str(exc).splitlines()[0][:200]}
        say(f"ours: {row['ours']}")
        if not skip_vm and victoria.binary() is not None:
            try:
                row["vm"] = await run_vm(data, work)
            except (RuntimeError, TimeoutError, aiohttp.ClientError) as exc:
                row["vm"] = {"error": str(exc).splitlines()[0][:200]}
            say(f"VictoriaMetrics: {row['vm']}")
        shutil.rmtree(work, ignore_errors=True)
        rows.append(row)
    return {
        "rows": rows,
        "machine": machine(),
        "when": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "victoria_metrics": victoria.version(),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", default="20000,200000,1000000", help="comma-separated N")
    parser.add_argument("--skip-vm", action="store_true", help="ours only")
    add_docs_flag(parser)
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.series.split(",") if s]
    results = asyncio.run(_run(sizes, args.skip_vm))
    publish(SECTION, render(results), args.docs, results, "churn")


if __name__ == "__main__":
    main()
