"""The query router keeps the segments' rollups and points maps open ahead of queries, and lets go
of the files compaction or retention deleted (issue 11, item 3: a one-hour query must not get slower
because its day's files were never read since the start)."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import mmap
from pathlib import Path

import numpy as np
import pytest

from libs.cache import TtlCache
from libs.storage import rollups as rollups_module
from libs.storage.rollups import MappedReader
from libs.timeparse import format_time_ms
from platformq.analytics.v1 import query_service_pb2 as pb
from services.query_router.core import Limits, QueryRouter
from services.query_router.spec import query_from_proto
from tests.unit.storage.advised import advised_map
from tests.unit.storage.test_rollups import HOUR, T0, _loaded, _map_files, _rollup_files

REQUEST = pb.QueryRequest(
    datasource="ds",
    metrics=["cpu"],
    aggregation="avg",
    group_by=["host"],
    start=format_time_ms(T0 + 90_000),  # not on a minute: the cut ends read the points maps too
    end=format_time_ms(T0 + 6 * HOUR + 30_000),
    step="1h",
    mode="batch",
)


def _count_opens(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    opened: list[Path] = []
    real = rollups_module.MappedFile.open

    def counting(path: Path) -> rollups_module.MappedFile:
        opened.append(Path(path))
        return real(path)

    monkeypatch.setattr(rollups_module.MappedFile, "open", staticmethod(counting))
    return opened


def _mapped_paths() -> set[str]:
    """Files this process has memory-mapped (a deleted one still holds its disk space while mapped)."""
    gc.collect()
    return {line.split(maxsplit=5)[5].strip() for line in open("/proc/self/maps") if len(line.split()) > 5}


async def test_a_query_after_keep_maps_open_opens_no_file(tmp_path, monkeypatch):
    store = await _loaded(tmp_path)
    await store.flush()
    router = QueryRouter(store, TtlCache(), Limits(cache_ttl_seconds=0))
    opened = _count_opens(monkeypatch)
    files = _rollup_files(tmp_path) + _map_files(tmp_path)
    assert router.engine.keep_maps_open(store.live_segments()) == len(files) == 4 * 3
    assert sorted(opened) == sorted(files)
    opened.clear()
    answer = await router.query(query_from_proto(REQUEST))
    assert answer.series and opened == []
    # A second round opens nothing more.
    assert router.engine.keep_maps_open(store.live_segments()) == 0
    await store.close()


async def test_files_deleted_by_compaction_are_let_go_and_the_merged_ones_opened(tmp_path, monkeypatch):
    store = await _loaded(tmp_path)
    await store.flush()
    router = QueryRouter(store, TtlCache(), Limits(cache_ttl_seconds=0))
    router.engine.keep_maps_open(store.live_segments())
    before = await router.query(query_from_proto(REQUEST))
    old = {str(p) for p in _rollup_files(tmp_path) + _map_files(tmp_path)}
    assert old <= _mapped_paths()
    store.config = dataclasses.replace(store.config, compact_min_files=2)
    await store.compact()
    store.segments.delete_doomed(grace_s=0)
    (merged,) = store.live_segments()
    opened = _count_opens(monkeypatch)
    assert router.engine.keep_maps_open(store.live_segments()) == 3
    assert sorted(opened) == sorted([merged.map_path, merged.rollup_path("1m"), merged.rollup_path("1h")])
    mapped = _mapped_paths()
    assert not {p for p in old if p in mapped or f"{p} (deleted)" in mapped}
    after = await router.query(query_from_proto(REQUEST))
    assert [p.value for s in after.series for p in s.points] == pytest.approx(
        [p.value for s in before.series for p in s.points], rel=1e-12
    )
    await store.close()


def test_the_reader_opens_ahead_only_while_it_has_room_newest_first(tmp_path):
    paths = []
    for i in range(4):
        path = tmp_path / f"{i}.arrow"
        rollups_module.write_mapped(rollups_module.points_map(*_points(i)), path)
        paths.append(path)
    reader = MappedReader(max_open=2)
    (tmp_path / "torn.arrow").write_bytes(b"not an Arrow file")
    opened = reader.keep_open([tmp_path / "torn.arrow", *reversed(paths), tmp_path / "gone.arrow"])
    assert opened == 2
    ids, counts = reader.series_points(paths[3])  # opened ahead: no open needed, same answer
    assert ids.tolist() == [3] and counts.tolist() == [2]
    assert reader.keep_open(paths, stop=lambda: True) == 0


def _points(i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return np.array([i, i], np.uint64), np.array([1, 2], np.int64), np.array([0.5, 1.5])


async def test_the_router_opens_the_files_in_the_background_from_its_start(tmp_path, monkeypatch):
    store = await _loaded(tmp_path)
    await store.flush()
    opened = _count_opens(monkeypatch)
    router = QueryRouter(store, TtlCache(), Limits(cache_ttl_seconds=0))
    await router.start()
    try:
        for _ in range(200):
            if len(opened) == 12:
                break
            await asyncio.sleep(0.01)
        assert len(opened) == 12
        opened.clear()
        assert (await router.query(query_from_proto(REQUEST))).series
        assert opened == []
    finally:
        await router.stop()
    await store.close()


def _map_of_1000_series(tmp_path: Path, points: int) -> rollups_module.MappedFile:
    """A points map of 1,000 series of `points` points each, written and opened."""
    path = tmp_path / "m.arrow"
    ids = np.repeat(np.arange(1000, dtype=np.uint64), points)
    ts = np.tile(np.arange(points, dtype=np.int64), 1000)
    rollups_module.write_mapped(rollups_module.points_map(ids, ts, np.ones(1000 * points)), path)
    return rollups_module.MappedFile.open(path)


def test_an_open_file_holds_views_of_its_map_not_copies(tmp_path):
    # Kept open ahead of queries, a map of a million series must not cost the process 16 MB of index.
    mapped = _map_of_1000_series(tmp_path, 3)
    for array in (mapped.series, mapped.ends, *mapped.columns):
        assert not array.flags.owndata
    at, starts, ends = mapped.locate(mapped.series[[0, 7, 999]])
    assert at.tolist() == [0, 7, 999]
    assert starts.tolist() == [0, 21, 2997] and ends.tolist() == [3, 24, 3000]


@pytest.mark.parametrize("series", [3, 16, 17, 500])
def test_prefetch_asks_for_every_row_wanted_in_few_ranges(series):
    # Both ways of grouping (plain Python up to 16 ranges, numpy above) cover every wanted byte.
    rng = np.random.default_rng(series)
    values = np.zeros(1_000_000)
    base = values.ctypes.data - 3 * mmap.PAGESIZE  # the column starts inside the map
    advice = advised_map()
    mapped = rollups_module.MappedFile(np.arange(1), np.array([1]), (values,), advice, base)
    lo = np.sort(rng.choice(990_000, series, replace=False))
    hi = lo + rng.integers(1, 5_000, series)
    shuffled = rng.permutation(series)  # the reader's spans come in any order
    mapped.prefetch(0, lo[shuffled], hi[shuffled])
    offset = values.ctypes.data - base
    for a, b in zip(lo.tolist(), hi.tolist(), strict=True):
        first, last = offset + a * 8, offset + b * 8
        assert any(s <= first and last <= e for s, e in advice.ranges), (a, b)
    assert len(advice.ranges) <= series
    assert all(e1 < s2 for (_, e1), (s2, _) in zip(advice.ranges, advice.ranges[1:], strict=False))
    advice.ranges.clear()
    # Ranges near each other (here all within 64 KiB) are one call.
    mapped.prefetch(0, np.array([10, 1000, 3000]), np.array([20, 1100, 3100]))
    assert len(advice.ranges) == 1


def test_a_read_of_pages_in_memory_asks_the_kernel_nothing(tmp_path):
    # Just written, so in the page cache: the reader looks at the pages of the ranges it is about to
    # read (a mincore per cluster of them) and asks for none, before and after its background round
    # has looked at the whole file.
    mapped = _map_of_1000_series(tmp_path, 50)
    advice = advised_map(tmp_path / "m.arrow")
    quiet = dataclasses.replace(mapped, mm=advice)
    _, lo, hi = quiet.locate(quiet.series[::3])
    quiet.prefetch(1, lo[:4], hi[:4])
    quiet.prefetch(0, lo, hi)
    assert advice.ranges == []
    assert quiet.look_at_memory() and quiet.in_memory()
    quiet.prefetch(0, lo, hi)
    assert advice.ranges == []


def test_a_file_seen_wholly_in_memory_is_not_looked_at_again_by_reads(tmp_path):
    # Pages not in memory (an untouched anonymous map) are asked for; once the background round has
    # seen the whole file in memory, reads do not look (the round looks again in its next pass).
    mapped = _map_of_1000_series(tmp_path, 50)
    _, lo, hi = mapped.locate(mapped.series[::3])
    advice = advised_map(size=len(mapped.mm))
    cold = dataclasses.replace(mapped, mm=advice, memory=[False])
    cold.prefetch(1, lo[:4], hi[:4])
    cold.prefetch(0, lo, hi)
    assert len(advice.ranges) >= 2
    advice.ranges.clear()
    seen = dataclasses.replace(cold, memory=[True])
    seen.prefetch(1, lo[:4], hi[:4])
    seen.prefetch(0, lo, hi)
    assert advice.ranges == []


def test_points_of_counts_the_rows_of_the_series_asked_for_from_the_index(tmp_path):
    _map_of_1000_series(tmp_path, 3)  # ids 0..999, three rows each
    reader = rollups_module.MappedReader()
    path = tmp_path / "m.arrow"
    assert reader.points_of([path], np.array([0, 7, 5000], dtype=np.uint64)) == 6  # 5000: not there
    assert reader.points_of([path, path], np.arange(1000, dtype=np.uint64)) == 6000
    assert reader.points_of([], np.array([1], dtype=np.uint64)) == 0
