"""The hot tier: acknowledged points held in memory, as Arrow-ready columns, until flushed.

A point rewritten later (same series and timestamp) is marked dead in its chunk, so the tier holds
one live point per key and every reader sees the last write only.

Readers get a partition's points as `HotPoints` (in a `Snapshot`): one immutable `HotBatch` a chunk,
as an Arrow table for DuckDB, or picked by series and time for the metrics API's vectorised reads.
A chunk holds its batch's points series by series (one run each), so a batch's series index is its
runs sorted by series id: a pick skips the batches outside the time range, and in the others reads
only the runs of the series asked for. A dashboard's query of a few series over the last minutes
then costs microseconds a batch, where filtering the whole table cost milliseconds.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import pyarrow as pa

from libs import arrowbuf
from libs.storage.keys import ids_in, keys_in

POINTS_SCHEMA = pa.schema([("series_id", pa.uint64()), ("ts", pa.int64()), ("value", pa.float64())])
# Memory per point: series id, timestamp and value, 8 bytes each.
BYTES_PER_POINT = 24

PartitionKey = tuple[str, str]  # (tenant, datasource)


@dataclass(frozen=True, eq=False)
class HotBatch:
    """The live points of one hot chunk at one instant, immutable (a later write that replaces some
    of them gives the chunk a new batch): what a snapshot reads."""

    series_ids: np.ndarray
    ts: np.ndarray
    values: np.ndarray

    @cached_property
    def span(self) -> tuple[int, int]:
        """(oldest, newest) timestamp; (0, -1) when the batch is empty."""
        if not len(self.ts):
            return 0, -1
        return int(self.ts.min()), int(self.ts.max())

    def record_batch(self) -> pa.RecordBatch:
        """The points as an Arrow record batch (zero-copy over the numpy arrays)."""
        return pa.RecordBatch.from_arrays(
            [
                arrowbuf.array(self.series_ids, pa.uint64()),
                arrowbuf.array(self.ts, pa.int64()),
                arrowbuf.array(self.values, pa.float64()),
            ],
            schema=POINTS_SCHEMA,
        )

    @cached_property
    def _runs(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The series index: (series id, first row, end row) of each run of equal ids, sorted by id
        (stable: a series named twice in a batch has two runs, in row order)."""
        sids = self.series_ids
        starts = np.flatnonzero(np.r_[True, sids[1:] != sids[:-1]]) if len(sids) else _NO_ROWS
        ends = np.r_[starts[1:], len(sids)].astype(np.int64)
        keys = sids[starts]
        order = np.argsort(keys, kind="stable")
        return keys[order], starts[order], ends[order]

    @cached_property
    def series_points(self) -> tuple[np.ndarray, np.ndarray]:
        """(series id, points) of each series in the batch, sorted by id (its runs summed)."""
        keys, starts, ends = self._runs
        if not len(keys):
            return keys, _NO_ROWS
        first = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
        return keys[first], np.add.reduceat(ends - starts, first)

    def rows(self, wanted: np.ndarray, start: int, end: int) -> np.ndarray:
        """Indexes of the points of the series `wanted` (sorted uint64 ids) in [start, end)."""
        lo_ts, hi_ts = self.span
        if hi_ts < start or lo_ts >= end:
            return _NO_ROWS
        keys, starts, ends = self._runs
        lo = np.searchsorted(keys, wanted, "left")
        counts = np.searchsorted(keys, wanted, "right") - lo
        if not counts.any():
            return _NO_ROWS
        # The runs of the wanted series (lo[i] to lo[i] + counts[i]), then every row of those runs.
        runs = _ranges(lo, counts)
        rows = _ranges(starts[runs], ends[runs] - starts[runs])
        ts = self.ts[rows]
        return rows[(ts >= start) & (ts < end)]


_NO_ROWS = np.zeros(0, dtype=np.int64)


