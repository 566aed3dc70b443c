"""The compiled kernels of the metrics read path (native/src/maps.rs) answer as the numpy they replace."""

from __future__ import annotations

import mmap

import numpy as np
import platformq_native
import pytest

PAGE = mmap.PAGESIZE


def _runs(rng: np.random.Generator, dtype: type, n_runs: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sorted runs laid end to end (as a file's series runs), with repeated values and empty runs."""
    lengths = rng.integers(0, 40, n_runs)
    top = np.iinfo(dtype).max if dtype == np.uint32 else 10**12
    values = np.concatenate([np.sort(rng.integers(0, min(top, 5_000), n)) for n in lengths]).astype(dtype)
    hi = np.cumsum(lengths).astype(np.int64)
    return values, hi - lengths, hi


@pytest.mark.parametrize("dtype", [np.uint32, np.int64])
@pytest.mark.parametrize("seed", range(5))
def test_search_runs_equals_numpys_search_of_each_run(dtype, seed):
    rng = np.random.default_rng(seed)
    values, lo, hi = _runs(rng, dtype, 60)
    out = np.empty(len(lo), dtype=np.int64)
    keys = [-5, 0, 1, 2_500, 4_999, 5_000, 2**32 - 1, 2**32, 2**40]
    keys += rng.integers(0, 5_000, 20).tolist()
    for key in keys:
        platformq_native.search_runs(values, lo, hi, key, out)
        # numpy's own answer, with the key as the column's type would hold it (clipped to its range).
        clipped = min(max(key, 0), 2**32) if dtype == np.uint32 else key
        expected = [
            a + int(np.searchsorted(values[a:b].astype(np.int64), clipped))
            for a, b in zip(lo, hi, strict=True)
        ]
        assert out.tolist() == expected, key


def test_search_runs_refuses_runs_outside_the_values_and_arrays_it_cannot_read():
    values = np.arange(10, dtype=np.uint32)
    out = np.empty(2, dtype=np.int64)
    with pytest.raises(ValueError, match=r"run 1 \[5, 11\) is outside the 10 sorted values"):
        platformq_native.search_runs(values, np.array([0, 5]), np.array([5, 11]), 3, out)
    with pytest.raises(ValueError, match="run 0"):
        platformq_native.search_runs(values, np.array([4, 5]), np.array([3, 6]), 3, out)
    with pytest.raises(ValueError, match="differ in length"):
        platformq_native.search_runs(values, np.array([0]), np.array([5]), 3, out)
    with pytest.raises(TypeError, match="uint32 or int64"):
        platformq_native.search_runs(values.astype(np.float64), np.array([0, 5]), np.array([5, 6]), 3, out)
    with pytest.raises(ValueError, match="contiguous"):
        platformq_native.search_runs(
            np.arange(20, dtype=np.int64)[::2], np.array([0, 5]), np.array([5, 6]), 3, out
        )


def _numpy_span_rows(values, left, right, keys, ids):
    """The numpy the reader ran before span_rows: a search per span end, then the rows of every range."""
    starts = [
        [
            a + int(np.searchsorted(values[a:b].astype(np.int64), k))
            for a, b in zip(left[j], right[j], strict=True)
        ]
        for j, k in enumerate(keys)
    ]
    a = np.array(starts[0::2], dtype=np.int64).ravel()
    b = np.array(starts[1::2], dtype=np.int64).ravel()
    lengths = np.maximum(b - a, 0)
    rows = np.repeat(a - np.cumsum(lengths) + lengths, lengths) + np.arange(int(lengths.sum()))
    return a, b, rows, np.repeat(np.tile(ids, len(keys) // 2), lengths)


@pytest.mark.parametrize("dtype", [np.uint32, np.int64])
@pytest.mark.parametrize("seed", range(8))
def test_span_rows_equals_the_numpy_it_replaced(dtype, seed):
    rng = np.random.default_rng(seed)
    values, lo, hi = _runs(rng, dtype, int(rng.integers(1, 50)))
    ids = rng.integers(0, 2**64 - 1, len(lo), dtype=np.uint64)
    n_spans = int(rng.integers(1, 4))
    keys = np.sort(rng.integers(-10, 5_100, 2 * n_spans)).astype(np.int64)  # spans [k0, k1), [k2, k3), ...
    # Windows as the time index gives them: within each run, around where each key falls.
    left = np.empty((len(keys), len(lo)), dtype=np.int64)
    right = np.empty_like(left)
    for j, k in enumerate(keys):
        for i, (a, b) in enumerate(zip(lo, hi, strict=True)):
            at = a + int(np.searchsorted(values[a:b].astype(np.int64), k))
            left[j, i] = max(a, at - int(rng.integers(0, 5)))
            right[j, i] = min(b, at + int(rng.integers(0, 5)))
    for l_, r_ in ((left, right), (np.broadcast_to(lo, left.shape), np.broadcast_to(hi, left.shape))):
        raw = platformq_native.span_rows(
            values, np.ascontiguousarray(l_), np.ascontiguousarray(r_), keys, ids
        )
        got = [
            np.frombuffer(x, dtype=t)
            for x, t in zip(raw, (np.int64, np.int64, np.int64, np.uint64), strict=True)
        ]
        expected = _numpy_span_rows(values, l_, r_, keys, ids)
        for g, e in zip(got, expected, strict=True):
            assert g.tolist() == e.tolist()
    assert len(got[2]) == sum(
        int(np.sum((values[a:b] >= keys[2 * j]) & (values[a:b] < keys[2 * j + 1])))
        for j in range(n_spans)
        for a, b in zip(lo, hi, strict=True)
    ), "every row of every run in each span, no other"


def test_span_rows_refuses_shapes_that_do_not_match():
    values = np.arange(10, dtype=np.int64)
    ids = np.array([7], dtype=np.uint64)
    with pytest.raises(ValueError, match="keys x runs"):
        platformq_native.span_rows(
            values, np.zeros(1, np.int64), np.zeros(1, np.int64), np.array([0, 5]), ids
        )
    with pytest.raises(ValueError, match="two a span"):
        platformq_native.span_rows(
            values, np.zeros(3, np.int64), np.zeros(3, np.int64), np.array([0, 5, 6]), ids
        )
    with pytest.raises(ValueError, match="outside the 10 sorted values"):
        platformq_native.span_rows(values, np.array([0, 0]), np.array([11, 11]), np.array([0, 5]), ids)
    with pytest.raises(TypeError, match="uint32 or int64"):
        platformq_native.span_rows(
            values.astype(np.float32), np.array([0, 0]), np.array([5, 5]), np.array([0, 5]), ids
        )


@pytest.mark.parametrize("ends_type", [np.int32, np.int64])
@pytest.mark.parametrize("seed", range(6))
def test_find_runs_equals_numpys_search_and_gather(ends_type, seed):
    rng = np.random.default_rng(seed)
    series = np.unique(rng.integers(0, 2**64 - 1, int(rng.integers(0, 300)), dtype=np.uint64))
    ends = np.cumsum(rng.integers(1, 50, len(series))).astype(ends_type)
    held = series[rng.random(len(series)) < 0.3]
    wanted = np.unique(np.concatenate([held, rng.integers(0, 2**64 - 1, 20, dtype=np.uint64)]))
    raw = platformq_native.find_runs(series, ends, wanted)
    at, lo, hi = (np.frombuffer(b, dtype=np.int64) for b in raw)
    # The numpy the reader ran before: searchsorted, keep the equal ones, gather their run bounds.
    pos = np.searchsorted(series, wanted)
    found = pos < len(series)
    found[found] = series[pos[found]] == wanted[found]
    expected = pos[found]
    assert at.tolist() == expected.tolist()
    assert set(series[at].tolist()) == set(held.tolist()) | (set(wanted.tolist()) & set(series.tolist()))
    starts = np.concatenate(([0], ends[:-1])).astype(np.int64)
    assert (
        lo.tolist() == starts[expected].tolist() and hi.tolist() == ends[expected].astype(np.int64).tolist()
    )


def test_find_runs_refuses_what_it_cannot_search():
    series = np.array([1, 5, 9], dtype=np.uint64)
    with pytest.raises(ValueError, match="not sorted"):
        platformq_native.find_runs(series, np.array([1, 2, 3], np.int32), np.array([9, 1], np.uint64))
    with pytest.raises(ValueError, match="differ in length"):
        platformq_native.find_runs(series, np.array([1, 2], np.int32), np.array([1], np.uint64))
    with pytest.raises(TypeError, match="int32 or int64"):
        platformq_native.find_runs(series, np.array([1, 2, 3], np.uint8), np.array([1], np.uint64))


def _map(pages: int, touched: list[int]) -> mmap.mmap:
    """An anonymous map of `pages` pages, of which only `touched` were ever written (in memory)."""
    m = mmap.mmap(-1, pages * PAGE)
    for p in touched:
        m[p * PAGE] = 1
    return m


def _resident(m: mmap.mmap, ranges: list[tuple[int, int]]) -> bool:
    first = np.array([a for a, _ in ranges], dtype=np.int64)
    last = np.array([b for _, b in ranges], dtype=np.int64)
    return platformq_native.pages_resident(m, first, last, PAGE)


def test_pages_resident_looks_at_the_ranges_pages_only():
    m = _map(2_000, [0, 1, 10, 1_500])
    assert _resident(m, [(0, 2 * PAGE), (10 * PAGE + 8, 10 * PAGE + 16), (1_500 * PAGE, 1_501 * PAGE)])
    # Ranges given in any order, empty ones ignored.
    assert _resident(m, [(1_500 * PAGE + 1, 1_500 * PAGE + 9), (5 * PAGE, 5 * PAGE), (PAGE - 1, PAGE + 1)])
    # One page not in memory anywhere in a range, near the others or far from them.
    assert not _resident(m, [(0, 3 * PAGE)])
    assert not _resident(m, [(0, PAGE), (11 * PAGE, 11 * PAGE + 1)])
    assert not _resident(m, [(0, PAGE), (1_800 * PAGE, 1_800 * PAGE + 1)])
    assert _resident(m, [])


def test_pages_resident_refuses_ranges_outside_the_map():
    m = _map(4, [0])
    with pytest.raises(
        ValueError, match=rf"range 0 \[0, {4 * PAGE + 1}\) is outside the map's {4 * PAGE} bytes"
    ):
        _resident(m, [(0, 4 * PAGE + 1)])
    with pytest.raises(ValueError, match="range 1"):
        _resident(m, [(0, 1), (-1, 2)])
