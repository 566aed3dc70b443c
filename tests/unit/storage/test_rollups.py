"""Rollups: 1-minute and 1-hour partial aggregates written at flush and compaction, chosen by the
planner where they answer exactly, downsampling by retention, and data dirs of earlier releases."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from libs.cache import TtlCache
from libs.storage import AcceptedSeries, MetricStore
from libs.storage.keys import SeriesKey, series_id
from libs.storage.rollups import MappedFile
from libs.timeparse import format_time_ms
from platformq.analytics.v1 import query_service_pb2 as pb
from services.query_router import engine as engine_module
from services.query_router.core import Limits, QueryRouter
from services.query_router.engine import QueryEngine
from services.query_router.planner import plan, resolve_window
from services.query_router.spec import query_from_proto
from tests.helpers import opened_store

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
MINUTE = 60_000
HOUR = 3_600_000
DAY = 86_400_000
AGGREGATIONS = ["avg", "sum", "min", "max", "count", "last"]


def _opened(data_dir: Path, **knobs: object) -> MetricStore:
    return opened_store(data_dir, **{"compact_min_files": 100, **knobs})


def _batch(rng: np.random.Generator, start: int, end: int, hosts: int = 4) -> list[AcceptedSeries]:
    out = []
    for h in range(hosts):
        # Irregular timestamps (a few seconds apart, some gaps), distinct per series.
        ts = np.unique(rng.integers(start, end, size=300)).astype(np.int64)
        out.append(AcceptedSeries(SeriesKey.of("cpu", {"host": f"h{h}"}), ts, rng.normal(50, 20, len(ts))))
    return out


async def _loaded(tmp_path: Path) -> MetricStore:
    """Three flushed segments whose minutes and hours overlap, plus hot points in the same hours."""
    rng = np.random.default_rng(7)
    store = _opened(tmp_path)
    for start, end in [(T0, T0 + 3 * HOUR), (T0 + HOUR, T0 + 5 * HOUR), (T0 + 4 * HOUR, T0 + 6 * HOUR)]:
        await store.ingest("default", "ds", _batch(rng, start, end))
        await store.flush()
    await store.ingest("default", "ds", _batch(rng, T0 + 5 * HOUR, T0 + 7 * HOUR))
    return store


def _selection(store: MetricStore) -> pa.Table:
    sids = sorted(store.snapshot("default", "ds").catalog.by_id)
    return pa.table(
        {
            "series_id": pa.array(sids, pa.uint64()),
            "gid": pa.array([i % 2 for i in range(len(sids))], pa.int32()),
        }
    )


def _rows(table: pa.Table) -> list[tuple[int, int, float]]:
    return sorted(zip(*(table[c].to_pylist() for c in ("gid", "bucket", "value")), strict=True))


def _assert_same(got: list[tuple[int, int, float]], want: list[tuple[int, int, float]]) -> None:
    """Same groups and buckets, values equal up to the order of float additions."""
    assert want, "the case selects nothing"
    assert [r[:2] for r in got] == [r[:2] for r in want]
    assert [r[2] for r in got] == pytest.approx([r[2] for r in want], rel=1e-12)


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
async def test_rollup_answers_equal_raw_answers_for_every_aggregation_and_step(tmp_path, aggregation):
    store = await _loaded(tmp_path)
    engine = QueryEngine(store.segments_root)
    selection = _selection(store)
    snapshot = store.snapshot("default", "ds")
    cases = [
        (T0, T0 + 7 * HOUR, 1 * MINUTE, "1m"),
        (T0, T0 + 7 * HOUR, 5 * MINUTE, "1m"),
        (T0 + 30 * MINUTE, T0 + 6 * HOUR, 90 * MINUTE, "1m"),
        (T0, T0 + 7 * HOUR, HOUR, "1h"),
        (T0 + HOUR, T0 + 7 * HOUR, 2 * HOUR, "1h"),
        # Windows that cut rollup buckets at their ends (the cut buckets come from raw points).
        (T0 + 7_123, T0 + 6 * HOUR + 59 * MINUTE + 13_456, MINUTE, "1m"),
        (T0 + 7_123, T0 + 6 * HOUR + 59 * MINUTE + 13_456, HOUR, "1h"),
        (T0 + 25 * MINUTE + 1, T0 + 25 * MINUTE + 50_000, MINUTE, "1m"),  # inside one minute
    ]
    for start, end, step, resolution in cases:
        window = resolve_window(None, start, end, step, T0 + DAY, 100_000)
        for mode in ("batch", "auto"):
            the_plan = plan(mode, window, snapshot, aggregation)
            assert all(f.rollup == resolution for f in the_plan.fragments), (step, the_plan)
            assert "rollups" in the_plan.reason
            for fragment in the_plan.fragments:
                rolled = engine.run(fragment, selection, aggregation, window.bucketing)
                raw = engine.run(
                    dataclasses.replace(fragment, rollup=None), selection, aggregation, window.bucketing
                )
                _assert_same(_rows(rolled.table), _rows(raw.table))
    await store.close()


@pytest.mark.parametrize(
    ("aggregation", "start", "end", "step"),
    [
        ("p95", T0, T0 + 7 * HOUR, HOUR),  # percentiles need raw points
        ("rate", T0, T0 + 7 * HOUR, HOUR),
        ("max", T0, T0 + 7 * HOUR, 30 * 1000),  # step finer than a minute
    ],
)
async def test_the_planner_reads_raw_points_where_rollups_cannot_answer_exactly(
    tmp_path, aggregation, start, end, step
):
    store = await _loaded(tmp_path)
    window = resolve_window(None, start, end, step, T0 + DAY, 100_000)
    the_plan = plan("batch", window, store.snapshot("default", "ds"), aggregation)
    assert [f.rollup for f in the_plan.fragments] == [None] and "rollups" not in the_plan.reason
    await store.close()


async def test_explain_shows_the_rollup_and_the_answer_matches_the_raw_one(tmp_path):
    store = await _loaded(tmp_path)
    router = QueryRouter(store, TtlCache(), Limits())

    def request(step: str) -> pb.QueryRequest:
        return pb.QueryRequest(
            datasource="ds",
            metrics=["cpu"],
            aggregation="max",
            group_by=["host"],
            mode="batch",
            start=format_time_ms(T0),
            end=format_time_ms(T0 + 7 * HOUR),
            step=step,
        )

    explained = await router.explain(query_from_proto(request("1h")))
    assert explained.plan.reason.endswith("segments read from their 1-hour rollups")
    by_hour = await router.query(query_from_proto(request("1h")))
    by_minute = await router.query(query_from_proto(request("1m")))  # 1-minute rollups, regrouped here
    for hourly, minutely in zip(by_hour.series, by_minute.series, strict=True):
        regrouped: dict[int, float] = {}
        for p in minutely.points:
            bucket = p.timestamp_ms // HOUR * HOUR
            regrouped[bucket] = max(regrouped.get(bucket, -np.inf), p.value)
        assert {p.timestamp_ms: p.value for p in hourly.points} == regrouped
    await store.close()


def _rollup_files(data_dir: Path) -> list[Path]:
    return sorted((data_dir / "segments").glob("tenant=*/datasource=*/rollups/*/day=*/*.arrow"))


def _map_files(data_dir: Path) -> list[Path]:
    return sorted((data_dir / "segments").glob("tenant=*/datasource=*/maps/day=*/*.arrow"))


async def test_compaction_writes_the_merged_segments_rollups_and_drops_the_old_ones(tmp_path):
    store = await _loaded(tmp_path)
    await store.flush()
    router = QueryRouter(store, TtlCache(), Limits())
    request = pb.QueryRequest(
        datasource="ds",
        metrics=["cpu"],
        aggregation="avg",
        group_by=["host"],
        start=format_time_ms(T0),
        end=format_time_ms(T0 + 7 * HOUR),
        step="1h",
        mode="batch",
    )
    before = await router.query(query_from_proto(request))
    assert len(_rollup_files(tmp_path)) == 2 * 4
    store.config = dataclasses.replace(store.config, compact_min_files=2)
    await store.compact()
    (merged,) = store.snapshot("default", "ds").segments
    assert merged.rollups and all(merged.rollup_path(r).exists() for r in merged.rollups)
    store.segments.delete_doomed(grace_s=0)
    assert _rollup_files(tmp_path) == sorted(merged.rollup_path(r) for r in ("1m", "1h"))
    assert _map_files(tmp_path) == [merged.map_path]
    after = await QueryRouter(store, TtlCache(), Limits()).query(query_from_proto(request))

    def flat(response: pb.QueryResponse) -> list[float]:
        return [x for s in response.series for p in s.points for x in (p.timestamp_ms, p.value)]

    assert flat(after) == pytest.approx(flat(before), rel=1e-12) and flat(before)
    await store.close()


async def test_retention_keeps_rollups_longer_than_raw_points_per_datasource(tmp_path):
    store = _opened(
        tmp_path,
        retention_days={"short": 1.0},
        default_retention_days=30.0,
        rollup_retention_days={"short": 10.0},
    )
    key = SeriesKey.of("cpu", {"host": "a"})
    ts = T0 + np.arange(0, 2 * HOUR, 10_000, dtype=np.int64)
    for ds in ("short", "other"):
        await store.ingest("default", ds, [AcceptedSeries(key, ts, np.arange(len(ts), dtype=np.float64))])
    await store.flush()
    router = QueryRouter(store, TtlCache(), Limits())

    async def answer(aggregation: str, step: str = "1h") -> list[tuple[int, float]]:
        request = pb.QueryRequest(
            datasource="short",
            metrics=["cpu"],
            aggregation=aggregation,
            step=step,
            mode="batch",
            start=format_time_ms(T0),
            end=format_time_ms(T0 + 2 * HOUR),
        )
        response = await QueryRouter(store, TtlCache(), Limits()).query(query_from_proto(request))
        return [(p.timestamp_ms, p.value) for s in response.series for p in s.points]

    full = {agg: await answer(agg) for agg in ("max", "count", "p50")}
    assert full["count"] == [(T0, 360.0), (T0 + HOUR, 360.0)]

    # Two days on: "short" keeps only its rollups, "other" (30 days) everything.
    assert store.apply_retention(now_ms=T0 + 2 * DAY) == 1
    short = store.snapshot("default", "short")
    assert not short.segments and len(short.downsampled) == 1
    assert len(store.snapshot("default", "other").segments) == 1
    store.segments.delete_doomed(grace_s=0)
    assert not short.downsampled[0].path.exists(), "the raw file of a downsampled segment is deleted"
    assert not short.downsampled[0].map_path.exists(), "and so is its points map"
    assert await answer("max") == full["max"] and await answer("count") == full["count"]
    assert await answer("p50") == [], "percentiles need raw points, which are gone"
    sql = pb.QueryRequest(sql="SELECT count(*) FROM metrics WHERE datasource = 'short'", mode="batch")
    assert (await router.query(query_from_proto(sql))).rows[0].values[0].number_value == 0
    await store.close()

    # The downsampled state survives a restart; past the rollup retention the segment goes.
    store = _opened(tmp_path, retention_days={"short": 1.0}, rollup_retention_days={"short": 10.0})
    assert len(store.snapshot("default", "short").downsampled) == 1
    assert await answer("max") == full["max"]
    assert store.apply_retention(now_ms=T0 + 11 * DAY) == 1
    assert store.snapshot("default", "short").downsampled == ()
    assert store.snapshot("default", "other").segments, "30 days have not passed for 'other'"
    await store.close()


async def test_a_data_dir_of_the_release_before_rollups_is_migrated_on_open(tmp_path):
    store = await _loaded(tmp_path)
    await store.close()
    # What the previous release left: no rollup files, manifest entries without rollups/raw.
    for path in _rollup_files(tmp_path) + _map_files(tmp_path):
        path.unlink()
    manifest_path = tmp_path / "segments" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    for entry in manifest["segments"]:
        del entry["rollups"], entry["raw"], entry["mapped"]
    manifest_path.write_text(json.dumps(manifest))

    store = _opened(tmp_path)
    segments = store.snapshot("default", "ds").segments
    assert len(segments) == 4 and all(s.rollups == ("1h", "1m") and s.mapped for s in segments)
    assert all(p.exists() for s in segments for p in s.files())
    assert len(_map_files(tmp_path)) == 4
    window = resolve_window(None, T0, T0 + 7 * HOUR, HOUR, T0 + DAY, 1000)
    fragment = plan("batch", window, store.snapshot("default", "ds"), "sum").fragments[0]
    engine = QueryEngine(store.segments_root)
    sel = pa.table(
        {
            "series_id": pa.array([series_id("cpu", {"host": "h0"})], pa.uint64()),
            "gid": pa.array([0], pa.int32()),
        }
    )
    rolled = engine.run(fragment, sel, "sum", window.bucketing)
    raw = engine.run(dataclasses.replace(fragment, rollup=None), sel, "sum", window.bucketing)
    assert fragment.rollup == "1h"
    _assert_same(_rows(rolled.table), _rows(raw.table))
    await store.close()


async def test_a_points_map_holds_the_segments_points_sorted_by_series_and_time(tmp_path):
    store = await _loaded(tmp_path)
    await store.flush()
    for segment in store.snapshot("default", "ds").segments:
        stored = pa.ipc.open_file(pa.memory_map(str(segment.map_path), "r")).read_all()
        # The series column is run-end encoded: one id per series, not per point.
        assert stored["series_id"].chunk(0).values.to_pylist() == sorted(
            set(pq.read_table(segment.path)["series_id"].to_pylist())
        )
        assert stored.num_rows == segment.rows
        mapped = MappedFile.open(segment.map_path)  # its columns as stored, read back in int64 / float64
        rows = np.arange(stored.num_rows)
        parquet = pq.read_table(segment.path).sort_by([("series_id", "ascending"), ("ts", "ascending")])
        assert pc.run_end_decode(stored["series_id"].chunk(0)).equals(parquet["series_id"].chunk(0))
        assert (mapped.take(0, rows) == parquet["ts"].to_numpy()).all()
        assert (mapped.take(1, rows) == parquet["value"].to_numpy()).all()
    await store.close()


async def test_a_segment_whose_points_map_is_missing_gets_it_back_on_open(tmp_path):
    # An earlier release opening the directory deletes the files it does not know.
    store = await _loaded(tmp_path)
    await store.flush()
    await store.close()
    for path in _map_files(tmp_path):
        path.unlink()
    store = _opened(tmp_path)
    segments = store.snapshot("default", "ds").segments
    assert len(_map_files(tmp_path)) == len(segments) == 4
    await store.close()


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
async def test_many_series_and_sparse_buckets_answer_as_the_raw_path(tmp_path, aggregation, monkeypatch):
    # 120 series, each its own group: the points maps are searched for every series at once
    # (vectorised) and, with the dense-key limits at 0, partials merge over renumbered keys.
    rng = np.random.default_rng(11)
    store = _opened(tmp_path)
    await store.ingest("default", "ds", _batch(rng, T0, T0 + 3 * HOUR, hosts=120))
    await store.flush()
    selection = _selection(store)
    selection = selection.set_column(1, "gid", pa.array(np.arange(selection.num_rows, dtype=np.int32)))
    engine = QueryEngine(store.segments_root)
    window = resolve_window(None, T0 + 7_123, T0 + 2 * HOUR + 13_456, MINUTE, T0 + DAY, 100_000)
    (fragment,) = plan("batch", window, store.snapshot("default", "ds"), aggregation).fragments
    raw = _rows(
        engine.run(dataclasses.replace(fragment, rollup=None), selection, aggregation, window.bucketing).table
    )
    assert len({g for g, _, _ in raw}) == 120
    _assert_same(_rows(engine.run(fragment, selection, aggregation, window.bucketing).table), raw)
    monkeypatch.setattr(engine_module, "DENSE_KEYS_MIN", 0)
    monkeypatch.setattr(engine_module, "DENSE_KEYS_PER_ROW", 0)
    _assert_same(_rows(engine.run(fragment, selection, aggregation, window.bucketing).table), raw)
    await store.close()


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
async def test_few_series_at_a_step_no_rollup_fits_read_the_points_maps_with_the_same_numbers(
    tmp_path, aggregation
):
    store = await _loaded(tmp_path)
    engine = QueryEngine(store.segments_root)
    selection = _selection(store)
    snapshot = store.snapshot("default", "ds")
    for start, end, step in [
        (T0, T0 + 7 * HOUR, 10_000),
        (T0 + 1_234, T0 + 6 * HOUR + 5_678, 7_000),
        (T0, T0 + 3 * HOUR, 90_000),
    ]:
        window = resolve_window(None, start, end, step, T0 + DAY, 100_000)
        for mode in ("batch", "auto"):
            the_plan = plan(mode, window, snapshot, aggregation, selection.num_rows)
            assert all(f.rollup == "points" for f in the_plan.fragments) and "points maps" in the_plan.reason
            for fragment in the_plan.fragments:
                mapped = engine.run(fragment, selection, aggregation, window.bucketing)
                raw = engine.run(
                    dataclasses.replace(fragment, rollup=None), selection, aggregation, window.bucketing
                )
                _assert_same(_rows(mapped.table), _rows(raw.table))
    # Many series (or no count of them, as before the selection is known) keep DuckDB.
    window = resolve_window(None, T0, T0 + 7 * HOUR, 10_000, T0 + DAY, 100_000)
    assert all(f.rollup is None for f in plan("batch", window, snapshot, aggregation, 10_000).fragments)
    assert all(f.rollup is None for f in plan("batch", window, snapshot, aggregation).fragments)
    # Percentiles are not mergeable: raw points through DuckDB at any size.
    assert all(f.rollup is None for f in plan("batch", window, snapshot, "p99", 1).fragments)
    await store.close()


async def test_the_duckdb_connection_is_made_by_the_first_fragment_that_needs_it(tmp_path, monkeypatch):
    # A connection costs about 25 MiB resident at first use: ingest, flushes, rollup and points-map
    # answers (raw points of few series too) and metadata make none; a percentile (raw points
    # through DuckDB) makes one, and later ones reuse it.
    connects = []
    real = duckdb.connect

    def counted(*args, **kwargs):
        connects.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(duckdb, "connect", counted)
    store = await _loaded(tmp_path)
    router = QueryRouter(store, TtlCache(), Limits(cache_ttl_seconds=0))

    def request(aggregation: str, step: str) -> pb.QueryRequest:
        return pb.QueryRequest(
            datasource="ds",
            metrics=["cpu"],
            aggregation=aggregation,
            mode="batch",
            start=format_time_ms(T0),
            end=format_time_ms(T0 + 7 * HOUR),
            step=step,
        )

    rolled = await router.query(query_from_proto(request("max", "1h")))
    from_points = await router.query(query_from_proto(request("avg", "10s")))
    raw = await router.query(query_from_proto(request("raw", "")))
    await router.metadata("ds")
    assert rolled.series and from_points.series and raw.series and connects == []
    for _ in range(2):
        percentile = await router.query(query_from_proto(request("p99", "1h")))
        assert percentile.series and len(connects) == 1
    await store.close()
