"""Cost of going through each scale-out engine: start time and RSS of the real server here, and the
latency a query gains on it against the embedded path (the same query over the same DATA_DIR,
p50 over RUNS runs, cache bypassed).

    .venv/bin/python -m benchmarks.engines [trino] [druid] [ignite] [--runs 30] [--docs]

One section per engine (`SECTIONS`; Druid's in benchmarks/engine_druid.py, Ignite's in
benchmarks/engine_ignite.py); each starts its server on a free loopback port, measures, and stops
it. Prints the report (a table per engine), keeps the raw figures in
benchmarks/results/engines.json, and with --docs writes the "Scale-out engines" section of
docs/benchmarks.md (part of `make bench`).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

from benchmarks.engine_data import HOUR, HOURS, T0, day_store, side_by_side
from benchmarks.engine_druid import bench_druid
from benchmarks.engine_ignite import measure as measure_ignite
from benchmarks.report import add_docs_flag, machine, publish
from libs.cache import TtlCache
from libs.timeparse import format_time_ms
from platformq.analytics.v1 import query_service_pb2 as pb
from services.query_router.core import Limits, QueryRouter
from services.query_router.spec import query_from_proto
from services.query_router.trino import TrinoEngine, TrinoSettings
from tests.helpers import REPO_ROOT, free_port


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def bench_trino(runs: int) -> dict:
    """Trino: start, RSS, and p50 latency of a SQL and a batch metrics query, embedded vs Trino."""
    with tempfile.TemporaryDirectory() as tmp:
        store, points = await day_store(Path(tmp) / "store")
        port = free_port()
        env = {**os.environ, "TRINO_PORT": str(port), "TRINO_DATA_DIR": str(Path(tmp) / "trino")}
        script = str(REPO_ROOT / "scripts" / "trino-server")
        started = time.monotonic()
        subprocess.run([script, "start"], env=env, check=True, capture_output=True)
        start_s = time.monotonic() - started
        try:
            pid = int((Path(tmp) / "trino" / "trino.pid").read_text())
            # ("bypass" the cache: batch mode always runs its engines; SQL in batch mode too)
            no_cache = Limits(cache_ttl_seconds=0.0)
            embedded = QueryRouter(store, TtlCache(), no_cache)
            trino = TrinoEngine(TrinoSettings("127.0.0.1", port), store.segments_root)
            on_trino = QueryRouter(store, TtlCache(), no_cache, trino=trino)
            queries = {
                "sql_group_by_host": pb.QueryRequest(
                    sql="SELECT labels['host'] AS host, avg(value) AS v FROM metrics GROUP BY 1 ORDER BY 1",
                    mode="batch",
                ),
                "batch_avg_1h_step": pb.QueryRequest(
                    datasource="ds",
                    metrics=["cpu"],
                    mode="batch",
                    aggregation="avg",
                    step="1h",
                    start=format_time_ms(T0),
                    end=format_time_ms(T0 + HOURS * HOUR),
                ),
            }
            result = {
                "points": points,
                "start_s": round(start_s, 1),
                "runs": runs,
            }
            for name, request in queries.items():
                spec = query_from_proto(request)
                result[name] = await side_by_side(
                    "trino",
                    functools.partial(embedded.query, spec),
                    functools.partial(on_trino.query, spec),
                    runs,
                )
            result["rss_mb"] = round(_rss_mb(pid))
            return result
        finally:
            subprocess.run([script, "stop"], env=env, capture_output=True)
            await store.close()


async def bench_ignite(runs: int) -> dict:
    """Ignite: start, RSS, get/put p50 against the in-process cache, and a cache hit through the router."""
    figures = await asyncio.to_thread(measure_ignite, max(runs * 20, 200))
    return {k: round(v, 3) for k, v in figures.items()}


SECTIONS = {"trino": bench_trino, "druid": bench_druid, "ignite": bench_ignite}
HEADING = "Scale-out engines"


def render(results: dict, runs: int) -> str:
    """The report: per engine, its start and memory here, and each query's p50 embedded and through it."""
    lines = [
        f"`python -m benchmarks.engines --docs` ({machine()}, run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}): "
        "each real server started by its repo script on loopback, the same query over the same DATA_DIR "
        f"on the embedded engines and through the server, p50 of {runs} runs at the client of the "
        "QueryRouter (no gRPC), cache bypassed. Timings on this shared 2-core machine are noisy; "
        "compare the columns of one run.",
        "",
        "| engine | server ready (s) | server RSS (MiB) | query | embedded p50 (ms) | through the engine p50 (ms) | added (ms) |",
        "|---|---:|---:|---|---:|---:|---:|",
    ]
    for engine in ("trino", "druid"):
        r = results.get(engine)
        if not r:
            continue
        first = True
        for name, q in r.items():
            if not isinstance(q, dict):
                continue
            through = q.get(f"{engine}_p50_ms")
            head = (
                f"| {engine} ({r['points']:,} points) | {r['start_s']} | {r['rss_mb']} |"
                if first
                else "| | | |"
            )
            lines.append(f"{head} {name} | {q['embedded_p50_ms']} | {through} | {q['added_ms']:+} |")
            first = False
    ignite = results.get("ignite")
    if ignite:
        lines.append(
            f"| ignite (result cache) | {ignite['start_s']:.1f} | {ignite['rss_mb']:.0f} | cache hit through the router "
            f"| {ignite['in_process_router_hit_p50_ms']:.2f} | {ignite['ignite_router_hit_p50_ms']:.2f} "
            f"| {ignite['ignite_router_hit_p50_ms'] - ignite['in_process_router_hit_p50_ms']:+.2f} |"
        )
        lines += [
            "",
            f"Ignite get / put p50: {ignite['ignite_get_p50_ms']:.3f} / {ignite['ignite_put_p50_ms']:.3f} ms "
            f"(in-process {ignite['in_process_get_p50_ms']:.4f} / {ignite['in_process_put_p50_ms']:.4f} ms)."
            + (
                f" Druid: loading {results['druid']['points']:,} points took {results['druid']['ingest_s']} s."
                if results.get("druid")
                else ""
            ),
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("sections", nargs="*", help=f"some of {', '.join(SECTIONS)} (default: every one)")
    parser.add_argument("--runs", type=int, default=30)
    add_docs_flag(parser)
    args = parser.parse_args()
    if unknown := set(args.sections) - set(SECTIONS):
        parser.error(f"unknown engine(s) {', '.join(sorted(unknown))}: choose from {', '.join(SECTIONS)}")
    results = {name: asyncio.run(SECTIONS[name](args.runs)) for name in args.sections or SECTIONS}
    print(json.dumps(results))
    publish(HEADING, render(results, args.runs), args.docs, results, "engines")


if __name__ == "__main__":
    main()