def _ranges(firsts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """first[0], first[0] + 1, ... (counts[0] of them), then the same from first[1], and so on."""
    total = int(counts.sum())
    return np.repeat(firsts - np.cumsum(counts) + counts, counts) + np.arange(total)


class HotPoints:
    """The hot points of one partition at one instant, as readers get them (`Snapshot.hot`): an
    Arrow table for DuckDB, or the points of some series in a time range (`pick`)."""

    def __init__(self, batches: tuple[HotBatch, ...]) -> None:
        self.batches = batches

    @cached_property
    def table(self) -> pa.Table:
        """Every point as one (chunked, zero-copy) Arrow table."""
        return pa.Table.from_batches([b.record_batch() for b in self.batches], schema=POINTS_SCHEMA)

    @property
    def num_rows(self) -> int:
        """How many points."""
        return sum(len(b.ts) for b in self.batches)

    def series_points(self) -> tuple[np.ndarray, np.ndarray]:
        """(series id, points) pairs of every batch, a series once per batch that holds it: each
        batch counts its points once (its batches are immutable), not on every call."""
        if not self.batches:
            return np.zeros(0, np.uint64), _NO_ROWS
        parts = [b.series_points for b in self.batches]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    def pick(self, wanted: np.ndarray, start: int, end: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(series ids, timestamps, values) of the points of the series `wanted` (sorted uint64 ids)
        in [start, end), batch by batch."""
        parts = []
        for batch in self.batches:
            rows = batch.rows(wanted, start, end)
            if len(rows):
                parts.append((batch.series_ids[rows], batch.ts[rows], batch.values[rows]))
        if not parts:
            return np.zeros(0, np.uint64), np.zeros(0, np.int64), np.zeros(0, np.float64)
        sids, ts, values = (np.concatenate(c) for c in zip(*parts, strict=True))
        return sids, ts, values


@dataclass
class Chunk:
    """One acknowledged batch of one datasource: its WAL position and its columns.

    `live` is None while every point is current, else a mask of the points no later write replaced.
    """

    lsn: int
    series_ids: np.ndarray
    ts: np.ndarray
    values: np.ndarray
    arrived: float = field(default_factory=time.monotonic)
    live: np.ndarray | None = None
    _batch: HotBatch | None = field(default=None, repr=False, compare=False)
    moved: bool = False
    """Points a segment gave back (`MetricStore._log_moved`): older than every other write, so any
    other copy of one of their keys wins over them, whatever the WAL positions."""

    def __len__(self) -> int:
        return len(self.ts)

    @property
    def precedence(self) -> int:
        """Of two copies of a key, the one of higher precedence wins: the WAL position, below every
        position for moved points."""
        return -1 if self.moved else self.lsn

    @cached_property
    def span(self) -> tuple[int, int]:
        """(oldest, newest) timestamp of every point, live or not (a chunk has at least one)."""
        return int(self.ts.min()), int(self.ts.max())

    def columns(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(series ids, timestamps, values) of the live points."""
        if self.live is None:
            return self.series_ids, self.ts, self.values
        return self.series_ids[self.live], self.ts[self.live], self.values[self.live]

    def batch(self) -> HotBatch:
        """The live points as an immutable batch (kept until a later write replaces some)."""
        if self._batch is None:
            self._batch = HotBatch(*self.columns())
        return self._batch

    def kill(self, mask: np.ndarray) -> None:
        """Mark the points of `mask` as replaced by a later write."""
        if self.live is None:
            self.live = np.ones(len(self.ts), dtype=bool)
        self.live &= ~mask
        self._batch = None


@dataclass
class HotPartition:
    """The hot chunks of one (tenant, datasource)."""

    chunks: list[Chunk] = field(default_factory=list)
    points: int = 0
    min_ts: int | None = None
    max_ts: int | None = None
    _view: HotPoints | None = None

    def add(self, chunk: Chunk) -> None:
        self.chunks.append(chunk)
        self.points += len(chunk)
        lo, hi = chunk.span
        self.min_ts = lo if self.min_ts is None else min(self.min_ts, lo)
        self.max_ts = hi if self.max_ts is None else max(self.max_ts, hi)
        self._view = None

    def supersede(self, chunk: Chunk) -> None:
        """Keep one point per (series, ts) between `chunk` and the partition: of two writes of a key,
        the one with the higher WAL position wins (replay applies records in that order too), and
        points a segment gave back lose to any other write (`Chunk.precedence`).
        Only the chunks whose time range meets `chunk`'s are searched: a client's retry meets the
        few chunks of its own time, not the whole tier."""
        wanted = np.unique(chunk.series_ids)
        lo, hi = chunk.span
        for old in self.chunks:
            if old.span[1] < lo or old.span[0] > hi:
                continue
            candidates = ids_in(old.series_ids, wanted)
            if old.live is not None:
                candidates &= old.live
            if not candidates.any():
                continue
            idx = np.flatnonzero(candidates)
            if old.precedence < chunk.precedence:
                hit = keys_in(old.series_ids[idx], old.ts[idx], chunk.series_ids, chunk.ts)
                if hit.any():
                    mask = np.zeros(len(old), dtype=bool)
                    mask[idx[hit]] = True
                    old.kill(mask)
            else:
                lost = keys_in(chunk.series_ids, chunk.ts, old.series_ids[idx], old.ts[idx])
                if lost.any():
                    chunk.kill(lost)
        self._view = None

    def remove(self, flushed: set[int]) -> None:
        """Drop the chunks whose LSN is in `flushed` and recompute the bounds."""
        self.chunks = [c for c in self.chunks if c.lsn not in flushed]
        self.points = sum(len(c) for c in self.chunks)
        self.min_ts = min((int(c.ts.min()) for c in self.chunks), default=None)
        self.max_ts = max((int(c.ts.max()) for c in self.chunks), default=None)
        self._view = None

    def view(self) -> HotPoints:
        """Every hot point of the partition, for a snapshot (kept until the partition changes)."""
        if self._view is None:
            self._view = HotPoints(tuple(c.batch() for c in self.chunks))
        return self._view


class HotTier:
    """Acknowledged points not yet in segments, per (tenant, datasource)."""

    def __init__(self) -> None:
        self.partitions: dict[PartitionKey, HotPartition] = {}
        self.points = 0

    def insert(self, key: PartitionKey, chunk: Chunk) -> None:
        """Add an acknowledged chunk."""
        self.partitions.setdefault(key, HotPartition()).add(chunk)
        self.points += len(chunk)

    def lsn_holding(self, lsn: int, max_points: int) -> int:
        """The greatest LSN at most `lsn` whose chunks (those with an LSN at most it, in every
        partition) hold at most `max_points` points, or the first chunk's LSN when that one alone
        holds more; `lsn` when no chunk is at most it."""
        sizes = sorted(
            (c.lsn, len(c)) for part in self.partitions.values() for c in part.chunks if c.lsn <= lsn
        )
        total, through = 0, None
        for at, points in sizes:
            total += points
            if total > max_points and through is not None:
                return through
            through = at
        return lsn

    def chunks_through(self, lsn: int) -> dict[PartitionKey, list[Chunk]]:
        """The chunks with an LSN at most `lsn`, per partition (they stay until `remove`)."""
        return {
            key: chosen
            for key, part in self.partitions.items()
            if (chosen := [c for c in part.chunks if c.lsn <= lsn])
        }

    def remove(self, taken: dict[PartitionKey, list[Chunk]]) -> None:
        """Forget chunks that are now safe in segments."""
        for key, chunks in taken.items():
            part = self.partitions[key]
            part.remove({c.lsn for c in chunks})
            if not part.chunks:
                del self.partitions[key]
        self.points = sum(p.points for p in self.partitions.values())

    def oldest_arrival(self) -> float | None:
        """Monotonic arrival time of the oldest hot chunk."""
        return min((c.arrived for p in self.partitions.values() for c in p.chunks), default=None)

    @property
    def bytes(self) -> int:
        """Approximate memory held by hot points."""
        return self.points * BYTES_PER_POINT
