"""The bus's event codec: a batch of series as `MetricsBatchEvent` bytes, written from numpy columns.

Ingest writes every acknowledged batch to the WAL as a serialised `MetricsBatchEvent`. Building
that message field by field copies each timestamp and value into a Python object and then into
protobuf's repeated fields: at a million points that cost more than parsing the request. Here the
packed fields are written directly in protobuf's wire format (values are little-endian doubles, so
one `tobytes()`; timestamps are varints, encoded for the whole batch with a few vectorised passes),
and the few scalar fields around them are written by protobuf itself. The bytes parse to the same
message as protobuf builds itself (tests/unit/test_bus_events.py), so the WAL format (the store
logs these same bytes) is unchanged and replay reads old and new records alike.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from typing import Protocol

import numpy as np

from libs.wire import varint, varints
from platformq.analytics.v1 import common_pb2, events_pb2

# Wire tags: (field number << 3) | wire type (2: length-delimited).
_EVENT_SERIES = b"\x22"  # MetricsBatchEvent.series = 4
_SERIES_NAME = b"\x0a"  # Series.name = 1
_SERIES_LABEL = b"\x12"  # Series.labels = 2, map entries of key = 1 and value = 2
_ENTRY_KEY = b"\x0a"
_ENTRY_VALUE = b"\x12"
_SERIES_TIMESTAMPS = b"\x1a"  # Series.timestamps_ms = 3 (packed varints)
_SERIES_VALUES = b"\x22"  # Series.values = 4 (packed doubles)
SeriesColumns = tuple[bytes, np.ndarray, np.ndarray]
"""One series to encode: (its `series_header`, int64 timestamps, float64 values)."""


def series_header(
    name: str, labels: Sequence[tuple[str, str]], entries: dict[tuple[str, str], bytes] | None = None
) -> bytes:
    """Series.name and Series.labels as wire bytes, the part of a series record that does not
    change from batch to batch (as protobuf writes them: an empty name or label value is left out).
    `entries`, when given, keeps each label pair's encoding for the next series that has it (most
    pairs repeat across series: `service="api"` under many `simulation_id`s)."""
    parts = [_SERIES_NAME, varint(len(data := name.encode())), data] if name else []
    for pair in labels:
        entry = entries.get(pair) if entries is not None else None
        if entry is None:
            entry = _label_entry(*pair)
            if entries is not None:
                entries[pair] = entry
        parts.append(entry)
    return b"".join(parts)


def _label_entry(key: str, value: str) -> bytes:
    """One label of a series record: the map entry, tagged and length-prefixed."""
    k, v = key.encode(), value.encode()
    entry = (_ENTRY_KEY + varint(len(k)) + k if k else b"") + (
        _ENTRY_VALUE + varint(len(v)) + v if v else b""
    )
    return _SERIES_LABEL + varint(len(entry)) + entry


def event_head(
    tenant: str, datasource: str, batch_id: str, accepted_at_ms: int, source: str | None = None
) -> bytes:
    """The scalar fields of a serialised `MetricsBatchEvent` (source = datasource unless given):
    with the series' entries after them, the whole event."""
    return events_pb2.MetricsBatchEvent(
        tenant=tenant,
        datasource=datasource,
        source=datasource if source is None else source,
        batch_id=batch_id,
        accepted_at_ms=accepted_at_ms,
    ).SerializeToString()


def encode_event(
    tenant: str,
    datasource: str,
    batch_id: str,
    accepted_at_ms: int,
    series: Sequence[SeriesColumns | bytes],
    source: str | None = None,
) -> bytes:
    """A serialised `MetricsBatchEvent` (source = datasource unless given) of series given as
    (header, timestamps, values) with at least one point each, or as an already serialised `Series`."""
    head = event_head(tenant, datasource, batch_id, accepted_at_ms, source)
    columns = [s for s in series if not isinstance(s, bytes)]
    if columns:
        # Every series' timestamps and values encoded at once; each series takes its byte range.
        lengths = np.fromiter((len(s[1]) for s in columns), dtype=np.int64, count=len(columns))
        ts_bytes, ts_lengths = varints(np.concatenate([s[1] for s in columns]))
        ts_ends = np.cumsum(ts_lengths)[np.cumsum(lengths) - 1].tolist()
        all_ts = ts_bytes.tobytes()
        all_values = np.concatenate([s[2] for s in columns]).astype("<f8", copy=False).tobytes()
    parts = [head]
    i = ts_start = value_start = 0
    for s in series:
        if isinstance(s, bytes):
            parts += (_EVENT_SERIES, varint(len(s)), s)
            continue
        header, ts_end, value_end = s[0], ts_ends[i], value_start + 8 * len(s[2])
        # The record's parts go into the one join: no intermediate bytes a series.
        ts_size, ts_prefix = ts_end - ts_start, varint(ts_end - ts_start)
        value_size, value_prefix = value_end - value_start, varint(value_end - value_start)
        size = len(header) + 2 + len(ts_prefix) + ts_size + len(value_prefix) + value_size
        parts += (
            _EVENT_SERIES,
            varint(size),
            header,
            _SERIES_TIMESTAMPS,
            ts_prefix,
            all_ts[ts_start:ts_end],
            _SERIES_VALUES,
            value_prefix,
            all_values[value_start:value_end],
        )
        i, ts_start, value_start = i + 1, ts_end, value_end
    return b"".join(parts)


class BatchSeries(Protocol):
    """What encode_batch needs of a series: its key (metric and sorted labels), its points and,
    when the request's own `Series` message can be passed on as it is, that message."""

    @property
    def key(self) -> _Key: ...
    @property
    def ts(self) -> np.ndarray: ...
    @property
    def values(self) -> np.ndarray: ...
    @property
    def message(self) -> common_pb2.Series | None: ...


class _Key(Protocol):
    @property
    def metric(self) -> str: ...
    @property
    def labels(self) -> tuple[tuple[str, str], ...]: ...


def encode_batch(
    tenant: str,
    datasource: str,
    series: Sequence[BatchSeries],
    headers: Sequence[bytes] | None = None,
    batch_id: str = "",
) -> bytes:
    """One accepted batch as a serialised bus event (the store's WAL record too), with `batch_id`
    or a fresh one; `headers` are the series' `series_header`s when the caller has them."""
    if headers is None:
        headers = [series_header(s.key.metric, s.key.labels) for s in series]
    return encode_event(
        tenant,
        datasource,
        batch_id or uuid.uuid4().hex,
        int(time.time() * 1000),
        [
            s.message.SerializeToString() if s.message is not None else (header, s.ts, s.values)
            for s, header in zip(series, headers, strict=True)
        ],
    )
