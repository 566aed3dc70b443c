"""The store's ingest path at many series: the duplicate check's per-series memory (a column by
catalog row) and the bounded memo of series ids and record headers."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from libs.bus.events import series_header
from libs.storage import AcceptedSeries, MetricStore, SeriesMemo, StoreConfig
from libs.storage.keys import SeriesKey, series_id
from platformq.analytics.v1 import common_pb2, events_pb2

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z


def _opened(data_dir: Path) -> MetricStore:
    store = MetricStore(
        StoreConfig(data_dir=data_dir, hot_flush_points=10**9, hot_flush_seconds=3600.0, wal_fsync=False)
    )
    store.open()
    return store


def _series(i: int, ts: list[int], value: float) -> AcceptedSeries:
    key = SeriesKey.of("m", {"sim": f"s{i}"})
    return AcceptedSeries(key, np.array(ts, np.int64), np.full(len(ts), value))


def _hot_points(store: MetricStore) -> dict[tuple[int, int], float]:
    """(series id, ts) -> value of every live hot point; a key seen twice fails the test."""
    table = store.snapshot("default", "ds").hot.table
    points: dict[tuple[int, int], float] = {}
    for sid, ts, value in zip(*(table[c].to_pylist() for c in ("series_id", "ts", "value")), strict=True):
        assert (sid, ts) not in points, f"series {sid} has two points at {ts}"
        points[sid, ts] = value
    return points


async def test_a_retry_is_recognised_for_every_one_of_thousands_of_series(tmp_path):
    store = _opened(tmp_path)
    # More series than the duplicate check's first allocation, in batches of growing catalogs.
    for first in range(0, 3000, 500):
        await store.ingest(
            "default", "ds", [_series(i, [T0, T0 + 10], 1.0) for i in range(first, first + 500)]
        )
    # A client retries a batch of late series with corrected values, and one series appends.
    await store.ingest(
        "default", "ds", [_series(i, [T0 + 10], 2.0) for i in (2999, 1500, 7)] + [_series(3, [T0 + 20], 3.0)]
    )
    points = _hot_points(store)
    assert len(points) == 3000 * 2 + 1
    ids = {i: series_id("m", {"sim": f"s{i}"}) for i in (2999, 1500, 7, 3)}
    assert [points[ids[i], T0 + 10] for i in (2999, 1500, 7)] == [2.0, 2.0, 2.0]
    assert points[ids[3], T0 + 20] == 3.0
    assert points[ids[3], T0] == 1.0
    await store.close()


async def test_the_wal_record_replays_to_the_same_points_after_a_restart(tmp_path):
    store = _opened(tmp_path)
    await store.ingest("default", "ds", [_series(i, [T0, T0 + 10, T0 + 20], float(i)) for i in range(40)])
    before = _hot_points(store)
    # Stop without flushing: the points come back from the WAL records alone.
    await store.wal.close()
    again = _opened(tmp_path)
    assert _hot_points(again) == before
    await again.close()


def test_the_memo_gives_the_same_id_and_header_after_it_empties():
    memo = SeriesMemo(max_entries=3)
    keys = [SeriesKey.of("cpu", {"host": f"h{i}", "dc": "x"}) for i in range(7)]
    for _ in range(2):  # the second round finds the first keys dropped and computes them again
        for key in keys:
            sid, header = memo.of(key)
            assert sid == series_id(key.metric, key.labels)
            assert common_pb2.Series.FromString(header) == common_pb2.Series(
                name=key.metric, labels=dict(key.labels)
            )
            assert header == series_header(key.metric, key.labels)


async def test_the_returned_batch_is_what_the_wal_holds(tmp_path):
    store = _opened(tmp_path)
    encoded = await store.ingest("default", "ds", [_series(1, [T0, T0 + 5], 4.5)])
    ((_, payload),) = list(store.wal.replay())
    assert encoded is not None and payload == encoded.payload
    event = events_pb2.MetricsBatchEvent.FromString(payload)
    assert event.batch_id == encoded.batch_id
    assert (event.tenant, event.datasource, event.source) == ("default", "ds", "ds")
    assert [(s.name, dict(s.labels), list(s.timestamps_ms), list(s.values)) for s in event.series] == [
        ("m", {"sim": "s1"}, [T0, T0 + 5], [4.5, 4.5])
    ]
    await store.close()
