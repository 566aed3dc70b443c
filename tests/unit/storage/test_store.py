"""The metric store: ingest into the hot tier, flush into segments, crash recovery, orphans,
compaction, retention, the hot tier's memory bound, and separation of tenants and datasources."""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import subprocess
import sys
import time
import tracemalloc
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from libs.errors import ResourceExhausted
from libs.storage import AcceptedSeries, MetricStore, StoreConfig
from libs.storage import store as store_module
from libs.storage.keys import SeriesKey, series_id
from libs.storage.segments import Points, SegmentStore
from platformq.analytics.v1 import events_pb2
from tests.helpers import REPO_ROOT

DAY_MS = 86_400_000
HOUR_MS = 3_600_000
T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
# Small WAL files, so that a flush has whole files to truncate.
WAL_FILE_BYTES = 512

Point = tuple[int, int, float]  # (series id, ts, value)


def _config(data_dir: Path, **overrides: object) -> StoreConfig:
    knobs: dict[str, object] = {
        "hot_max_points": 1_000_000,
        "hot_flush_points": 1_000_000,
        "hot_flush_seconds": 3600.0,
        "compact_min_files": 100,
        "wal_fsync": False,
    }
    knobs.update(overrides)
    return StoreConfig(data_dir=data_dir, **knobs)


def _opened(data_dir: Path, **overrides: object) -> MetricStore:
    store = MetricStore(_config(data_dir, **overrides))
    store.wal.file_bytes = WAL_FILE_BYTES
    store.open()
    return store


def _series(metric: str, labels: dict[str, str], ts: list[int], values: list[float] | None = None):
    ts_array = np.asarray(ts, dtype=np.int64)
    value_array = np.asarray(values, dtype=np.float64) if values is not None else (ts_array % 100_000) / 7.0
    return AcceptedSeries(SeriesKey.of(metric, labels), ts_array, value_array)


def _expected(*batches: list[AcceptedSeries]) -> Counter[Point]:
    points: Counter[Point] = Counter()
    for batch in batches:
        for s in batch:
            sid = series_id(s.key.metric, s.key.labels)
            points.update(zip([sid] * len(s.ts), s.ts.tolist(), s.values.tolist(), strict=True))
    return points


def _rows(table: pa.Table) -> list[Point]:
    return list(
        zip(table["series_id"].to_pylist(), table["ts"].to_pylist(), table["value"].to_pylist(), strict=True)
    )


def _stored(store: MetricStore, tenant: str = "default", datasource: str = "ds") -> Counter[Point]:
    """Every point a query of this datasource can see, counted: the live segments plus the hot tier."""
    snapshot = store.snapshot(tenant, datasource)
    if snapshot is None:
        return Counter()
    points: Counter[Point] = Counter()
    for segment in snapshot.segments:
        points.update(_rows(pq.read_table(segment.path)))
    if snapshot.hot is not None:
        points.update(_rows(snapshot.hot.table))
    return points


def _parquet_files(data_dir: Path, datasource: str = "ds", tenant: str = "default") -> list[Path]:
    base = data_dir / "segments" / f"tenant={tenant}" / f"datasource={datasource}" / "points"
    return sorted(base.glob("day=*/*.parquet"))


def _manifest(data_dir: Path) -> dict:
    return json.loads((data_dir / "segments" / "manifest.json").read_text())


def _wal_files(data_dir: Path) -> list[Path]:
    return sorted((data_dir / "wal").glob("wal-*.log"))


# Batches the crash scenarios ingest; the child process imports them from this module.
CPU_A = {"host": "a"}
CPU_B = {"host": "b"}
BATCHES = [
    [
        _series("cpu", {"host": f"h{i}"}, list(range(T0 + 1_000 * b, T0 + 1_000 * b + 40 + 5 * i)))
        for i in range(2)
    ]
    + [_series("mem", {}, [T0 + 5_000_000 + b])]
    for b in range(6)
]


# ---- ingest and snapshot ------------------------------------------------------------------


