"""Per-series rollups: 1-minute and 1-hour partial aggregates written beside each segment.

A rollup row is (series_id, ts = bucket start, count, sum, min, max, last, last_ts), sorted by
series then time like its segment, the series column run-end encoded (one id per series). Every
column is mergeable, so buckets split over several segments (or over segments and the hot tier)
combine exactly: counts and sums add, min/max of min/max, `last` is the value with the greatest
`last_ts`. `avg` is sum / count. Percentiles and `rate` need the raw points, so queries asking for
them read the raw segments (a documented fallback): the raw points are kept while the datasource's
raw retention allows.

Files are Arrow IPC, uncompressed, one record batch: a reader memory-maps them and slices columns
without decoding. Each column is stored in the narrowest type that gives its values back exactly
(`narrowed`: times as uint32 ms after the file's first, counts in the smallest integer type, values
as small integers or float32 when they round-trip, else float64), and the rows a read gathers are
widened back (`MappedFile.take`): 5 bytes a point instead of 16 for whole-number values. Sorted by
series then time, each file has one run of rows per series: the run-end encoded series column is
the series -> row-range index of an opened file, and the reader binary-searches time within a run
(`platformq_native.span_rows`: every run and span, and the rows they hold, in one call), so a query touches only the rows of the
series and time it asks for. Each file's footer also holds
a time index (the ts of every TS_INDEX_ROWS-th row), and the reader copies small series indexes
into the process's memory (INDEX_MEMORY_BYTES): from memory alone it knows which rows a read can
touch, asks the kernel for all of them in every file at once (MADV_WILLNEED; maps are advised
MADV_RANDOM, so a fault reads its page, not the device's whole read-ahead window), and only then
reads: a query over pages the kernel reclaimed waits on the device about once. The query-router
keeps the live files open (`MappedReader.keep_open`).

Each segment also keeps its raw points in the same form (POINTS_MAP_SCHEMA: ts and value, with the
series column run-end encoded, i.e. one series id and end row per series: 5 to 12 bytes a point), its
*points map*: the metrics API reads raw points
from it (the cut ends of a rollup window) by memory map and binary search, without opening the
Parquet file; DuckDB reads the Parquet file for SQL.
"""

from __future__ import annotations

import mmap
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import platformq_native
import pyarrow as pa
import pyarrow.compute as pc

from libs import arrowbuf

MINUTE_MS = 60_000
HOUR_MS = 3_600_000
# Resolution name -> width, coarsest first (the planner picks the coarsest one a query allows).
RESOLUTIONS: dict[str, int] = {"1h": HOUR_MS, "1m": MINUTE_MS}
# Aggregations a rollup answers exactly.
ROLLUP_AGGREGATIONS = frozenset({"avg", "sum", "min", "max", "count", "last"})
ROLLUP_SCHEMA = pa.schema(
    [
        ("series_id", pa.run_end_encoded(pa.int32(), pa.uint64())),  # one id and end row per series
        ("ts", pa.int64()),
        ("count", pa.int64()),
        ("sum", pa.float64()),
        ("min", pa.float64()),
        ("max", pa.float64()),
        ("last", pa.float64()),
        ("last_ts", pa.int64()),
    ]
)
# The series column run-end encoded: one (series, end row) per series instead of 8 bytes a point.
POINTS_MAP_SCHEMA = pa.schema(
    [
        ("series_id", pa.run_end_encoded(pa.int32(), pa.uint64())),
        ("ts", pa.int64()),
        ("value", pa.float64()),
    ]
)
TS_INDEX_ROWS = 512
"""A file's time index holds the ts of every TS_INDEX_ROWS-th row (one per 4 KiB page of the ts
column): with it a reader knows, before touching the file, within which page of a series' run a
time falls."""
TS_INDEX_KEY = b"platformq.ts_index"
"""The schema metadata key of the time index (little-endian int64), written in the file's footer."""
TS_BASE_KEY = b"platformq.ts_base"
"""The schema metadata key of a file's time base (little-endian int64): its time columns (ts,
last_ts) are stored as uint32 milliseconds after it (a span of up to 49 days)."""
TIME_COLUMNS = frozenset({"ts", "last_ts"})
CANONICAL: dict[str, np.dtype] = {
    f.name: arrowbuf.dtype(f.type) for f in [*ROLLUP_SCHEMA, *POINTS_MAP_SCHEMA] if f.name != "series_id"
}
"""The type a reader gets each column in (int64 times and counts, float64 values), whatever
narrower type the file stores it in (`write_mapped`)."""
_UINT32_SPAN = 2**32 - 1


