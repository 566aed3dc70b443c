"""Runs plan fragments on the embedded engines: vectorised numpy reads of the segments'
memory-mapped files where the planner allows, DuckDB over the hot tier (Arrow in memory) and the
Parquet segments otherwise. (Fragments for Trino and Druid run in remote.py; their failures are
`EngineUnreachable`, defined here beside the fragment types they share.)

A fragment the planner gave a rollup resolution ("1h", "1m") does not use DuckDB: it slices the
segments' memory-mapped rollup files, takes the raw points of the rollup buckets the window cuts
at its ends from the segments' points maps, and the hot tier's raw points as one-point partials,
then merges the partial aggregates per group and bucket with numpy (libs/storage/rollups.py).
A "points" fragment (few series at a step no rollup fits, or their raw points: `last` per
timestamp) does the same from the points maps alone. Either keeps the tier's engine name
("duckdb" for segments, "hot"); the plan's reason names what was read. Small ones run on the
caller's thread (`runs_inline`). DuckDB itself is imported by the first fragment that runs in it.

Every other fragment runs the same SQL shape, whatever its sources, so every path gives the same
numbers: the points of the selected series in [start, end), joined to their group, bucketed by
floor(ts / step) * step, aggregated. SQL text is built only from our own values (file paths we
wrote, series ids from the catalog, aggregation names from a fixed table); request values are
bound parameters.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from libs import arrowbuf
from libs.storage import NEEDS, RESOLUTIONS, HotPoints, MappedReader, MapRead, Partials, Segment, cover
from services.query_router.cancel import CancelToken

if TYPE_CHECKING:
    import duckdb

AGGREGATE_SQL = {
    "avg": "avg(value)",
    "sum": "sum(value)",
    "min": "min(value)",
    "max": "max(value)",
    "count": "count(value)::DOUBLE",
    "p50": "quantile_cont(value, 0.50)",
    "p90": "quantile_cont(value, 0.90)",
    "p95": "quantile_cont(value, 0.95)",
    "p99": "quantile_cont(value, 0.99)",
    "last": "arg_max(value, ts)",
}
# Partials are merged over dense (group, bucket) keys unless there would be more than this many
# keys per row (and more than DENSE_KEYS_MIN); then present keys are renumbered first.
DENSE_KEYS_PER_ROW = 4
DENSE_KEYS_MIN = 1 << 16
# A rollup fragment reading at most this many rows (an estimate) runs on the caller's thread:
# handing sub-millisecond work to a worker thread and back costs more than the work.
INLINE_MAX_ROWS = 20_000
HOT_INLINE_MAX_BATCHES = 256
"""A read of the hot tier looks at each of its batches' time span (`HotPoints.pick`): past this many
batches it runs in a worker thread, whatever its size."""
RESULT_SCHEMA = pa.schema([("gid", pa.int32()), ("bucket", pa.int64()), ("value", pa.float64())])
CALENDAR_UNITS = {"month", "quarter", "year"}


def unreadable_data_errors() -> tuple[type[Exception], ...]:
    """The errors by which an embedded engine says it could not read its data: OSError (a segment's
    rollup or points map), and DuckDB's I/O and connection errors once DuckDB is imported (only a
    fragment that ran in it can raise them, and the first such fragment imports it)."""
    duckdb = sys.modules.get("duckdb")
    return (OSError,) if duckdb is None else (OSError, duckdb.IOException, duckdb.ConnectionException)


class EngineUnreachable(Exception):
    """A configured remote engine (Trino, Druid) could not answer; `reason` says why, for the
    answer's `metadata.fallbacks` (remote.py)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Fragment:
    """One part of a plan: a time range and the sources that may hold its points."""

    engine: str  # "hot" when the in-memory tier is read, else "duckdb"
    start: int
    end: int
    segments: tuple[Segment, ...]
    hot: HotPoints | None
    rollup: str | None = None  # "1m" or "1h": read the segments' rollups at this resolution


