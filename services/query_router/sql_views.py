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

A query whose WHERE narrows `metrics` to some series (sql_narrow: a label's or metric's values,
and a window from `ts` or `time`; `settle` evaluates expressions such as now() in the transaction
the statement then runs in) gets a `metrics` view of only those series' points in that window: read from the
segments' points maps by their series index and picked from the hot tier, at most
NARROW_MAX_POINTS of them (more: the whole view, as below). DuckDB then runs the query as written
over them: a day's Parquet file holds one host's series in nearly every row group, a points map in
ten runs. Such views serve that one query and are not kept.

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

import functools
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import pyarrow as pa

from libs import arrowbuf
from libs.errors import InvalidArgument, ResourceExhausted, Unavailable
from libs.storage import MappedReader, MapRead, SeriesCatalog, Snapshot
from services.query_router.cancel import CancelToken
from services.query_router.sql_guard import check_user_sql, harden, redact_paths, run_user_sql
from services.query_router.sql_narrow import Narrowing, narrowing, settle

if TYPE_CHECKING:
    import duckdb

VIEWS = frozenset({"metrics", "points", "series"})
# Cursors kept with their views per tenant, and for how long at most when unused.
IDLE_VIEWS_MAX = 2
IDLE_VIEWS_SECONDS = 60.0
NARROW_MAX_POINTS = 2_000_000
"""The most points (counted over the whole of each segment the window touches) a narrowed `metrics`
view copies into memory per datasource; a narrowing that selects more reads the Parquet files, which
DuckDB streams under its memory limit."""
WHOLE_VIEWS = "SQL runs in one DuckDB pass over the tenant's views"
NARROWED_VIEWS = (
    "SQL runs in one DuckDB pass over the tenant's views; `metrics` holds only the points of the "
    "series its WHERE names, in the time it bounds, read from the points maps and the hot tier"
)
"""The plan reasons of an answer (and of Explain) with and without a narrowed `metrics` view."""
POINTS_SCHEMA = pa.schema([("series_id", pa.uint64()), ("ts", pa.int64()), ("value", pa.float64())])


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


class SqlAnswer(NamedTuple):
    """What run_tenant_sql answers: the columns and rows, the seconds it took, and whether the
    `metrics` view held only the points of the series the WHERE names (of at least one datasource)."""

    columns: list[str]
    rows: list[tuple]
    seconds: float
    narrowed: bool


class TenantDatabases:
    """Each tenant's in-memory DuckDB database over one segment root, hardened once when first
    used (it may read only the tenant's segments) and kept as long as its query-router: a fresh
    connect costs about 30 ms.

    `memory_limit` is DuckDB's (e.g. "2GB", "50%"; per tenant database), `threads` its worker
    threads (0: DuckDB's default, one per core); `maps` the reader of the segments' points maps that
    narrowed `metrics` views read (None: no view is narrowed)."""

    def __init__(
        self,
        segments_root: Path,
        memory_limit: str = "50%",
        threads: int = 0,
        maps: MappedReader | None = None,
    ) -> None:
        self.segments_root = segments_root
        self.memory_limit = memory_limit
        self.threads = threads
        self.maps = maps
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
) -> tuple[list[str], list[tuple], bool]:
    # Checked first: a refused query builds nothing, and only the views it reads are built (each
    # costs milliseconds to bind over the segment files).
    checked = check_user_sql(sql, VIEWS)
    narrow = None
    if databases.maps is not None and "metrics" in checked.tables:
        narrow = narrowing(checked, params)
    if narrow is None:
        views = databases.views(tenant, live, struct_labels)
    else:  # views of this query's series only: not for another query
        views = _Views(databases.of(tenant).cursor(), live, struct_labels, (), narrow=narrow)
    ok = False
    try:
        with token.watch(views.con):
            if views.narrow is not None and views.narrow.pending:
                # now() and the like: evaluated in the transaction the statement then runs in.
                views.narrow = settle(views.con, views.narrow, params)
            views.provide(databases, tenant, checked.tables, lambda: token.cancelled)
            answer = run_user_sql(
                views.con, checked, params, VIEWS, max_rows, hidden_paths=[databases.segments_root]
            )
        ok = True
        return (*answer, views.narrowed)
    finally:
        # A cursor whose query failed or was interrupted is not reused, nor one of narrowed views.
        databases.release(tenant, views, reusable=ok and narrow is None)


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
    narrow: Narrowing | None = None
    """What the query's WHERE says of `metrics` (sql_narrow), when its view holds only that."""
    narrowed: bool = False
    """True once the `metrics` view of at least one datasource is narrowed (`narrow`)."""

    def matches(self, state: tuple, struct_labels: bool) -> bool:
        """True when the views show exactly the data of `state` (same files, hot tables, series)."""
        return struct_labels == self.struct_labels and state == self.state

    def provide(
        self, databases: TenantDatabases, tenant: str, wanted: frozenset[str], stop: Callable[[], bool]
    ) -> None:
        """Create the views of `wanted` this cursor does not have yet (`stop` ends a narrowed view's
        read of the points maps early: ReadStopped)."""
        missing = set(wanted) - self.built
        if not missing:
            return
        keys = _label_keys(self.live) if self.struct_labels else None
        # Every series of the tenant, built only for a view that shows them: a narrowed `metrics`
        # takes its few series' rows from the catalog, and a catalog that grew costs a rebuild.
        series_tables = functools.cache(lambda: _series_table(databases, tenant, self.live, keys))
        sources = None
        if self.narrow is not None and "metrics" in missing and databases.maps is not None:
            sources = {
                ds: _narrowed_sources(databases.maps, ds, snap, self.narrow, keys, stop)
                for ds, snap in self.live.items()
            }
            self.narrowed = any(n is not None for n in sources.values())
        _create_views(self.con, self.live, series_tables, frozenset(missing), sources)
        self.built |= missing


