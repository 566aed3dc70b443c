"""The hot tier: acknowledged points held in memory, as Arrow-ready columns, until flushed.

A point rewritten later (same series and timestamp) is marked dead in its chunk, so the tier holds
one live point per key and every reader of `table()` sees the last write only.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from libs.storage.keys import keys_in

POINTS_SCHEMA = pa.schema([("series_id", pa.uint64()), ("ts", pa.int64()), ("value", pa.float64())])
# Memory per point: series id, timestamp and value, 8 bytes each.
BYTES_PER_POINT = 24

PartitionKey = tuple[str, str]  # (tenant, datasource)


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

    def __len__(self) -> int:
        return len(self.ts)

    def columns(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(series ids, timestamps, values) of the live points."""
        if self.live is None:
            return self.series_ids, self.ts, self.values
        return self.series_ids[self.live], self.ts[self.live], self.values[self.live]

    def record_batch(self) -> pa.RecordBatch:
        """The live points as an Arrow record batch (zero-copy over the numpy arrays when all live)."""
        sids, ts, values = self.columns()
        return pa.RecordBatch.from_arrays(
            [pa.array(sids, pa.uint64()), pa.array(ts), pa.array(values)], schema=POINTS_SCHEMA
        )

    def kill(self, mask: np.ndarray) -> None:
        """Mark the points of `mask` as replaced by a later write."""
        if self.live is None:
            self.live = np.ones(len(self.ts), dtype=bool)
        self.live &= ~mask


@dataclass
class HotPartition:
    """The hot chunks of one (tenant, datasource)."""

    chunks: list[Chunk] = field(default_factory=list)
    points: int = 0
    min_ts: int | None = None
    max_ts: int | None = None
    _table: pa.Table | None = None

    def add(self, chunk: Chunk) -> None:
        self.chunks.append(chunk)
        self.points += len(chunk)
        lo, hi = int(chunk.ts.min()), int(chunk.ts.max())
        self.min_ts = lo if self.min_ts is None else min(self.min_ts, lo)
        self.max_ts = hi if self.max_ts is None else max(self.max_ts, hi)
        self._table = None

    def supersede(self, chunk: Chunk) -> None:
        """Keep one point per (series, ts) between `chunk` and the partition: of two writes of a key,
        the one with the higher WAL position wins (replay applies records in that order too)."""
        wanted = np.unique(chunk.series_ids)
        for old in self.chunks:
            candidates = np.isin(old.series_ids, wanted)
            if old.live is not None:
                candidates &= old.live
            if not candidates.any():
                continue
            idx = np.flatnonzero(candidates)
            if old.lsn < chunk.lsn:
                hit = keys_in(old.series_ids[idx], old.ts[idx], chunk.series_ids, chunk.ts)
                if hit.any():
                    mask = np.zeros(len(old), dtype=bool)
                    mask[idx[hit]] = True
                    old.kill(mask)
            else:
                lost = keys_in(chunk.series_ids, chunk.ts, old.series_ids[idx], old.ts[idx])
                if lost.any():
                    chunk.kill(lost)
        self._table = None

    def remove(self, flushed: set[int]) -> None:
        """Drop the chunks whose LSN is in `flushed` and recompute the bounds."""
        self.chunks = [c for c in self.chunks if c.lsn not in flushed]
        self.points = sum(len(c) for c in self.chunks)
        self.min_ts = min((int(c.ts.min()) for c in self.chunks), default=None)
        self.max_ts = max((int(c.ts.max()) for c in self.chunks), default=None)
        self._table = None

    def table(self) -> pa.Table:
        """Every hot point of the partition as one (chunked, zero-copy) Arrow table."""
        if self._table is None:
            self._table = pa.Table.from_batches([c.record_batch() for c in self.chunks], schema=POINTS_SCHEMA)
        return self._table


class HotTier:
    """Acknowledged points not yet in segments, per (tenant, datasource)."""

    def __init__(self) -> None:
        self.partitions: dict[PartitionKey, HotPartition] = {}
        self.points = 0

    def insert(self, key: PartitionKey, chunk: Chunk) -> None:
        """Add an acknowledged chunk."""
        self.partitions.setdefault(key, HotPartition()).add(chunk)
        self.points += len(chunk)

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
