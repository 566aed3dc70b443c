"""Which part of a window Druid may answer (DruidMirror.cut): only hours loaded from the snapshot's
current segment files, before the hot tier, aligned to the buckets; and the pieces that turn
Druid's rows into the embedded engines' buckets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from libs.storage import Segment, SeriesCatalog, Snapshot
from services.query_router.druid import (
    HOUR_MS,
    DruidMirror,
    druid_datasource,
    granularity_of,
    hours_of,
    iso,
    merge_rows,
    parse_iso_ms,
)
from services.query_router.druid_loader import _intervals
from services.query_router.engine import Bucketing
from services.query_router.planner import Window

T0 = 1_704_067_200_000  # 2024-01-01T00:00:00Z


def _segment(name: str, start_h: float, end_h: float, raw: bool = True) -> Segment:
    return Segment(
        "t",
        "ds",
        Path(f"/seg/{name}.parquet"),
        int(T0 + start_h * HOUR_MS),
        int(T0 + end_h * HOUR_MS) - 1,
        10,
        raw=raw,
    )


def _snapshot(segments, hot_from_h: float | None = None, downsampled=()) -> Snapshot:
    hot = None if hot_from_h is None else pa.table({"x": [1]})
    lo = None if hot_from_h is None else int(T0 + hot_from_h * HOUR_MS)
    return Snapshot(
        SeriesCatalog(), hot, lo, None if lo is None else lo + 1000, tuple(segments), tuple(downsampled)
    )


def _loaded(segments) -> DruidMirror:
    mirror = DruidMirror()
    mirror.mark_loaded(("t", "ds"), hours_of(segments))
    return mirror


def _window(
    start_h: float, end_h: float, step_ms: int | None = HOUR_MS, calendar: str | None = None
) -> Window:
    return Window(int(T0 + start_h * HOUR_MS), int(T0 + end_h * HOUR_MS), Bucketing(step_ms, calendar))


def test_every_hour_loaded_gives_the_whole_window():
    segs = [_segment("a", 0, 2), _segment("b", 2, 3)]
    assert _loaded(segs).cut("t", "ds", _snapshot(segs), _window(0, 3)) == T0 + 3 * HOUR_MS


def test_the_hot_tier_and_an_unloaded_hour_end_the_druid_part():
    segs = [_segment("a", 0, 2), _segment("b", 2, 3)]
    mirror = _loaded(segs)
    # Hot points from 2:30: Druid answers up to the last whole step before them.
    assert mirror.cut("t", "ds", _snapshot(segs, hot_from_h=2.5), _window(0, 4)) == T0 + 2 * HOUR_MS
    assert mirror.cut("t", "ds", _snapshot(segs, hot_from_h=2.5), _window(0, 4, 60_000)) == T0 + 2.5 * HOUR_MS
    # A new file in hour 1 (a flush, a rewrite): that hour is not what Druid holds any more.
    newer = [*segs, _segment("c", 1.2, 1.4)]
    assert mirror.cut("t", "ds", _snapshot(newer), _window(0, 3)) == T0 + 1 * HOUR_MS
    # Calendar buckets are never split: all or nothing.
    assert mirror.cut("t", "ds", _snapshot(newer), _window(0, 3, None, "all")) is None
    assert mirror.cut("t", "ds", _snapshot(segs), _window(0, 3, None, "all")) == T0 + 3 * HOUR_MS


def test_forgotten_and_unknown_partitions_and_downsampled_segments_stay_embedded():
    segs = [_segment("a", 0, 3)]
    mirror = _loaded(segs)
    mirror.forget(("t", "ds"), [T0 // HOUR_MS])
    assert mirror.cut("t", "ds", _snapshot(segs), _window(0, 3)) is None, "hour 0 is being replaced"
    assert DruidMirror().cut("t", "ds", _snapshot(segs), _window(0, 3)) is None
    assert _loaded(segs).cut("other", "ds", _snapshot(segs), _window(0, 3)) is None
    old = _segment("old", 1, 2, raw=False)
    assert _loaded(segs).cut("t", "ds", _snapshot(segs, downsampled=[old]), _window(0, 3)) == T0 + HOUR_MS


def test_a_window_starting_mid_hour_compares_whole_hours():
    # Hour 0 holds files a and b; a window from 0:30 only overlaps b, yet hour 0 is still in sync.
    segs = [_segment("a", 0, 0.2), _segment("b", 0.5, 0.9), _segment("c", 1, 2)]
    assert _loaded(segs).cut("t", "ds", _snapshot(segs), _window(0.5, 2)) == T0 + 2 * HOUR_MS


def test_granularity_names_intervals_and_datasource():
    assert granularity_of(Bucketing(300_000)) == {
        "type": "duration",
        "duration": 300_000,
        "origin": "1970-01-01T00:00:00Z",
    }
    assert granularity_of(Bucketing(None, "quarter"))["period"] == "P3M"
    assert granularity_of(Bucketing(None, "all")) == "all"
    assert iso(T0 + 1) == "2024-01-01T00:00:00.001Z" and parse_iso_ms(iso(T0 + 1)) == T0 + 1
    hours = [T0 // HOUR_MS + h for h in (0, 1, 3)]
    assert _intervals(hours) == [
        "2024-01-01T00:00:00.000Z/2024-01-01T02:00:00.000Z",
        "2024-01-01T03:00:00.000Z/2024-01-01T04:00:00.000Z",
    ]
    assert druid_datasource("acme", "ds") != druid_datasource("acme~ds", "")


def test_per_series_partials_merge_into_group_aggregates():
    selection = pa.table(
        {"series_id": pa.array([11, 12, 13], pa.uint64()), "gid": pa.array([0, 0, 1], pa.int32())}
    )
    t = iso(T0)
    rows = [
        {"timestamp": t, "event": {"sid": "11", "sum": 3.0, "count": 2, "min": 1.0, "max": 2.0}},
        {"timestamp": t, "event": {"sid": "12", "sum": 5.0, "count": 1, "min": 5.0, "max": 5.0}},
        {"timestamp": t, "event": {"sid": "13", "sum": 1.5, "count": 3, "min": 0.25, "max": 1.0}},
    ]

    def values(aggregation: str) -> list[float]:
        return merge_rows(rows, selection, aggregation, Bucketing(HOUR_MS), T0)["value"].to_pylist()

    assert values("avg") == [8.0 / 3, 0.5]
    assert values("sum") == [8.0, 1.5]
    assert values("count") == [3.0, 3.0]
    assert values("min") == [1.0, 0.25]
    assert values("max") == [5.0, 1.0]
    table = merge_rows(rows, selection, "sum", Bucketing(None, "all"), T0 + 5)
    assert np.all(table["bucket"].to_numpy() == T0 + 5), "granularity all buckets at the window start"
