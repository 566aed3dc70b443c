"""The floor: raw DuckDB SQL over the service's Parquet segments, in the benchmark process.

Each query first resolves series ids from the series files (metric and hostname), then scans the
point files whose name range overlaps the query's time range with `series_id IN (...)` and the
`ts` range, and aggregates exactly as the Query API's semantics say: per group and per bucket
floor(ts / step) * step, over all raw points of all the group's series. No cache, no service, no
gRPC: what is left is DuckDB reading Parquet, which is the least our query path can cost.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import duckdb

from benchmarks.answers import Answer, RowsAnswer, SeriesAnswer
from benchmarks.segments_dev import datasource_dir
from benchmarks.tsbs_queries import CPU_FIELDS, CPU_METRICS, HIGH_CPU_THRESHOLD, QueryInstance

_FILE_NAME = re.compile(r"(-?\d+)-(-?\d+)-.+\.parquet")


@dataclass(frozen=True)
class PointFile:
    """A point segment and the time range its name declares."""

    path: str
    min_ts: int
    max_ts: int


def _lit(text: str) -> str:
    """A SQL string literal."""
    return "'" + text.replace("'", "''") + "'"


def _list(items: list[str]) -> str:
    return "[" + ", ".join(_lit(i) for i in items) + "]"


class RawDuckDB:
    """Runs the TSBS query instances as plain DuckDB SQL over one datasource's segments."""

    def __init__(self, data_dir: Path, datasource: str, threads: int | None = None) -> None:
        self.root = datasource_dir(data_dir, datasource)
        self.con = duckdb.connect()
        if threads:
            self.con.execute(f"SET threads = {int(threads)}")
        self.series_files = sorted(str(p) for p in (self.root / "series").glob("*.parquet"))
        self.point_files: list[PointFile] = []
        for p in sorted((self.root / "points").glob("day=*/*.parquet")):
            m = _FILE_NAME.fullmatch(p.name)
            if m:
                self.point_files.append(PointFile(str(p), int(m.group(1)), int(m.group(2))))
        if not self.series_files or not self.point_files:
            raise FileNotFoundError(f"no segments under {self.root}")

    def describe(self) -> dict[str, object]:
        """What the floor reads."""
        return {
            "root": str(self.root),
            "series_files": len(self.series_files),
            "point_files": len(self.point_files),
            "point_bytes": sum(Path(f.path).stat().st_size for f in self.point_files),
            "duckdb": duckdb.__version__,
            "threads": self.con.execute("SELECT current_setting('threads')").fetchone()[0],  # type: ignore[index]
        }

    def count_points(self) -> int:
        """All points in the point files."""
        files = _list([f.path for f in self.point_files])
        return int(self.con.execute(f"SELECT count(*) FROM read_parquet({files})").fetchone()[0])  # type: ignore[index]

    def _files(self, start_ms: int | None, end_ms: int | None) -> str:
        """Point files whose [min_ts, max_ts] overlaps [start, end), as a SQL list."""
        lo = start_ms if start_ms is not None else -(2**63)
        hi = end_ms if end_ms is not None else 2**63 - 1
        chosen = [f.path for f in self.point_files if f.max_ts >= lo and f.min_ts < hi]
        # An empty list is not valid in read_parquet; the first file with an empty ts range
        # then yields no rows, as the query should.
        return _list(chosen or [self.point_files[0].path])

    def resolve(self, metrics: tuple[str, ...], hosts: tuple[str, ...]) -> list[tuple[int, str, str]]:
        """(series_id, metric, hostname) of the series of these metrics (and hosts, if given)."""
        where = f"metric IN ({', '.join(_lit(m) for m in metrics)})"
        if hosts:
            where += f" AND labels['hostname'] IN ({', '.join(_lit(h) for h in hosts)})"
        sql = (
            "SELECT DISTINCT series_id, metric, labels['hostname'] AS hostname "
            f"FROM read_parquet({_list(self.series_files)}) WHERE {where} ORDER BY series_id"
        )
        return [(int(a), str(b), str(c)) for a, b, c in self.con.execute(sql).fetchall()]

    @staticmethod
    def _ids(series: list[tuple[int, str, str]]) -> tuple[str, str]:
        """The `IN (...)` list and a VALUES mapping (series_id, metric, hostname)."""
        in_list = ", ".join(f"{sid}::UBIGINT" for sid, _, _ in series)
        values = ", ".join(f"({sid}::UBIGINT, {_lit(m)}, {_lit(h)})" for sid, m, h in series)
        return in_list, f"(VALUES {values}) AS m(series_id, metric, hostname)"

    def run(self, inst: QueryInstance) -> Answer:
        """Run one instance; the answer in the normalised form of benchmarks.answers."""
        kind = inst.qtype.kind
        if kind == "groupby":
            return self._groupby(inst)
        if kind == "high-cpu":
            return self._high_cpu(inst)
        if kind == "lastpoint":
            return self._lastpoint(inst)
        if kind == "gobl":
            return self._gobl(inst)
        raise ValueError(kind)

    def sql_for(self, inst: QueryInstance) -> str:
        """The points query an instance runs (after resolving ids), for the report's appendix."""
        series = self.resolve(inst.metrics, inst.hosts)
        return self._groupby_sql(inst, series) if inst.qtype.kind == "groupby" else ""

    def _groupby_sql(self, inst: QueryInstance, series: list[tuple[int, str, str]]) -> str:
        qt = inst.qtype
        in_list, mapping = self._ids(series)
        by_host = "hostname" in qt.group_by
        group_col = "m.hostname" if by_host else "''"
        step = qt.step_ms
        return f"""SELECT m.metric, {group_col} AS grp, (p.ts // {step}) * {step} AS bucket, {qt.aggregation}(p.value) AS value
FROM read_parquet({self._files(inst.start_ms, inst.end_ms)}) p
JOIN {mapping} ON p.series_id = m.series_id
WHERE p.series_id IN ({in_list}) AND p.ts >= {inst.start_ms} AND p.ts < {inst.end_ms}
GROUP BY ALL"""

    def _groupby(self, inst: QueryInstance) -> SeriesAnswer:
        series = self.resolve(inst.metrics, inst.hosts)
        out: SeriesAnswer = {}
        if not series:
            return out
        for metric, grp, bucket, value in self.con.execute(self._groupby_sql(inst, series)).fetchall():
            out.setdefault((metric, grp), {})[int(bucket)] = float(value)
        return out

    @staticmethod
    def _pivot(value_col: str) -> str:
        return ", ".join(
            f"max({value_col}) FILTER (WHERE m.metric = {_lit(m)}) AS {f}"
            for m, f in zip(CPU_METRICS, CPU_FIELDS, strict=True)
        )

    def _high_cpu(self, inst: QueryInstance) -> RowsAnswer:
        series = self.resolve(inst.metrics, inst.hosts)
        in_list, mapping = self._ids(series)
        sql = f"""SELECT p.ts, {self._pivot("p.value")}
FROM read_parquet({self._files(inst.start_ms, inst.end_ms)}) p
JOIN {mapping} ON p.series_id = m.series_id
WHERE p.series_id IN ({in_list}) AND p.ts >= {inst.start_ms} AND p.ts < {inst.end_ms}
GROUP BY p.ts
HAVING max(p.value) FILTER (WHERE m.metric = 'cpu_usage_user') > {HIGH_CPU_THRESHOLD}
ORDER BY p.ts"""
        return [tuple(r) for r in self.con.execute(sql).fetchall()]

    def _lastpoint(self, inst: QueryInstance) -> RowsAnswer:
        series = self.resolve(inst.metrics, ())
        in_list, mapping = self._ids(series)
        lower = inst.extra["lower_bound_ms"]
        sql = f"""WITH last AS (
  SELECT series_id, max(ts) AS ts, arg_max(value, ts) AS value
  FROM read_parquet({self._files(lower, None)})
  WHERE series_id IN ({in_list}) AND ts >= {lower}
  GROUP BY series_id
)
SELECT m.hostname, max(last.ts) AS ts, {self._pivot("last.value")}
FROM last JOIN {mapping} ON last.series_id = m.series_id
GROUP BY m.hostname
ORDER BY m.hostname"""
        return [tuple(r) for r in self.con.execute(sql).fetchall()]

    def _gobl(self, inst: QueryInstance) -> RowsAnswer:
        series = self.resolve(("cpu_usage_user",), ())
        in_list, _ = self._ids(series)
        sql = f"""SELECT (ts // 60000) * 60000 AS minute, max(value) AS max_usage_user
FROM read_parquet({self._files(None, inst.end_ms)})
WHERE series_id IN ({in_list}) AND ts < {inst.end_ms}
GROUP BY minute
ORDER BY minute DESC
LIMIT 5"""
        return [tuple(r) for r in self.con.execute(sql).fetchall()]

    def close(self) -> None:
        """Close the connection."""
        self.con.close()