@dataclass(frozen=True)
class Bucketing:
    """How timestamps map to buckets: a fixed width in ms, or a calendar unit."""

    step_ms: int | None
    calendar: str | None = None  # "month", "quarter", "year", or "all" (one bucket at start)

    def sql(self) -> str:
        if self.calendar == "all":
            return "$start"
        if self.calendar:
            return f"epoch_ms(date_trunc('{self.calendar}', epoch_ms(ts)))"
        return "(ts // $step) * $step"


@dataclass(frozen=True)
class FragmentResult:
    """Aggregated rows of one fragment and what it cost."""

    table: pa.Table  # gid INT32, bucket BIGINT, value DOUBLE
    scanned: int
    seconds: float
    engine: str


def _quote(path: Path) -> str:
    return "'" + str(path).replace("'", "''") + "'"


def _source_sql(fragment: Fragment, ids: str) -> str:
    parts = []
    if fragment.segments:
        files = ", ".join(_quote(s.path) for s in fragment.segments)
        parts.append(
            f"SELECT series_id, ts, value FROM read_parquet([{files}]) "
            f"WHERE ts >= $start AND ts < $end AND series_id IN ({ids})"
        )
    if fragment.hot is not None:
        parts.append(
            f"SELECT series_id, ts, value FROM hot WHERE ts >= $start AND ts < $end AND series_id IN ({ids})"
        )
    return " UNION ALL ".join(parts)


def _merge_partials(
    p: Partials, gids: np.ndarray, bucketing: Bucketing, start: int, aggregation: str
) -> pa.Table:
    """Final aggregate per (group, bucket) of partial aggregates, sorted by group and bucket."""
    if not len(gids):
        return arrowbuf.empty_table(RESULT_SCHEMA)
    if bucketing.calendar == "all":
        index, first, step, width = np.zeros(len(gids), dtype=np.int64), start, 0, 1
    else:
        step = bucketing.step_ms
        buckets = p.ts // step
        first = int(buckets.min())
        index = buckets - first
        first, width = first * step, int(index.max()) + 1
    # One dense key per (group, bucket); sparse keys (many groups and buckets, few rows) are
    # renumbered so the per-key arrays stay as long as the rows.
    key = gids.astype(np.int64) * width + index
    size = (int(gids.max()) + 1) * width
    if size > max(DENSE_KEYS_PER_ROW * len(key), DENSE_KEYS_MIN):
        present, key = np.unique(key, return_inverse=True)
        size = len(present)
    else:
        present = None
    rows = np.bincount(key, minlength=size)
    if aggregation == "last":
        # The bucket's latest sample; of equal times, the row read last.
        latest = np.full(size, np.iinfo(np.int64).min)
        np.maximum.at(latest, key, p.last_ts)
        pick = np.full(size, -1)
        np.maximum.at(pick, key, np.where(p.last_ts == latest[key], np.arange(len(key)), -1))
        value = p.last[pick[rows > 0]]
    elif aggregation in ("min", "max"):
        column, ufunc, fill = (
            (p.min, np.minimum, np.inf) if aggregation == "min" else (p.max, np.maximum, -np.inf)
        )
        out = np.full(size, fill)
        ufunc.at(out, key, column)
        value = out[rows > 0]
    else:
        total = np.bincount(key, weights=p.sum, minlength=size) if aggregation != "count" else None
        count = np.bincount(key, weights=p.count, minlength=size) if aggregation != "sum" else None
        has = rows > 0
        value = {"sum": total, "count": count, "avg": None}[aggregation]
        value = total[has] / np.maximum(count[has], 1) if value is None else value[has]
    keys = np.flatnonzero(rows > 0)
    if present is not None:
        keys = present[keys]
    g, i = np.divmod(keys, width)
    return pa.Table.from_arrays(
        [
            arrowbuf.array(g, pa.int32()),
            arrowbuf.array(first + i * step, pa.int64()),
            arrowbuf.array(value, pa.float64()),
        ],
        schema=RESULT_SCHEMA,
    )


