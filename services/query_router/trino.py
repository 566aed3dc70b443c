"""The Trino engine: user SQL and batch metrics fragments run on a Trino server over the same
segment Parquet files the embedded path reads (`trino` client from PyPI; docs/engines.md "Trino").

Tables: per tenant a schema `hive.t_<hash of tenant>`, per datasource two external Hive tables
created on first use, `p_<hash>` over `tenant=<t>/datasource=<d>/points/` (read recursively, so
day= and week= directories alike) and `s_<hash>` over `.../series/`. Every query reads them only
through `"$path" IN (<the live files of the query's snapshot>)`, so Trino sees exactly the files
the embedded path would (not orphans, not files compaction is about to delete).

User SQL (already accepted by sql_guard on DuckDB's parser) is translated from DuckDB's dialect to
Trino's with sqlglot; the views `series`, `metrics` and `points` become CTEs over the calling
tenant's tables only, so the tenant never comes from the SQL text. Differences from DuckDB:
`labels` is a MAP(VARCHAR, VARCHAR) (`labels['k']` and `labels.k` both become element_at, NULL
for a missing key), `series_id` is DECIMAL(20,0), and points still only in the hot tier are not
in Trino (the answer covers flushed segments; the plan's reason says so).

Deadlines: the request's remaining time is the client's request timeout and the query's
`query_max_execution_time`; a cancelled request cancels the Trino query (`TrinoInterrupt`).
An unreachable server raises TrinoUnreachable, on which the caller answers from DuckDB.
"""

from __future__ import annotations

import contextlib
import decimal
import hashlib
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import requests
import sqlglot
import trino
from sqlglot import exp

from libs import arrowbuf
from libs.errors import DeadlineExceeded, InvalidArgument, connection_failure
from libs.storage import Segment, Snapshot
from services.query_router.cancel import CancelToken
from services.query_router.engine import RESULT_SCHEMA, Bucketing, EngineUnreachable, Fragment, FragmentResult

log = logging.getLogger(__name__)

CATALOG = "hive"
USER = "platformq-query-router"
# Aggregations a Trino fragment computes with the same numbers as DuckDB. Percentiles are exact
# (linear interpolation over the sorted values, as quantile_cont); rate stays embedded.
TRINO_AGGREGATIONS = frozenset({"avg", "sum", "min", "max", "count", "last", "p50", "p90", "p95", "p99"})
_AGGREGATE = {
    "avg": "avg(value)",
    "sum": "sum(value)",
    "min": "min(value)",
    "max": "max(value)",
    "count": "CAST(count(value) AS double)",
    "last": "max_by(value, ts)",
}
_U64 = (
    "IF({c} < 0, CAST({c} AS decimal(20, 0)) + DECIMAL '18446744073709551616', CAST({c} AS decimal(20, 0)))"
)
_TIME = "CAST(from_unixtime_nanos({c} * 1000000) AT TIME ZONE 'UTC' AS timestamp(3))"
_LABELS = "labels"
NODE_WAIT_SECONDS = 5.0
"""How long a query refused with "No nodes available" is tried again before Trino counts as down."""
NODE_RETRY_SECONDS = 0.25


class TrinoUnreachable(EngineUnreachable):
    """The Trino server could not be reached or has no node to run on; `reason` says why."""


class TrinoNoNode(TrinoUnreachable):
    """Trino refused a query for want of a node: worth trying again for a moment."""


class TrinoInterrupt:
    """Lets a CancelToken (cancel.py) cancel the Trino query a cursor runs: `interrupt()`."""

    def __init__(self, cursor: trino.dbapi.Cursor) -> None:
        self.cursor = cursor

    def interrupt(self) -> None:
        """Cancel the running query (nothing to do once it has finished)."""
        # No query running any more, or the server is gone: nothing left to stop.
        with contextlib.suppress(trino.exceptions.OperationalError, requests.RequestException):
            self.cursor.cancel()


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _local(path: Path) -> str:
    # local:///...: with file:///... Trino's external tables read as empty.
    return "local://" + str(path.resolve())


def _as_signed(series_id: int) -> int:
    # Parquet UINT64 series ids read as BIGINT: the same 64 bits, signed.
    return series_id - (1 << 64) if series_id >= 1 << 63 else series_id


