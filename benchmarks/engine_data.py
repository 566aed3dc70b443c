"""What the engine benchmarks share (benchmarks/engines.py, engine_druid.py): one day of points in a
fresh store, flushed into segments, the p50 of a repeated async call, and one query's p50 on the
embedded engines beside its p50 through a server."""

from __future__ import annotations

import statistics
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import numpy as np

from libs.storage import AcceptedSeries, MetricStore, SeriesKey
from tests.helpers import opened_store

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
HOUR = 3_600_000
SERIES = 50
HOURS = 24


async def day_store(path: Path) -> tuple[MetricStore, int]:
    """A store at `path` holding SERIES cpu series over HOURS hours at 10 s, flushed; (store, points)."""
    store = opened_store(path)
    ts = np.arange(T0, T0 + HOURS * HOUR, 10_000, dtype=np.int64)
    rng = np.random.default_rng(1)
    batch = [
        AcceptedSeries(SeriesKey.of("cpu", {"host": f"h{i}"}), ts, rng.normal(50, 10, len(ts)))
        for i in range(SERIES)
    ]
    await store.ingest("default", "ds", batch)
    await store.flush()
    return store, len(ts) * SERIES


async def p50_ms(call: Callable[[], Awaitable[object]], runs: int) -> float:
    """The median time of `runs` calls after one warm-up call (Trino compiles, DuckDB caches footers)."""
    await call()
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        await call()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


async def side_by_side(
    engine: str,
    on_embedded: Callable[[], Awaitable[object]],
    through: Callable[[], Awaitable[object]],
    runs: int,
) -> dict[str, float]:
    """One query's p50 embedded and through `engine`, and what the engine adds (ms)."""
    embedded, remote = await p50_ms(on_embedded, runs), await p50_ms(through, runs)
    return {
        "embedded_p50_ms": round(embedded, 1),
        f"{engine}_p50_ms": round(remote, 1),
        "added_ms": round(remote - embedded, 1),
    }
