"""User SQL over one tenant's data: a cursor of the tenant's hardened DuckDB exposing three views.

  series(datasource VARCHAR, series_id UBIGINT, metric VARCHAR, labels STRUCT(<key> VARCHAR, ...))
  metrics(datasource VARCHAR, metric VARCHAR, labels STRUCT(<key> VARCHAR, ...), ts BIGINT (epoch ms),
          time TIMESTAMP, value DOUBLE)
  points(datasource VARCHAR, series_id UBIGINT, ts BIGINT, value DOUBLE)   (no join: aggregate by
          series_id here first, then join `series`, for queries over many points)

`labels` is a STRUCT with one field per label key of the tenant (NULL where a series lacks it), so
`labels['host']` and `labels.host` both work; a query naming a key no series has runs again with
`labels` as a MAP, which answers NULL for it. A STRUCT rather than a MAP because DuckDB then
carries only the fields a query reads through the join (3.5x faster on a TSBS lastpoint query).

Only the tenant's own segment files and hot points are wired into the views, and the connection
may read only the tenant's segment directory, so nothing of another tenant is reachable.

A query is checked (sql_guard) before anything is built, and only the views it reads are created,
as TEMP views on its cursor. The cursor is kept afterwards (IDLE_VIEWS_MAX per tenant, for at most
IDLE_VIEWS_SECONDS): the next query over the same data (same segment files, hot tables and series)
reuses its views instead of registering and binding them again, which costs milliseconds a view.

Limits: each tenant's database has DuckDB's memory_limit (QUERY_MEMORY_LIMIT) and threads
(QUERY_THREADS), and no temp directory, so a query that needs more memory fails with
ResourceExhausted instead of spilling to the server's disk or taking the process down. A query's
cursor is watched by a CancelToken (cancel.py), so a deadline or a departed client interrupts it in
DuckDB. Errors never quote a server path (sql_guard.redact_paths); an unreadable data file is
Unavailable.

DuckDB is imported by the first SQL query (here and in sql_guard), not at start: a serving process
that answers only metrics queries from rollups and points maps does not load it (14 MiB resident).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from libs import arrowbuf
from libs.errors import InvalidArgument, ResourceExhausted, Unavailable
from libs.storage import SeriesCatalog, Snapshot
from services.query_router.cancel import CancelToken
from services.query_router.sql_guard import check_user_sql, harden, redact_paths, run_user_sql

if TYPE_CHECKING:
    import duckdb

VIEWS = frozenset({"metrics", "points", "series"})
# Cursors kept with their views per tenant, and for how long at most when unused.
IDLE_VIEWS_MAX = 2
IDLE_VIEWS_SECONDS = 60.0


def _label_keys(snapshots: dict[str, Snapshot]) -> list[str]:
    return sorted({k for snap in snapshots.values() for k in snap.catalog.label_values})


def _series_table(
    databases: TenantDatabases, tenant: str, snapshots: dict[str, Snapshot], keys: list[str] | None
) -> tuple[pa.Table, dict[str, pa.Table]]:
    """Every series of `snapshots` (and each datasource's own): `labels` a STRUCT of `keys` (one type
    for the tenant), or a MAP when `keys` is None. Built from each catalog's code columns, and reused
    while a catalog has not grown (see TenantDatabases.series_of)."""
    parts = {ds: databases.series_of(tenant, ds, snap.catalog, keys) for ds, snap in snapshots.items()}
    if not parts:
        # The empty table of the same schema (the views still need a `series` to select from).
        return _with_datasource("", SeriesCatalog().arrow(keys)), parts
    return pa.concat_tables(parts.values()), parts


def _with_datasource(datasource: str, table: pa.Table) -> pa.Table:
    # One string repeated by a vectorised take, not a Python list of n copies.
    column = arrowbuf.strings([datasource]).take(arrowbuf.array(np.zeros(len(table), dtype=np.int32)))
    return table.add_column(0, "datasource", column)


class TenantDatabases:
    """Each tenant's in-memory DuckDB database over one segment root, hardened once when first
    used (it may read only the tenant's segments) and kept as long as its query-router: a fresh
    connect costs about 30 ms.

    `memory_limit` is DuckDB's (e.g. "2GB", "50%"; per tenant database), `threads` its worker
    threads (0: DuckDB's default, one per core)."""

    def __init__(self, segments_root: Path, memory_limit: str = "50%", threads: int = 0) -> None:
        self.segments_root = segments_root
        self.memory_limit = memory_limit
        self.threads = threads
        self._lock = threading.Lock()
        self._databases: dict[str, duckdb.DuckDBPyConnection] = {}
        # Per tenant: cursors with their views, idle since (monotonic seconds), for the next query.
        self._idle: dict[str, list[tuple[float, _Views]]] = {}
        # (tenant, datasource, STRUCT keys or None) -> (catalog, its size then, `series` rows).
        self._series: dict[tuple[str, str, tuple[str, ...] | None], tuple[SeriesCatalog, int, pa.Table]] = {}

    def series_of(
        self, tenant: str, datasource: str, catalog: SeriesCatalog, keys: list[str] | None
    ) -> pa.Table:
        """One datasource's rows of the `series` view (datasource, series_id, metric, labels).

        Catalogs only append rows, so a table built when the catalog had as many rows is still
        exact: it is reused, and rebuilt (O(series), vectorised) once the catalog grows. One table
        per datasource and label shape is kept."""
        cache_key = (tenant, datasource, None if keys is None else tuple(keys))
        size = len(catalog)
        with self._lock:
            cached = self._series.get(cache_key)
        if cached is not None and cached[0] is catalog and cached[1] == size:
            return cached[2]
        table = _with_datasource(datasource, catalog.arrow(keys))
        with self._lock:
            self._series[cache_key] = (catalog, len(table), table)
        return table

    def views(self, tenant: str, live: dict[str, Snapshot], struct_labels: bool) -> _Views:
        """A cursor for one query over `live`: an idle one whose views show the same data, else a
        new one. Idle cursors over other data, or idle for IDLE_VIEWS_SECONDS, are closed (they
        hold their snapshots' hot tables)."""
        now = time.monotonic()
        state = _state(live)
        stale = []
        with self._lock:
            found = None
            for key, idle in self._idle.items():
                keep = []
                for since, views in idle:
                    if found is None and key == tenant and views.matches(state, struct_labels):
                        found = views
                    elif key == tenant or now - since > IDLE_VIEWS_SECONDS:
                        stale.append(views)
                    else:
                        keep.append((since, views))
                idle[:] = keep
        for views in stale:
            views.con.close()
        return found or _Views(self.of(tenant).cursor(), live, struct_labels, state)

    def release(self, tenant: str, views: _Views, reusable: bool) -> None:
        """Give back a cursor from `views`: kept for the next query when `reusable`, else closed."""
        if reusable:
            with self._lock:
                idle = self._idle.setdefault(tenant, [])
                if len(idle) < IDLE_VIEWS_MAX:
                    idle.append((time.monotonic(), views))
                    return
        views.con.close()

    def of(self, tenant: str) -> duckdb.DuckDBPyConnection:
        """The tenant's database."""
        with self._lock:
            if tenant not in self._databases:
                tenant_dir = self.segments_root / f"tenant={tenant}"
                tenant_dir.mkdir(parents=True, exist_ok=True)
                import duckdb

                con = duckdb.connect()
                # Let a hash join push its (small) build side into the points scan as an IN filter, so
                # a query over a few series skips the row groups of the others (segments are sorted
                # by series).
                con.execute("SET dynamic_or_filter_threshold = 10000")
                con.execute("SET parquet_metadata_cache = true")  # segments are immutable files
                con.execute("SET memory_limit = ?", [self.memory_limit])
                # No spilling: a query over the limit fails (ResourceExhausted) rather than filling the
                # server's disk, and there is no temp path to disclose.
                con.execute("SET temp_directory = ''")
                if self.threads:
                    con.execute("SET threads = ?", [self.threads])
                harden(con, [tenant_dir])
                self._databases[tenant] = con
            return self._databases[tenant]


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _run(
    databases: TenantDatabases,
    tenant: str,
    live: dict[str, Snapshot],
    sql: str,
    params: Sequence[object],
    max_rows: int,
    struct_labels: bool,
    token: CancelToken,
) -> tuple[list[str], list[tuple]]:
    # Checked first: a refused query builds nothing, and only the views it reads are built (each
    # costs milliseconds to bind over the segment files).
    checked = check_user_sql(sql, VIEWS)
    views = databases.views(tenant, live, struct_labels)
    ok = False
    try:
        with token.watch(views.con):
            views.provide(databases, tenant, checked.tables)
            answer = run_user_sql(
                views.con, checked, params, VIEWS, max_rows, hidden_paths=[databases.segments_root]
            )
        ok = True
        return answer
    finally:
        # A cursor whose query failed or was interrupted is not reused.
        databases.release(tenant, views, reusable=ok)


@dataclass
class _Views:
    """A cursor of a tenant's database with TEMP views over one state of its data (`state`: the
    snapshots' segments, hot tables and catalog sizes, see `_state`). Kept for the next query while
    that state lasts: a query over data that has not changed skips registering and binding the views."""

    con: duckdb.DuckDBPyConnection
    live: dict[str, Snapshot]
    struct_labels: bool
    state: tuple
    built: set[str] = field(default_factory=set)

    def matches(self, state: tuple, struct_labels: bool) -> bool:
        """True when the views show exactly the data of `state` (same files, hot tables, series)."""
        return struct_labels == self.struct_labels and state == self.state

    def provide(self, databases: TenantDatabases, tenant: str, wanted: frozenset[str]) -> None:
        """Create the views of `wanted` this cursor does not have yet."""
        missing = set(wanted) - self.built
        if not missing:
            return
        keys = _label_keys(self.live) if self.struct_labels else None
        every_series, series_of = _series_table(databases, tenant, self.live, keys)
        _create_views(self.con, self.live, every_series, series_of, frozenset(missing))
        self.built |= missing


def _state(live: dict[str, Snapshot]) -> tuple:
    # Hot points by identity (the hot tier makes a new view when points arrive or leave).
    return tuple((ds, snap.segments, id(snap.hot), len(snap.catalog)) for ds, snap in sorted(live.items()))


def _create_views(
    con: duckdb.DuckDBPyConnection,
    live: dict[str, Snapshot],
    every_series: pa.Table,
    series_of: dict[str, pa.Table],
    wanted: frozenset[str],
) -> None:
    """The TEMP views `wanted` (of VIEWS) over the live snapshots, on the query's cursor."""
    if "series" in wanted:
        con.register("_series", every_series)
        con.execute("CREATE TEMP VIEW series AS SELECT * FROM _series")
    if not wanted & {"points", "metrics"}:
        return
    # One join per datasource on the series id alone: a single-integer key joins much faster
    # than (datasource, series_id), and ids are unique within a datasource.
    parts, raw = [], []
    for i, (ds, snap) in enumerate(sorted(live.items())):
        sources = []
        if snap.segments:
            files = ", ".join(_quote(str(s.path)) for s in snap.segments)
            sources.append(f"SELECT series_id, ts, value FROM read_parquet([{files}])")
        if snap.hot is not None:
            con.register(f"_hot{i}", snap.hot.table)
            sources.append(f"SELECT series_id, ts, value FROM _hot{i}")
        if not sources:
            continue
        con.register(f"_series{i}", series_of[ds])
        raw.append(
            f"SELECT {_quote(ds)} AS datasource, series_id, ts, value FROM ({' UNION ALL '.join(sources)})"
        )
        parts.append(
            f"SELECT s.datasource, s.metric, s.labels, p.ts, epoch_ms(p.ts) AS time, p.value "
            f"FROM ({' UNION ALL '.join(sources)}) p JOIN _series{i} s USING (series_id)"
        )
    if not parts:
        # No datasource has points yet: empty views of the same columns.
        con.register("_empty_series", every_series)
        parts = [
            "SELECT datasource, metric, labels, NULL::BIGINT AS ts, NULL::TIMESTAMP AS time, "
            "NULL::DOUBLE AS value FROM _empty_series WHERE false"
        ]
        raw = [
            "SELECT datasource, series_id, NULL::BIGINT AS ts, NULL::DOUBLE AS value FROM _empty_series WHERE false"
        ]
    if "points" in wanted:
        con.execute(f"CREATE TEMP VIEW points AS {' UNION ALL '.join(raw)}")
    if "metrics" in wanted:
        con.execute(f"CREATE TEMP VIEW metrics AS {' UNION ALL '.join(parts)}")


def run_tenant_sql(
    databases: TenantDatabases,
    tenant: str,
    snapshots: dict[str, Snapshot | None],
    sql: str,
    params: Sequence[object],
    max_rows: int,
    token: CancelToken | None = None,
) -> tuple[list[str], list[tuple], float]:
    """Check and run user SQL over the tenant's views; (columns, rows, seconds).

    `token` lets the caller interrupt the query (cancel.run_interruptible passes one). Over the memory
    limit: ResourceExhausted; a data file that cannot be read: Unavailable; neither names a path.
    """
    import duckdb

    started = time.perf_counter()
    token = CancelToken() if token is None else token
    live = {ds: snap for ds, snap in snapshots.items() if snap is not None}
    try:
        try:
            columns, rows = _run(databases, tenant, live, sql, params, max_rows, True, token)
        except InvalidArgument as exc:
            # A label key no series has yet: a MAP answers NULL for it, as users expect, where the
            # faster STRUCT cannot bind.
            if "Could not find key" not in exc.reason:
                raise
            columns, rows = _run(databases, tenant, live, sql, params, max_rows, False, token)
    except duckdb.OutOfMemoryException:
        raise ResourceExhausted(
            f"the query needs more memory than QUERY_MEMORY_LIMIT ({databases.memory_limit}) allows; "
            "aggregate in the query, select fewer rows or columns, or narrow the time range",
            "sql",
        ) from None
    except (duckdb.IOException, duckdb.InvalidInputException) as exc:
        # A segment file damaged or gone, found while the views are built (invalid input there is never
        # the user's) or while the statement reads; compaction keeps the files it replaces for a minute,
        # longer than QUERY_TIMEOUT_SECONDS' default, so only an outside hand causes this.
        reason = redact_paths(str(exc).strip().splitlines()[0], [databases.segments_root])
        raise Unavailable(f"a data file could not be read: {reason}") from None
    return columns, rows, time.perf_counter() - started