@dataclass(frozen=True)
class TrinoSettings:
    """Where the server is, and who the service is on it."""

    host: str
    port: int
    user: str = USER


class TrinoEngine:
    """Runs SQL and batch fragments on one Trino server, over the segments under `segments_root`."""

    def __init__(self, settings: TrinoSettings, segments_root: Path) -> None:
        self.settings = settings
        self.segments_root = segments_root
        self._lock = threading.Lock()
        # (tenant, datasource) whose tables exist on this server (forgotten when it is unreachable,
        # so a restarted server with a fresh metastore gets them again).
        self._tables: set[tuple[str, str]] = set()

    # ---- connection -------------------------------------------------------------------------
    def _cursor(self, timeout: float) -> trino.dbapi.Cursor:
        session = {
            "query_max_execution_time": f"{max(int(timeout * 1000), 1)}ms",
            "query_max_run_time": f"{max(int(timeout * 1000), 1)}ms",
        }
        connection = trino.dbapi.connect(
            host=self.settings.host,
            port=self.settings.port,
            user=self.settings.user,
            catalog=CATALOG,
            request_timeout=max(timeout, 0.001),
            max_attempts=1,
            session_properties=session,
        )
        return connection.cursor()

    def _execute(
        self, sql: str, params: Sequence[object] = (), timeout: float = 30.0, token: CancelToken | None = None
    ) -> tuple[list[str], list[list]]:
        """Run one statement; a query refused for want of a node (the node re-announcing itself,
        which a loaded machine delays) is tried again for up to NODE_WAIT_SECONDS of `timeout`."""
        started = time.monotonic()
        give_up = started + min(NODE_WAIT_SECONDS, timeout)
        while True:
            try:
                return self._execute_once(sql, params, started + timeout - time.monotonic(), token)
            except TrinoNoNode as exc:
                if time.monotonic() + NODE_RETRY_SECONDS >= give_up or (
                    token is not None and token.cancelled
                ):
                    raise TrinoUnreachable(exc.reason) from None
                time.sleep(NODE_RETRY_SECONDS)

    def _execute_once(
        self, sql: str, params: Sequence[object], timeout: float, token: CancelToken | None
    ) -> tuple[list[str], list[list]]:
        cursor = self._cursor(timeout)
        try:
            if token is None:
                rows = cursor.execute(sql, list(params) or None).fetchall()
            else:
                with token.watch(TrinoInterrupt(cursor)):
                    rows = cursor.execute(sql, list(params) or None).fetchall()
            columns = [d[0] for d in cursor.description or ()]
            return columns, rows
        except (
            requests.ConnectionError,
            trino.exceptions.TrinoConnectionError,
            trino.exceptions.HttpError,
        ) as exc:
            with self._lock:
                self._tables.clear()
            log.warning(
                "Trino at %s:%s unreachable: %s", self.settings.host, self.settings.port, _first_line(exc)
            )
            raise TrinoUnreachable(f"unreachable: {connection_failure(exc)}") from None
        except trino.exceptions.TrinoQueryError as exc:
            if exc.error_name == "NO_NODES_AVAILABLE" or (exc.message or "").startswith("No nodes available"):
                raise TrinoNoNode(f"{exc.error_name}: {exc.message}") from None
            if exc.error_name in ("SERVER_STARTING_UP", "SERVER_SHUTTING_DOWN"):
                raise TrinoUnreachable(f"{exc.error_name}: {exc.message}") from None
            if exc.error_name == "EXCEEDED_TIME_LIMIT":
                raise DeadlineExceeded(f"the query ran out of its time on Trino ({timeout:.3f} s)") from None
            raise
        finally:
            cursor.close()

    def _ensure_tables(self, tenant: str, datasource: str, timeout: float) -> None:
        with self._lock:
            if (tenant, datasource) in self._tables:
                return
        base = self.segments_root / f"tenant={tenant}" / f"datasource={datasource}"
        schema = schema_name(tenant)
        self._execute(f"CREATE SCHEMA IF NOT EXISTS {CATALOG}.{schema}", timeout=timeout)
        self._execute(
            f"CREATE TABLE IF NOT EXISTS {CATALOG}.{schema}.{points_table(datasource)} "
            "(series_id bigint, ts bigint, value double) "
            f"WITH (external_location = {_literal(_local(base / 'points'))}, format = 'PARQUET')",
            timeout=timeout,
        )
        self._execute(
            f"CREATE TABLE IF NOT EXISTS {CATALOG}.{schema}.{series_table(datasource)} "
            "(series_id bigint, metric varchar, labels map(varchar, varchar)) "
            f"WITH (external_location = {_literal(_local(base / 'series'))}, format = 'PARQUET')",
            timeout=timeout,
        )
        with self._lock:
            self._tables.add((tenant, datasource))

    # ---- user SQL ---------------------------------------------------------------------------
    def run_sql(
        self,
        tenant: str,
        snapshots: dict[str, Snapshot],
        series_files: dict[str, list[Path]],
        sql: str,
        params: Sequence[object],
        max_rows: int,
        timeout: float,
        token: CancelToken | None = None,
    ) -> tuple[list[str], list[tuple], float]:
        """Run checked user SQL over the tenant's flushed segments; (columns, rows, seconds)."""
        started = time.perf_counter()
        for datasource, snap in snapshots.items():
            if snap.segments:
                self._ensure_tables(tenant, datasource, timeout)
        text = translate_sql(sql, view_sql(tenant, snapshots, series_files))
        try:
            columns, rows = self._execute(text, params, timeout, token)
        except trino.exceptions.TrinoUserError as exc:
            raise InvalidArgument(f"Trino refused the query: {exc.message}", "sql") from None
        if len(rows) > max_rows:
            raise InvalidArgument(
                f"the answer has more than {max_rows} rows (SQL_MAX_ROWS): aggregate or add LIMIT", "sql"
            )
        return columns, [tuple(map(_cell, r)) for r in rows], time.perf_counter() - started

    # ---- batch fragments ---------------------------------------------------------------------
    def run_fragment(
        self,
        fragment: Fragment,
        selection: pa.Table,
        aggregation: str,
        bucketing: Bucketing,
        timeout: float,
        token: CancelToken | None = None,
    ) -> FragmentResult:
        """Aggregate one cold fragment on Trino (same SQL shape as engine.fragment_sql)."""
        started = time.perf_counter()
        if selection.num_rows == 0 or not fragment.segments:
            return FragmentResult(
                arrowbuf.empty_table(RESULT_SCHEMA), 0, time.perf_counter() - started, "trino"
            )
        tenant, datasource = fragment.segments[0].tenant, fragment.segments[0].datasource
        self._ensure_tables(tenant, datasource, timeout)
        _, rows = self._execute(fragment_sql(fragment, selection, aggregation, bucketing), (), timeout, token)
        table = pa.table(
            {
                "gid": arrowbuf.array([r[0] for r in rows], pa.int32()),
                "bucket": arrowbuf.array([r[1] for r in rows], pa.int64()),
                "value": arrowbuf.array([r[2] for r in rows], pa.float64()),
            },
            schema=RESULT_SCHEMA,
        )
        scanned = sum(r[3] for r in rows)
        return FragmentResult(table, scanned, time.perf_counter() - started, "trino")


