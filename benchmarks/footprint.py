"""Footprint: the resident memory of the stack `make up` runs, idle and with its demo feed, beside
VictoriaMetrics idle.

    .venv/bin/python -m benchmarks.footprint [--samples 30,90,150] [--docs]

Ours is started as `make up` starts it (`analytics up`: Envoy and `serve all`, live anomaly scoring
on), once without the demo feed (DEMO=0, nothing sent) and once with it (DEMO=1: the simulated
platform's metrics every second, scored, forecast, shown on dashboards), each on an empty data
directory. At each sample (seconds after the gateway answered /health): the serving process's
resident memory with any worker process it started (a REST body worker, forecast workers), of that
the anonymous memory (RssAnon: what is not pages of mapped files, which the kernel can drop and read
again), Envoy's, and whether DuckDB and pandas are loaded in the serving process (its memory maps).
VictoriaMetrics: its resident and anonymous memory 10 s after it is ready, with nothing stored.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks import victoria
from benchmarks.procs import (
    DATA_DIR,
    children,
    launch_stack,
    proc_status_kib,
    services_pid,
    stop_process,
    tree_rss_kib,
    wait_http_ok,
)
from benchmarks.report import add_docs_flag, machine, publish

SECTION = "## Footprint (`make up`, idle and with the demo feed)"
VM_SETTLE_S = 10.0
LIBRARIES = {"DuckDB": "/_duckdb.", "pandas": "/pandas/"}
"""What marks a library as loaded in a process's memory maps."""


def _sample(launcher: int, started: float, at_s: float) -> dict[str, Any]:
    time.sleep(max(0.0, started + at_s - time.monotonic()))
    serving = services_pid(launcher)
    envoy = next(p for p in children(launcher) if p != serving)
    maps = Path(f"/proc/{serving}/maps").read_text()
    return {
        "at_s": at_s,
        "rss_mib": tree_rss_kib(serving) / 1024,
        "anon_mib": tree_rss_kib(serving, "RssAnon") / 1024,
        "envoy_mib": (proc_status_kib(envoy, "VmRSS") or 0) / 1024,
        "loaded": [name for name, mark in LIBRARIES.items() if mark in maps],
    }


def run_ours(demo: bool, samples: list[float]) -> list[dict[str, Any]]:
    work = DATA_DIR / "footprint" / ("demo" if demo else "idle")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    process, env = launch_stack(work, work / "stack.log", DEMO="1" if demo else "0")
    try:
        base = f"http://127.0.0.1:{env['GATEWAY_PORT']}"
        wait_http_ok(f"{base}/health", process, work / "stack.log", "the stack", 180)
        started = time.monotonic()
        return [_sample(process.pid, started, at) for at in samples]
    finally:
        stop_process(process, 60)
        shutil.rmtree(work, ignore_errors=True)


def run_vm() -> dict[str, Any] | None:
    if victoria.binary() is None:
        return None
    work = DATA_DIR / "footprint" / "vm"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    vm = victoria.VictoriaMetrics(work / "data", work / "vm.log")
    vm.start()
    try:
        asyncio.run(vm.wait_ready())
        time.sleep(VM_SETTLE_S)
        return {
            "rss_mib": (proc_status_kib(vm.pid, "VmRSS") or 0) / 1024,
            "anon_mib": (proc_status_kib(vm.pid, "RssAnon") or 0) / 1024,
            "version": victoria.version(),
        }
    finally:
        vm.stop()
        shutil.rmtree(work, ignore_errors=True)


def render(r: dict[str, Any]) -> str:
    """The docs section."""
    lines = [
        SECTION,
        "",
        "`python -m benchmarks.footprint` (part of `make bench`): `analytics up` as `make up` runs it, "
        "on an empty data directory, without and with the demo feed (live anomaly scoring on in both); at "
        "each sample, seconds after the gateway first answered: the serving process's resident memory "
        "with any worker process it started, of that the anonymous memory (RssAnon: not pages of mapped "
        "files), Envoy's, and which of DuckDB and pandas the serving process has loaded. VictoriaMetrics "
        f"idle ({r['vm']['version'] if r.get('vm') else 'not installed'}), {VM_SETTLE_S:g} s after it is "
        f"ready, for scale. Machine: {r['machine']}; run {r['when']}.",
        "",
        "| stack | after | serving process RSS | of which anonymous | Envoy RSS | loaded |",
        "|---|---|---|---|---|---|",
    ]
    for name in ("idle", "demo"):
        for x in r[name]:
            lines.append(
                f"| `make up`, {'demo feed' if name == 'demo' else 'no demo feed'} | {x['at_s']:g} s | "
                f"{x['rss_mib']:,.0f} MiB | {x['anon_mib']:,.0f} MiB | {x['envoy_mib']:,.0f} MiB | "
                f"{', '.join(x['loaded']) or 'neither'} |"
            )
    if r.get("vm"):
        lines.append(
            f"| VictoriaMetrics, idle | {VM_SETTLE_S:g} s | {r['vm']['rss_mib']:,.0f} MiB | "
            f"{r['vm']['anon_mib']:,.0f} MiB | - | - |"
        )
    lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", default="30,90,150", help="seconds after start, comma-separated")
    add_docs_flag(parser)
    args = parser.parse_args(argv)
    samples = [float(s) for s in args.samples.split(",") if s]
    results = {
        "idle": run_ours(False, samples),
        "demo": run_ours(True, samples),
        "vm": run_vm(),
        "machine": machine(),
        "when": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }
    publish(SECTION, render(results), args.docs, results, "footprint")


if __name__ == "__main__":
    main()
