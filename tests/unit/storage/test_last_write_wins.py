"""One point per (series, timestamp), last write wins, from acknowledgement on: the same answer on
every path (metrics API, raw, SQL `metrics` view) before and after a flush, a compaction and a
restart."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from libs.cache import TtlCache
from libs.storage import AcceptedSeries, MetricStore
from libs.storage.hot import Chunk, HotPartition
from libs.storage.keys import SeriesKey, ids_in, keys_in, last_wins
from libs.timeparse import format_time_ms
from platformq.analytics.v1 import query_service_pb2 as pb
from services.query_router.core import Limits, QueryRouter
from services.query_router.spec import query_from_proto
from tests.helpers import opened_store

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
MINUTE = 60_000


def _opened(data_dir: Path, **knobs: object) -> MetricStore:
    return opened_store(data_dir, **{"compact_min_files": 2, "default_retention_days": 10**6, **knobs})


def _point(ts: int, value: float, host: str = "a") -> list[AcceptedSeries]:
    return [AcceptedSeries(SeriesKey.of("m", {"host": host}), np.array([ts], np.int64), np.array([value]))]


async def _answers(store: MetricStore) -> dict[str, object]:
    """sum, count and raw points through the metrics API, and count(*)/sum through SQL."""
    router = QueryRouter(store, TtlCache(), Limits())
    window = {"start": format_time_ms(T0 - 10 * MINUTE), "end": format_time_ms(T0 + 10 * MINUTE)}
    out: dict[str, object] = {}
    for aggregation in ("sum", "count", "max"):
        for mode in ("batch", "realtime"):
            request = pb.QueryRequest(
                datasource="ds", metrics=["m"], aggregation=aggregation, step="1h", mode=mode
            )
            request.start, request.end = window["start"], window["end"]
            response = await router.query(query_from_proto(request))
            out[f"{aggregation}/{mode}"] = [
                (p.timestamp_ms, p.value) for s in response.series for p in s.points
            ]
    raw = pb.QueryRequest(datasource="ds", metrics=["m"], aggregation="raw", mode="batch", **window)
    response = await router.query(query_from_proto(raw))
    out["raw"] = sorted((p.timestamp_ms, p.value) for s in response.series for p in s.points)
    sql = pb.QueryRequest(
        sql="SELECT count(*) AS n, sum(value) AS v FROM metrics WHERE metric = 'm'", mode="batch"
    )
    response = await router.query(query_from_proto(sql))
    out["sql"] = [[v.number_value for v in row.values] for row in response.rows]
    return out


async def test_a_repeated_or_corrected_point_counts_once_on_every_path_across_flush_and_compaction(tmp_path):
    store = _opened(tmp_path)
    await store.ingest("default", "ds", _point(T0, 5.0))
    await store.ingest("default", "ds", _point(T0, 5.0))  # a client's retry
    await store.ingest("default", "ds", _point(T0 + MINUTE, 1.0, host="b"))
    expected = {
        "sum/batch": [(T0, 6.0)],
        "sum/realtime": [(T0, 6.0)],
        "count/batch": [(T0, 2.0)],
        "count/realtime": [(T0, 2.0)],
        "max/batch": [(T0, 5.0)],
        "max/realtime": [(T0, 5.0)],
        "raw": [(T0, 5.0), (T0 + MINUTE, 1.0)],
        "sql": [[2.0, 6.0]],
    }
    assert await _answers(store) == expected
    await store.flush()
    assert await _answers(store) == expected, "a flush changed the answer"

    # A corrected value for a key that is now in a segment replaces it at once.
    await store.ingest("default", "ds", _point(T0, 7.0))
    corrected = {
        **expected,
        "sum/batch": [(T0, 8.0)],
        "sum/realtime": [(T0, 8.0)],
        "max/batch": [(T0, 7.0)],
        "max/realtime": [(T0, 7.0)],
        "raw": [(T0, 7.0), (T0 + MINUTE, 1.0)],
        "sql": [[2.0, 8.0]],
    }
    assert await _answers(store) == corrected
    # Twice in one batch and once more in the hot tier: the last one wins.
    await store.ingest("default", "ds", _point(T0, 1.0) + _point(T0, 7.0))
    assert await _answers(store) == corrected
    await store.flush()
    assert await _answers(store) == corrected, "a flush changed the answer"
    await store.ingest("default", "ds", _point(T0 + MINUTE, 1.0, host="b"))
    await store.flush()
    # A resend gives its segment's other points back to the hot tier, so the flushes above may
    # leave one file: a point of another metric makes a second one for the compaction to merge.
    await store.ingest(
        "default",
        "ds",
        [AcceptedSeries(SeriesKey.of("other", {}), np.array([T0 + 2 * MINUTE], np.int64), np.array([1.0]))],
    )
    await store.flush()
    await store.compact()
    assert store.stats["compactions"] >= 1
    assert await _answers(store) == corrected, "a compaction changed the answer"
    await store.close()

    reopened = _opened(tmp_path)
    assert await _answers(reopened) == corrected, "a restart changed the answer"
    await reopened.close()


async def test_a_repeat_acknowledged_before_a_crash_wins_after_replay(tmp_path):
    store = _opened(tmp_path)
    await store.ingest("default", "ds", _point(T0, 5.0))
    await store.flush()
    await store.ingest("default", "ds", _point(T0, 9.0))  # in the WAL and hot tier only
    before = await _answers(store)
    assert before["raw"] == [(T0, 9.0)]
    # No close: the WAL record is replayed over the flushed segment on open.
    await store.wal.close()
    reopened = _opened(tmp_path)
    assert await _answers(reopened) == before
    await reopened.close()


def _three_series(value: float = 1.0) -> list[AcceptedSeries]:
    ts = T0 + MINUTE * np.arange(100, dtype=np.int64)
    return [AcceptedSeries(SeriesKey.of("m", {"host": h}), ts, np.full(100, value)) for h in "abc"]


def _figures(store: MetricStore) -> tuple[int, int]:
    """(hot points, segments) of datasource ds."""
    (state,) = [p for p in store.state() if p.datasource == "ds"]
    return state.hot_points, state.segments


async def _sum_and_count(store: MetricStore) -> tuple[float, float]:
    router = QueryRouter(store, TtlCache(), Limits())
    sql = pb.QueryRequest(sql="SELECT sum(value), count(*) FROM metrics WHERE metric = 'm'", mode="batch")
    response = await router.query(query_from_proto(sql))
    (row,) = response.rows
    return row.values[0].number_value, row.values[1].number_value


async def _crashed_and_flushed(
    store: MetricStore, data_dir: Path, expected: tuple[float, float]
) -> MetricStore:
    """Stop `store` as a crash would (its WAL closed, nothing flushed) and reopen it: it answers
    `expected`, and again after a flush. Returns the reopened store, flushed and open."""
    await store.wal.close()
    reopened = _opened(data_dir)
    assert await _sum_and_count(reopened) == expected
    await reopened.flush()
    assert await _sum_and_count(reopened) == expected
    return reopened


async def test_a_resend_into_a_segment_gives_its_other_points_back_to_the_hot_tier_durably(tmp_path):
    store = _opened(tmp_path)
    await store.ingest("default", "ds", _three_series())
    await store.flush()
    assert _figures(store) == (0, 1)
    await store.ingest("default", "ds", _point(T0, 5.0))  # a correction of host a's first point
    # The segment is gone; its 299 other points and the correction are in the hot tier.
    assert _figures(store) == (300, 0)
    assert await _sum_and_count(store) == (299 + 5.0, 300)
    # The next corrections of that range supersede in the hot tier: no file is written.
    await store.ingest("default", "ds", _point(T0 + MINUTE, 7.0, host="b"))
    await store.ingest("default", "ds", _point(T0, 6.0))
    assert _figures(store)[1] == 0
    expected = (298 + 6.0 + 7.0, 300)
    assert await _sum_and_count(store) == expected
    # A crash before the next flush: the moved points come back from the WAL, once.
    reopened = await _crashed_and_flushed(store, tmp_path, expected)
    assert _figures(reopened) == (0, 1)
    await reopened.close()


async def test_a_crash_between_the_moved_points_record_and_the_segments_removal_loses_and_doubles_nothing(
    tmp_path, monkeypatch
):
    store = _opened(tmp_path)
    await store.ingest("default", "ds", _three_series())
    await store.flush()

    def crash(*args, **kwargs):
        raise OSError("the process died here")

    # Both WAL records (the correction, the segment's other points) are written; the segment's
    # removal never is.
    monkeypatch.setattr(store.segments, "commit", crash)
    with pytest.raises(OSError):
        await store.ingest("default", "ds", _point(T0, 5.0))
    # Replay rewrites the segment without the correction's key, then without the moved points:
    # every point once, the correction (in the WAL, though never acknowledged) winning.
    reopened = await _crashed_and_flushed(store, tmp_path, (299 + 5.0, 300))
    await reopened.close()


async def test_a_correction_logged_before_the_moved_points_but_applied_after_them_wins(tmp_path):
    """Two corrections into one segment, sent together: both reach the WAL before either holds the
    flush lock, so the first one's moved points are logged after the second correction. The second
    still wins over them, before and after a crash."""
    store = _opened(tmp_path)
    await store.ingest("default", "ds", _three_series())
    await store.flush()
    await asyncio.gather(
        store.ingest("default", "ds", _point(T0, 5.0)),  # host a
        store.ingest("default", "ds", _point(T0, 9.0, host="b")),
    )
    expected = (298 + 5.0 + 9.0, 300)
    assert await _sum_and_count(store) == expected
    reopened = await _crashed_and_flushed(store, tmp_path, expected)
    await reopened.close()


async def test_a_segment_larger_than_a_flush_is_rewritten_not_moved(tmp_path):
    store = _opened(tmp_path, hot_flush_points=200)
    await store.ingest("default", "ds", _three_series())
    await store.flush()
    await store.ingest("default", "ds", _point(T0, 5.0))
    assert _figures(store) == (1, 1)
    assert await _sum_and_count(store) == (299 + 5.0, 300)
    await store.close()


@pytest.mark.parametrize("order", ["increasing", "shuffled"])
async def test_appends_and_out_of_order_points_that_repeat_nothing_are_all_kept(tmp_path, order):
    store = _opened(tmp_path)
    ts = np.arange(T0, T0 + 100 * 1000, 1000, dtype=np.int64)
    if order == "shuffled":
        ts = np.random.default_rng(1).permutation(ts)
    for part in np.array_split(ts, 5):
        series = [AcceptedSeries(SeriesKey.of("m", {"host": "a"}), part, np.ones(len(part)))]
        await store.ingest("default", "ds", series)
        await store.flush()
    answers = await _answers(store)
    assert answers["count/batch"] == [(T0, 100.0)]
    assert answers["sql"] == [[100.0, 100.0]]
    await store.close()


def test_of_two_writes_of_a_key_the_higher_wal_position_wins_whatever_the_insert_order():
    newer = Chunk(7, np.array([1, 1], np.uint64), np.array([10, 20]), np.array([7.0, 7.0]))
    older = Chunk(5, np.array([1, 2], np.uint64), np.array([10, 10]), np.array([5.0, 5.0]))
    part = HotPartition()
    part.add(newer)
    part.supersede(older)  # applied late (it waited for the flush lock), but written first
    part.add(older)
    rows = sorted(zip(*(part.view().table[c].to_pylist() for c in ("series_id", "ts", "value")), strict=True))
    assert rows == [(1, 10, 7.0), (1, 20, 7.0), (2, 10, 5.0)]


@pytest.mark.parametrize("arrival", ["in time order", "back in time", "shuffled"])
def test_last_wins_keeps_the_last_arrival_of_each_key_sorted_by_key(arrival):
    rng = np.random.default_rng(7)
    series = rng.integers(0, 2**64, 40, dtype=np.uint64)
    ids = np.repeat(series, 50)
    ts = np.tile(np.arange(50, dtype=np.int64) // 2, 40)  # each key twice in a row
    if arrival == "back in time":
        ts[1234] = 3  # one series goes back
    elif arrival == "shuffled":
        shuffle = rng.permutation(len(ts))
        ids, ts = ids[shuffle], ts[shuffle]
    last: dict[tuple[int, int], int] = {}
    for i, key in enumerate(zip(ids.tolist(), ts.tolist(), strict=True)):
        last[key] = i
    assert last_wins(ids, ts).tolist() == [last[key] for key in sorted(last)]


@pytest.mark.parametrize("shape", ["same range", "other side narrower", "disjoint", "span past int64"])
def test_keys_in_and_ids_in_answer_as_a_set_of_keys_would(shape):
    rng = np.random.default_rng(11)
    series = rng.integers(0, 2**64, 30, dtype=np.uint64)
    ids = series[rng.integers(0, 30, 3000)]
    ts = rng.integers(0, 400, 3000).astype(np.int64) * 1000
    other_ids = np.concatenate([ids[::7], series[rng.integers(0, 30, 200)]])
    other_ts = np.concatenate([ts[::7], rng.integers(0, 400, 200).astype(np.int64) * 1000])
    if shape == "other side narrower":
        near = (other_ts >= 100_000) & (other_ts < 150_000)
        other_ids, other_ts = other_ids[near], other_ts[near]
    elif shape == "disjoint":
        other_ts = other_ts + 10**9
    elif shape == "span past int64":
        # Both ends survive the time filters: one int64 key a point cannot hold them.
        ts[0], ts[1], other_ts[0], other_ts[-1] = -(2**62), 2**62, -(2**62), 2**62
    others = set(zip(other_ids.tolist(), other_ts.tolist(), strict=True))
    expected = [key in others for key in zip(ids.tolist(), ts.tolist(), strict=True)]
    assert keys_in(ids, ts, other_ids, other_ts).tolist() == expected
    assert sum(expected) > 0 or shape == "disjoint"
    known = np.unique(other_ids)
    assert ids_in(ids, known).tolist() == [i in set(known.tolist()) for i in ids.tolist()]
    assert not ids_in(ids, known[:0]).any()
    assert keys_in(ids, ts, other_ids[:0], other_ts[:0]).tolist() == [False] * len(ts)
