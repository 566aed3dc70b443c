"""Runs plan fragments with DuckDB over the hot tier (Arrow in memory) and Parquet segments.

Every fragment runs the same SQL shape, whatever its sources, so every path gives the same
numbers: the points of the selected series in [start, end), joined to their group, bucketed by
floor(ts / step) * step, aggregated. A fragment the planner gave a rollup resolution does not use
DuckDB: it slices the segments' memory-mapped rollup files (and the hot tier's raw points, as
one-point partials; the raw points of rollup buckets the window cuts at its ends come from the
segments through DuckDB) and merges the partial aggregates per group and bucket with numpy
(libs/storage/rollups.py); its engine keeps the tier's name ("duckdb" for segments, "hot"), and
the plan's reason names the rollup. SQL text is built only from our own values (file paths we
wrote, series ids from the catalog, aggregation names from a fixed table); request values are
bound parameters.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from libs.storage.rollups import Partials, RollupReader, cover
from libs.storage.segments import Segment
from services.query_router.cancel import CancelToken

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
# Up to this many series, the raw edge read names them in SQL (see _raw_edges).
EDGE_ID_LIST_MAX = 64
RESULT_SCHEMA = pa.schema([("gid", pa.int32()), ("bucket", pa.int64()), ("value", pa.float64())])
CALENDAR_UNITS = {"month", "quarter", "year"}


@dataclass(frozen=True)
class Fragment:
    """One part of a plan: a time range and the sources that may hold its points."""

    engine: str  # "hot" when the in-memory tier is read, else "duckdb"
    start: int
    end: int
    segments: tuple[Segment, ...]
    hot: pa.Table | None
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


def _merge_partials(p: Partials, gids: np.ndarray, buckets: np.ndarray, aggregation: str) -> pa.Table:
    """Final aggregate per (group, bucket) of partial aggregates."""
    if not len(gids):
        return RESULT_SCHEMA.empty_table()
    # Sorted by group, bucket and last_ts: a run's final row holds the bucket's latest sample.
    order = np.lexsort((p.last_ts, buckets, gids))
    g, b = gids[order], buckets[order]
    new = np.ones(len(g), dtype=bool)
    new[1:] = (g[1:] != g[:-1]) | (b[1:] != b[:-1])
    starts = np.flatnonzero(new)
    if aggregation == "last":
        value = p.last[order][np.append(starts[1:], len(g)) - 1]
    elif aggregation == "min":
        value = np.minimum.reduceat(p.min[order], starts)
    elif aggregation == "max":
        value = np.maximum.reduceat(p.max[order], starts)
    else:
        total = np.add.reduceat(p.sum[order], starts)
        count = np.add.reduceat(p.count[order], starts).astype(np.float64)
        value = {"sum": total, "count": count, "avg": total / np.maximum(count, 1)}[aggregation]
    return pa.Table.from_arrays(
        [pa.array(g[starts], pa.int32()), pa.array(b[starts], pa.int64()), pa.array(value, pa.float64())],
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
    """A hardened in-memory DuckDB that may read only the segments directory."""

    def __init__(self, segments_root: Path) -> None:
        segments_root.mkdir(parents=True, exist_ok=True)
        self.db = duckdb.connect()
        root = str(segments_root.resolve()).replace("'", "''")
        self.db.execute(f"SET allowed_directories = ['{root}/']")
        # Segments are immutable files, so their Parquet footers can be cached (about 1.5 ms a query).
        self.db.execute("SET parquet_metadata_cache = true")
        self.db.execute("SET enable_external_access = false")
        self.db.execute("SET lock_configuration = true")
        self.rollups = RollupReader()

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
        empty = pa.table(
            {
                "gid": pa.array([], pa.int32()),
                "bucket": pa.array([], pa.int64()),
                "value": pa.array([], pa.float64()),
            }
        )
        if selection.num_rows == 0 or (not fragment.segments and fragment.hot is None):
            return FragmentResult(empty, 0, time.perf_counter() - started, fragment.engine)
        if fragment.rollup is not None:
            table, scanned = self._run_rollup(fragment, selection, aggregation, bucketing, token)
            return FragmentResult(table, scanned, time.perf_counter() - started, fragment.engine)
        ids = ", ".join(str(i) for i in selection["series_id"].to_pylist())
        cursor = self.db.cursor()
        try:
            cursor.register("sel", selection)
            if fragment.hot is not None:
                cursor.register("hot", fragment.hot)
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
        sids = selection["series_id"].to_numpy()
        order = np.argsort(sids)
        sids, gid_of = sids[order], selection["gid"].to_numpy()[order]
        stop = None if token is None else lambda: token.cancelled
        parts, edges = [], []
        for resolution, a, b in cover(fragment.start, fragment.end, fragment.rollup):
            if resolution is None:
                edges.append((a, b))
                continue
            paths = [s.rollup_path(resolution) for s in fragment.segments if s.max_ts >= a and s.min_ts < b]
            parts.append(self.rollups.read(paths, sids, a, b, stop))
        if edges and fragment.segments:
            parts.append(self._raw_edges(fragment.segments, sids, edges, token))
        if fragment.hot is not None:
            hot = fragment.hot
            ts = hot["ts"]
            keep = pc.and_(
                pc.and_(pc.greater_equal(ts, fragment.start), pc.less(ts, fragment.end)),
                pc.is_in(hot["series_id"], pa.array(sids, pa.uint64())),
            )
            points = hot.filter(keep)
            parts.append(
                Partials.of_points(
                    points["series_id"].to_numpy(), points["ts"].to_numpy(), points["value"].to_numpy()
                )
            )
        p = Partials.concat(parts)
        gids = gid_of[np.searchsorted(sids, p.series_ids)]
        if bucketing.calendar == "all":
            buckets = np.full(len(p.ts), fragment.start, dtype=np.int64)
        else:
            buckets = p.ts // bucketing.step_ms * bucketing.step_ms
        return _merge_partials(p, gids, buckets, aggregation), len(p.ts)

    def _raw_edges(
        self,
        segments: tuple[Segment, ...],
        sids: np.ndarray,
        edges: list[tuple[int, int]],
        token: CancelToken | None,
    ) -> Partials:
        """Raw points of the cut rollup buckets at the window's ends, as one-point partials."""
        files = [s for s in segments if s.raw and any(s.max_ts >= a and s.min_ts < b for a, b in edges)]
        if not files:
            return Partials.of_points(np.empty(0, np.uint64), np.empty(0, np.int64), np.empty(0, np.float64))
        when = " OR ".join(f"(ts >= {int(a)} AND ts < {int(b)})" for a, b in edges)
        # A short id list lets DuckDB skip the row groups of other series (files are sorted by
        # series); a long one costs more to evaluate than filtering the few edge rows here.
        few = len(sids) <= EDGE_ID_LIST_MAX
        ids = f" AND series_id IN ({', '.join(str(i) for i in sids.tolist())})" if few else ""
        sql = (
            f"SELECT series_id, ts, value FROM read_parquet([{', '.join(_quote(s.path) for s in files)}]) "
            f"WHERE ({when}){ids}"
        )
        cursor = self.db.cursor()
        try:
            with token.watch(cursor) if token is not None else contextlib.nullcontext():
                table = cursor.sql(sql).to_arrow_table()
        finally:
            cursor.close()
        ids, ts, values = (table[c].to_numpy() for c in ("series_id", "ts", "value"))
        if not few:
            keep = np.isin(ids, sids)
            ids, ts, values = ids[keep], ts[keep], values[keep]
        return Partials.of_points(ids, ts, values)
