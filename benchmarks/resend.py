"""Resent data (a client's retries, corrections sent later), beside VictoriaMetrics given the same.

    .venv/bin/python -m benchmarks.resend [--docs] [--points 1000000] [--bodies 200] [--every 5]

A client that times out sends its batch again; an agent that lost its connection resends what it
buffered; a backfill corrects values already stored. Each repeats (series, timestamp) keys the
store already holds, which ours answers with one point per key, the last write winning, from the
acknowledgement on (docs/storage.md). This measures what that costs, through the stack as
`make up` runs it (`analytics up`: Envoy and `serve all`, REST columnar bodies, 4 connections):

1. append: every body once, in time order (the TSBS cpu-only shaped data of
   `benchmarks.ingest_rest`);
2. resend, recent: every `--every`-th body again, at once (ours holds those points in its hot tier);
3. resend, stored: the stack is stopped (a clean stop flushes the hot tier into segments) and
   started again on the same DATA_DIR, and the same bodies are sent once more (ours moves the
   segments that hold the keys back to the hot tier, or rewrites those larger than a flush).

VictoriaMetrics takes the same bodies as `/api/v1/import` JSON lines in the same phases (its
`/internal/force_flush` before phase 3, and each phase's time ends after one), twice: with its
default flags, and with `-dedup.minScrapeInterval=1ms` (one sample per series and millisecond). After each phase the
sum of one metric over the whole range is asked of each system (ours: `POST /api/v1/query`;
VictoriaMetrics: `sum(sum_over_time(...))`) and compared with the sum of the distinct points. The
first body of each of our phases 1 and 3 is sent before the clock starts (connection set-up, and
the time a REST body worker would take to start).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp

from benchmarks import victoria
from benchmarks.ingest_rest import (
    DATASOURCE,
    INTERVAL_MS,
    WORKER_START_SECONDS,
    Data,
    columnar_bodies,
    make_data,
    points_in,
    post_all,
    tree_cpu_seconds,
    vm_bodies,
)
from benchmarks.procs import launch_stack, stop_process, wait_http_ok
from benchmarks.report import add_docs_flag, machine, publish
from libs.timeparse import format_time_ms

SECTION = "## Resent data (retries and corrections)"
METRIC = "cpu_usage_user"
PHASES = ("append", "resend, recent", "resend, stored")
BEFORE = (
    "Before a resent batch searched only the hot chunks of its own time and matched keys by binary "
    "search (issue 11, commit 0565e6e), the same command on the same machine (2026-12-01 01:20 UTC, ours "
    "only) gave: append 1,498,519 points/s, resend while recent 42,699, resend after the flush 8,308."
)
"""This benchmark's figures before the change it measures (the report's last paragraph)."""


@dataclass
class Phase:
    """One timed phase of one system."""

    system: str
    phase: str
    bodies: int
    points: int
    seconds: float
    cpu_seconds: float
    failures: int
    answer: float | None
    """The metric's sum over the whole range after the phase."""

    @property
    def points_per_s(self) -> float:
        return self.points / self.seconds if self.seconds else 0.0


def expected_sum(data: Data) -> float:
    """The sum of METRIC's distinct points."""
    rows = [i for i, name in enumerate(data.names) if name == METRIC]
    return float(data.values[rows].sum())


