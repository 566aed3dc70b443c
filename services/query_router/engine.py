"""Runs plan fragments with DuckDB over the hot tier (Arrow in memory) and Parquet segments.

Every fragment runs the same SQL shape, whatever its sources, so every path gives the same
numbers: the points of the selected series in [start, end), joined to their group, bucketed by
floor(ts / step) * step, aggregated. SQL text is built only from our own values (file paths we
wrote, series ids from the catalog, aggregation names from a fixed table); request values are
bound parameters.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from libs.storage.segments import Segment

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
CALENDAR_UNITS = {"month", "quarter", "year"}


@dataclass(frozen=True)
class Fragment:
    """One part of a plan: a time range and the sources that may hold its points."""

    engine: str  # "hot" when the in-memory tier is read, else "duckdb"
    start: int
    end: int
    segments: tuple[Segment, ...]
    hot: pa.Table | None


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


def fragment_sql(fragment: Fragment, ids: str, aggregation: str, bucketing: Bucketing) -> str:
    """The SQL of one fragment (exposed for tests and Explain)."""
    source = _source_sql(fragment, ids)
    bucket = bucketing.sql()
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

    def run(
        self, fragment: Fragment, selection: pa.Table, aggregation: str, bucketing: Bucketing
    ) -> FragmentResult:
        """Run one fragment (in the calling thread; callers use a worker thread per fragment)."""
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
        ids = ", ".join(str(i) for i in selection["series_id"].to_pylist())
        cursor = self.db.cursor()
        try:
            cursor.register("sel", selection)
            if fragment.hot is not None:
                cursor.register("hot", fragment.hot)
            params: dict[str, object] = {"start": fragment.start, "end": fragment.end}
            if not bucketing.calendar:
                params["step"] = bucketing.step_ms
            table = cursor.sql(
                fragment_sql(fragment, ids, aggregation, bucketing), params=params
            ).to_arrow_table()
        finally:
            cursor.close()
        scanned = int(pc.sum(table["n"]).as_py() or 0) if table.num_rows else 0
        table = table.select(["gid", "bucket", "value"]).cast(
            pa.schema([("gid", pa.int32()), ("bucket", pa.int64()), ("value", pa.float64())])
        )
        return FragmentResult(table, scanned, time.perf_counter() - started, fragment.engine)
