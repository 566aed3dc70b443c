"""Accepted batches on their way into the store: the validated series (`AcceptedSeries`), and a
batch encoded where it was validated (`EncodedBatch`: its WAL record, which is also the bus event,
and its points as `BatchColumns`), with the memo of series ids and record headers that encodes it
(`SeriesMemo`). Light (numpy and the event codec): the REST body worker processes import it without
the rest of the store."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from libs.bus.events import encode_batch, series_header
from libs.storage.keys import SeriesKey, series_id
from platformq.analytics.v1 import common_pb2, events_pb2


@dataclass(frozen=True)
class AcceptedSeries:
    """Points of one series ready to store; `message` is the request's own Series when reusable."""

    key: SeriesKey
    ts: np.ndarray
    values: np.ndarray
    message: common_pb2.Series | None = None


class SeriesMemo:
    """Recently written series: key -> (series id, `series_header`), so a series that keeps sending
    is hashed and its record header written once, not once per batch; new series' headers reuse
    the encodings of label pairs seen before. Bounded (emptied when full; an entry costs about 150
    bytes beside the key): under churn it costs a dict insert a series, and memory stays capped."""

    def __init__(self, max_entries: int = 50_000) -> None:
        self.max_entries = max_entries
        self._entries: dict[SeriesKey, tuple[int, bytes]] = {}
        self._label_entries: dict[tuple[str, str], bytes] = {}

    def of(self, key: SeriesKey) -> tuple[int, bytes]:
        """The series id and record header of `key`."""
        found = self._entries.get(key)
        if found is None:
            if len(self._entries) >= self.max_entries or len(self._label_entries) >= self.max_entries:
                self._entries.clear()
                self._label_entries.clear()
            found = self._entries[key] = (
                series_id(key.metric, key.labels),
                series_header(key.metric, key.labels, self._label_entries),
            )
        return found


@dataclass
class BatchColumns:
    """A batch's points as columns, series by series: series i (key `keys[i]`, id `sids[i]`, or
    hashed by the store when `sids` is None) owns the next `lengths[i]` entries of `ts` and `values`.
    Pickles as plain tuples and arrays (a worker process sends it whole: a thousand `AcceptedSeries`
    cost about 15 ms to pickle and unpickle, this under 1 ms)."""

    keys: list[SeriesKey]
    lengths: np.ndarray
    ts: np.ndarray
    values: np.ndarray
    sids: np.ndarray | None = None

    @classmethod
    def of(cls, series: Sequence[AcceptedSeries], sids: np.ndarray | None = None) -> BatchColumns:
        """The columns of non-empty `series`."""
        return cls(
            [s.key for s in series],
            np.fromiter((len(s.ts) for s in series), dtype=np.int64, count=len(series)),
            np.concatenate([s.ts for s in series]).astype(np.int64, copy=False),
            np.concatenate([s.values for s in series]).astype(np.float64, copy=False),
            sids,
        )

    @classmethod
    def of_event(cls, event: events_pb2.MetricsBatchEvent) -> BatchColumns | None:
        """The columns of an event's non-empty series; None when it has none."""
        series = [s for s in event.series if len(s.values)]
        if not series:
            return None
        return cls(
            [SeriesKey.of(s.name, s.labels) for s in series],
            np.fromiter((len(s.values) for s in series), dtype=np.int64, count=len(series)),
            np.fromiter(itertools.chain.from_iterable(s.timestamps_ms for s in series), dtype=np.int64),
            np.fromiter(itertools.chain.from_iterable(s.values for s in series), dtype=np.float64),
        )

    def __reduce__(self) -> tuple:
        # A named tuple pickles by calling back into Python once per key; plain tuples do not.
        return (_batch_columns, (list(map(tuple, self.keys)), self.lengths, self.ts, self.values, self.sids))


def _batch_columns(keys: list[tuple], lengths, ts, values, sids) -> BatchColumns:
    return BatchColumns(list(map(SeriesKey._make, keys)), lengths, ts, values, sids)


@dataclass
class EncodedBatch:
    """An accepted batch encoded where it was validated: its WAL record (the serialised bus event)
    and its points as columns with every series' id. The realtime core builds these for gRPC
    batches (as `MetricStore.ingest` does for its callers), the REST body worker processes for
    theirs, so the hashing and encoding of large bodies happen on the workers' core."""

    tenant: str
    datasource: str
    batch_id: str
    """The record's batch id, kept beside it so that the store need not parse the record."""
    payload: bytes
    """The WAL record: a serialised `MetricsBatchEvent` (source = datasource), also the bus event."""
    columns: BatchColumns

    @classmethod
    def encode(
        cls, tenant: str, datasource: str, series: Sequence[AcceptedSeries], memo: SeriesMemo
    ) -> EncodedBatch | None:
        """The batch of `series` (None when no series has a point); ids and record headers come
        from `memo`."""
        series = [s for s in series if len(s.ts)]
        if not series:
            return None
        known = [memo.of(s.key) for s in series]
        batch_id = uuid.uuid4().hex
        payload = encode_batch(tenant, datasource, series, [header for _, header in known], batch_id)
        sids = np.fromiter((sid for sid, _ in known), dtype=np.uint64, count=len(known))
        return cls(tenant, datasource, batch_id, payload, BatchColumns.of(series, sids))

    @classmethod
    def of_columns(
        cls,
        tenant: str,
        datasource: str,
        batch_id: str,
        payload: bytes,
        keys: list[SeriesKey],
        lengths: np.ndarray,
        ts: np.ndarray,
        values: np.ndarray,
        sids: np.ndarray,
    ) -> EncodedBatch:
        """A batch encoded by other code (the REST body's compiled fast path): its record, and its
        series (`keys`, ids `sids`) each owning the next `lengths[i]` entries of `ts` and `values`."""
        return cls(tenant, datasource, batch_id, payload, BatchColumns(keys, lengths, ts, values, sids))