def fragment_sql(fragment: Fragment, ids: str, aggregation: str, bucketing: Bucketing) -> str:
    """The SQL of one fragment (exposed for tests and Explain)."""
    bucket = bucketing.sql()
    source = _source_sql(fragment, ids)
    if aggregation == "rate":
        # Per-second increase within each bucket, counter resets counted as a restart from 0;
        # bucket-local, so splitting a range at a bucket boundary gives the same numbers.
        width = "$step / 1000.0" if not bucketing.calendar else "(max(ts) - min(ts) + 1) / 1000.0"
        return f"""
            WITH p AS ({source}),
            d AS (
                SELECT sel.gid, {bucket} AS bucket, ts, value,
                       value - lag(value) OVER (PARTITION BY p.series_id, {bucket} ORDER BY ts) AS delta
                FROM p JOIN sel USING (series_id)
            )
            SELECT gid, bucket,
                   coalesce(sum(CASE WHEN delta < 0 THEN value ELSE delta END), 0) / ({width}) AS value,
                   count(*) AS n
            FROM d GROUP BY gid, bucket"""
    return f"""
        WITH p AS ({source})
        SELECT sel.gid, {bucket} AS bucket, {AGGREGATE_SQL[aggregation]} AS value, count(*) AS n
        FROM p JOIN sel USING (series_id)
        GROUP BY ALL"""


