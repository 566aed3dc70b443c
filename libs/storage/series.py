"""The series catalog of one (tenant, datasource).

A series is (metric name, sorted labels), a `SeriesKey`; its id is a stable 64-bit hash
(`series_id`), so the same series gets the same id in every process and after every restart. Both
live in keys.py, which the REST body workers import without this module.

The catalog holds no Python object per series: each series is a row of numpy columns (its id, its
metric's code, one value code per label key), every metric name, label key and label value is
stored once (interned), and lookups by label use an inverted index (label value -> sorted rows, in
CSR form) that is rebuilt when the rows added since the last build pass a quarter of the total.
Rows added since then (the "tail") are scanned with numpy, so every lookup costs at most the size
of its answer plus a quarter of the catalog, and a build costs O(n log n) once per 25 % growth.
Memory per series is a few dozen bytes plus its share of the distinct label values.

Rows are only appended, never changed, and the index is replaced as one object, so a reader in
another thread (SQL views) sees a consistent prefix of the rows while the event loop adds more.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from operator import itemgetter

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from libs import arrowbuf
from libs.storage.keys import LabelSet, SeriesKey

Matcher = tuple[str, str, tuple[str, ...]]

_MIN_TAIL = 1024
"""The index is rebuilt once the unindexed tail holds this many rows and a quarter of the total."""
_NO_VALUE = -1
"""Value code of a label a series does not carry (PromQL: it equals "")."""
_NAME, _VALUE = itemgetter(0), itemgetter(1)
"""The name and the value of a label pair."""


class _Column:
    """A growable numpy array (capacity doubles), unused slots pre-filled with `fill`."""

    __slots__ = ("data", "fill")

    def __init__(self, dtype: type, fill: int, capacity: int) -> None:
        self.fill = fill
        self.data = np.full(max(capacity, 16), fill, dtype=dtype)

    def reserve(self, capacity: int) -> None:
        if capacity > len(self.data):
            grown = np.full(capacity, self.fill, dtype=self.data.dtype)
            grown[: len(self.data)] = self.data
            self.data = grown  # one assignment: a reader holds either array, both valid up to n


class _Strings:
    """Interned strings: string -> code and code -> string."""

    __slots__ = ("codes", "names")

    def __init__(self) -> None:
        self.codes: dict[str, int] = {}
        self.names: list[str] = []

    def code(self, text: str) -> int:
        code = self.codes.get(text)
        if code is None:
            code = self.codes[text] = len(self.names)
            self.names.append(text)
        return code

    def code_many(self, texts: list[str]) -> list[int]:
        """`code` of each text, in one pass: a new text gets the next code (the dict's size when it
        is added), and the first occurrence of each new code appends its name."""
        codes, names = self.codes, self.names
        out = [codes.setdefault(text, len(codes)) for text in texts]
        if len(codes) > len(names):
            for text, code in zip(texts, out, strict=True):
                if code == len(names):
                    names.append(text)
        return out


@dataclass(frozen=True)
class _Postings:
    """Rows [0, upto) of one code column grouped by code: rows of code c are
    order[offsets[c]:offsets[c + 1]], ascending."""

    order: np.ndarray
    offsets: np.ndarray

    @classmethod
    def build(cls, codes: np.ndarray, n_codes: int) -> _Postings:
        # Absent labels (-1) sort first and are skipped by starting the offsets after them.
        order = np.argsort(codes, kind="stable").astype(np.int32)  # rows fit 32 bits: half the memory
        counts = (
            np.bincount(codes[codes >= 0], minlength=n_codes) if len(codes) else np.zeros(n_codes, np.int64)
        )
        offsets = np.zeros(n_codes + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        offsets += int(np.count_nonzero(codes < 0))
        return cls(order, offsets)

    def rows(self, code: int) -> np.ndarray:
        if code + 1 >= len(self.offsets):
            return self.order[:0]
        return self.order[self.offsets[code] : self.offsets[code + 1]]


@dataclass(frozen=True)
class _Index:
    """The rows indexed at one build: ids sorted (for id -> row) and postings per column; the
    rows added after it are in `recent` (id -> row) and scanned from the columns."""

    upto: int
    sorted_ids: np.ndarray
    sorted_rows: np.ndarray
    metric: _Postings
    labels: tuple[_Postings, ...]
    recent: dict[int, int]


SMALL_GROUPING = 32
"""Up to this many series, `groups` numbers them with Python tuples instead of numpy."""


def _posted(postings: _Postings | None, codes: list[int]) -> int:
    """Indexed rows of `codes` in `postings` (the unindexed tail, the same for every column, aside)."""
    if postings is None:
        return 0
    offsets = postings.offsets
    return sum(int(offsets[c + 1] - offsets[c]) for c in codes if c + 1 < len(offsets))


def _isin_codes(column: np.ndarray, codes: list[int]) -> np.ndarray:
    """np.isin(column, codes) for the few codes a matcher names, without np.isin's set-up (tens of
    microseconds a call, which a one-series query pays several times)."""
    if len(codes) > 8:
        return np.isin(column, codes)
    out = np.zeros(len(column), dtype=bool)
    for code in codes:
        out |= column == code
    return out


class SeriesCatalog:
    """Every series of one (tenant, datasource), with indexes by metric and by label."""

    def __init__(self) -> None:
        self._n = 0
        self._ids = _Column(np.uint64, 0, 16)
        self._metrics = _Strings()
        self._metric_col = _Column(np.int32, _NO_VALUE, 16)
        self._keys = _Strings()
        self._values: list[_Strings] = []  # per label key code
        self._label_cols: list[_Column] = []  # per label key code: value code per row
        self._sorted_keys: list[int] = []  # label key codes in name order
        empty = np.zeros(0, dtype=np.int64)
        self._index = _Index(
            0, np.zeros(0, np.uint64), empty, _Postings(empty, np.zeros(1, np.int64)), (), {}
        )
        self._by_id = _ById(self)
        # Series not yet written to a series file; the store empties it after each flush.
        self.unsaved: list[int] = []

    def __len__(self) -> int:
        return self._n

    # ---- writing ------------------------------------------------------------------------------
    def add(self, sid: int, key: SeriesKey, saved: bool = False) -> int:
        """Register a series (new ones are remembered until the next segment flush saves them);
        returns its row, which never changes."""
        row = self._row(sid)
        return self._append(sid, key, saved) if row is None else row

    def add_many(self, sids: np.ndarray, keys: Sequence[SeriesKey], saved: bool = False) -> np.ndarray:
        """`add` for a batch, returning the rows: the known ids are found with one vectorised lookup
        and the new ones appended together, column by column."""
        rows = self.rows_of(sids)
        missing = np.flatnonzero(rows < 0)
        if not len(missing):
            return rows
        # A batch may name a new series twice: each new id gets one row.
        new: dict[int, int] = {}
        for i, sid in zip(missing.tolist(), sids[missing].tolist(), strict=True):
            new.setdefault(sid, i)
        first = self._append_many(list(new), [keys[i] for i in new.values()], saved)
        row_of = {sid: first + j for j, sid in enumerate(new)}
        rows[missing] = np.fromiter(
            (row_of[sid] for sid in sids[missing].tolist()), dtype=np.int64, count=len(missing)
        )
        return rows

    def _append(self, sid: int, key: SeriesKey, saved: bool) -> int:
        row = self._n
        if row >= len(self._ids.data):
            # Every column keeps the same capacity, so any row below it can be read in any column.
            capacity = 2 * len(self._ids.data)
            for column in (self._ids, self._metric_col, *self._label_cols):
                column.reserve(capacity)
        self._ids.data[row] = sid
        self._metric_col.data[row] = self._metrics.code(key.metric)
        for name, value in key.labels:
            k = self._key_code(name)
            self._label_cols[k].data[row] = self._values[k].code(value)
        index = self._index
        index.recent[sid] = row
        self._n = row + 1
        if not saved:
            self.unsaved.append(sid)
        if self._n - index.upto >= max(_MIN_TAIL, index.upto // 4):
            self._reindex()
        return row

    def _append_many(self, sids: list[int], keys: Sequence[SeriesKey], saved: bool) -> int:
        """Append new series as rows; returns the first row."""
        first, count = self._n, len(sids)
        end = first + count
        if end > len(self._ids.data):
            # Every column keeps the same capacity, so any row below it can be read in any column.
            capacity = max(end, 2 * len(self._ids.data))
            for column in (self._ids, self._metric_col, *self._label_cols):
                column.reserve(capacity)
        self._ids.data[first:end] = sids
        self._metric_col.data[first:end] = self._metrics.code_many([key.metric for key in keys])
        label_sets = [key.labels for key in keys]
        columns = self._one_shape(label_sets)
        if columns is not None:  # usually all of a batch: no grouping a series
            self._write_labels(slice(first, end), columns)
        else:
            shapes: dict[tuple[str, ...], list[int]] = {}
            for i, labels in enumerate(label_sets):
                shapes.setdefault(tuple([pair[0] for pair in labels]), []).append(i)
            for members in shapes.values():
                columns = list(zip(*[label_sets[i] for i in members], strict=True))
                self._write_labels(np.array(members) + first, columns)
        index = self._index
        index.recent.update(zip(sids, range(first, end), strict=True))
        # Rows are written before they are counted: a reader in another thread sees whole rows only.
        self._n = end
        if not saved:
            self.unsaved.extend(sids)
        if self._n - index.upto >= max(_MIN_TAIL, index.upto // 4):
            self._reindex()
        return first

    @staticmethod
    def _one_shape(label_sets: list[LabelSet]) -> list[tuple[tuple[str, str], ...]] | None:
        """The label sets transposed (per label position, its (name, value) pairs) when every set
        has the same label names, else None; at C speed."""
        if len(set(map(len, label_sets))) != 1:
            return None
        columns = list(zip(*label_sets, strict=True))
        return columns if all(len(set(map(_NAME, column))) == 1 for column in columns) else None

    def _write_labels(self, rows: np.ndarray | slice, columns: list[tuple[tuple[str, str], ...]]) -> None:
        """Write the label columns of `rows` from their label sets transposed (one shape), a column
        at a time."""
        for column in columns:
            k = self._key_code(column[0][0])
            self._label_cols[k].data[rows] = self._values[k].code_many(list(map(_VALUE, column)))

    def _key_code(self, name: str) -> int:
        k = self._keys.codes.get(name)
        if k is None:
            k = self._keys.code(name)
            self._values.append(_Strings())
            self._label_cols.append(_Column(np.int32, _NO_VALUE, len(self._ids.data)))
            self._sorted_keys = sorted(range(len(self._keys.names)), key=self._keys.names.__getitem__)
        return k

    def _reindex(self) -> None:
        n = self._n
        ids = self._ids.data[:n]
        order = np.argsort(ids)
        self._index = _Index(
            n,
            ids[order],
            order.astype(np.int32),
            _Postings.build(self._metric_col.data[:n], len(self._metrics.names)),
            tuple(
                _Postings.build(col.data[:n], len(values.names))
                for col, values in zip(self._label_cols, self._values, strict=True)
            ),
            {},
        )

    # ---- reading ------------------------------------------------------------------------------
    def _row(self, sid: int) -> int | None:
        index = self._index
        row = index.recent.get(sid)
        if row is not None:
            return row
        ids = index.sorted_ids
        key = np.uint64(sid)
        pos = ids.searchsorted(key)
        if pos < len(ids) and ids[pos] == key:
            return int(index.sorted_rows[pos])
        return None

    def rows_of(self, sids: np.ndarray) -> np.ndarray:
        """Catalog rows of series ids (vectorised); -1 for an unknown id."""
        index = self._index
        sids = np.asarray(sids, dtype=np.uint64)
        rows = np.full(len(sids), -1, dtype=np.int64)
        found = np.zeros(len(sids), dtype=bool)
        if len(index.sorted_ids):
            pos = np.minimum(np.searchsorted(index.sorted_ids, sids), len(index.sorted_ids) - 1)
            found = index.sorted_ids[pos] == sids
            rows[found] = index.sorted_rows[pos[found]]
        missing = np.flatnonzero(~found)
        recent_map = index.recent
        if recent_map and len(missing) and len(missing) * 8 < len(recent_map):
            # Few ids next to the tail (an ingest batch against a catalog under churn): one dict
            # lookup each, instead of copying and sorting the whole tail on every call.
            get = recent_map.get
            rows[missing] = np.fromiter(
                (get(s, -1) for s in sids[missing].tolist()), dtype=np.int64, count=len(missing)
            )
        elif recent_map and len(missing):
            # One C-level copy of the tail's dict (atomic under the GIL), then a vectorised search.
            recent = np.array(list(recent_map.items()), dtype=np.uint64).reshape(-1, 2)
            order = np.argsort(recent[:, 0])
            recent_ids, recent_rows = recent[order, 0], recent[order, 1].astype(np.int64)
            pos = np.minimum(np.searchsorted(recent_ids, sids[missing]), len(recent_ids) - 1)
            hit = recent_ids[pos] == sids[missing]
            rows[missing[hit]] = recent_rows[pos[hit]]
        return rows

    def key(self, sid: int) -> SeriesKey:
        """The key of a series id (KeyError when unknown)."""
        row = self._row(sid)
        if row is None:
            raise KeyError(sid)
        return self._key_at(row)

    def _key_at(self, row: int) -> SeriesKey:
        labels = []
        for k in self._sorted_keys:
            code = int(self._label_cols[k].data[row])
            if code != _NO_VALUE:
                labels.append((self._keys.names[k], self._values[k].names[code]))
        return SeriesKey(self._metrics.names[int(self._metric_col.data[row])], tuple(labels))

    def keys_of(self, sids: np.ndarray) -> list[SeriesKey]:
        """The keys of many series ids at once (KeyError for an unknown one)."""
        return self.keys_at(self.known_rows(sids))

    def known_rows(self, sids: np.ndarray) -> np.ndarray:
        """`rows_of` series ids that must all be known (KeyError for an unknown one)."""
        rows = self.rows_of(sids)
        if (rows < 0).any():
            raise KeyError(int(np.asarray(sids)[np.flatnonzero(rows < 0)[0]]))
        return rows

    def keys_at(self, rows: np.ndarray) -> list[SeriesKey]:
        """The keys of catalog rows, built column by column (no per-row numpy access)."""
        rows = np.asarray(rows, dtype=np.int64)
        metrics = self._metrics.names
        labels: list[list[tuple[str, str]]] = [[] for _ in range(len(rows))]
        for k in self._sorted_keys:
            name, values = self._keys.names[k], self._values[k].names
            codes = self._label_cols[k].data[rows]
            present = np.flatnonzero(codes != _NO_VALUE)
            for i, code in zip(present.tolist(), codes[present].tolist(), strict=True):
                labels[i].append((name, values[code]))
        return [
            SeriesKey(metrics[m], tuple(pairs))
            for m, pairs in zip(self._metric_col.data[rows].tolist(), labels, strict=True)
        ]

    def arrow(self, keys: list[str] | None, rows: np.ndarray | None = None) -> pa.Table:
        """Every series (or those of catalog `rows`, in that order) as Arrow columns `series_id`,
        `metric` and `labels`: a STRUCT with one string field per name in `keys` (null where a
        series lacks it), or a MAP of its labels when `keys` is None. Built from the code columns,
        with no Python object per series: only each distinct label value present is a string."""
        rows = np.arange(len(self), dtype=np.int64) if rows is None else np.asarray(rows, dtype=np.int64)
        n = len(rows)
        ids = arrowbuf.array(self._ids.data[rows], pa.uint64())
        metric = arrowbuf.strings(self._metrics.names).take(arrowbuf.array(self._metric_col.data[rows]))
        if keys is not None:
            fields, arrays = [], []
            for name in keys or ["_"]:  # DuckDB cannot bind an empty STRUCT: one NULL field then
                k = self._keys.codes.get(name)
                if k is None:
                    arrays.append(pa.nulls(n, pa.string()))
                else:
                    codes = self._label_cols[k].data[rows]
                    present = codes != _NO_VALUE
                    names, index = self._distinct_values(k, codes[present])
                    full = np.zeros(n, dtype=np.int64)
                    full[present] = index
                    arrays.append(names.take(arrowbuf.array(full, valid=present)))
                fields.append(pa.field(name, pa.string()))
            labels = pa.StructArray.from_arrays(arrays, fields=fields)
        else:
            order = self._sorted_keys
            codes = (
                np.stack([self._label_cols[k].data[rows] for k in order])
                if order
                else np.zeros((0, n), np.int32)
            )
            present = codes != _NO_VALUE
            row, rank = np.nonzero(present.T)  # row-major: each row's labels in key-name order
            picked = codes[rank, row]
            # One dictionary of the values present, key by key; each entry's index into it.
            pieces, index, base = [], np.zeros(len(picked), dtype=np.int64), 0
            for r, k in enumerate(order):
                at = np.flatnonzero(rank == r)
                names, where = self._distinct_values(k, picked[at])
                pieces.append(names)
                index[at] = base + where
                base += len(names)
            every_value = pa.concat_arrays(pieces) if pieces else arrowbuf.strings([])
            offsets = np.zeros(n + 1, dtype=np.int32)
            np.cumsum(present.sum(axis=0), out=offsets[1:])
            labels = pa.MapArray.from_arrays(
                arrowbuf.array(offsets),
                arrowbuf.strings([self._keys.names[k] for k in order]).take(arrowbuf.array(rank)),
                every_value.take(arrowbuf.array(index)),
            )
        return pa.table({"series_id": ids, "metric": metric, "labels": labels})

    def _distinct_values(self, k: int, codes: np.ndarray) -> tuple[pa.Array, np.ndarray]:
        """The distinct values of label key `k` among `codes` as strings, and each code's index
        into them."""
        distinct, where = np.unique(codes, return_inverse=True)
        names = self._values[k].names
        return arrowbuf.strings([names[c] for c in distinct.tolist()]), where.reshape(-1)

    def ids(self) -> np.ndarray:
        """Every series id, in the order the series were added."""
        return self._ids.data[: self._n].copy()

    def label_names(self) -> list[str]:
        """Every label key, sorted."""
        return [self._keys.names[k] for k in self._sorted_keys]

    def cardinality(self, label: str) -> int:
        """How many distinct values a label key has had."""
        k = self._keys.codes.get(label)
        return 0 if k is None else len(self._values[k].names)

    def series_per_metric(self) -> dict[str, int]:
        """Number of series of each metric."""
        counts = np.bincount(self._metric_col.data[: self._n], minlength=len(self._metrics.names))
        return {name: int(c) for name, c in zip(self._metrics.names, counts, strict=True)}

    def metric_codes(self, rows: np.ndarray) -> tuple[np.ndarray, list[str]]:
        """(metric code of each row, metric names by code)."""
        return self._metric_col.data[np.asarray(rows, dtype=np.int64)], list(self._metrics.names)

    def points_per_metric(
        self, series_ids: pa.Array | pa.ChunkedArray | np.ndarray, counts: np.ndarray | None = None
    ) -> dict[str, int]:
        """How many points of each metric `series_ids` (series of this catalog) hold: one entry per
        point, or ids with their point `counts` (an id given twice counts twice). Costs one hash
        count over the points (none with `counts`) plus one lookup per id."""
        if len(series_ids) == 0:
            return {}
        if len(self._metrics.names) == 1:
            # One metric owns every series: no need to look at the ids.
            return {self._metrics.names[0]: len(series_ids) if counts is None else int(counts.sum())}
        if counts is None:
            if isinstance(series_ids, np.ndarray):
                series_ids = arrowbuf.array(series_ids, pa.uint64())
            counted = pc.value_counts(series_ids).flatten()
            ids, counts = arrowbuf.numpy(counted[0]), arrowbuf.numpy(counted[1])
        else:
            ids = series_ids if isinstance(series_ids, np.ndarray) else arrowbuf.numpy(series_ids)
        rows = self.rows_of(ids)
        known = rows >= 0  # every id is known; a stray one is left out rather than misfiled
        codes = self._metric_col.data[rows[known]]
        totals = np.bincount(codes, weights=counts[known], minlength=len(self._metrics.names))
        return {name: int(t) for name, t in zip(self._metrics.names, totals.tolist(), strict=False) if t}

    def label_keys(self, sids: Iterable[int]) -> set[str]:
        """Every label key that at least one of `sids` carries."""
        rows = self.rows_of(np.fromiter((int(s) for s in sids), dtype=np.uint64))
        rows = rows[rows >= 0]
        return {
            self._keys.names[k]
            for k, col in enumerate(self._label_cols)
            if (col.data[rows] != _NO_VALUE).any()
        }

    def select(self, metrics: Iterable[str], matchers: Iterable[Matcher]) -> list[int]:
        """Series ids of `metrics` whose labels satisfy every (label, op, values) matcher, sorted.

        Operators: "=" and "!=" (a missing label equals ""), "in", and "regex" (anchored, as in
        PromQL).
        """
        return self.select_ids(metrics, matchers).tolist()

    def select_ids(self, metrics: Iterable[str], matchers: Iterable[Matcher]) -> np.ndarray:
        """`select` as a sorted uint64 array."""
        rows = self.select_rows(metrics, matchers)
        return np.sort(self._ids.data[rows])

    def select_rows(self, metrics: Iterable[str], matchers: Iterable[Matcher]) -> np.ndarray:
        """Catalog rows (ascending) of the series `select` chooses."""
        index, n = self._index, self._n
        metric_codes = [c for m in metrics if (c := self._metrics.codes.get(m)) is not None]
        matchers = list(matchers)
        if not metric_codes:
            return np.zeros(0, dtype=np.int64)
        # Drive from the equality with the shortest posting lists (sized from their offsets, before
        # any is read: a metric every series has is a million rows to copy), then filter by columns.
        drivers = [(self._metric_col, index.metric, metric_codes)]
        for label, op, values in matchers:
            if op in ("=", "in") and "" not in values:
                k = self._keys.codes.get(label)
                if k is None:
                    return np.zeros(0, dtype=np.int64)
                codes = [c for v in values if (c := self._values[k].codes.get(v)) is not None]
                drivers.append((self._label_cols[k], self._label_postings(index, k), codes))
        column, postings, codes = min(drivers, key=lambda d: _posted(d[1], d[2]))
        candidates = self._posting_union(index, n, column, postings, codes)
        if column is not self._metric_col:
            candidates = candidates[_isin_codes(self._metric_col.data[candidates], metric_codes)]
        for label, op, values in matchers:
            candidates = candidates[self._matching(candidates, label, op, values)]
        return candidates

    @staticmethod
    def _label_postings(index: _Index, k: int) -> _Postings | None:
        return index.labels[k] if k < len(index.labels) else None

    @staticmethod
    def _posting_union(
        index: _Index, n: int, column: _Column, postings: _Postings | None, codes: list[int]
    ) -> np.ndarray:
        parts = [postings.rows(c) for c in codes] if postings is not None else []
        upto = index.upto if postings is not None else 0
        tail = column.data[upto:n]
        if len(tail) and codes:
            parts.append(upto + np.flatnonzero(_isin_codes(tail, codes)))
        if not parts:
            return np.zeros(0, dtype=np.int64)
        rows = np.concatenate(parts)
        return np.sort(rows) if len(codes) > 1 else rows

    def _matching(self, rows: np.ndarray, label: str, op: str, values: tuple[str, ...]) -> np.ndarray:
        """Which of `rows` satisfy one matcher: equality compares value codes; a regex is tested
        once per distinct value, not per series."""
        k = self._keys.codes.get(label)
        if k is None:
            return np.full(len(rows), _matches("", op, values), dtype=bool)
        column = self._label_cols[k].data[rows]
        if op in ("=", "!=", "in"):
            wanted = values[:1] if op != "in" else values
            codes = [c for v in wanted if (c := self._values[k].codes.get(v)) is not None]
            if "" in wanted:
                codes.append(_NO_VALUE)  # a missing label equals ""
            equal = _isin_codes(column, codes)
            return ~equal if op == "!=" else equal
        names = self._values[k].names
        ok = np.fromiter((_matches(v, op, values) for v in names), dtype=bool, count=len(names))
        # Index -1 (no such label) reads the extra last slot: the test applied to "".
        ok = np.append(ok, _matches("", op, values))
        return ok[column]

    def groups(
        self, sids: np.ndarray, group_by: tuple[str, ...]
    ) -> tuple[np.ndarray, list[tuple[str, tuple[str, ...]]]]:
        """Group series by metric and the values of `group_by` (a missing label groups as "").

        Returns (group number of each sid, in order; the (metric, values) key of each group), keys
        numbered in order of first appearance.
        """
        rows = self.rows_of(sids)
        codes = [self._metric_col.data[rows]]
        for label in group_by:
            k = self._keys.codes.get(label)
            codes.append(
                self._label_cols[k].data[rows] if k is not None else np.full(len(rows), _NO_VALUE, np.int32)
            )
        if not len(rows):
            return np.zeros(0, dtype=np.int32), []
        if len(rows) <= SMALL_GROUPING:
            # A few series (a dashboard panel): plain tuples cost less than numpy's set-up.
            numbers: dict[tuple[int, ...], int] = {}
            gids = [
                numbers.setdefault(t, len(numbers)) for t in zip(*(c.tolist() for c in codes), strict=True)
            ]
            return np.array(gids, dtype=np.int32), [self._group_key(group_by, u) for u in numbers]
        matrix = np.stack(codes, axis=1).astype(np.int64) + 1  # 0 for a missing label
        radix = [len(self._metrics.names) + 1] + [self.cardinality(label) + 1 for label in group_by]
        if float(np.prod(np.array(radix, dtype=np.float64))) < 2**62:
            # One int64 per row (mixed radix): a 1-D unique is several times faster than axis=0.
            packed = np.zeros(len(rows), dtype=np.int64)
            for column, base in zip(matrix.T, radix, strict=True):
                packed = packed * base + column
            _, first, inverse = np.unique(packed, return_index=True, return_inverse=True)
            unique = matrix[first]
        else:
            unique, first, inverse = np.unique(matrix, axis=0, return_index=True, return_inverse=True)
        unique = unique - 1
        # Renumber by first appearance so the numbering does not depend on code order.
        by_first = np.argsort(first, kind="stable")
        renumber = np.empty(len(by_first), dtype=np.int32)
        renumber[by_first] = np.arange(len(by_first), dtype=np.int32)
        keys = [self._group_key(group_by, tuple(u.tolist())) for u in unique[by_first]]
        return renumber[inverse.reshape(-1)], keys

    def _group_key(self, group_by: tuple[str, ...], codes: tuple[int, ...]) -> tuple[str, tuple[str, ...]]:
        """(metric, group label values) of a group's (metric code, label value codes...)."""
        values = []
        for label, code in zip(group_by, codes[1:], strict=True):
            k = self._keys.codes.get(label)
            values.append("" if k is None or code == _NO_VALUE else self._values[k].names[code])
        return self._metrics.names[codes[0]], tuple(values)

    # ---- dict-shaped views (the catalog's original interface) ---------------------------------
    @property
    def by_id(self) -> Mapping[int, SeriesKey]:
        """Series id -> key, built on access (a read-only view; `keys_of` is the batch form)."""
        return self._by_id

    @property
    def by_metric(self) -> Mapping[str, set[int]]:
        """Metric -> its series ids (a read-only view; sets built on access)."""
        return _ByMetric(self)

    @property
    def label_values(self) -> Mapping[str, Mapping[str, set[int]]]:
        """Label key -> value -> series ids (a read-only view; sets built on access)."""
        return _LabelValues(self)


