"""The hot tier: acknowledged points held in memory, as Arrow-ready columns, until flushed."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

POINTS_SCHEMA = pa.schema([("series_id", pa.uint64()), ("ts", pa.int64()), ("value", pa.float64())])
# Memory per point: series id, timestamp and value, 8 bytes each.
BYTES_PER_POINT = 24

PartitionKey = tuple[str, str]  # (tenant, datasource)


@dataclass(frozen=True)
class Chunk:
    """One acknowledged batch of one datasource: its WAL position and its columns."""

    lsn: int
    series_ids: np.ndarray
    ts: np.ndarray
    values: np.ndarray
    arrived: float = field(default_factory=time.monotonic)

    def __len__(self) -> int:
        return len(self.ts)

    def record_batch(self) -> pa.RecordBatch:
        """The chunk as an Arrow record batch (zero-copy over the numpy arrays)."""
        return pa.RecordBatch.from_arrays(
            [pa.array(self.series_ids, pa.uint64()), pa.array(self.ts), pa.array(self.values)],
            schema=POINTS_SCHEMA,
        )


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