async def test_ingested_points_are_in_the_hot_tier_at_once(tmp_path):
    store = _opened(tmp_path)
    batch = [_series("cpu", CPU_A, [T0, T0 + 1000]), _series("cpu", CPU_B, [T0 + 500], [3.5])]
    encoded = await store.ingest("default", "ds", batch)

    assert encoded is not None
    event = events_pb2.MetricsBatchEvent.FromString(encoded.payload)
    assert event.datasource == "ds" and event.batch_id == encoded.batch_id and len(event.series) == 2
    snapshot = store.snapshot("default", "ds")
    assert snapshot.segments == ()
    assert Counter(_rows(snapshot.hot.table)) == _expected(batch)
    assert (snapshot.hot_min_ts, snapshot.hot_max_ts) == (T0, T0 + 1000)
    sid_a, sid_b = series_id("cpu", CPU_A), series_id("cpu", CPU_B)
    assert snapshot.catalog.by_id == {sid_a: SeriesKey.of("cpu", CPU_A), sid_b: SeriesKey.of("cpu", CPU_B)}
    assert snapshot.catalog.by_metric == {"cpu": {sid_a, sid_b}}
    assert snapshot.catalog.label_values == {"host": {"a": {sid_a}, "b": {sid_b}}}
    assert store.snapshot("default", "other") is None
    await store.close()


