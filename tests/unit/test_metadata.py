"""GetMetadata's counts from the catalog, the hot tier and each segment counted once: right before
and after a flush, after more points arrive, and after a compaction replaces the files."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from libs.cache import TtlCache
from libs.storage.keys import SeriesKey
from libs.storage.store import AcceptedSeries, MetricStore
from libs.timeparse import format_time_ms
from services.query_router.core import Limits, QueryRouter
from tests.helpers import opened_store

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
SECOND = 1_000


def _opened(data_dir: Path) -> MetricStore:
    return opened_store(data_dir, compact_min_files=2, default_retention_days=10**6)


def _series(metric: str, labels: dict[str, str], first: int, n: int) -> AcceptedSeries:
    ts = T0 + (first + np.arange(n, dtype=np.int64)) * SECOND
    return AcceptedSeries(SeriesKey.of(metric, labels), ts, np.arange(n, dtype=np.float64))


async def _counts(router: QueryRouter, datasource: str = "ds") -> tuple:
    reply = await router.metadata(datasource)
    return (
        {m.name: (m.series_count, m.point_count) for m in reply.metrics},
        {k.key: k.cardinality for k in reply.label_keys},
        reply.point_count,
        (reply.start, reply.end),
    )


async def test_counts_stay_exact_across_flush_new_points_and_compaction(tmp_path):
    store = _opened(tmp_path)
    router = QueryRouter(store, TtlCache(), Limits())
    await store.ingest(
        "default",
        "ds",
        [
            _series("cpu", {"host": "a", "region": "eu"}, 0, 5),
            _series("cpu", {"host": "b"}, 0, 3),
            _series("mem", {"host": "a"}, 0, 2),
        ],
    )
    first = (
        {"cpu": (2, 8), "mem": (1, 2)},
        {"host": 2, "region": 1},
        10,
        (format_time_ms(T0), format_time_ms(T0 + 4 * SECOND)),
    )
    assert await _counts(router) == first
    await store.flush()
    assert await _counts(router) == first, "a flush changed the counts"

    # Later points of the same series, a new series, then a second file and its compaction.
    await store.ingest(
        "default",
        "ds",
        [_series("cpu", {"host": "a", "region": "eu"}, 5, 4), _series("mem", {"host": "c"}, 0, 1)],
    )
    second = (
        {"cpu": (2, 12), "mem": (2, 3)},
        {"host": 3, "region": 1},
        15,
        (format_time_ms(T0), format_time_ms(T0 + 8 * SECOND)),
    )
    assert await _counts(router) == second
    await store.flush()
    assert await _counts(router) == second
    await store.compact()
    assert store.stats["compactions"] >= 1
    assert await _counts(router) == second, "a compaction changed the counts"
    await store.close()


async def test_a_datasource_of_one_metric_counts_its_points(tmp_path):
    store = _opened(tmp_path)
    router = QueryRouter(store, TtlCache(), Limits())
    await store.ingest("default", "one", [_series("load", {"sim": str(i)}, i, 3) for i in range(50)])
    assert (await _counts(router, "one"))[:3] == ({"load": (50, 150)}, {"sim": 50}, 150)
    await store.flush()
    await store.ingest("default", "one", [_series("load", {"sim": "0"}, 100, 2)])
    assert (await _counts(router, "one"))[:3] == ({"load": (50, 152)}, {"sim": 50}, 152)
    await store.close()