def _state(live: dict[str, Snapshot]) -> tuple:
    # Hot points by identity (the hot tier makes a new view when points arrive or leave).
    return tuple((ds, snap.segments, id(snap.hot), len(snap.catalog)) for ds, snap in sorted(live.items()))


def _narrowed_sources(
    maps: MappedReader,
    datasource: str,
    snap: Snapshot,
    narrow: Narrowing,
    keys: list[str] | None,
    stop: Callable[[], bool],
) -> tuple[pa.Table, pa.Table, list[Path]] | None:
    """The `metrics` view's sources for one datasource under `narrow`: (its points in the narrowed
    series and window from the points maps and the hot tier, those series' rows of the `series`
    table, the Parquet files of segments without a points map); None when the whole datasource is to
    be read (the narrowing selects more than NARROW_MAX_POINTS)."""
    catalog = snap.catalog
    if narrow.empty or (narrow.datasources is not None and datasource not in narrow.datasources):
        rows = np.zeros(0, dtype=np.int64)
    else:
        metrics = narrow.metrics if narrow.metrics is not None else catalog.by_metric
        present = catalog.label_names()
        matchers: list[tuple[str, str, tuple[str, ...]]] = []
        absent = False
        for key, values in narrow.labels:
            # DuckDB matches a STRUCT's field names whatever their case (a MAP's keys exactly): a
            # key that names a label only that way narrows nothing; one no series here has in any
            # case is NULL for all of them, which equals nothing.
            variants = [k for k in present if k.lower() == key.lower()]
            absent = absent or not variants
            if variants == [key]:
                matchers.append((key, "in", tuple(sorted(values))))
        rows = np.zeros(0, dtype=np.int64) if absent else catalog.select_rows(sorted(metrics), matchers)
    series = _with_datasource(datasource, catalog.arrow(keys, rows))
    sids = np.sort(arrowbuf.numpy(series["series_id"]))
    segments = [s for s in snap.segments if s.max_ts >= narrow.start and s.min_ts < narrow.end]
    mapped = [s for s in segments if s.mapped]
    if len(sids) and mapped and maps.points_of([s.map_path for s in mapped], sids) > NARROW_MAX_POINTS:
        return None
    parts = []
    if len(sids) and mapped:
        # Clipped to the segments' span: a map stores times as offsets from its first.
        start = max(narrow.start, min(s.min_ts for s in mapped))
        end = min(narrow.end, max(s.max_ts for s in mapped) + 1)
        if start < end:
            read = maps.read([MapRead.points([s.map_path for s in mapped], [(start, end)])], sids, stop)[0]
            parts.append((read.series_ids, read.ts, read.last))
    if len(sids) and snap.hot is not None:
        parts.append(snap.hot.pick(sids, narrow.start, narrow.end))
    columns = [np.concatenate([p[i] for p in parts]) if parts else None for i in range(3)]
    points_table = (
        pa.Table.from_arrays(
            [arrowbuf.array(c, f.type) for c, f in zip(columns, POINTS_SCHEMA, strict=True)],
            schema=POINTS_SCHEMA,
        )
        if parts
        else arrowbuf.empty_table(POINTS_SCHEMA)
    )
    unmapped = [s.path for s in segments if not s.mapped] if len(sids) else []
    return points_table, series, unmapped


