"""The hot tier's reads by series and time (`HotPoints.pick`, each batch's series index): the same
points as filtering the whole table, for any layout of a batch, and a snapshot's view unchanged by
later writes; its points per series (`HotPoints.series_points`, what GetMetadata counts) the same
as counting the whole table's live points."""

from __future__ import annotations

import numpy as np
import pytest

from libs.storage.hot import Chunk, HotPartition


def _filtered(part: HotPartition, wanted: np.ndarray, start: int, end: int) -> list[tuple]:
    """What the whole-table filter gives, sorted."""
    table = part.view().table
    sids, ts, values = (table[c].to_numpy() for c in ("series_id", "ts", "value"))
    keep = np.isin(sids, wanted) & (ts >= start) & (ts < end)
    return sorted(zip(sids[keep].tolist(), ts[keep].tolist(), values[keep].tolist(), strict=True))


def _picked(part: HotPartition, wanted: np.ndarray, start: int, end: int) -> list[tuple]:
    sids, ts, values = part.view().pick(np.sort(wanted), start, end)
    return sorted(zip(sids.tolist(), ts.tolist(), values.tolist(), strict=True))


def _random_partition(rng: np.random.Generator, seed: int) -> HotPartition:
    part = HotPartition()
    for lsn in range(1, 13):
        n_series = int(rng.integers(1, 40))
        sids = rng.choice(np.arange(1, 60, dtype=np.uint64), n_series)  # repeats: a series named twice
        lengths = rng.integers(1, 8, n_series)
        ts = np.concatenate([np.sort(rng.integers(0, 10_000, k)) for k in lengths])
        series = np.repeat(sids, lengths)
        if seed % 2:  # rows in any order, not series by series
            order = rng.permutation(len(ts))
            series, ts = series[order], ts[order]
        chunk = Chunk(lsn, series, ts.astype(np.int64), rng.normal(size=len(ts)))
        if lsn % 4 == 0:
            part.supersede(chunk)  # as the store applies a batch that may repeat keys: earlier points die
        part.add(chunk)
    return part


@pytest.mark.parametrize("seed", range(6))
def test_a_pick_gives_the_points_the_whole_table_filter_gives(seed):
    rng = np.random.default_rng(seed)
    part = _random_partition(rng, seed)
    for _ in range(40):
        wanted = np.unique(rng.choice(np.arange(0, 70, dtype=np.uint64), int(rng.integers(1, 12))))
        start = int(rng.integers(-100, 9_000))
        end = start + int(rng.integers(1, 4_000))
        assert _picked(part, wanted, start, end) == _filtered(part, wanted, start, end)
    everything = np.arange(0, 70, dtype=np.uint64)
    assert len(_picked(part, everything, -1, 20_000)) == part.view().num_rows


def test_a_view_taken_before_a_rewrite_keeps_its_points():
    part = HotPartition()
    first = Chunk(1, np.array([7, 7, 8], np.uint64), np.array([10, 20, 10]), np.array([1.0, 2.0, 3.0]))
    part.add(first)
    before = part.view()
    again = Chunk(2, np.array([7], np.uint64), np.array([20]), np.array([9.0]))
    part.supersede(again)
    part.add(again)
    wanted = np.array([7], np.uint64)
    old = before.pick(wanted, 0, 100)
    assert sorted(zip(old[1].tolist(), old[2].tolist(), strict=True)) == [(10, 1.0), (20, 2.0)]
    new = part.view().pick(wanted, 0, 100)
    assert sorted(zip(new[1].tolist(), new[2].tolist(), strict=True)) == [(10, 1.0), (20, 9.0)]
    assert part.view() is part.view()  # kept until the partition changes


@pytest.mark.parametrize("seed", range(6))
def test_points_per_series_count_the_live_points_of_the_whole_table(seed):
    part = _random_partition(np.random.default_rng(100 + seed), seed)
    sids, counts = part.view().series_points()
    summed: dict[int, int] = {}
    for sid, n in zip(sids.tolist(), counts.tolist(), strict=True):
        summed[sid] = summed.get(sid, 0) + n
    ids, expected = np.unique(part.view().table["series_id"].to_numpy(), return_counts=True)
    assert summed == dict(zip(ids.tolist(), expected.tolist(), strict=True))