def schema_name(tenant: str) -> str:
    """The tenant's Trino schema (a hash: tenant names need not be SQL identifiers)."""
    return f"t_{_hash(tenant)}"


def points_table(datasource: str) -> str:
    return f"p_{_hash(datasource)}"


def series_table(datasource: str) -> str:
    return f"s_{_hash(datasource)}"


def _paths(paths: Sequence[Path]) -> str:
    return ", ".join(_literal(_local(p)) for p in paths)


def view_sql(
    tenant: str, snapshots: dict[str, Snapshot], series_files: dict[str, list[Path]]
) -> dict[str, str]:
    """The Trino SQL of the views `series`, `points` and `metrics` over the tenant's live files."""
    schema = f"{CATALOG}.{schema_name(tenant)}"
    series, points, metrics = [], [], []
    for ds, snap in sorted(snapshots.items()):
        if not snap.segments:
            continue
        files = series_files.get(ds, [])
        raw_series = (
            f'SELECT series_id, metric, labels FROM {schema}.{series_table(ds)} WHERE "$path" IN ({_paths(files)})'
            if files
            else "SELECT CAST(NULL AS bigint) AS series_id, CAST(NULL AS varchar) AS metric, "
            "CAST(NULL AS map(varchar, varchar)) AS labels WHERE false"
        )
        raw_points = (
            f"SELECT series_id, ts, value FROM {schema}.{points_table(ds)} "
            f'WHERE "$path" IN ({_paths([s.path for s in snap.segments])})'
        )
        series.append(
            f"SELECT {_literal(ds)} AS datasource, {_U64.format(c='series_id')} AS series_id, metric, labels "
            f"FROM ({raw_series})"
        )
        points.append(
            f"SELECT {_literal(ds)} AS datasource, {_U64.format(c='series_id')} AS series_id, ts, value "
            f"FROM ({raw_points})"
        )
        metrics.append(
            f"SELECT {_literal(ds)} AS datasource, s.metric, s.labels, p.ts, {_TIME.format(c='p.ts')} AS time, "
            f"p.value FROM ({raw_points}) p JOIN ({raw_series}) s ON p.series_id = s.series_id"
        )
    empty = "WHERE false"
    if not series:
        series = [
            "SELECT CAST(NULL AS varchar) AS datasource, CAST(NULL AS decimal(20, 0)) AS series_id, "
            f"CAST(NULL AS varchar) AS metric, CAST(NULL AS map(varchar, varchar)) AS labels {empty}"
        ]
        points = [
            "SELECT CAST(NULL AS varchar) AS datasource, CAST(NULL AS decimal(20, 0)) AS series_id, "
            f"CAST(NULL AS bigint) AS ts, CAST(NULL AS double) AS value {empty}"
        ]
        metrics = [
            "SELECT CAST(NULL AS varchar) AS datasource, CAST(NULL AS varchar) AS metric, "
            "CAST(NULL AS map(varchar, varchar)) AS labels, CAST(NULL AS bigint) AS ts, "
            f"CAST(NULL AS timestamp(3)) AS time, CAST(NULL AS double) AS value {empty}"
        ]
    return {
        "series": " UNION ALL ".join(series),
        "points": " UNION ALL ".join(points),
        "metrics": " UNION ALL ".join(metrics),
    }


