"""Validation of ingest batches: accepted points grouped by series, and a bounded list of reasons
for the rest, each naming the point and the field."""

from __future__ import annotations

import itertools
import re
import time
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from libs.errors import InvalidArgument
from libs.storage import AcceptedSeries, SeriesKey
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


def _too_long(text: str) -> bool:
    # A str of n characters encodes to at most 4n UTF-8 bytes: most need no encoding to tell.
    return len(text) * 4 > MAX_STRING_BYTES and len(text.encode()) > MAX_STRING_BYTES


def _series_problem(
    name: str, labels: Sequence[tuple[str, str]], good_keys: set[str] | None = None
) -> tuple[str, str] | None:
    """(field, reason) when a series' name or labels (sorted pairs) are unacceptable; `good_keys`
    holds label keys already found well-formed, and gains the new ones."""
    if not name:
        return "name", "must not be empty"
    if _too_long(name):
        return "name", f"is longer than {MAX_STRING_BYTES} bytes"
    if len(labels) > MAX_LABELS:
        return "labels", f"has {len(labels)} labels; at most {MAX_LABELS} are allowed"
    for key, value in labels:
        if good_keys is None or key not in good_keys:
            if not LABEL_KEY.fullmatch(key):
                return f"labels.{key}", "label keys must match [a-zA-Z_][a-zA-Z0-9_]*"
            if _too_long(key):
                return f"labels.{key}", f"is longer than {MAX_STRING_BYTES} bytes"
            if good_keys is not None:
                good_keys.add(key)
        if _too_long(value):
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
    them (bounded: emptied when full, as each key costs about 400 bytes; a workload with more live
    series than the bound only re-checks them). One per ingest core."""

    def __init__(self, max_entries: int = 50_000) -> None:
        self.max_entries = max_entries
        self._keys: dict[SeriesKey, None] = {}
        # Well-formed label keys: series come and go under churn, their label keys mostly stay.
        self.label_keys: set[str] = set()

    def __contains__(self, key: SeriesKey) -> bool:
        return key in self._keys

    def add(self, key: SeriesKey) -> None:
        """Remember a series that passed."""
        if len(self._keys) >= self.max_entries:
            self._keys.clear()
            self.label_keys.clear()
        self._keys[key] = None

    def problem(self, key: SeriesKey) -> tuple[str, str] | None:
        """(field, reason) when a series not known yet is unacceptable; None (and remembered) when
        it passes."""
        if key in self._keys:
            return None
        found = _series_problem(key.metric, key.labels, self.label_keys)
        if found is None:
            self.add(key)
        return found


def validate(
    request: realtime_service_pb2.IngestMetricsRequest,
    now_ms: int | None = None,
    known: KnownGoodSeries | None = None,
) -> ValidatedBatch:
    """Split a request into accepted points (grouped by series) and reasons for the rest; `known`
    remembers series that passed their name and label checks across calls."""
    return validate_parts(
        request.datasource,
        request.series,
        RowColumns.of_points(request.points),
        now_ms,
        known,
        message_of=_same_message,
    )


def _same_message(series: SeriesLike) -> common_pb2.Series:
    return series  # type: ignore[return-value]  # the request's own common_pb2.Series


def validate_parts(
    datasource: str,
    series: Sequence[SeriesLike],
    rows: RowColumns,
    now_ms: int | None = None,
    known: KnownGoodSeries | None = None,
    message_of: Callable[[SeriesLike], common_pb2.Series] | None = None,
) -> ValidatedBatch:
    """`validate` over a batch already split into its parts (the JSON body's decoder gives these):
    the datasource, columnar series, and the rows as columns. `message_of` gives the WAL record of
    a series accepted whole (the request's own message, or one built from the decoded lists, which
    is cheaper than from the arrays later); without it the store builds one."""
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    batch = ValidatedBatch(check_datasource(datasource))
    known = KnownGoodSeries() if known is None else known
    _validate_series(series, batch, now_ms, known, message_of)
    _validate_rows(rows, batch, now_ms, known)
    return batch


def _validate_series(
    series_list: Sequence[SeriesLike],
    batch: ValidatedBatch,
    now_ms: int,
    known: KnownGoodSeries,
    message_of: Callable[[SeriesLike], common_pb2.Series] | None,
) -> None:
    # Series-level rejections, applied in series order together with the point-level ones.
    refused: dict[int, tuple[int, str, str]] = {}
    index: list[int] = []
    keys: list[SeriesKey] = []
    ts_lists: list[Sequence[int]] = []
    value_lists: list[Sequence[float]] = []
    for i, series in enumerate(series_list):
        ts, values = series.timestamps_ms, series.values
        n_ts, n_values = len(ts), len(values)
        if not n_ts and not n_values:
            continue
        key = SeriesKey.of(series.name, series.labels)
        problem = known.problem(key)
        if problem:
            refused[i] = (max(n_ts, n_values), f"series[{i}].{problem[0]}", problem[1])
        elif n_ts != n_values:
            refused[i] = (
                max(n_ts, n_values),
                f"series[{i}].values",
                f"has {n_values} values for {n_ts} timestamps_ms",
            )
        else:
            index.append(i)
            keys.append(key)
            ts_lists.append(ts)
            value_lists.append(values)
    # Every point of the batch in two arrays (one conversion each, not two per series), checked
    # with one vectorised pass; per-series work only where a point is bad.
    lengths = np.fromiter(map(len, ts_lists), dtype=np.int64, count=len(ts_lists))
    total = int(lengths.sum())
    every_ts = np.fromiter(itertools.chain.from_iterable(ts_lists), dtype=np.int64, count=total)
    every_value = np.fromiter(itertools.chain.from_iterable(value_lists), dtype=np.float64, count=total)
    clean = not any(mask.any() for mask, _, _ in _point_problems(every_ts, every_value, now_ms))
    bounds = np.cumsum(lengths).tolist()
    pending = {
        i: (i, key, every_ts[a:b], every_value[a:b])
        for i, key, a, b in zip(index, keys, [0, *bounds][:-1], bounds, strict=True)
    }
    for i in sorted(refused.keys() | pending.keys()):
        if i in refused:
            count, field_path, reason = refused[i]
            batch.reject(count, i, field_path, reason)
        elif clean:
            _, key, ts, values = pending[i]
            message = message_of(series_list[i]) if message_of else None
            batch.series.append(AcceptedSeries(key, ts, values, message))
            batch.accepted += len(ts)
        else:
            _filter_points(batch, *pending[i], series_list[i], message_of, now_ms)


def _filter_points(
    batch: ValidatedBatch,
    i: int,
    key: SeriesKey,
    ts: np.ndarray,
    values: np.ndarray,
    series: SeriesLike,
    message_of: Callable[[SeriesLike], common_pb2.Series] | None,
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
        # Whole series accepted: the request's own message (if any) goes into the WAL as is.
        batch.series.append(AcceptedSeries(key, ts, values, message_of(series) if message_of else None))
    elif keep.any():
        batch.series.append(AcceptedSeries(key, ts[keep], values[keep]))
    batch.accepted += int(keep.sum())


class SeriesLike(Protocol):
    """A columnar series: `common_pb2.Series`, or the JSON body's decoded series."""

    name: str
    labels: Mapping[str, str]
    timestamps_ms: Sequence[int]
    values: Sequence[float]


@dataclass
class RowColumns:
    """The row form as columns, one entry per point: what both the protobuf points and the JSON
    body's decoder give. Rows are grouped by (name, stand-in for the labels), the same stand-in
    meaning the same labels: `groups` lists the distinct ones in order of first appearance and
    `group_of_row` numbers each row's; `labels_of` turns a stand-in into labels, once per group."""

    groups: list[tuple[str, Hashable]] = field(default_factory=list)
    group_of_row: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    labels_of: Callable[[Hashable], Mapping[str, str]] = dict
    timestamps: list[str] = field(default_factory=list)
    """RFC 3339 times ("" when absent)."""
    timestamps_ms: Sequence[int] = field(default_factory=list)
    """Epoch milliseconds (0 when absent)."""
    values: Sequence[float] = field(default_factory=list)

    @staticmethod
    def grouped(keys: Iterable[tuple[str, Hashable]]) -> tuple[list[tuple[str, Hashable]], np.ndarray]:
        """(distinct keys in order of first appearance, group number of each key): one dict probe
        a row."""
        seen: dict[tuple[str, Hashable], int] = {}
        number = seen.setdefault
        group_of_row = np.array([number(k, len(seen)) for k in keys], dtype=np.int64)
        return list(seen), group_of_row

    @classmethod
    def of_points(cls, points: Sequence[common_pb2.Point]) -> RowColumns:
        """The columns of protobuf points."""
        groups, group_of_row = cls.grouped([(p.name, tuple(p.labels.items())) for p in points])
        return cls(
            groups=groups,
            group_of_row=group_of_row,
            labels_of=dict,
            timestamps=[p.timestamp for p in points],
            timestamps_ms=[p.timestamp_ms for p in points],
            values=[p.value for p in points],
        )


def _point_times(rows: RowColumns) -> tuple[np.ndarray, dict[int, str]]:
    """Epoch ms of every row (0 where it has none) and, by row, the reason for those without one.
    RFC 3339 texts are parsed once per distinct text (a scrape's points share their time)."""
    out = np.array(rows.timestamps_ms, dtype=np.int64)
    problems: dict[int, str] = {}
    texts = rows.timestamps
    if any(texts):
        parsed: dict[str, int | str] = {}
        for i, text in enumerate(texts):
            if not text:
                continue
            ms = parsed.get(text)
            if ms is None:
                try:
                    ms = parse_time_ms(text, "timestamp")
                except InvalidArgument as exc:
                    ms = exc.reason
                parsed[text] = ms
            if isinstance(ms, str):
                problems[i] = ms
            else:
                out[i] = ms
    missing = np.flatnonzero(out == 0).tolist()
    for i in missing:
        if not texts[i]:
            problems[i] = "give timestamp (RFC 3339) or timestamp_ms (epoch milliseconds)"
    return out, problems


def _validate_rows(rows: RowColumns, batch: ValidatedBatch, now_ms: int, known: KnownGoodSeries) -> None:
    """Rows grouped by series, checked column-wise: a reason per rejected row (in row order, the first
    failing check of each: series, time, value, range), the accepted rows by series in order of the
    first accepted row of each."""
    n = len(rows.group_of_row)
    if n == 0:
        return
    # Each distinct (name, labels) is resolved and checked once, not once per row; two stand-ins
    # may still name one series (labels in another order), hence the second level.
    keys: dict[SeriesKey, int] = {}
    group_key: list[SeriesKey] = []
    group_problem: list[tuple[str, str] | None] = []
    gid_of_group = np.empty(len(rows.groups), dtype=np.int64)
    for g, (name, stand_in) in enumerate(rows.groups):
        key = SeriesKey.of(name, rows.labels_of(stand_in))
        gid = keys.get(key)
        if gid is None:
            gid = keys[key] = len(group_key)
            group_key.append(key)
            group_problem.append(known.problem(key))
        gid_of_group[g] = gid
    gids = gid_of_group[rows.group_of_row]
    ts, time_problems = _point_times(rows)
    values = np.array(rows.values, dtype=np.float64)
    bad_series = np.array([p is not None for p in group_problem], dtype=bool)[gids]
    no_time = np.zeros(n, dtype=bool)
    no_time[list(time_problems)] = True
    not_finite = ~np.isfinite(values)
    checks = [
        (ts < 0, "is before 1970"),
        (ts > now_ms + FUTURE_TOLERANCE_MS, "is more than a day in the future"),
    ]
    bad = bad_series | no_time | not_finite | checks[0][0] | checks[1][0]
    bad_rows = np.flatnonzero(bad)
    if len(bad_rows):
        # Reasons for the first rows only (the list is bounded); the count is exact.
        room = max(0, MAX_ERRORS - len(batch.errors))
        batch.rejected += len(bad_rows) - min(room, len(bad_rows))
        for i in bad_rows[:room].tolist():
            problem = group_problem[gids[i]]
            if problem:
                batch.reject(1, i, f"points[{i}].{problem[0]}", problem[1])
            elif no_time[i]:
                batch.reject(1, i, f"points[{i}].timestamp", time_problems[i])
            elif not_finite[i]:
                batch.reject(1, i, f"points[{i}].value", "NaN and infinite values are not accepted")
            else:
                reason = next(r for mask, r in checks if mask[i])
                batch.reject(1, i, f"points[{i}].timestamp", reason)
    keep = ~bad
    kept = np.flatnonzero(keep)
    if len(kept) == 0:
        return
    kept_gids = gids[kept]
    # Series in order of their first accepted row; rows of a series in row order.
    order = np.argsort(kept_gids, kind="stable")
    sorted_gids = kept_gids[order]
    starts = np.flatnonzero(np.r_[True, sorted_gids[1:] != sorted_gids[:-1]])
    ends = np.r_[starts[1:], len(order)]
    firsts = kept[order[starts]]
    kept_ts, kept_values = ts[kept][order], values[kept][order]
    for j in np.argsort(firsts, kind="stable").tolist():
        a, b = int(starts[j]), int(ends[j])
        batch.series.append(AcceptedSeries(group_key[int(sorted_gids[a])], kept_ts[a:b], kept_values[a:b]))
        batch.accepted += b - a