def _parquet_source(paths: list[Path]) -> str:
    files = ", ".join(_quote(str(path)) for path in paths)
    return f"SELECT series_id, ts, value FROM read_parquet([{files}])"


def _create_views(
    con: duckdb.DuckDBPyConnection,
    live: dict[str, Snapshot],
    series_tables: Callable[[], tuple[pa.Table, dict[str, pa.Table]]],
    wanted: frozenset[str],
    narrowed_sources: dict[str, tuple[pa.Table, pa.Table, list[Path]] | None] | None = None,
) -> None:
    """The TEMP views `wanted` (of VIEWS) over the live snapshots, on the query's cursor; `metrics`
    over each datasource's narrowed sources where `narrowed_sources` gives them
    (`_narrowed_sources`)."""
    if "series" in wanted:
        con.register("_series", series_tables()[0])
        con.execute("CREATE TEMP VIEW series AS SELECT * FROM _series")
    if not wanted & {"points", "metrics"}:
        return
    # One join per datasource on the series id alone: a single-integer key joins much faster
    # than (datasource, series_id), and ids are unique within a datasource.
    parts, raw = [], []
    for i, (ds, snap) in enumerate(sorted(live.items())):
        sources = []
        if snap.segments:
            sources.append(_parquet_source([s.path for s in snap.segments]))
        if snap.hot is not None:
            con.register(f"_hot{i}", snap.hot.table)
            sources.append(f"SELECT series_id, ts, value FROM _hot{i}")
        if not sources:
            continue
        raw.append(
            f"SELECT {_quote(ds)} AS datasource, series_id, ts, value FROM ({' UNION ALL '.join(sources)})"
        )
        narrow = narrowed_sources.get(ds) if narrowed_sources is not None else None
        if narrow is None:
            series_name = f"_series{i}"
            con.register(series_name, series_tables()[1][ds])
        else:
            points, series, unmapped = narrow
            series_name = f"_narrow_series{i}"
            con.register(series_name, series)
            con.register(f"_narrow{i}", points)
            sources = [f"SELECT series_id, ts, value FROM _narrow{i}"]
            if unmapped:
                sources.append(_parquet_source(unmapped))
        parts.append(
            f"SELECT s.datasource, s.metric, s.labels, p.ts, epoch_ms(p.ts) AS time, p.value "
            f"FROM ({' UNION ALL '.join(sources)}) p JOIN {series_name} s USING (series_id)"
        )
    if not parts:
        # No datasource has points yet: empty views of the same columns.
        con.register("_empty_series", series_tables()[0])
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
) -> SqlAnswer:
    """Check and run user SQL over the tenant's views.

    `token` lets the caller interrupt the query (cancel.run_interruptible passes one). Over the memory
    limit: ResourceExhausted; a data file that cannot be read: Unavailable; neither names a path.
    """
    import duckdb

    started = time.perf_counter()
    token = CancelToken() if token is None else token
    live = {ds: snap for ds, snap in snapshots.items() if snap is not None}
    try:
        try:
            columns, rows, narrowed = _run(databases, tenant, live, sql, params, max_rows, True, token)
        except InvalidArgument as exc:
            # A label key no series has yet: a MAP answers NULL for it, as users expect, where the
            # faster STRUCT cannot bind.
            if "Could not find key" not in exc.reason:
                raise
            columns, rows, narrowed = _run(databases, tenant, live, sql, params, max_rows, False, token)
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
    return SqlAnswer(columns, rows, time.perf_counter() - started, narrowed)
