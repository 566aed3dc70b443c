"""Validation of ingest batches: accepted points grouped by series, and a bounded list of reasons
for the rest, each naming the point and the field."""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass, field

import numpy as np

from libs.errors import InvalidArgument
from libs.storage.series import SeriesKey
from libs.storage.store import AcceptedSeries
from libs.timeparse import parse_time_ms
from platformq.analytics.v1 import common_pb2, realtime_service_pb2

LABEL_KEY = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
DATASOURCE = re.compile(r"[a-zA-Z_][a-zA-Z0-9_.-]{0,127}")
MAX_LABELS = 64
MAX_STRING_BYTES = 1024
MAX_ERRORS = 100
FUTURE_TOLERANCE_MS = 86_400_000
DEFAULT_DATASOURCE = "platform_metrics"


@dataclass
class ValidatedBatch:
    """What a batch leaves after validation."""

    datasource: str
    series: list[AcceptedSeries] = field(default_factory=list)
    accepted: int = 0
    rejected: int = 0
    errors: list[common_pb2.FieldViolation] = field(default_factory=list)

    def reject(self, count: int, i: int, field_path: str, reason: str) -> None:
        self.rejected += count
        if len(self.errors) < MAX_ERRORS:
            self.errors.append(common_pb2.FieldViolation(index=i, field=field_path, reason=reason))


def check_datasource(name: str) -> str:
    """The datasource name, defaulted; a bad one rejects the whole request."""
    name = name or DEFAULT_DATASOURCE
    if not DATASOURCE.fullmatch(name):
        raise InvalidArgument(f"{name!r} must match {DATASOURCE.pattern}", "datasource")
    return name


def _series_problem(name: str, labels: dict[str, str]) -> tuple[str, str] | None:
    """(field, reason) when a series' name or labels are unacceptable."""
    if not name:
        return "name", "must not be empty"
    if len(name.encode()) > MAX_STRING_BYTES:
        return "name", f"is longer than {MAX_STRING_BYTES} bytes"
    if len(labels) > MAX_LABELS:
        return "labels", f"has {len(labels)} labels; at most {MAX_LABELS} are allowed"
    for key, value in labels.items():
        if not LABEL_KEY.fullmatch(key):
            return f"labels.{key}", "label keys must match [a-zA-Z_][a-zA-Z0-9_]*"
        if len(key.encode()) > MAX_STRING_BYTES or len(value.encode()) > MAX_STRING_BYTES:
            return f"labels.{key}", f"is longer than {MAX_STRING_BYTES} bytes"
    return None


def _point_problems(ts: np.ndarray, values: np.ndarray, now_ms: int) -> list[tuple[np.ndarray, str, str]]:
    """Masks of bad points with the column and reason for each kind."""
    return [
        (~np.isfinite(values), "values", "NaN and infinite values are not accepted"),
        (ts < 0, "timestamps_ms", "is before 1970"),
        (ts > now_ms + FUTURE_TOLERANCE_MS, "timestamps_ms", "is more than a day in the future"),
    ]


class KnownGoodSeries:
    """Series whose name and labels passed their checks, so a batch of series seen before skips
    them (bounded: emptied when full). One per ingest core."""

    def __init__(self, max_entries: int = 200_000) -> None:
        self.max_entries = max_entries
        self._keys: dict[SeriesKey, None] = {}

    def __contains__(self, key: SeriesKey) -> bool:
        return key in self._keys

    def add(self, key: SeriesKey) -> None:
        """Remember a series that passed."""
        if len(self._keys) >= self.max_entries:
            self._keys.clear()
        self._keys[key] = None


def validate(
    request: realtime_service_pb2.IngestMetricsRequest,
    now_ms: int | None = None,
    known: KnownGoodSeries | None = None,
) -> ValidatedBatch:
    """Split a request into accepted points (grouped by series) and reasons for the rest; `known`
    remembers series that passed their name and label checks across calls."""
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    batch = ValidatedBatch(check_datasource(request.datasource))
    _validate_series(request, batch, now_ms, KnownGoodSeries() if known is None else known)
    _validate_points(request, batch, now_ms)
    return batch


