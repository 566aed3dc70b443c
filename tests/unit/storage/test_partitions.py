"""Compaction into week partitions: the days of a past week become one file (with its rollups and
points map) in datasources that keep raw points long enough, and every answer stays the same."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from libs.cache import TtlCache
from libs.storage import AcceptedSeries, MetricStore, StoreConfig
from libs.storage.keys import SeriesKey
from libs.timeparse import format_time_ms
from platformq.analytics.v1 import query_service_pb2 as pb
from services.query_router.core import Limits, QueryRouter
from services.query_router.spec import query_from_proto
from tests.helpers import opened_store

MONDAY = 1_767_571_200_000  # 2026-01-05T00:00:00Z, a Monday
DAY = 86_400_000
HOUR = 3_600_000


def _opened(data_dir: Path) -> MetricStore:
    return opened_store(
        data_dir,
        compact_min_files=100,
        week_merge_quiet_seconds=0.0,
        retention_days={"short": 7.0},
        default_retention_days=90.0,
    )


async def _answers(store: MetricStore, datasource: str) -> list[tuple[str, int, float]]:
    out = []
    for aggregation, step in (("avg", "1h"), ("max", "5m"), ("p90", "6h"), ("count", "1d")):
        request = pb.QueryRequest(
            datasource=datasource,
            metrics=["cpu"],
            aggregation=aggregation,
            group_by=["host"],
            step=step,
            mode="batch",
            start=format_time_ms(MONDAY - DAY + 1234),
            end=format_time_ms(MONDAY + 9 * DAY - 5678),
        )
        response = await QueryRouter(store, TtlCache(), Limits()).query(query_from_proto(request))
        out += [(s.group["host"], p.timestamp_ms, p.value) for s in response.series for p in s.points]
    return out


async def test_a_week_is_merged_only_once_its_files_have_been_quiet(tmp_path):
    store = MetricStore(StoreConfig(data_dir=tmp_path, wal_fsync=False, hot_flush_seconds=3600.0))
    store.open()
    for day in range(3):
        ts = MONDAY + day * DAY + np.arange(0, HOUR, 10_000, dtype=np.int64)
        await store.ingest("default", "ds", [AcceptedSeries(SeriesKey.of("cpu", {}), ts, np.ones(len(ts)))])
        await store.flush()
    await store.compact(now_ms=MONDAY + 30 * DAY)
    assert not any(s.weekly for s in store.snapshot("default", "ds").segments), "written just now"
    store.config = dataclasses.replace(store.config, week_merge_quiet_seconds=0.0)
    await store.compact(now_ms=MONDAY + 30 * DAY)
    assert [s.weekly for s in store.snapshot("default", "ds").segments] == [True]
    await store.close()


async def test_a_past_weeks_days_are_merged_into_one_week_partition(tmp_path):
    store = _opened(tmp_path)
    rng = np.random.default_rng(3)
    # Ten days, Sunday before the week to the Tuesday after it, one flush (one file) per day.
    for day in range(-1, 9):
        batch = []
        for host in ("a", "b"):
            ts = np.sort(rng.choice(np.arange(0, DAY, 10_000), 500, replace=False)) + MONDAY + day * DAY
            batch.append(
                AcceptedSeries(
                    SeriesKey.of("cpu", {"host": host}), ts.astype(np.int64), rng.normal(50, 9, 500)
                )
            )
        for datasource in ("long", "short"):
            await store.ingest("default", datasource, batch)
        await store.flush()
    before = {ds: await _answers(store, ds) for ds in ("long", "short")}
    assert before["long"] and before["long"] == before["short"]

    # A day after the week ended: too soon to merge.
    await store.compact(now_ms=MONDAY + 8 * DAY)
    assert not any(s.weekly for s in store.snapshot("default", "long").segments)

    await store.compact(now_ms=MONDAY + 10 * DAY)
    long = store.snapshot("default", "long").segments
    weekly = [s for s in long if s.weekly]
    assert len(weekly) == 1 and len(long) == 1 + 3, (
        "the week is one file; Sunday before and the days after stay"
    )
    (week,) = weekly
    assert week.path.parent.name == "week=2026-01-05"
    assert week.min_ts >= MONDAY and week.max_ts < MONDAY + 7 * DAY and week.rows == 7 * 2 * 500
    assert all(p.exists() for p in week.files()) and week.mapped and week.rollups
    assert not any(s.weekly for s in store.snapshot("default", "short").segments), (
        "7-day retention keeps days"
    )
    store.segments.delete_doomed(grace_s=0)
    assert len(list((tmp_path / "segments").glob("tenant=default/datasource=long/points/*/*.parquet"))) == 4
    assert await _answers(store, "long") == before["long"]

    # The layout survives a restart; later the next week's two days merge too, and the merged
    # week is left alone.
    await store.close()
    store = _opened(tmp_path)
    await store.compact(now_ms=MONDAY + 30 * DAY)
    weeks = sorted(
        (s for s in store.snapshot("default", "long").segments if s.weekly), key=lambda s: s.min_ts
    )
    assert [w.path for w in weeks][:1] == [week.path] and len(weeks) == 2
    assert weeks[1].path.parent.name == "week=2026-01-12" and weeks[1].rows == 2 * 2 * 500
    assert await _answers(store, "long") == before["long"]
    await store.close()
