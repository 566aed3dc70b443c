"""A read of a few series waits on the device about once (issue 11, item 3: a one-hour query must
not get slower as the stored data grows, and pages the kernel reclaimed are what grows with it).

Each rollup and points map carries a time index in its footer (the ts of every TS_INDEX_ROWS-th
row), and the MappedReader copies small series indexes into the process's memory: a reader knows
from memory alone which rows a span can touch, asks the kernel for all of them, every file at once,
and only then reads."""

from __future__ import annotations

import dataclasses
import math
import mmap
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from libs.storage import rollups as rollups_module
from libs.storage.rollups import TS_INDEX_ROWS, MappedFile, MappedReader, MapRead
from libs.storage.wal import WalError
from tests.helpers import opened_store
from tests.unit.storage.advised import AdvisedMap, advised_map
from tests.unit.storage.test_rollups import _loaded, _map_files


def _points(rng: np.random.Generator, lengths: list[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Series 10, 20, ... with `lengths` points each at irregular, increasing times."""
    ids = np.repeat(np.arange(1, len(lengths) + 1, dtype=np.uint64) * 10, lengths)
    ts = np.concatenate([1_000_000 + np.cumsum(rng.integers(1, 20_000, n)) for n in lengths]).astype(np.int64)
    return ids, ts, rng.normal(size=len(ts))


def _written(tmp_path: Path, name: str, table: pa.Table, with_index: bool = True) -> Path:
    path = tmp_path / name
    if with_index:
        rollups_module.write_mapped(table, path)
    else:  # as a release before the time index wrote it
        with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table.combine_chunks())
    return path


LENGTHS = [3, 511, 512, 513, 5_000, 12_345, 1, 2_048]


@pytest.mark.parametrize("runs", [8, 100])  # a search a run (up to 8 runs), vectorised above
def test_the_windows_hold_the_first_row_at_or_after_each_time_within_one_page_of_rows(tmp_path, runs):
    rng = np.random.default_rng(runs)
    lengths = (LENGTHS * 13)[:runs]
    ids, ts, values = _points(rng, lengths)
    mapped = MappedFile.open(_written(tmp_path, "m.arrow", rollups_module.points_map(ids, ts, values)))
    assert mapped.ts_index is not None and len(mapped.ts_index) == math.ceil(len(ts) / TS_INDEX_ROWS)
    _, lo, hi = mapped.locate(mapped.series)
    times = [0, *rng.integers(ts.min() - 10, ts.max() + 10, 200).tolist(), 2**62]
    left, right = mapped.windows(lo, hi, times)
    assert left.shape == right.shape == (len(times), runs)
    for value, lft, rgt in zip(times, left, right, strict=True):
        want = np.array([a + np.searchsorted(ts[a:b], value) for a, b in zip(lo, hi, strict=True)])
        assert (lo <= lft).all() and (lft <= want).all() and (want <= rgt).all() and (rgt <= hi).all()
        assert (rgt - lft <= TS_INDEX_ROWS).all()


@pytest.mark.parametrize("with_index", [True, False])
def test_one_read_of_rollups_and_points_answers_as_the_points_say(tmp_path, with_index):
    # With the time index and without (a file of an earlier release), one read of several files and
    # kinds gives exactly the rows a plain filter of the points gives.
    rng = np.random.default_rng(2)
    ids, ts, values = _points(rng, LENGTHS)
    half = len(ts) // 2
    maps = [
        _written(tmp_path, f"m{i}.arrow", rollups_module.points_map(ids[s], ts[s], values[s]), with_index)
        for i, s in enumerate([slice(0, half), slice(half, None)])
    ]
    order = np.lexsort((ts, ids))
    ids_sorted, ts_sorted = ids[order], ts[order]
    rolled = _written(
        tmp_path, "r.arrow", rollups_module.rollup(ids_sorted, ts_sorted, values[order], 60_000), with_index
    )
    reader = MappedReader()
    wanted = np.array([10, 50, 60, 70, 999], dtype=np.uint64)
    for _ in range(20):
        # Two spans apart (as a window's two cut ends are), the first may start before the data.
        a, b, c, d = np.sort(rng.integers(ts.min() - 1000, ts.max() + 1000, 4))
        points_read, rollup_read = reader.read(
            [
                MapRead.points(maps, [(int(a), int(b)), (int(c), int(d))]),
                MapRead.rollups([rolled], int(a), int(b)),
            ],
            wanted,
        )
        keep = np.isin(ids, wanted) & (((ts >= a) & (ts < b)) | ((ts >= c) & (ts < d)))
        got = sorted(
            zip(
                points_read.series_ids.tolist(),
                points_read.ts.tolist(),
                points_read.sum.tolist(),
                strict=True,
            )
        )
        assert got == sorted(zip(ids[keep].tolist(), ts[keep].tolist(), values[keep].tolist(), strict=True))
        buckets = ts_sorted // 60_000 * 60_000
        keep = np.isin(ids_sorted, wanted) & (buckets >= a) & (buckets < b)
        assert sorted(zip(rollup_read.series_ids.tolist(), rollup_read.ts.tolist(), strict=True)) == sorted(
            set(zip(ids_sorted[keep].tolist(), buckets[keep].tolist(), strict=True))
        )
        assert int(rollup_read.count.sum()) == int(keep.sum())


def _advised(monkeypatch: pytest.MonkeyPatch, cold: bool) -> list[AdvisedMap]:
    """MappedFile.open gives files whose advice to the kernel is recorded (one AdvisedMap a file);
    `cold`: as after the kernel reclaimed the file's pages (none in memory)."""
    advice: list[AdvisedMap] = []
    real = MappedFile.open

    def recorded(p: Path) -> MappedFile:
        mapped = real(p)
        assert mapped.mm is not None
        advice.append(advised_map(size=len(mapped.mm)) if cold else advised_map(p))
        return dataclasses.replace(mapped, mm=advice[-1])

    monkeypatch.setattr(MappedFile, "open", staticmethod(recorded))
    return advice


def _series_20(tmp_path: Path) -> tuple[Path, int, int]:
    """A points map of 4 series of 50,000 points; a span of 360 of series 20's points."""
    rng = np.random.default_rng(3)
    ids, ts, values = _points(rng, [50_000] * 4)
    path = _written(tmp_path, "m.arrow", rollups_module.points_map(ids, ts, values))
    run = ts[50_000:100_000]  # series 20's times
    return path, int(run[20_000]), int(run[20_360])


def test_a_read_of_a_few_series_asks_the_kernel_for_little_more_than_the_rows_it_reads(tmp_path, monkeypatch):
    path, start, end = _series_20(tmp_path)
    advice = _advised(monkeypatch, cold=True)  # as after the kernel reclaimed the pages
    (got,) = MappedReader().read([MapRead.points([path], [(start, end)])], np.array([20], np.uint64))
    assert len(got.ts) == 360
    asked = sum(b - a for a, b in advice[0].ranges)
    # ts and value of 360 rows, plus at most a page of rows each side, in whole pages.
    assert asked <= 2 * (360 + 2 * TS_INDEX_ROWS) * 8 + 4 * mmap.PAGESIZE
    assert len(advice[0].ranges) <= 2  # one range a column: a single wait on the device


def test_files_the_background_round_found_in_memory_are_read_without_advice(tmp_path, monkeypatch):
    # Just written, so wholly in the page cache: keep_open looks (mincore, out of the queries'
    # way) and reads then pay no advice at all.
    path, start, end = _series_20(tmp_path)
    advice = _advised(monkeypatch, cold=False)
    reader = MappedReader()
    assert reader.keep_open([path]) == 1
    (got,) = reader.read([MapRead.points([path], [(start, end)])], np.array([20], np.uint64))
    assert len(got.ts) == 360 and advice[0].ranges == []


def test_series_indexes_are_copied_into_memory_within_the_budget(tmp_path):
    rng = np.random.default_rng(4)
    paths = []
    for i in range(3):
        ids, ts, values = _points(rng, [10] * (100 * (i + 1)))
        paths.append(_written(tmp_path, f"{i}.arrow", rollups_module.points_map(ids, ts, values)))
    sizes = [MappedFile.open(p).index_nbytes for p in paths]
    assert sizes == [100 * 12, 200 * 12, 300 * 12]  # uint64 id and int32 end per series
    assert MappedReader(index_budget=0).keep_open(paths) == 3
    reader = MappedReader(index_budget=sizes[2] + sizes[0])
    reader.keep_open(list(reversed(paths)))  # newest first: 2 fits, then 1 does not, then 0 does
    assert reader.index_bytes == sizes[2] + sizes[0]
    ids, counts = reader.series_points(paths[1])  # past the budget: read from the map, same answer
    assert len(ids) == 200 and counts.tolist() == [10] * 200
    reader.keep_open([])
    assert reader.index_bytes == 0
    # A file a query opens is read through its map: its index is copied by the next round, which no
    # query waits for (a million series' index is 12 MB).
    reader.read([MapRead.points([paths[0]], [(0, 2**62)])], np.array([10], np.uint64))
    assert reader.index_bytes == 0
    reader.keep_open([paths[0]])
    assert reader.index_bytes == sizes[0]


async def test_a_second_store_on_a_directory_in_use_fails_before_touching_a_file(tmp_path):
    # Found while measuring this: a second process opening a live DATA_DIR used to upgrade its
    # segments (rewrite "missing" maps, commit a manifest) before finding the WAL's lock taken.
    store = await _loaded(tmp_path)
    await store.flush()
    gone = _map_files(tmp_path)[0]
    gone.unlink()  # what the second store's open would have written back
    manifest = {p: p.read_bytes() for p in tmp_path.rglob("*manifest*")}
    assert manifest
    with pytest.raises(WalError, match="another writer"):
        opened_store(tmp_path)
    assert not gone.exists()
    assert {p: p.read_bytes() for p in tmp_path.rglob("*manifest*")} == manifest
    await store.close()


def _resident_kib(path: Path) -> int:
    """Resident KiB of this process's maps of `path` (/proc/self/smaps)."""
    total, current = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()
        if head and not head[0].endswith(":"):  # a mapping's header: address range ... path
            current = head[-1] == str(path)
        elif current and head[0] == "Rss:":
            total += int(head[1])
    return total


def test_a_segments_maps_share_their_series_ids_and_a_copied_index_is_resident_once(tmp_path):
    # Found with benchmarks.churn at 1,000,000 series: the points map, 1-minute and 1-hour rollups
    # of a segment each copied the same series ids, and the map's pages the copy read stayed
    # mapped in the process, so each index was resident twice (35 MiB of the settled memory).
    rng = np.random.default_rng(7)
    n = 50_000
    paths = {}
    for folder, lengths in (("maps", [3] * n), ("1m", [1] * n), ("other", [2] * (n - 1))):
        (tmp_path / folder).mkdir()
        ids, ts, values = _points(rng, lengths)
        paths[folder] = _written(tmp_path / folder, "x.arrow", rollups_module.points_map(ids, ts, values))
    reader = MappedReader()
    reader.keep_open(list(paths.values()))
    # One array of ids for the two files of the same series and name; a file of other series has its own.
    assert reader.index_bytes == n * 8 + n * 4 * 2 + (n - 1) * 12
    for folder, points in (("maps", 3), ("1m", 1), ("other", 2)):
        ids, counts = reader.series_points(paths[folder])
        assert counts.tolist() == [points] * len(ids)
        assert _resident_kib(paths[folder]) * 1024 < MappedFile.open(paths[folder]).index_nbytes / 2
    (got,) = reader.read([MapRead.points([paths["1m"]], [(0, 2**62)])], np.array([20, 30], np.uint64))
    assert got.series_ids.tolist() == [20, 30]