async def test_flush_moves_points_into_sorted_day_segments_and_truncates_the_wal(tmp_path):
    store = _opened(tmp_path)
    # Two days, several series, ingested out of order and over many batches (so the WAL rolls).
    batches = [
        [
            _series("cpu", CPU_B, [T0 + DAY_MS + 7_000 - 10 * i, T0 + 3_000 + i]),
            _series("cpu", CPU_A, [T0 + 9_000 - i, T0 + DAY_MS + i]),
            _series("disk", {"dev": "sda"}, [T0 + 50 + i]),
        ]
        for i in range(12)
    ]
    for batch in batches:
        await store.ingest("default", "ds", batch)
    assert len(_wal_files(tmp_path)) > 2, "the WAL never rolled; the truncation check covers nothing"
    last_lsn = store.wal.last_lsn

    flushed = await store.flush()

    assert flushed == sum(len(s.ts) for batch in batches for s in batch)
    files = _parquet_files(tmp_path)
    assert [f.parent.name for f in files] == ["day=2026-01-01", "day=2026-01-02"]
    for path in files:
        table = pq.read_table(path)
        sids, ts = table["series_id"].to_numpy(), table["ts"].to_numpy()
        assert np.all((sids[:-1] < sids[1:]) | ((sids[:-1] == sids[1:]) & (ts[:-1] < ts[1:]))), (
            f"{path.name} is not sorted by (series_id, ts)"
        )
        day = datetime.strptime(path.parent.name, "day=%Y-%m-%d").replace(tzinfo=UTC)
        assert set((ts // DAY_MS).tolist()) == {int(day.timestamp() * 1000) // DAY_MS}
    snapshot = store.snapshot("default", "ds")
    assert snapshot.hot is None and store.hot.points == 0
    assert sorted(s.path for s in snapshot.segments) == files
    assert _stored(store) == _expected(*batches)
    manifest = _manifest(tmp_path)
    assert manifest["flushed_through"] == last_lsn
    assert len(manifest["series"]) == 1
    # Every WAL file but the one being written is gone, and nothing is left to replay.
    assert len(_wal_files(tmp_path)) == 1
    assert list(store.wal.replay(after_lsn=manifest["flushed_through"])) == []
    await store.close()


async def test_graceful_reopen_finds_every_point_once(tmp_path):
    store = _opened(tmp_path)
    await store.ingest("default", "ds", BATCHES[0])
    await store.flush()
    await store.ingest("default", "ds", BATCHES[1])
    await store.close()

    reopened = _opened(tmp_path)
    assert _stored(reopened) == _expected(BATCHES[0], BATCHES[1])
    assert reopened.hot.points == 0, "close() leaves nothing in the hot tier to replay"
    assert set(reopened.snapshot("default", "ds").catalog.by_metric) == {"cpu", "mem"}
    await reopened.ingest("default", "ds", BATCHES[2])
    assert _stored(reopened) == _expected(*BATCHES[:3])
    await reopened.close()


# ---- crash recovery -----------------------------------------------------------------------

# Runs the steps of a scenario on a store, then dies by SIGKILL: no close, no flush, no exit
# handlers. "crash-in-truncate" kills the process inside the flush, after the manifest commit and
# before the WAL truncation.
CRASHING_CHILD = """
import asyncio, os, signal, sys
from pathlib import Path

from tests.unit.storage.test_store import BATCHES, _opened


def die(*_args):
    os.kill(os.getpid(), signal.SIGKILL)


async def main(data_dir, steps):
    store = _opened(Path(data_dir), wal_fsync=True)
    for step in steps:
        if step == "flush":
            await store.flush()
        elif step == "crash-in-truncate":
            store.wal.truncate_through = die
            await store.flush()
        else:
            await store.ingest("default", "ds", BATCHES[int(step)])
    die()


asyncio.run(main(sys.argv[1], sys.argv[2:]))
"""


def _crash_after(data_dir: Path, steps: list[str]) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", CRASHING_CHILD, str(data_dir), *steps],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == -signal.SIGKILL, f"the child did not crash as planned: {proc.stderr}"


@pytest.mark.parametrize(
    "steps",
    [
        pytest.param(["0", "1"], id="hot-only"),
        pytest.param(["0", "1", "flush"], id="after-flush"),
        pytest.param(["0", "flush", "1", "2"], id="flush-then-more"),
        pytest.param(["0", "1", "crash-in-truncate"], id="flush-committed-wal-not-truncated"),
        pytest.param(["0", "flush", "1", "2", "crash-in-truncate"], id="second-flush-not-truncated"),
    ],
)
async def test_every_point_is_found_exactly_once_after_a_crash(tmp_path, steps):
    _crash_after(tmp_path, steps)
    expected = _expected(*(BATCHES[int(s)] for s in steps if s.isdigit()))

    store = _opened(tmp_path)
    assert _stored(store) == expected
    assert set(store.snapshot("default", "ds").catalog.by_metric) == {"cpu", "mem"}
    # New points after the crash, then a flush: still each point once.
    await store.ingest("default", "ds", BATCHES[5])
    await store.flush()
    assert store.hot.points == 0
    assert _stored(store) == expected + _expected(BATCHES[5])
    await store.close()

    store = _opened(tmp_path)
    assert _stored(store) == expected + _expected(BATCHES[5])
    await store.close()


async def test_orphan_files_are_deleted_on_open(tmp_path):
    store = _opened(tmp_path)
    await store.ingest("default", "ds", BATCHES[0])
    await store.flush()
    await store.close()
    (live,) = _parquet_files(tmp_path)
    base = tmp_path / "segments" / "tenant=default" / "datasource=ds"
    # What a crash mid-flush leaves: a complete file not yet in the manifest, a half-written temp
    # file, a series file never committed, and the same in a datasource the manifest never saw.
    orphans = [
        live.with_name(f"{T0}-{T0 + 1}-0123456789abcdef.parquet"),
        live.with_name("0-1-feed.tmp"),
        base / "series" / "deadbeef.parquet",
        tmp_path
        / "segments"
        / "tenant=default"
        / "datasource=ghost"
        / "points"
        / "day=2026-01-01"
        / "x.parquet",
    ]
    for orphan in orphans:
        orphan.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(live, orphan)

    store = _opened(tmp_path)

    assert not [p for p in orphans if p.exists()]
    assert _parquet_files(tmp_path) == [live]
    assert _stored(store) == _expected(BATCHES[0])
    assert store.snapshot("default", "ghost") is None
    await store.close()


# ---- compaction and retention -------------------------------------------------------------


async def test_compaction_merges_a_days_files_into_one_without_losing_or_doubling_points(tmp_path, caplog):
    store = _opened(tmp_path, compact_min_files=3)
    batches = [
        [_series("cpu", CPU_A, [T0 + 10 * i + k for k in range(5)]), _series("cpu", CPU_B, [T0 + 3 * i])]
        for i in range(3)
    ]
    await store.ingest("default", "ds", batches[0])
    await store.flush()
    await store.ingest("default", "ds", batches[1])
    await store.flush()
    await store.compact()
    assert len(store.snapshot("default", "ds").segments) == 2, "two files are below compact_min_files"

    await store.ingest("default", "ds", batches[2])
    await store.flush()
    await store.compact()

    (merged,) = store.snapshot("default", "ds").segments
    assert merged.rows == 18
    table = pq.read_table(merged.path)
    assert _rows(table) == sorted(_expected(*batches)), "the merged file is not sorted by (series, ts)"
    assert _stored(store) == _expected(*batches)
    assert [Path(s["path"]).name for s in _manifest(tmp_path)["segments"]] == [merged.path.name]
    # Replaced files outlive the manifest a while (a query may still read them): not past a close.
    await store.close()
    assert _parquet_files(tmp_path) == [merged.path]

    # So a restart after a clean stop finds no file to call a crash's leftover.
    store = _opened(tmp_path, compact_min_files=3)
    assert "removing orphan segment file" not in caplog.text
    assert _stored(store) == _expected(*batches)
    await store.close()


async def test_retention_drops_segments_wholly_older_than_their_datasources_retention(tmp_path):
    store = _opened(tmp_path, retention_days={"short": 1.0}, default_retention_days=30.0)
    now = T0 + HOUR_MS
    old = [_series("cpu", CPU_A, [T0 - 10 * DAY_MS, T0 - 10 * DAY_MS + 1])]
    # Its day starts before the cutoff (now - 1 day) but its newest point is after it: kept.
    straddling = [_series("cpu", CPU_A, [T0 - DAY_MS, T0 - DAY_MS + 2 * HOUR_MS])]
    recent = [_series("cpu", CPU_A, [T0 + 10])]
    ancient = [_series("cpu", CPU_A, [T0 - 40 * DAY_MS])]
    for batch in (old, straddling, recent):
        await store.ingest("default", "short", batch)
    for batch in (old, recent, ancient):
        await store.ingest("default", "long", batch)
    await store.flush()
    assert len(store.segments.segments) == 6

    assert store.apply_retention(now_ms=now) == 2

    assert _stored(store, datasource="short") == _expected(straddling, recent)
    assert _stored(store, datasource="long") == _expected(old, recent)
    await store.close()
    store = _opened(tmp_path, retention_days={"short": 1.0}, default_retention_days=30.0)
    assert _stored(store, datasource="short") == _expected(straddling, recent)
    assert _stored(store, datasource="long") == _expected(old, recent)
    assert store.apply_retention(now_ms=now) == 0
    await store.close()


# ---- the hot tier's memory bound ----------------------------------------------------------


def _points_batch(n: int, first_ts: int) -> list[AcceptedSeries]:
    return [_series("cpu", CPU_A, list(range(first_ts, first_ts + n)))]


async def test_ingest_over_the_hot_bound_is_refused_when_no_flush_frees_room(tmp_path, monkeypatch):
    store = _opened(tmp_path, hot_max_points=100)
    accepted = _points_batch(80, T0)
    await store.ingest("default", "ds", accepted)
    # The store waits up to 30 s for the flusher (not running here); a clock that jumps makes the
    # wait short: the first wait times out almost at once, the next check finds the deadline past.
    readings = iter([0.0, 29.95])
    clock = SimpleNamespace(time=time.time, monotonic=lambda: next(readings, 1_000.0))
    monkeypatch.setattr(store_module, "time", clock)

    with pytest.raises(ResourceExhausted) as err:
        await store.ingest("default", "ds", _points_batch(30, T0 + 1_000))

    assert "HOT_MAX_POINTS=100" in err.value.reason and "retry later" in err.value.reason
    assert _stored(store) == _expected(accepted)
    # What still fits is accepted.
    fits = _points_batch(20, T0 + 2_000)
    await store.ingest("default", "ds", fits)
    monkeypatch.undo()
    await store.close()
    store = _opened(tmp_path)
    assert _stored(store) == _expected(accepted, fits)
    await store.close()


async def test_ingest_over_the_hot_bound_proceeds_once_the_flusher_frees_room(tmp_path):
    store = _opened(tmp_path, hot_max_points=100, hot_flush_points=50)
    # Recent points: the flusher also applies retention against the real clock.
    recent = int(time.time() * 1000) - HOUR_MS
    first = _points_batch(80, recent)
    await store.ingest("default", "ds", first)
    second = _points_batch(40, recent + 1_000)
    waiting = asyncio.create_task(store.ingest("default", "ds", second))
    await asyncio.sleep(0)
    assert not waiting.done(), "an ingest over the bound went through with no flush"
    assert store.hot.points == 80

    await store.start()
    await asyncio.wait_for(waiting, 20)

    assert store.stats["flushes"] >= 1
    assert _stored(store) == _expected(first, second)
    assert store.hot.points <= 100
    await store.close()


@pytest.mark.parametrize("days", [1, 2])
def test_a_write_holds_its_points_at_most_a_few_times_over(tmp_path, days):
    # Found with benchmarks.churn at 1,000,000 series: a write of one day's points copied every
    # column through a mask that was all true and kept its deduplication index to the end (a probe
    # of 2 M churn points: 122 bytes a point of numpy memory at its peak, 80 after). numpy reports
    # its memory to tracemalloc; Arrow's and Parquet's buffers are not counted here.
    rng = np.random.default_rng(days)
    n_series, per = 20_000, 10
    sids = np.repeat(rng.integers(1, 2**63, n_series, dtype=np.uint64), per)
    # Each series' points 10 s apart from a time of its own, as a flush of recent points holds them.
    starts = rng.integers(0, days * DAY_MS - per * 10_000, n_series)
    ts = (T0 + starts[:, None] + np.arange(per) * 10_000).ravel()
    values = rng.normal(size=len(sids))
    segments = SegmentStore(tmp_path)

    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        written = segments.write_points("default", "ds", sids, ts, values)
        peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()

    assert len(written) == days and sum(s.rows for s in written) == len(sids)
    # One day: 59 bytes a point (100 before); two days, split by masks: 79 (87 before).
    assert peak / len(sids) < (80 if days == 1 else 100), f"{peak / len(sids):.0f} bytes a point"


def test_a_flush_write_does_not_hold_its_batches_joined_beside_its_own_copies(tmp_path):
    # The flusher used to join its hot chunks' columns and pass them to write_points, which kept
    # them for the whole write: 24 bytes a point more at the peak (83 bytes a point here, 59 now).
    rng = np.random.default_rng(5)
    batches = []
    for b in range(20):  # 20 batches of 1,000 series x 10 points, 10 s apart
        sids = np.repeat(rng.integers(1, 2**63, 1_000, dtype=np.uint64), 10)
        ts = T0 + b * 100_000 + np.tile(np.arange(10) * 10_000, 1_000)
        batches.append(Points(sids, ts, rng.normal(size=len(ts))))
    n = sum(len(b.ts) for b in batches)

    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        written = SegmentStore(tmp_path).write_batches("default", "ds", batches)
        peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()

    assert sum(s.rows for s in written) == n
    assert peak / n < 70, f"{peak / n:.0f} bytes a point"


async def test_a_bounded_flush_writes_the_oldest_batches_and_keeps_every_point_visible(tmp_path):
    # Found with benchmarks.churn at 1,000,000 series: when ingest outran the flusher, one flush
    # took everything that had piled up (4.25 M points), and its sort and encoding buffers (about
    # 150 bytes a point) took the process to 990 MiB. The background loop now writes at most
    # HOT_FLUSH_POINTS a round, oldest batches first.
    store = _opened(tmp_path)
    batches = [[_series("cpu", CPU_A, list(range(T0 + 1_000 * b, T0 + 1_000 * b + 100)))] for b in range(5)]
    batches.append([_series("cpu", CPU_B, list(range(T0, T0 + 400)))])  # one batch over the bound alone
    lsns = []
    for batch in batches:
        await store.ingest("default", "ds", batch)
        lsns.append(store.wal.last_lsn)

    assert await store.flush(max_points=250) == 200  # the third batch would pass 250
    assert store.hot.points == 3 * 100 + 400
    assert _manifest(tmp_path)["flushed_through"] == lsns[1]
    assert _stored(store) == _expected(*batches)  # each point in a segment or in the hot tier, once
    assert await store.flush(max_points=250) == 200
    assert await store.flush(max_points=250) == 100  # the next batch alone passes the bound
    assert await store.flush(max_points=250) == 400  # a batch over it goes whole
    assert store.hot.points == 0 and _manifest(tmp_path)["flushed_through"] == lsns[-1]
    assert _stored(store) == _expected(*batches)
    await store.close()

    reopened = _opened(tmp_path)  # nothing replayed twice, nothing lost
    assert reopened.hot.points == 0 and _stored(reopened) == _expected(*batches)
    await reopened.close()


async def test_the_flusher_writes_a_backlog_in_rounds_of_at_most_hot_flush_points(tmp_path):
    store = _opened(tmp_path, hot_flush_points=150)
    recent = int(time.time() * 1000) - HOUR_MS  # the flusher also applies retention by the real clock
    batches = [
        [_series("cpu", CPU_A, list(range(recent + 1_000 * b, recent + 1_000 * b + 100)))] for b in range(4)
    ]
    for batch in batches:
        await store.ingest("default", "ds", batch)

    await store.start()
    deadline = time.monotonic() + 20
    while store.hot.points >= 150 and time.monotonic() < deadline:
        await asyncio.sleep(0.05)

    # 400 points over the trigger: rounds of 100 (a second batch would pass 150) until under it.
    assert store.stats["flushes"] == 3 and store.hot.points == 100
    assert len(_parquet_files(tmp_path)) == 3
    assert _stored(store) == _expected(*batches)
    await store.close()


# ---- tenants and datasources --------------------------------------------------------------


async def test_tenants_and_datasources_stay_separate(tmp_path):
    store = _opened(tmp_path)
    data = {
        ("default", "web"): [_series("cpu", CPU_A, [T0, T0 + 1])],
        ("default", "db"): [_series("cpu", CPU_B, [T0 + 2]), _series("qps", {}, [T0 + 3])],
        ("acme", "web"): [_series("cpu", {"host": "z"}, [T0 + 4, T0 + 5, T0 + 6])],
    }
    for (tenant, datasource), batch in data.items():
        await store.ingest(tenant, datasource, batch)

    def check() -> None:
        assert store.datasources("default") == ["db", "web"]
        assert store.datasources("acme") == ["web"]
        assert store.snapshot("acme", "db") is None
        for (tenant, datasource), batch in data.items():
            snapshot = store.snapshot(tenant, datasource)
            assert _stored(store, tenant, datasource) == _expected(batch)
            assert set(snapshot.catalog.by_id) == {series_id(s.key.metric, s.key.labels) for s in batch}
            for segment in snapshot.segments:
                assert (segment.tenant, segment.datasource) == (tenant, datasource)
                assert f"tenant={tenant}/datasource={datasource}/" in str(segment.path)

    check()
    await store.flush()
    assert store.hot.points == 0
    check()
    await store.close()
    store = _opened(tmp_path)
    check()
    await store.close()


# ---- edge cases found while testing -------------------------------------------------------


async def test_a_series_without_points_neither_fails_nor_poisons_the_wal(tmp_path):
    store = _opened(tmp_path)
    await store.ingest("default", "ds", BATCHES[0])
    await store.ingest("default", "ds", [_series("cpu", CPU_A, [])])
    # The process stops before any flush (the on-disk state a crash leaves), then starts again.
    await store.wal.close()
    store = _opened(tmp_path)
    assert _stored(store) == _expected(BATCHES[0])
    await store.close()


async def test_a_cancelled_ingest_does_not_stop_later_flushes(tmp_path):
    store = _opened(tmp_path)
    await store.ingest("default", "ds", BATCHES[0])
    # A client that gives up (deadline, disconnect) cancels the handler mid-append.
    cancelled = asyncio.create_task(store.ingest("default", "ds", BATCHES[1]))
    await asyncio.sleep(0)
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    await store.ingest("default", "ds", BATCHES[2])

    await store.flush()

    assert store.hot.points == 0, f"{store.hot.points} acknowledged points stay in the hot tier"
    assert _manifest(tmp_path)["flushed_through"] == store.wal.last_lsn
    await store.close()