def rollup(series_ids: np.ndarray, ts: np.ndarray, values: np.ndarray, width: int) -> pa.Table:
    """The rollup of points sorted by (series, ts) with one point per key, at `width` ms."""
    if not len(ts):
        return arrowbuf.empty_table(ROLLUP_SCHEMA)
    bucket = ts // width * width
    new = np.ones(len(ts), dtype=bool)
    new[1:] = (series_ids[1:] != series_ids[:-1]) | (bucket[1:] != bucket[:-1])
    starts = np.flatnonzero(new)
    ends = np.append(starts[1:], len(ts)) - 1
    return pa.Table.from_arrays(
        [
            pc.run_end_encode(arrowbuf.array(series_ids[starts], pa.uint64()), run_end_type=pa.int32()),
            arrowbuf.array(bucket[starts], pa.int64()),
            arrowbuf.array(ends - starts + 1, pa.int64()),
            arrowbuf.array(np.add.reduceat(values, starts), pa.float64()),
            arrowbuf.array(np.minimum.reduceat(values, starts), pa.float64()),
            arrowbuf.array(np.maximum.reduceat(values, starts), pa.float64()),
            arrowbuf.array(values[ends], pa.float64()),
            arrowbuf.array(ts[ends], pa.int64()),
        ],
        schema=ROLLUP_SCHEMA,
    )


def resolution_for(step_ms: int | None, aggregation: str, calendar: str | None) -> str | None:
    """The coarsest rollup resolution that answers a query exactly, or None (read raw points).

    Exact when the aggregation is mergeable and each step bucket is a whole number of rollup
    buckets; rollup buckets the window cuts (at its two ends) are read from raw points."""
    if aggregation not in ROLLUP_AGGREGATIONS or calendar not in (None, "all"):
        return None
    for name, width in RESOLUTIONS.items():
        if calendar == "all" or (step_ms is not None and step_ms % width == 0):
            return name
    return None


POINTS = "points"
"""The pseudo-resolution of a read of raw points from the points maps only (no rollup)."""