def translate_sql(sql: str, views: dict[str, str]) -> str:
    """User SQL (DuckDB dialect, checked by sql_guard) as Trino SQL over `views` (name -> SQL).

    The views become CTEs ahead of the user's own; label access on the MAP becomes element_at.
    Any table the query reads that is not one of the views (or its own CTE) is refused."""
    try:
        tree = sqlglot.parse_one(sql, read="duckdb")
    except sqlglot.errors.ParseError as exc:
        raise InvalidArgument(
            f"the query cannot be translated for Trino: {_first_line(exc)}", "sql"
        ) from None
    own = {cte.alias_or_name.lower() for cte in tree.find_all(exp.CTE)}
    aliases = {t.alias_or_name.lower() for t in tree.find_all(exp.Table)}
    clash = own & set(views)
    if clash:
        raise InvalidArgument(f"a CTE may not be named like a view ({', '.join(sorted(clash))})", "sql")
    used = set()
    for table in tree.find_all(exp.Table):
        name = table.name.lower()
        if table.args.get("db") or table.args.get("catalog") or (name not in views and name not in own):
            raise InvalidArgument(
                f"only the views {', '.join(sorted(views))} can be read, not {table.sql()}", "sql"
            )
        if name in views:
            used.add(name)
    tree = tree.transform(lambda node: _label_access(node, aliases))
    if not isinstance(tree, exp.Query):
        raise InvalidArgument("only a query can run on Trino", "sql")
    # The views first, then the user's own CTEs (which may read them), in their order.
    theirs = [(cte.alias, cte.this) for cte in tree.ctes]
    with_clause = tree.find(exp.With)
    if with_clause is not None and with_clause.parent is tree:
        with_clause.pop()
    for name in sorted(used):
        tree = tree.with_(name, as_=views[name], dialect="trino")
    for name, body in theirs:
        tree = tree.with_(name, as_=body, dialect="trino")
    return tree.sql(dialect="trino")


def _element_at(labels: exp.Expression, key: str) -> exp.Expression:
    return exp.Anonymous(this="element_at", expressions=[labels, exp.Literal.string(key)])