def _validate_series(
    request: realtime_service_pb2.IngestMetricsRequest,
    batch: ValidatedBatch,
    now_ms: int,
    known: KnownGoodSeries,
) -> None:
    candidates: list[tuple[int, SeriesKey, np.ndarray, np.ndarray]] = []
    # Series-level rejections, applied in series order together with the point-level ones.
    refused: dict[int, tuple[int, str, str]] = {}
    for i, series in enumerate(request.series):
        n = max(len(series.timestamps_ms), len(series.values))
        if n == 0:
            continue
        key = SeriesKey.of(series.name, series.labels)
        if key not in known:
            problem = _series_problem(series.name, dict(key.labels))
            if problem:
                refused[i] = (n, f"series[{i}].{problem[0]}", problem[1])
                continue
            known.add(key)
        if len(series.timestamps_ms) != len(series.values):
            refused[i] = (
                n,
                f"series[{i}].values",
                f"has {len(series.values)} values for {len(series.timestamps_ms)} timestamps_ms",
            )
            continue
        ts = np.array(series.timestamps_ms, dtype=np.int64)
        values = np.array(series.values, dtype=np.float64)
        candidates.append((i, key, ts, values))
    # One vectorised check over every point of the batch; per-series work only where one is bad.
    clean = not candidates or not any(
        mask.any()
        for mask, _, _ in _point_problems(
            np.concatenate([c[2] for c in candidates]), np.concatenate([c[3] for c in candidates]), now_ms
        )
    )
    pending = {c[0]: c for c in candidates}
    for i in sorted(refused.keys() | pending.keys()):
        if i in refused:
            count, field_path, reason = refused[i]
            batch.reject(count, i, field_path, reason)
        elif clean:
            _, key, ts, values = pending[i]
            batch.series.append(AcceptedSeries(key, ts, values, request.series[i]))
            batch.accepted += len(ts)
        else:
            _filter_points(batch, *pending[i], request.series[i], now_ms)


def _filter_points(
    batch: ValidatedBatch,
    i: int,
    key: SeriesKey,
    ts: np.ndarray,
    values: np.ndarray,
    message: common_pb2.Series,
    now_ms: int,
) -> None:
    keep = np.ones(len(ts), dtype=bool)
    for mask, column, reason in _point_problems(ts, values, now_ms):
        bad = mask & keep
        for j in np.flatnonzero(bad)[: max(0, MAX_ERRORS - len(batch.errors))]:
            batch.errors.append(
                common_pb2.FieldViolation(index=i, field=f"series[{i}].{column}[{j}]", reason=reason)
            )
        batch.rejected += int(bad.sum())
        keep &= ~mask
    if keep.all():
        # Whole series accepted: the request's own message goes into the WAL as is.
        batch.series.append(AcceptedSeries(key, ts, values, message))
    elif keep.any():
        batch.series.append(AcceptedSeries(key, ts[keep], values[keep]))
    batch.accepted += int(keep.sum())


# Series whose name and labels already passed the checks (bounded, so high churn cannot grow it).
def _point_time(point: common_pb2.Point) -> tuple[int | None, str | None]:
    """Epoch ms of a row-form point, or the reason it has none."""
    if point.timestamp:
        try:
            return parse_time_ms(point.timestamp, "timestamp"), None
        except InvalidArgument as exc:
            return None, exc.reason
    if point.timestamp_ms:
        return point.timestamp_ms, None
    return None, "give timestamp (RFC 3339) or timestamp_ms (epoch milliseconds)"


def _validate_points(
    request: realtime_service_pb2.IngestMetricsRequest, batch: ValidatedBatch, now_ms: int
) -> None:
    grouped: dict[SeriesKey, tuple[list[int], list[float]]] = {}
    for i, point in enumerate(request.points):
        labels = dict(point.labels)
        problem = _series_problem(point.name, labels)
        if problem:
            batch.reject(1, i, f"points[{i}].{problem[0]}", problem[1])
            continue
        ts, reason = _point_time(point)
        if ts is None:
            batch.reject(1, i, f"points[{i}].timestamp", reason)
            continue
        if not math.isfinite(point.value):
            batch.reject(1, i, f"points[{i}].value", "NaN and infinite values are not accepted")
            continue
        if ts < 0:
            batch.reject(1, i, f"points[{i}].timestamp", "is before 1970")
            continue
        if ts > now_ms + FUTURE_TOLERANCE_MS:
            batch.reject(1, i, f"points[{i}].timestamp", "is more than a day in the future")
            continue
        bucket = grouped.setdefault(SeriesKey.of(point.name, labels), ([], []))
        bucket[0].append(ts)
        bucket[1].append(point.value)
    for key, (ts_list, values) in grouped.items():
        batch.series.append(
            AcceptedSeries(key, np.array(ts_list, dtype=np.int64), np.array(values, dtype=np.float64))
        )
        batch.accepted += len(ts_list)