class _ById(Mapping[int, SeriesKey]):
    def __init__(self, catalog: SeriesCatalog) -> None:
        self._c = catalog

    def __getitem__(self, sid: int) -> SeriesKey:
        return self._c.key(sid)

    def __contains__(self, sid: object) -> bool:
        return isinstance(sid, int) and self._c._row(sid) is not None

    def __iter__(self) -> Iterator[int]:
        return iter(self._c.ids().tolist())

    def __len__(self) -> int:
        return len(self._c)

    def items(self):  # type: ignore[override]
        n = len(self._c)
        return list(zip(self._c._ids.data[:n].tolist(), self._c.keys_at(np.arange(n)), strict=True))


class _ByMetric(Mapping[str, set[int]]):
    def __init__(self, catalog: SeriesCatalog) -> None:
        self._c = catalog

    def __getitem__(self, metric: str) -> set[int]:
        if metric not in self._c._metrics.codes:
            raise KeyError(metric)
        return set(self._c.select_ids([metric], []).tolist())

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._c._metrics.names))

    def __len__(self) -> int:
        return len(self._c._metrics.names)


class _LabelValues(Mapping[str, Mapping[str, set[int]]]):
    def __init__(self, catalog: SeriesCatalog) -> None:
        self._c = catalog

    def __getitem__(self, label: str) -> Mapping[str, set[int]]:
        if label not in self._c._keys.codes:
            raise KeyError(label)
        return _ValuesOf(self._c, label)

    def __iter__(self) -> Iterator[str]:
        return iter(self._c.label_names())

    def __len__(self) -> int:
        return len(self._c._keys.names)


class _ValuesOf(Mapping[str, set[int]]):
    def __init__(self, catalog: SeriesCatalog, label: str) -> None:
        self._c = catalog
        self._label = label
        self._values = catalog._values[catalog._keys.codes[label]]

    def __getitem__(self, value: str) -> set[int]:
        if value not in self._values.codes:
            raise KeyError(value)
        rows = self._c.select_rows(self._c._metrics.names, [(self._label, "=", (value,))])
        return set(self._c._ids.data[rows].tolist())

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._values.names))

    def __len__(self) -> int:
        return len(self._values.names)


def _matches(actual: str, op: str, values: tuple[str, ...]) -> bool:
    if op == "=":
        return actual == values[0]
    if op == "!=":
        return actual != values[0]
    if op == "in":
        return actual in values
    return re.fullmatch(values[0], actual) is not None
