"""Cost of going through each scale-out engine: start time and RSS of the real server here, and the
latency a query gains on it against the embedded path (the same query over the same DATA_DIR,
p50 over RUNS runs, cache bypassed).

    .venv/bin/python -m benchmarks.engines trino [--runs 30]
    .venv/bin/python -m benchmarks.engines druid [--runs 30]   (benchmarks/engine_druid.py)

One section per engine (`SECTIONS`); each starts its server on a free loopback port, measures, and
stops it. Prints one JSON object per section.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.engine_druid import bench_druid
from libs.cache import TtlCache
from libs.storage.series import SeriesKey
from libs.storage.store import AcceptedSeries
from libs.timeparse import format_time_ms
from platformq.analytics.v1 import query_service_pb2 as pb
from services.query_router.core import Limits, QueryRouter
from services.query_router.spec import query_from_proto
from services.query_router.trino import TrinoEngine, TrinoSettings
from tests.helpers import REPO_ROOT, free_port, opened_store

T0 = 1_767_225_600_000
HOUR = 3_600_000
SERIES = 50
HOURS = 24


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def _p50_ms(router: QueryRouter, request: pb.QueryRequest, runs: int) -> float:
    spec = query_from_proto(request)
    await router.query(spec)  # warm-up (Trino compiles, DuckDB caches footers)
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        await router.query(spec)
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


async def bench_trino(runs: int) -> dict:
    """Trino: start, RSS, and p50 latency of a SQL and a batch metrics query, embedded vs Trino."""
    with tempfile.TemporaryDirectory() as tmp:
        store = opened_store(Path(tmp) / "store")
        ts = np.arange(T0, T0 + HOURS * HOUR, 10_000, dtype=np.int64)
        rng = np.random.default_rng(1)
        batch = [
            AcceptedSeries(SeriesKey.of("cpu", {"host": f"h{i}"}), ts, rng.normal(50, 10, len(ts)))
            for i in range(SERIES)
        ]
        await store.ingest("default", "ds", batch)
        await store.flush()
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
                "points": int(len(ts) * SERIES),
                "start_s": round(start_s, 1),
                "runs": runs,
            }
            for name, request in queries.items():
                e = await _p50_ms(embedded, request, runs)
                t = await _p50_ms(on_trino, request, runs)
                result[name] = {
                    "embedded_p50_ms": round(e, 1),
                    "trino_p50_ms": round(t, 1),
                    "added_ms": round(t - e, 1),
                }
            result["rss_mb"] = round(_rss_mb(pid))
            return result
        finally:
            subprocess.run([script, "stop"], env=env, capture_output=True)
            await store.close()


SECTIONS = {"trino": bench_trino, "druid": bench_druid}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("sections", nargs="*", default=list(SECTIONS), choices=list(SECTIONS))
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    for name in args.sections:
        print(json.dumps({name: asyncio.run(SECTIONS[name](args.runs))}))


if __name__ == "__main__":
    main()