def _label_access(node: exp.Expression, aliases: set[str]) -> exp.Expression:
    """labels['k'], labels.k and x.labels.k on the MAP as element_at(labels, 'k') (NULL if absent)."""
    if (
        isinstance(node, exp.Bracket)
        and isinstance(node.this, exp.Column)
        and node.this.name.lower() == _LABELS
        and len(node.expressions) == 1
        and isinstance(node.expressions[0], exp.Literal)
        and node.expressions[0].is_string
    ):
        return _element_at(node.this.copy(), node.expressions[0].this)
    if isinstance(node, exp.Column) and node.table.lower() == _LABELS and _LABELS not in aliases:
        if node.args.get("db"):
            # x.labels.k: table x, column labels, field k.
            labels = exp.column(_LABELS, table=node.args["db"].name)
            return _element_at(labels, node.name)
        return _element_at(exp.column(_LABELS), node.name)
    if isinstance(node, exp.Dot) and isinstance(node.this, exp.Column) and node.this.name.lower() == _LABELS:
        return _element_at(node.this.copy(), node.expression.name)
    return node


def fragment_sql(fragment: Fragment, selection: pa.Table, aggregation: str, bucketing: Bucketing) -> str:
    """Trino SQL of one batch fragment: gid, bucket, value, n per group and bucket. Built from our
    own values only (file paths we wrote, catalog ids, window bounds, a fixed aggregation table)."""
    if aggregation not in TRINO_AGGREGATIONS:
        raise ValueError(f"{aggregation} does not run on Trino")
    if bucketing.calendar not in (None, "all"):
        raise ValueError(f"calendar buckets ({bucketing.calendar}) do not run on Trino")
    segment: Segment = fragment.segments[0]
    table = f"{CATALOG}.{schema_name(segment.tenant)}.{points_table(segment.datasource)}"
    ids = selection["series_id"].to_pylist()
    gids = selection["gid"].to_pylist()
    pairs = ", ".join(f"({_as_signed(s)}, {g})" for s, g in zip(ids, gids, strict=True))
    id_list = ", ".join(str(_as_signed(s)) for s in ids)
    bucket = (
        str(int(fragment.start))
        if bucketing.calendar == "all"
        else f"(ts / {int(bucketing.step_ms)}) * {int(bucketing.step_ms)}"
    )
    if aggregation.startswith("p"):
        q = int(aggregation[1:]) / 100
        # quantile_cont: h = (n - 1) q over the sorted values, interpolated between floor and ceil.
        value = (
            "element_at(v, CAST(floor(h) AS bigint) + 1) + (h - floor(h)) * "
            "(element_at(v, least(CAST(floor(h) AS bigint) + 2, n)) - element_at(v, CAST(floor(h) AS bigint) + 1))"
        )
        return f"""
            WITH sel(series_id, gid) AS (VALUES {pairs}),
            p AS (SELECT series_id, ts, value FROM {table}
                  WHERE "$path" IN ({_paths([s.path for s in fragment.segments])})
                    AND ts >= {int(fragment.start)} AND ts < {int(fragment.end)} AND series_id IN ({id_list})),
            g AS (SELECT sel.gid, {bucket} AS bucket, array_sort(array_agg(value)) AS v, count(*) AS n
                  FROM p JOIN sel ON p.series_id = sel.series_id GROUP BY 1, 2),
            h AS (SELECT gid, bucket, v, n, (n - 1) * {q} AS h FROM g)
            SELECT gid, bucket, {value} AS value, n FROM h"""
    return f"""
        WITH sel(series_id, gid) AS (VALUES {pairs}),
        p AS (SELECT series_id, ts, value FROM {table}
              WHERE "$path" IN ({_paths([s.path for s in fragment.segments])})
                AND ts >= {int(fragment.start)} AND ts < {int(fragment.end)} AND series_id IN ({id_list}))
        SELECT sel.gid, {bucket} AS bucket, {_AGGREGATE[aggregation]} AS value, count(*) AS n
        FROM p JOIN sel ON p.series_id = sel.series_id GROUP BY 1, 2"""


def _cell(cell: object) -> object:
    # DECIMAL(20, 0) (series_id) as the integer DuckDB's UBIGINT gives, not as text.
    if isinstance(cell, decimal.Decimal) and cell.as_tuple().exponent == 0:
        return int(cell)
    return cell


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