class QueryEngine:
    """Runs a fragment: from rollups and points maps (`MappedReader`), or in a hardened in-memory
    DuckDB that may read only the segments directory."""

    def __init__(self, segments_root: Path) -> None:
        segments_root.mkdir(parents=True, exist_ok=True)
        self._root = segments_root.resolve()
        self._db: duckdb.DuckDBPyConnection | None = None
        self._db_lock = threading.Lock()
        self.maps = MappedReader()

    @property
    def db(self) -> duckdb.DuckDBPyConnection:
        """The DuckDB connection of metrics fragments, made by the first fragment that needs it
        (rollup and points-map answers do not): DuckDB costs 14 MiB resident imported and about 25
        more with a connection, so neither is done before. The SQL path's connections are
        sql_views' own (made at the first SQL query)."""
        with self._db_lock:
            if self._db is None:
                import duckdb

                db = duckdb.connect()
                root = str(self._root).replace("'", "''")
                db.execute(f"SET allowed_directories = ['{root}/']")
                # Segments are immutable files, so their Parquet footers can be cached (about 1.5 ms a query).
                db.execute("SET parquet_metadata_cache = true")
                db.execute("SET enable_external_access = false")
                db.execute("SET lock_configuration = true")
                self._db = db
            return self._db

    def keep_maps_open(self, segments: list[Segment], stop: Callable[[], bool] | None = None) -> int:
        """Open the rollups and points maps of `segments` ahead of queries, newest segments first, as
        many as the reader keeps; forget those of segments no longer live. Returns files opened."""
        live = []
        for s in sorted(segments, key=lambda s: s.max_ts, reverse=True):
            live += [s.rollup_path(r) for r in sorted(s.rollups, key=lambda r: RESOLUTIONS[r], reverse=True)]
            if s.raw and s.mapped:
                live.append(s.map_path)
        return self.maps.keep_open(live, stop)

    def runs_inline(self, fragment: Fragment, n_series: int) -> bool:
        """True when a fragment is small enough to run on the caller's thread: a rollup or points
        map read (no DuckDB) of at most INLINE_MAX_ROWS rows, counting the cut ends' raw points and
        the hot tier's at one a second, over at most HOT_INLINE_MAX_BATCHES hot batches."""
        if fragment.rollup is None:
            return False
        widths = {None: 1000, **RESOLUTIONS}
        rows = sum(
            (b - a) // widths[r] + 1 for r, a, b in cover(fragment.start, fragment.end, fragment.rollup)
        )
        if fragment.hot is not None:
            if len(fragment.hot.batches) > HOT_INLINE_MAX_BATCHES:
                return False
            rows += (fragment.end - fragment.start) // 1000 + 1
        return n_series * rows * max(len(fragment.segments), 1) <= INLINE_MAX_ROWS

    def run(
        self,
        fragment: Fragment,
        selection: pa.Table,
        aggregation: str,
        bucketing: Bucketing,
        token: CancelToken | None = None,
    ) -> FragmentResult:
        """Run one fragment (in the calling thread; callers use a worker thread per fragment).

        With a `token`, cancelling it interrupts the DuckDB statement or stops the rollup read
        between files (QueryInterrupted)."""
        started = time.perf_counter()
        if selection.num_rows == 0 or (not fragment.segments and fragment.hot is None):
            empty = arrowbuf.empty_table(RESULT_SCHEMA)
            return FragmentResult(empty, 0, time.perf_counter() - started, fragment.engine)
        if fragment.rollup is not None:
            table, scanned = self._run_rollup(fragment, selection, aggregation, bucketing, token)
            return FragmentResult(table, scanned, time.perf_counter() - started, fragment.engine)
        ids = ", ".join(str(i) for i in selection["series_id"].to_pylist())
        cursor = self.db.cursor()
        try:
            cursor.register("sel", selection)
            if fragment.hot is not None:
                cursor.register("hot", fragment.hot.table)
            params: dict[str, object] = {"start": fragment.start, "end": fragment.end}
            if not bucketing.calendar:
                params["step"] = bucketing.step_ms
            sql = fragment_sql(fragment, ids, aggregation, bucketing)
            with token.watch(cursor) if token is not None else contextlib.nullcontext():
                table = cursor.sql(sql, params=params).to_arrow_table()
        finally:
            cursor.close()
        scanned = int(pc.sum(table["n"]).as_py() or 0) if table.num_rows else 0
        table = table.select(["gid", "bucket", "value"]).cast(
            pa.schema([("gid", pa.int32()), ("bucket", pa.int64()), ("value", pa.float64())])
        )
        return FragmentResult(table, scanned, time.perf_counter() - started, fragment.engine)

    def _run_rollup(
        self,
        fragment: Fragment,
        selection: pa.Table,
        aggregation: str,
        bucketing: Bucketing,
        token: CancelToken | None,
    ) -> tuple[pa.Table, int]:
        """Vectorised: rollup rows of the selected series, hot points as partials, merged per bucket."""
        sids = arrowbuf.numpy(selection["series_id"])
        order = np.argsort(sids)
        sids, gid_of = sids[order], arrowbuf.numpy(selection["gid"])[order]
        stop = None if token is None else lambda: token.cancelled
        reads, edges = [], []
        for resolution, a, b in cover(fragment.start, fragment.end, fragment.rollup):
            if resolution is None:
                edges.append((a, b))
                continue
            paths = [s.rollup_path(resolution) for s in fragment.segments if s.max_ts >= a and s.min_ts < b]
            reads.append(MapRead.rollups(paths, a, b, NEEDS[aggregation]))
        if edges:
            # The cut ends' raw points, from the segments' points maps.
            paths = [
                s.map_path
                for s in fragment.segments
                if s.raw and any(s.max_ts >= a and s.min_ts < b for a, b in edges)
            ]
            reads.append(MapRead.points(paths, edges))
        # One read for all: the pages of every file are asked of the kernel before any is touched.
        parts = self.maps.read(reads, sids, stop)
        if fragment.hot is not None:
            # The hot batches' own series indexes: only the runs of the selected series are read.
            parts.append(Partials.of_points(*fragment.hot.pick(sids, fragment.start, fragment.end)))
        p = Partials.concat(parts)
        gids = gid_of[np.searchsorted(sids, p.series_ids)]
        return _merge_partials(p, gids, bucketing, fragment.start, aggregation), len(p.ts)