class OurStack:
    """`analytics up` on one DATA_DIR, which survives a stop and start."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.process: Any = None
        self.base = ""

    def start(self) -> None:
        log = self.data_dir.parent / f"{self.data_dir.name}.log"
        self.process, env = launch_stack(
            self.data_dir,
            log,
            SHUTDOWN_GRACE_SECONDS="5",
            ANOMALY_STREAM="0",
            SELF_METRICS_INTERVAL_SECONDS="0",
        )
        self.base = f"http://127.0.0.1:{env['GATEWAY_PORT']}"
        wait_http_ok(f"{self.base}/health", self.process, log, "the stack")

    def stop(self) -> None:
        stop_process(self.process, 60)

    async def total(self, data: Data) -> float:
        body = {
            "datasource": DATASOURCE,
            "metrics": [METRIC],
            "aggregation": "sum",
            "start": format_time_ms(int(data.ts[0])),
            "end": format_time_ms(int(data.ts[-1]) + INTERVAL_MS),
            "step": "1h",
        }
        async with (
            aiohttp.ClientSession() as session,
            session.post(f"{self.base}/api/v1/query", json=body) as resp,
        ):
            answer = await resp.json()
            if resp.status != 200:
                raise RuntimeError(f"query answered {resp.status}: {answer}")
        return float(sum(p["value"] for s in answer["series"] for p in s["points"]))


async def _timed(
    system: str,
    phase: str,
    url: str,
    bodies: list[bytes],
    form: str,
    pid: int,
    settle: Callable[[], Awaitable[None]] | None = None,
) -> Phase:
    """POST `bodies` (of `form`, see `ingest_rest.points_in`) over 4 connections, timed until the
    last answer, or until `settle` (awaited after it) returns."""
    cpu0, t0 = tree_cpu_seconds(pid), time.perf_counter()
    _, _, failures, errors = await post_all(url, bodies, 4)
    if settle is not None:
        await settle()
    seconds = time.perf_counter() - t0
    if errors:
        print(f"{system} {phase}: {failures} failures, e.g. {errors}", flush=True)
    points = sum(points_in(b, form) for b in bodies)
    return Phase(system, phase, len(bodies), points, seconds, tree_cpu_seconds(pid) - cpu0, failures, None)


async def _ours_phase(stack: OurStack, data: Data, phase: str, bodies: list[bytes], warm: bool) -> Phase:
    """One timed phase through the stack; with `warm`, its first body is sent before the clock
    starts, and the clock waits the time a JSON worker process takes to start, for a body the
    compiled fast path would leave to the Python parsers (these it takes)."""
    url = f"{stack.base}/api/v1/metrics/ingest"
    if warm:
        await post_all(url, bodies[:1], 1)
        await asyncio.sleep(WORKER_START_SECONDS)
        bodies = bodies[1:]
    out = await _timed("ours", phase, url, bodies, "columnar", stack.process.pid)
    out.answer = await stack.total(data)
    return out


async def run_ours(data: Data, bodies: list[bytes], again: list[bytes], work: Path) -> list[Phase]:
    stack = OurStack(work / "ours")
    stack.start()
    try:
        phases = [
            await _ours_phase(stack, data, PHASES[0], bodies, warm=True),
            await _ours_phase(stack, data, PHASES[1], again, warm=False),
        ]
    finally:
        stack.stop()
    stack.start()  # the same DATA_DIR: the clean stop flushed the hot tier into segments
    try:
        phases.append(await _ours_phase(stack, data, PHASES[2], again, warm=True))
    finally:
        stack.stop()
    return phases


VM_DEDUP = "-dedup.minScrapeInterval=1ms"
"""The flag with which VictoriaMetrics keeps one sample per series and millisecond (at merge and at
query time); without it, it stores and counts every copy."""


async def run_vm(
    data: Data, bodies: list[bytes], again: list[bytes], work: Path, flags: tuple[str, ...] = ()
) -> list[Phase]:
    name = "VictoriaMetrics" + (f" ({' '.join(flags)})" if flags else "")
    vm = victoria.VictoriaMetrics(work / f"vm{len(flags)}", work / f"vm{len(flags)}.log", flags)
    vm.start()
    phases = []
    try:
        await vm.wait_ready()
        url = f"{vm.url}/api/v1/import"
        async with aiohttp.ClientSession() as session:

            async def flush() -> None:
                async with session.get(f"{vm.url}/internal/force_flush") as resp:
                    await resp.read()

            async def total() -> float:
                span_s = (int(data.ts[-1]) - int(data.ts[0])) // 1000 + 60
                query = f"sum(sum_over_time({METRIC}[{span_s}s]))"
                params = {"query": query, "time": str(int(data.ts[-1]) / 1000)}
                async with session.get(f"{vm.url}/api/v1/query", params=params) as resp:
                    result = (await resp.json())["data"]["result"]
                return float(result[0]["value"][1]) if result else 0.0

            await post_all(url, bodies[:1], 1)
            for phase, chunk in zip(PHASES, (bodies[1:], again, again), strict=True):
                if phase == PHASES[2]:
                    await flush()
                phases.append(await _timed(name, phase, url, chunk, "vm", vm.pid, settle=flush))
                phases[-1].answer = await total()
    finally:
        vm.stop()
    return phases


async def run(points: int, n_bodies: int, every: int, with_vm: bool) -> dict[str, Any]:
    data = make_data(points, hosts=max(1, min(100, points // 10_000)))
    bodies = columnar_bodies(data, n_bodies)
    again = bodies[::every]
    load_start = os.getloadavg()[0]
    phases: list[Phase] = []
    with tempfile.TemporaryDirectory(prefix="bench-resend-") as tmp:
        if with_vm:
            vm = vm_bodies(data, n_bodies)
            for flags in ((), (VM_DEDUP,)):
                phases += await run_vm(data, vm, vm[::every], Path(tmp), flags)
        phases += await run_ours(data, bodies, again, Path(tmp))
    for p in phases:
        print(f"{p.system} {p.phase}: {p.points_per_s:,.0f} points/s, sum {p.answer}", flush=True)
    return {
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": machine(),
        "load_average_start": load_start,
        "load_average": os.getloadavg()[0],
        "points": data.points,
        "series": len(data.names),
        "bodies": len(bodies),
        "every": every,
        "expected": expected_sum(data),
        "vm_version": victoria.version() if with_vm else None,
        "phases": [{**asdict(p), "points_per_s": p.points_per_s} for p in phases],
    }


def render(r: dict[str, Any]) -> str:
    """The docs section."""
    lines = [
        SECTION,
        "",
        f"`python -m benchmarks.resend` (part of `make bench`), run {r['when']} on {r['machine']} (1-minute "
        f"load average {r['load_average_start']:.2f} at the start, {r['load_average']:.2f} at the end). "
        f"{r['points']:,} points of {r['series']:,} TSBS cpu-only shaped series in {r['bodies']} REST "
        f"columnar bodies, 4 connections; every {r['every']}th body is then sent again while recent, and "
        "once more after the data is stored (ours: stopped and started, which flushes the hot tier into "
        "segments; VictoriaMetrics: `/internal/force_flush`). The module docstring has the details.",
        "",
        f"| system | phase | bodies | points | seconds | points/s | server CPU s | sum of {METRIC} after | "
        "equals the distinct points' sum |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for p in r["phases"]:
        answer = "" if p["answer"] is None else f"{p['answer']:,.0f}"
        same = "" if p["answer"] is None else ("yes" if p["answer"] == r["expected"] else "no")
        lines.append(
            f"| {p['system']} | {p['phase']} | {p['bodies']} | {p['points']:,} | {p['seconds']:.2f} | "
            f"{p['points_per_s']:,.0f} | {p['cpu_seconds']:.2f} | {answer} | {same} |"
        )
    lines += [
        "",
        f"The distinct points of {METRIC} sum to {r['expected']:,.0f}. VictoriaMetrics: "
        f"{r['vm_version'] or 'not run'}, once with its default flags, under which it stores and "
        f"counts every copy, and once with `{VM_DEDUP}`, under which it keeps one sample per series and "
        "millisecond (at merge and at query time).",
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
    parser.add_argument("--every", type=int, default=5, help="resend every n-th body")
    parser.add_argument("--skip-vm", action="store_true", help="leave VictoriaMetrics out")
    add_docs_flag(parser)
    args = parser.parse_args(argv)
    result = asyncio.run(run(args.points, args.bodies, args.every, not args.skip_vm))
    publish(SECTION, render(result), args.docs, result, "resend")


if __name__ == "__main__":
    main()
