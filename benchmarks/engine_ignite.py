"""What the Ignite result cache costs against the in-process one, on a real node started here by
scripts/ignite-server (free loopback ports, stopped at the end): the node's start time and RSS,
get and put p50 of one query answer, and a cache hit end to end through the query router's core
(`QueryRouter.query`, no gRPC), p50 over repeated hits.

    .venv/bin/python -m benchmarks.engine_ignite [--rounds 2000]

`measure()` returns the figures for a report (benchmarks/engines.py may call it)."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from libs.cache import ResultCache, TtlCache
from libs.cache_ignite import IgniteCache
from libs.storage import AcceptedSeries, SeriesKey
from platformq.analytics.v1 import query_service_pb2 as pb
from services.query_router.core import Limits, QueryRouter
from services.query_router.spec import query_from_proto
from tests.helpers import free_port, opened_store

REPO_ROOT = Path(__file__).resolve().parent.parent
SCRIPT = str(REPO_ROOT / "scripts" / "ignite-server")
TTLS = {"query": 600.0}


def _p50_ms(samples: list[float]) -> float:
    return float(np.median(samples)) * 1000


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def _answer() -> pb.QueryResponse:
    """A typical answer: 10 series of 60 points (an hour by minute)."""
    response = pb.QueryResponse()
    for s in range(10):
        series = response.series.add(metric="cpu", aggregation="avg")
        series.group["host"] = f"h{s}"
        for i in range(60):
            series.points.add(timestamp_ms=1_700_000_000_000 + i * 60_000, value=i * 0.5 + s)
    return response


def _get_put(cache: ResultCache, rounds: int) -> dict[str, float]:
    answer = _answer()
    puts, gets = [], []
    for i in range(rounds):
        started = time.perf_counter()
        cache.put("query", ("bench", i % 100), answer, 600, scope=("bench", "ds", 0, 1), mark=cache.mark())
        puts.append(time.perf_counter() - started)
    for i in range(rounds):
        started = time.perf_counter()
        found = cache.get("query", ("bench", i % 100))
        gets.append(time.perf_counter() - started)
        assert found is not None
    return {"put_p50_ms": _p50_ms(puts), "get_p50_ms": _p50_ms(gets)}


async def _router_hit(cache: ResultCache, data_dir: Path, rounds: int) -> float:
    store = opened_store(data_dir)
    now = int(time.time() * 1000)
    ts = now - 60_000 * np.arange(60, 0, -1, dtype=np.int64)
    await store.ingest(
        "default",
        "ds",
        [AcceptedSeries(SeriesKey.of("cpu", {"host": f"h{h}"}), ts, np.ones(60)) for h in range(10)],
    )
    router = QueryRouter(store, cache, Limits(cache_ttl_seconds=600))
    request = pb.QueryRequest(
        datasource="ds", metrics=["cpu"], aggregation="avg", group_by=["host"], time_range="1h", step="1m"
    )
    try:
        await router.query(query_from_proto(request))
        samples = []
        for _ in range(rounds):
            started = time.perf_counter()
            response = await router.query(query_from_proto(request))
            samples.append(time.perf_counter() - started)
            assert response.metadata.cache_hit
        return _p50_ms(samples)
    finally:
        await store.close()


def measure(rounds: int = 2000) -> dict[str, float]:
    """Start a node, measure, stop it; the figures in ms, s and MB."""
    with tempfile.TemporaryDirectory(prefix="bench-ignite-") as tmp:
        env = {
            **os.environ,
            "IGNITE_PORT": str(free_port()),
            "IGNITE_DISCOVERY_PORT": str(free_port()),
            "IGNITE_COMMUNICATION_PORT": str(free_port()),
            "IGNITE_DATA_DIR": f"{tmp}/node",
            "IGNITE_OWNER_PID": str(os.getpid()),
        }
        subprocess.run([SCRIPT, "deps"], env=env, check=True, capture_output=True)
        started = time.perf_counter()
        subprocess.run([SCRIPT, "start"], env=env, check=True, capture_output=True)
        figures = {"start_s": time.perf_counter() - started}
        try:
            pid = int(Path(f"{tmp}/node/ignite.pid").read_text())
            local, shared = TtlCache(), IgniteCache("127.0.0.1", int(env["IGNITE_PORT"]), 2.0, TTLS)
            for name, cache in (("in_process", local), ("ignite", shared)):
                for figure, value in _get_put(cache, rounds).items():
                    figures[f"{name}_{figure}"] = value
                figures[f"{name}_router_hit_p50_ms"] = asyncio.run(
                    _router_hit(cache, Path(tmp) / name, max(100, rounds // 4))
                )
            figures["rss_mb"] = _rss_mb(pid)
            shared.close()
        finally:
            subprocess.run([SCRIPT, "stop"], env=env, check=True, capture_output=True)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2000, help="gets and puts measured per cache")
    args = parser.parse_args()
    print(json.dumps({k: round(v, 3) for k, v in measure(args.rounds).items()}, indent=2))


if __name__ == "__main__":
    main()