def split_window(start: int, end: int, resolution: str) -> tuple[tuple[int, int], list[tuple[int, int]]]:
    """[start, end) as the span of whole rollup buckets and the (at most two) cut ends around it."""
    width = RESOLUTIONS[resolution]
    inner_start = min(-(-start // width) * width, end)
    inner_end = max(end // width * width, inner_start)
    edges = [(a, b) for a, b in ((start, inner_start), (inner_end, end)) if b > a]
    return (inner_start, inner_end), edges


def cover(start: int, end: int, resolution: str) -> list[tuple[str | None, int, int]]:
    """[start, end) as pieces (resolution, from, to): whole buckets of `resolution` in the middle,
    whole buckets of each finer resolution towards the ends, and raw points (None) for what no
    rollup bucket covers whole. A 23-hour window off the hour reads 1-hour rows, 1-minute rows for
    the two cut hours and raw points only for the two cut minutes. POINTS: raw points throughout."""
    if resolution == POINTS:
        return [(None, start, end)]
    names = list(RESOLUTIONS)
    pending = [(start, end)]
    pieces: list[tuple[str | None, int, int]] = []
    for name in names[names.index(resolution) :]:
        finer = []
        for a, b in pending:
            (lo, hi), edges = split_window(a, b, name)
            if hi > lo:
                pieces.append((name, lo, hi))
            finer += edges
        pending = finer
    return pieces + [(None, a, b) for a, b in pending]


def write_mapped(table: pa.Table, path: Path) -> None:
    """Write a rollup or points map file (one uncompressed record batch, its time index in the
    footer) durably: temp file, fsync, rename, fsync of the directory.

    `table` is in ROLLUP_SCHEMA or POINTS_MAP_SCHEMA; each column after series_id is stored in
    the narrowest type that gives its values back exactly (`narrowed`), which a MappedFile reads
    back in CANONICAL types."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    table = table.combine_chunks()
    ts = arrowbuf.numpy(table.column("ts")) if table.num_rows else np.empty(0, np.int64)
    # The time index rides in the footer's schema metadata: read with the schema, at open.
    metadata = {TS_INDEX_KEY: ts[::TS_INDEX_ROWS].astype("<i8").tobytes()}
    table, base = narrowed(table)
    if base is not None:
        metadata[TS_BASE_KEY] = np.array([base], dtype="<i8").tobytes()
    table = table.replace_schema_metadata(metadata)
    with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table, max_chunksize=max(table.num_rows, 1))
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    tmp.rename(path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def narrowed(table: pa.Table) -> tuple[pa.Table, int | None]:
    """`table` (one chunk) with each column after series_id in the narrowest type that holds its
    values exactly, and the time base when the time columns are stored as offsets from it (None
    when they keep int64: an empty table, or a span of more than 49 days):

    - ts and last_ts: uint32 milliseconds after the smallest ts (every last_ts is at or after its
      bucket's start);
    - count: the smallest integer type of its range;
    - values (value, sum, min, max, last): the smallest integer type of their range (unsigned
      when none is negative, 32 bits at most) when all are whole numbers and none is -0.0, else
      float32 when every value survives the round trip, else float64. Counters, gauges of whole
      units and TSBS' values are whole numbers."""
    if not table.num_rows:
        return table, None
    columns = {name: arrowbuf.numpy(table.column(name)) for name in table.column_names[1:]}
    times = [columns[name] for name in columns if name in TIME_COLUMNS]
    base = int(times[0].min())
    span = max(int(t.max()) for t in times) - base
    if span >= _UINT32_SPAN:
        base = None
    arrays = [table.column(0).chunk(0)]
    for name, values in columns.items():
        if name in TIME_COLUMNS:
            arrays.append(arrowbuf.array(values if base is None else (values - base).astype(np.uint32)))
        elif values.dtype.kind == "i":
            arrays.append(arrowbuf.array(values.astype(_int_type(int(values.min()), int(values.max())))))
        else:
            arrays.append(arrowbuf.array(_narrow_floats(values)))
    return pa.Table.from_arrays(arrays, names=table.column_names), base


def _int_type(lo: int, hi: int) -> np.dtype:
    """The smallest integer type holding [lo, hi]: unsigned when lo >= 0."""
    for kind in (np.uint8, np.uint16, np.uint32) if lo >= 0 else (np.int8, np.int16, np.int32):
        if np.iinfo(kind).min <= lo and hi <= np.iinfo(kind).max:
            return np.dtype(kind)
    return np.dtype(np.int64)


def _narrow_floats(values: np.ndarray) -> np.ndarray:
    if bool(np.isfinite(values).all()) and bool((values == np.trunc(values)).all()):
        lo, hi = int(values.min()), int(values.max())
        if lo >= -(2**31) and hi < 2**31 and not np.signbit(values[values == 0]).any():
            return values.astype(_int_type(lo, hi))
    with np.errstate(over="ignore"):  # past float32's range: inf, which the comparison refuses
        single = values.astype(np.float32)
    if np.array_equal(single.astype(np.float64), values, equal_nan=True):
        return single
    return values


def points_map(series_ids: np.ndarray, ts: np.ndarray, values: np.ndarray) -> pa.Table:
    """The points map of points sorted by (series, ts)."""
    ids = pc.run_end_encode(arrowbuf.array(series_ids, pa.uint64()), run_end_type=pa.int32())
    return pa.Table.from_arrays(
        [ids, arrowbuf.array(ts, pa.int64()), arrowbuf.array(values, pa.float64())],
        schema=POINTS_MAP_SCHEMA,
    )


class ReadStopped(Exception):
    """A rollup read ended early because its query was cancelled."""


PARTIAL_FIELDS = ("count", "sum", "min", "max", "last", "last_ts")
# The partial columns each mergeable aggregation needs.
NEEDS: dict[str, tuple[str, ...]] = {
    "avg": ("count", "sum"),
    "sum": ("sum",),
    "count": ("count",),
    "min": ("min",),
    "max": ("max",),
    "last": ("last", "last_ts"),
}


@dataclass(frozen=True)
class Partials:
    """Rollup rows (or raw points as one-point partials) as numpy columns; a partial column a
    query does not need is None (not read)."""

    series_ids: np.ndarray
    ts: np.ndarray
    count: np.ndarray | None = None
    sum: np.ndarray | None = None
    min: np.ndarray | None = None
    max: np.ndarray | None = None
    last: np.ndarray | None = None
    last_ts: np.ndarray | None = None

    @classmethod
    def of_points(cls, series_ids: np.ndarray, ts: np.ndarray, values: np.ndarray) -> Partials:
        """Raw points as partials of one point each."""
        return cls(series_ids, ts, np.ones(len(ts), dtype=np.int64), values, values, values, values, ts)

    @classmethod
    def concat(cls, parts: list[Partials]) -> Partials:
        """All rows of `parts` (the partial columns every part has)."""
        if not parts:
            return EMPTY_PARTIALS
        if len(parts) == 1:
            return parts[0]
        columns = {}
        for name in ("series_ids", "ts", *PARTIAL_FIELDS):
            values = [getattr(p, name) for p in parts]
            columns[name] = None if any(v is None for v in values) else np.concatenate(values)
        return cls(**columns)


EMPTY_PARTIALS = Partials.of_points(np.empty(0, np.uint64), np.empty(0, np.int64), np.empty(0, np.float64))


PREFETCH_GAP_BYTES = 64 * 1024
"""Row ranges closer than this are asked of the kernel as one range."""
SCAN_SERIES = 256
"""A read of more series than this from one file lets the kernel read ahead around each fault
(MADV_NORMAL for its duration) instead of asking for each series' rows: it touches much of the file."""
INDEX_MEMORY_BYTES = 64 << 20
"""How much of the process's own memory a MappedReader gives to copies of its open files' series
indexes (series ids and run ends), newest files first, copied by `keep_open`'s round (never while
a query waits). A copied index is never reclaimed by the
kernel, so finding a series in a file touches no page of the file; an index past the budget stays a
view of the map (files of millions of series). A segment's points map and rollups hold the same
series, so their copies share one array of series ids (12 bytes a series for the first file, 4 for
each other), and the map's own pages of a copied index are let go from the process (they stay in
the page cache): an index is resident once, not twice."""


@dataclass(frozen=True)
class MappedFile:
    """An opened rollup or points map: its series (sorted, distinct), the end of each one's row run
    (a series' rows are [end of the one before, its end)), and its columns after series_id. All are
    numpy views of the memory map, so a file kept open costs no memory of the process's own
    whatever its number of series; a MappedReader copies the index of files within its budget
    (`with_index_copied`), so that finding a series waits on no page the kernel reclaimed.

    The map is advised MADV_RANDOM: a page fault reads that page, not the device's whole read-ahead
    window around it (8 MiB here, which made a one-hour query over pages the kernel had reclaimed
    read tens of MiB). A reader calls `prefetch` with the rows it is about to touch (`windows` tells
    which, from the time index), so the kernel reads them all at once instead of one fault after
    another."""

    series: np.ndarray
    ends: np.ndarray
    columns: tuple[np.ndarray, ...]
    mm: mmap.mmap | None = None
    base: int = 0  # the map's address
    memory: list[bool] = field(default_factory=lambda: [False])
    """[whether the whole file was in memory when last looked at (`look_at_memory`)]: reads skip
    `prefetch` then."""
    index_copied: bool = False
    """True when `series` and `ends` are copies in the process's memory, not views of the map."""
    ts_index: np.ndarray | None = None
    """The ts of every TS_INDEX_ROWS-th row, from the footer (in the process's memory; None for a
    file written before it was kept)."""
    kinds: tuple[np.dtype, ...] = ()
    """The CANONICAL type of each of `columns`, which `take` gives (the stored one may be narrower)."""
    offsets: tuple[int, ...] = ()
    """What each of `columns` counts from as stored: the file's time base for time columns stored
    as uint32 offsets, else 0."""

    @classmethod
    def open(cls, path: Path) -> MappedFile:
        """Memory-map `path` (a rollup or a points map)."""
        with open(path, "rb") as f:
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        mm.madvise(mmap.MADV_RANDOM)
        base = np.frombuffer(mm, dtype=np.uint8).ctypes.data
        # Zero-copy: the arrays below are views of `mm`, which they keep alive.
        table = pa.ipc.open_file(pa.py_buffer(mm)).read_all()
        metadata = table.schema.metadata or {}
        kinds = tuple(CANONICAL[name] for name in table.column_names[1:])
        raw_base = metadata.get(TS_BASE_KEY)
        ts_base = 0 if raw_base is None else int(np.frombuffer(raw_base, dtype="<i8")[0])
        offsets = tuple(ts_base if name in TIME_COLUMNS else 0 for name in table.column_names[1:])
        if not table.num_rows:
            empty = tuple(np.empty(0, dtype=arrowbuf.dtype(f.type)) for f in list(table.schema)[1:])
            return cls(
                np.empty(0, np.uint64), np.empty(0, np.int32), empty, mm, base, kinds=kinds, offsets=offsets
            )
        ids = table.column(0).chunk(0)
        columns = tuple(arrowbuf.numpy(table.column(i).chunk(0)) for i in range(1, table.num_columns))
        raw = metadata.get(TS_INDEX_KEY)
        ts_index = None if raw is None else np.frombuffer(raw, dtype="<i8")
        if pa.types.is_run_end_encoded(ids.type):
            # The series column is its own index: one value and one run end per series.
            return cls(
                arrowbuf.numpy(ids.values),
                arrowbuf.numpy(ids.run_ends),
                columns,
                mm,
                base,
                ts_index=ts_index,
                kinds=kinds,
                offsets=offsets,
            )
        sid = arrowbuf.numpy(ids)  # a file of an earlier release: the index is built (copied) once
        starts = np.flatnonzero(np.concatenate(([True], sid[1:] != sid[:-1])))
        ends = np.append(starts[1:], len(sid))
        return cls(
            sid[starts],
            ends,
            columns,
            mm,
            base,
            index_copied=True,
            ts_index=ts_index,
            kinds=kinds,
            offsets=offsets,
        )

    def take(self, column: int, rows: np.ndarray) -> np.ndarray:
        """`rows` of `column`, in its CANONICAL type (epoch ms for the time columns)."""
        values = self.columns[column][rows]
        if values.dtype == self.kinds[column]:
            return values
        out = values.astype(self.kinds[column])
        if self.offsets[column]:
            out += self.offsets[column]
        return out

    def stored_time(self, value: int) -> int:
        """Epoch ms `value` as a search key of the stored ts column: an offset from the file's base
        for a column stored as uint32 offsets (`platformq_native.span_rows` takes keys past that
        type's range: a key past the file's last time finds the end of every run)."""
        if self.columns[0].dtype == self.kinds[0]:
            return value
        return value - self.offsets[0]

    @property
    def index_nbytes(self) -> int:
        """The size of the series index (series ids and run ends)."""
        return int(self.series.nbytes + self.ends.nbytes)

    def with_index_copied(self, series: np.ndarray | None = None) -> MappedFile:
        """The same file with its series index in the process's memory: its series ids are `series`
        when given (an equal array another open file already holds), else a copy. The map's pages
        of the index are then let go from the process (MADV_DONTNEED, which for a read-only map of
        a file only unmaps them: the page cache keeps them, and a later touch maps them again), so
        the copy does not leave the index resident twice."""
        copied = replace(
            self,
            series=self.series.copy() if series is None else series,
            ends=self.ends.copy(),
            index_copied=True,
        )
        for view in (self.series, self.ends):
            self._let_go(view)
        return copied

    def _let_go(self, view: np.ndarray) -> None:
        """Unmap from the process the whole pages of the map that `view` (a view of it) lies on."""
        if self.mm is None:
            return
        at = view.ctypes.data - self.base
        if at < 0 or at + view.nbytes > len(self.mm):  # not a view of this map
            return
        start = -(-at // mmap.PAGESIZE) * mmap.PAGESIZE  # whole pages only: neighbours keep theirs
        end = (at + view.nbytes) // mmap.PAGESIZE * mmap.PAGESIZE
        if end > start:
            self.mm.madvise(mmap.MADV_DONTNEED, start, end - start)

    def locate(self, series_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Of the sorted uint64 `series_ids`, those the file holds: their positions in `series` and
        the row range [start, end) of each one's run (compiled: one call, where numpy took a dozen)."""
        raw = platformq_native.find_runs(
            self.series, self.ends, np.ascontiguousarray(series_ids, dtype=np.uint64)
        )
        at, lo, hi = (np.frombuffer(b, dtype=np.int64) for b in raw)
        return at, lo, hi

    @staticmethod
    def runs_for(lo: np.ndarray, hi: np.ndarray, values: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """The whole runs [lo, hi) as the windows of every value (`windows`' shape)."""
        shape = (len(values), len(lo))
        return np.broadcast_to(lo, shape), np.broadcast_to(hi, shape)

    def windows(self, lo: np.ndarray, hi: np.ndarray, values: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """For each of `values` (rows of the result) and each run [lo, hi) (columns), the rows
        [left, right) among which the run's first row with ts >= the value lies (`right` when none
        of them is): at most TS_INDEX_ROWS rows, found in the time index without touching the file.
        The whole runs for a file without one."""
        if self.ts_index is None:
            return self.runs_for(lo, hi, values)
        k = TS_INDEX_ROWS
        first, end = -(-lo // k), -(-hi // k)  # the indexed rows inside each run: first*k .. end*k
        # Per value and run, the first indexed row >= the value.
        q = np.empty((len(values), len(lo)), dtype=np.int64)
        for j, value in enumerate(values):
            platformq_native.search_runs(self.ts_index, first, end, value, q[j])
        return np.where(q > first, (q - 1) * k, lo), np.where(q < end, q * k, hi)

    def prefetch(self, column: int, lo: np.ndarray, hi: np.ndarray) -> None:
        """Ask the kernel to read rows [lo, hi) of `column` ahead (MADV_WILLNEED): one call per group
        of ranges less than PREFETCH_GAP_BYTES apart, unless every page of the ranges is in memory
        already (`pages_resident`: a mincore per cluster of ranges, over their own pages)."""
        if self.mm is None or not len(lo) or self.in_memory():
            return
        array = self.columns[column]
        offset, size = array.ctypes.data - self.base, array.itemsize
        first, last = offset + lo * size, offset + hi * size
        some = last > first
        first, last = first[some], last[some]
        if not len(first) or platformq_native.pages_resident(self.mm, first, last, mmap.PAGESIZE):
            return  # a warm read asks the kernel for nothing
        if len(first) <= 16:  # a few series: plain Python costs less than numpy's set-up
            groups: list[list[int]] = []
            for a, b in sorted(zip(first.tolist(), last.tolist(), strict=True)):
                if groups and a <= groups[-1][1] + PREFETCH_GAP_BYTES:
                    groups[-1][1] = max(groups[-1][1], b)
                else:
                    groups.append([a - a % mmap.PAGESIZE, b])
        else:
            order = np.argsort(first, kind="stable")
            first, last = first[order], last[order]
            first -= first % mmap.PAGESIZE
            # A new group starts where a range begins past the furthest end so far plus the gap.
            reach = np.maximum.accumulate(last)
            new = np.concatenate(([True], first[1:] > reach[:-1] + PREFETCH_GAP_BYTES))
            ends = np.append(reach[np.flatnonzero(new)[1:] - 1], reach[-1])
            groups = [list(g) for g in zip(first[new].tolist(), ends.tolist(), strict=True)]
        for a, b in groups:
            if b > a:
                self.mm.madvise(mmap.MADV_WILLNEED, a, b - a)

    @contextmanager
    def scanning(self, scan: bool) -> Iterator[bool]:
        """Within the block, when `scan`, the kernel reads ahead around page faults (MADV_NORMAL), as
        a read touching much of the file wants; the map is advised MADV_RANDOM again after."""
        if not scan or self.mm is None:
            yield scan
            return
        self.mm.madvise(mmap.MADV_NORMAL)
        try:
            yield scan
        finally:
            self.mm.madvise(mmap.MADV_RANDOM)

    def in_memory(self) -> bool:
        """Whether the whole file was in memory when last looked at: then nothing is worth asking
        the kernel for, and a read pays nothing for the advice. Costs nothing: the looking is done
        by `look_at_memory`, out of the queries' way."""
        return self.memory[0]

    def look_at_memory(self) -> bool:
        """Look whether the whole file is in memory now (one mincore over it: 0.16 to 0.33 ms for
        48 MiB here, which is why queries do not) and remember it for `in_memory`."""
        assert self.mm is not None
        whole = platformq_native.pages_resident(
            self.mm, np.zeros(1, np.int64), np.array([len(self.mm)], np.int64), mmap.PAGESIZE
        )
        self.memory[0] = whole
        return whole


@dataclass(frozen=True)
class MapRead:
    """One read for `MappedReader.read`: the rows with ts in any of `spans` from `paths`, of the
    columns `wanted` (indexes into a file's columns after series_id; 0 is ts), given to the
    Partials fields `names` (raw points when `names` is None)."""

    paths: list[Path]
    spans: list[tuple[int, int]]
    wanted: list[int]
    names: tuple[str, ...] | None

    @classmethod
    def rollups(
        cls, paths: list[Path], start: int, end: int, fields: tuple[str, ...] = PARTIAL_FIELDS
    ) -> MapRead:
        """Rollup rows with bucket start in [start, end); of the partial columns, only `fields`."""
        wanted = [0, *(ROLLUP_SCHEMA.get_field_index(f) - 1 for f in fields)]
        return cls(paths, [(start, end)], wanted, ("series_ids", "ts", *fields))

    @classmethod
    def points(cls, paths: list[Path], spans: list[tuple[int, int]]) -> MapRead:
        """Raw points of the points maps `paths` in any of the [start, end) `spans`."""
        return cls(paths, spans, [0, 1], None)

    def partials(self, parts: list[tuple[np.ndarray, ...]]) -> Partials:
        """The rows read, per file (series ids, then the wanted columns), as Partials."""
        if self.names is not None:
            return Partials.concat([Partials(**dict(zip(self.names, p, strict=True))) for p in parts])
        if not parts:
            return EMPTY_PARTIALS
        ids, ts, values = (np.concatenate([p[i] for p in parts]) for i in range(3))
        return Partials.of_points(ids, ts, values)


@dataclass(frozen=True)
class _Located:
    """A file of a read, its series found, and the row windows the binary searches for each span's
    start and end probe (the series' whole runs without a time index)."""

    read: int
    mapped: MappedFile
    at: np.ndarray
    left: np.ndarray  # MappedFile.windows of the spans' starts and ends, in turn
    right: np.ndarray
    scan: bool
    asked: bool  # every row the read can touch was asked of the kernel in the first pass


class MappedReader:
    """Reads the rows of chosen series and time from memory-mapped files sorted by (series, ts):
    rollups and points maps.

    Opened files are kept (memory maps, not copies; each holds a file descriptor) for the next
    query, up to `max_open`, least recently used first out; their series indexes are copied into
    the process's memory while they fit in `index_budget` bytes. `keep_open` opens the live files
    ahead of queries, newest first (opening costs about 0.3 ms a file, which a query over a file
    nobody read since the start would otherwise pay) and lets go of files that are no longer live,
    so a deleted file's disk space is not held by its map."""

    def __init__(self, max_open: int = 512, index_budget: int = INDEX_MEMORY_BYTES) -> None:
        self.max_open = max_open
        self.index_budget = index_budget
        self._open: OrderedDict[Path, MappedFile] = OrderedDict()
        # Open files whose index this reader copied: its (series ids, run ends), the ids maybe shared.
        self._copied: dict[Path, tuple[np.ndarray, np.ndarray]] = {}
        self._lock = threading.Lock()

    @property
    def index_bytes(self) -> int:
        """The process memory the open files' copied series indexes take."""
        with self._lock:
            return self._copied_bytes()

    def _copied_bytes(self) -> int:
        """`index_bytes`, with the lock held: an array shared by several files counts once."""
        return sum({id(a): a.nbytes for arrays in self._copied.values() for a in arrays}.values())

    def _file(self, path: Path) -> MappedFile:
        with self._lock:
            mapped = self._open.get(path)
            if mapped is not None:
                self._open.move_to_end(path)
                return mapped
        mapped = MappedFile.open(path)
        with self._lock:
            mapped = self._open.setdefault(path, mapped)  # another thread's, when it was first
            while len(self._open) > self.max_open:
                self._forget(next(iter(self._open)))
        return mapped

    def _copy_index(self, path: Path, mapped: MappedFile) -> MappedFile:
        """Copy the open `path`'s series index into memory when the budget allows (in keep_open's
        round only: a million series' index is 12 MB to copy, which no query should wait for).
        The series ids of a copied file of the same name (a segment's points map and rollups are
        named alike) are shared when equal."""
        with self._lock:
            if mapped.index_copied or self._open.get(path) is not mapped:
                return mapped
            room = self.index_budget - self._copied_bytes()
            kin = [ids for p, (ids, _) in self._copied.items() if p.name == path.name]
        shared = next((ids for ids in kin if np.array_equal(ids, mapped.series)), None)
        if mapped.ends.nbytes + (mapped.series.nbytes if shared is None else 0) > room:
            return mapped
        copied = mapped.with_index_copied(shared)
        with self._lock:
            if self._open.get(path) is not mapped:  # closed or replaced meanwhile
                return mapped
            self._open[path] = copied
            self._copied[path] = (copied.series, copied.ends)
        return copied

    def _forget(self, path: Path) -> None:
        """Close `path` (its map goes when no read holds it). Called with the lock held."""
        del self._open[path]
        self._copied.pop(path, None)

    def keep_open(self, live: list[Path], stop: Callable[[], bool] | None = None) -> int:
        """Forget opened files not in `live`, then open `live` files in order (most wanted first)
        while fewer than `max_open` are open; then, for each open file, copy its series index into
        memory while the budget allows and look whether it is wholly in memory
        (`MappedFile.look_at_memory`). Returns how many were opened. A file missing on disk or
        unreadable is skipped; `stop` is asked before each file."""
        keep = set(live)
        with self._lock:
            for path in [p for p in self._open if p not in keep]:
                self._forget(path)
        opened = 0
        for path in live:
            if stop is not None and stop():
                break
            with self._lock:
                if len(self._open) >= self.max_open:
                    break
                if path in self._open:
                    continue
            try:
                mapped = MappedFile.open(path)
            except (OSError, pa.ArrowException):
                # Missing or unreadable: skipped here; a query that needs the file reports the error.
                continue
            with self._lock:
                self._open.setdefault(path, mapped)
                # Opened ahead of queries: least recently used, so the first out when queries need room.
                self._open.move_to_end(path, last=False)
            opened += 1
        for path in live:  # most wanted first: the index budget goes to the newest files
            if stop is not None and stop():
                break
            with self._lock:
                mapped = self._open.get(path)
            if mapped is None:
                continue
            mapped = self._copy_index(path, mapped)
            if mapped.mm is not None:
                mapped.look_at_memory()
        return opened

    def read(
        self, reads: list[MapRead], series_ids: np.ndarray, stop: Callable[[], bool] | None = None
    ) -> list[Partials]:
        """The rows of the sorted `series_ids` each read asks for, as Partials, one per read.

        Two passes, so that a query over pages the kernel reclaimed waits on the device about once,
        not once per file and column: the first finds the series in every file and, from the time
        index, the rows each span can touch, and asks the kernel for all of them, every file at
        once; the second binary-searches the spans' ends within those rows and gathers. `stop` is
        asked before each file; when it answers True the read ends with ReadStopped."""
        located: list[_Located] = []
        for k, r in enumerate(reads):
            for path in r.paths:
                _check(stop)
                mapped = self._file(path)
                at, lo, hi = mapped.locate(series_ids)
                if not len(at):
                    continue
                scan = len(at) > SCAN_SERIES
                # A file wholly in memory has nothing to ask the kernel for: its runs are searched whole.
                asked = not scan and mapped.ts_index is not None and not mapped.in_memory()
                times = [t for span in r.spans for t in span]
                # Row 2j: the windows of span j's start; row 2j + 1: of its end.
                left, right = mapped.windows(lo, hi, times) if asked else mapped.runs_for(lo, hi, times)
                if asked:
                    # A span's rows lie between its start's window and its end's.
                    for i in r.wanted:
                        mapped.prefetch(i, left[0::2].ravel(), right[1::2].ravel())
                elif not scan:
                    mapped.prefetch(0, lo, hi)  # the binary searches below probe these runs
                located.append(_Located(k, mapped, at, left, right, scan, asked))
        parts: list[list[tuple[np.ndarray, ...]]] = [[] for _ in reads]
        for f in located:
            _check(stop)
            r, mapped = reads[f.read], f.mapped
            with mapped.scanning(f.scan):
                # Within each series' run rows are sorted by time: every run narrowed to each span,
                # and the rows of all of them with their series ids, in one compiled call.
                keys = np.array([mapped.stored_time(t) for span in r.spans for t in span], dtype=np.int64)
                a, b, rows, ids = (
                    np.frombuffer(raw, dtype=kind)
                    for raw, kind in zip(
                        platformq_native.span_rows(
                            mapped.columns[0],
                            np.ascontiguousarray(f.left),
                            np.ascontiguousarray(f.right),
                            keys,
                            np.ascontiguousarray(mapped.series[f.at], dtype=np.uint64),
                        ),
                        (np.int64, np.int64, np.int64, np.uint64),
                        strict=True,
                    )
                )
                if not len(rows):
                    continue
                if not f.scan and not f.asked:
                    for i in r.wanted[1:]:
                        mapped.prefetch(i, a, b)
                parts[f.read].append((ids, *(mapped.take(i, rows) for i in r.wanted)))
        return [r.partials(p) for r, p in zip(reads, parts, strict=True)]

    def points_of(self, paths: list[Path], series_ids: np.ndarray) -> int:
        """How many rows the sorted `series_ids` have in the maps `paths`, all times together: the
        lengths of their runs, from the series indexes alone (a binary search a series and file)."""
        total = 0
        for path in paths:
            _, lo, hi = self._file(path).locate(series_ids)
            total += int((hi - lo).sum())
        return total

    def series_points(self, path: Path) -> tuple[np.ndarray, np.ndarray]:
        """(series ids, points of each) of a points map: its series index, nothing read beyond it."""
        mapped = self._file(path)
        return mapped.series, np.diff(mapped.ends, prepend=0).astype(np.int64)


def _check(stop: Callable[[], bool] | None) -> None:
    if stop is not None and stop():
        raise ReadStopped("the query was cancelled or passed its deadline")
