"""The query router's core: plans queries onto engines (the embedded ones, and Trino and Druid
through remote.py when configured), runs fragments in parallel, merges and caches, and keeps the
segments' rollups and points maps open ahead of queries. Knows nothing of gRPC beyond the response
messages it builds."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from libs import arrowbuf
from libs.cache import ALL_DATASOURCES, ResultCache
from libs.errors import InvalidArgument, NotFound, Unavailable
from libs.selfmetrics import SELF_CACHE_NAMESPACE, SELF_DATASOURCE, SelfMetrics
from libs.storage import DEFAULT_TENANT, MetricStore, Segment, SeriesCatalog, Snapshot
from libs.timeparse import format_time_ms
from platformq.analytics.v1 import query_service_pb2 as pb
from services.query_router.cancel import Deadline, run_interruptible
from services.query_router.engine import (
    Bucketing,
    EngineUnreachable,
    Fragment,
    FragmentResult,
    QueryEngine,
    unreadable_data_errors,
)
from services.query_router.planner import Plan, Window, plan, resolve_window
from services.query_router.remote import RemoteEngines
from services.query_router.rows import encode_point_runs, encode_rows, encode_series
from services.query_router.spec import (
    AGGREGATIONS,
    DEFAULT_DATASOURCE,
    GRANULARITIES,
    MODES,
    RAW,
    QuerySpec,
    TimeseriesSpec,
)
from services.query_router.sql_guard import check_user_sql
from services.query_router.sql_narrow import narrowing
from services.query_router.sql_views import (
    NARROW_MAX_POINTS,
    NARROWED_VIEWS,
    VIEWS,
    WHOLE_VIEWS,
    TenantDatabases,
    run_tenant_sql,
)
from services.query_router.telemetry import QueryTelemetry, QueryTrace

if TYPE_CHECKING:  # the engines' modules (and their clients) load only when one is configured
    from services.query_router.druid import DruidEngine
    from services.query_router.trino import TrinoEngine

QUERY_CACHE = "query"
MAPS_REFRESH_SECONDS = 10.0
"""How often the router opens newly written segment files and lets go of deleted ones."""
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Limits:
    """Query limits from the settings."""

    max_points_per_series: int = 11_000
    max_series: int = 10_000
    sql_max_rows: int = 100_000
    max_request_bytes: int = 16 * 1024 * 1024
    cache_ttl_seconds: float = 60.0
    max_raw_points: int = 2_000_000
    query_timeout_seconds: float = 30.0
    query_memory_limit: str = "50%"
    query_threads: int = 0


@dataclass(frozen=True)
class Groups:
    """The selected series and the group each belongs to."""

    selection: pa.Table  # series_id UINT64, gid INT32
    keys: list[tuple[str, tuple[str, ...]]]  # gid -> (metric, group label values)


def _now_ms() -> int:
    return int(time.time() * 1000)


class QueryRouter:
    """Plans queries onto the hot tier and segments, runs fragments in parallel, caches answers."""

    def __init__(
        self,
        store: MetricStore,
        cache: ResultCache,
        limits: Limits,
        metrics: SelfMetrics | None = None,
        trino: TrinoEngine | None = None,
        druid: DruidEngine | None = None,
    ) -> None:
        self.store = store
        self.cache = cache
        self.limits = limits
        # Points per metric of each live segment, per (tenant, datasource): GetMetadata reads a file once.
        self._segment_points: dict[tuple[str, str], dict[Segment, dict[str, int]]] = {}
        self.engine = QueryEngine(store.segments_root)
        # SQL narrowed to a few series reads their points from the maps the metrics API keeps open.
        self.sql_databases = TenantDatabases(
            store.segments_root, limits.query_memory_limit, limits.query_threads, self.engine.maps
        )
        self.telemetry = QueryTelemetry(metrics)
        # Trino (TRINO_HOST) and Druid (DRUID_BROKER_URL) when configured, with their fallback (remote.py).
        self.remote = RemoteEngines(trino, druid, self.telemetry, limits.query_timeout_seconds)
        self._maps_task: asyncio.Task[None] | None = None
        self._stopping = threading.Event()

    # ---- background work ------------------------------------------------------------------
    async def start(self) -> None:
        """Keep the segments' rollups and points maps open ahead of queries (engine.keep_maps_open):
        at start, so the first query over an old day does not pay for opening its files, and every
        MAPS_REFRESH_SECONDS after, for the files flushes and compactions write or delete."""
        self._stopping.clear()
        self._maps_task = asyncio.create_task(self._keep_maps_open())

    async def stop(self) -> None:
        self._stopping.set()
        if self._maps_task is not None:
            self._maps_task.cancel()
            await asyncio.gather(self._maps_task, return_exceptions=True)
            self._maps_task = None

    async def _keep_maps_open(self) -> None:
        while not self._stopping.is_set():
            try:
                await asyncio.to_thread(
                    self.engine.keep_maps_open, self.store.live_segments(), self._stopping.is_set
                )
            except OSError as exc:  # a file that vanished under us: the next round sees the new list
                log.warning("keeping the segment maps open failed: %s", exc)
            await asyncio.sleep(MAPS_REFRESH_SECONDS)

    # ---- unified query --------------------------------------------------------------------
    async def query(
        self, spec: QuerySpec, tenant: str = DEFAULT_TENANT, time_remaining: float | None = None
    ) -> pb.QueryResponse:
        """Run a unified query (metrics or SQL), from the cache when a fresh answer is there.

        `time_remaining` is the request's deadline in seconds, None when it has none: SQL then runs
        under QUERY_TIMEOUT_SECONDS, and is stopped in DuckDB when either passes.
        """
        trace = QueryTrace()
        deadline = Deadline.of_request(
            time_remaining, self.limits.query_timeout_seconds, "QUERY_TIMEOUT_SECONDS"
        )
        if not spec.sql and spec.datasource == SELF_DATASOURCE:
            # The service reading its own metrics (alert rules, self dashboards) is not counted in
            # them: watching the query figures must not move them.
            return await self._query(spec, tenant, trace, deadline)
        try:
            response = await self._query(spec, tenant, trace, deadline)
        except Exception as exc:
            self.telemetry.failed(exc, trace)
            raise
        self.telemetry.answered(response.metadata)
        return response

    async def _query(
        self, spec: QuerySpec, tenant: str, trace: QueryTrace, deadline: Deadline
    ) -> pb.QueryResponse:
        started = time.perf_counter()
        if spec.sql:
            trace.engines = {self.remote.sql_engine}
            return await self._sql(spec, tenant, started, deadline)
        # Taken before the snapshot: a write landing after it keeps this answer out of the cache.
        mark = self.cache.mark()
        snapshot = self._snapshot(tenant, spec.datasource)
        window = self._window(spec)
        key = (tenant, _cache_key(spec, window))
        # auto and cache consult the cache; batch and realtime always run their engines.
        namespace = SELF_CACHE_NAMESPACE if spec.datasource == SELF_DATASOURCE else QUERY_CACHE
        cached = self.cache.get(namespace, key) if spec.mode in ("auto", "cache") else None
        if cached is not None:
            return _from_cache(cached, started)
        # Raw: one group per stored series (grouped by every label key), one bucket per timestamp.
        group_by = tuple(sorted(snapshot.catalog.label_values)) if spec.aggregation == RAW else spec.group_by
        groups = self._groups(snapshot, spec.metrics, spec.filters, group_by, spec.limit)
        aggregation = "last" if spec.aggregation == RAW else spec.aggregation
        the_plan = self._plan(spec, window, snapshot, groups, tenant)
        trace.engines = {f.engine for f in the_plan.fragments}
        fallbacks: dict[str, str] = {}
        results = await self._run(
            the_plan, groups.selection, aggregation, window.bucketing, deadline, fallbacks
        )
        if spec.aggregation == RAW:
            points = sum(r.table.num_rows for r in results)
            if points > self.limits.max_raw_points:
                raise InvalidArgument(
                    f"raw answers hold at most {self.limits.max_raw_points} points; this one has {points}: "
                    "use a shorter range, fewer series or an aggregation",
                    "aggregation",
                )
        response = pb.QueryResponse()
        response.MergeFromString(self._series(results, groups, group_by, spec.aggregation))
        self._metadata(response.metadata, the_plan, results, started)
        response.metadata.fallbacks.update(fallbacks)
        if not fallbacks:  # an answer given in place of a down engine is not kept past its outage
            self.cache.put(
                namespace,
                key,
                _as_hit(response),
                self.limits.cache_ttl_seconds,
                scope=(tenant, spec.datasource, window.start, window.end),
                mark=mark,
            )
        # A configured cache engine (Ignite) that could not be reached: the answer says so.
        response.metadata.fallbacks.update(self.cache.unavailable())
        return response

    async def explain(self, spec: QuerySpec, tenant: str = DEFAULT_TENANT) -> pb.ExplainResponse:
        """The plan a query would run, without running it."""
        if spec.sql:
            engine = self.remote.sql_engine
            if engine == "trino":
                reason = (
                    "SQL runs on Trino over the tenant's flushed segments (DuckDB if Trino is unreachable)"
                )
            elif narrowing(check_user_sql(spec.sql, VIEWS), spec.params) is not None:
                reason = (
                    f"{NARROWED_VIEWS} (from the Parquet files instead where those series hold more "
                    f"than {NARROW_MAX_POINTS:,} points in a datasource)"
                )
            else:
                reason = WHOLE_VIEWS
            return pb.ExplainResponse(
                plan=pb.QueryPlan(mode="batch", reason=reason, fragments=[pb.PlanFragment(engine=engine)])
            )
        snapshot = self._snapshot(tenant, spec.datasource)
        # The selection too: how many series a query reads decides between points maps and DuckDB.
        group_by = tuple(sorted(snapshot.catalog.label_values)) if spec.aggregation == RAW else spec.group_by
        groups = self._groups(snapshot, spec.metrics, spec.filters, group_by, spec.limit)
        the_plan = self._plan(spec, self._window(spec), snapshot, groups, tenant)
        return pb.ExplainResponse(plan=_plan_message(the_plan))

    # ---- timeseries (Druid-style) ---------------------------------------------------------
    async def query_timeseries(
        self, spec: TimeseriesSpec, tenant: str = DEFAULT_TENANT, time_remaining: float | None = None
    ) -> pb.QueryTimeseriesResponse:
        """Run each aggregator over each interval and merge them into buckets.

        `time_remaining` is the request's deadline in seconds (None: QUERY_TIMEOUT_SECONDS); it bounds
        the Druid queries (their `context.timeout`), which are cancelled on the broker when it passes."""
        trace = QueryTrace()
        deadline = Deadline.of_request(
            time_remaining, self.limits.query_timeout_seconds, "QUERY_TIMEOUT_SECONDS"
        )
        try:
            response = await self._query_timeseries(spec, tenant, trace, deadline)
        except Exception as exc:
            self.telemetry.failed(exc, trace)
            raise
        self.telemetry.answered(response.metadata)
        return response

    async def _query_timeseries(
        self, spec: TimeseriesSpec, tenant: str, trace: QueryTrace, deadline: Deadline
    ) -> pb.QueryTimeseriesResponse:
        started = time.perf_counter()
        snapshot = self._snapshot(tenant, spec.datasource)
        aggregators = list(spec.aggregations) or [("avg", m, m) for m in spec.metrics]
        buckets: dict[tuple[int, tuple[str, ...]], dict[str, float]] = {}
        all_results: list[FragmentResult] = []
        last_plan: Plan | None = None
        fallbacks: dict[str, str] = {}
        mode = "auto" if spec.mode == "cache" else spec.mode
        for start, end in spec.intervals:
            bucketing = _granularity_bucketing(spec, start, end, self.limits.max_points_per_series)
            window = Window(start, end, bucketing)
            # One engine pass per aggregation type, over every metric it applies to.
            names_by_kind: dict[str, dict[str, list[str]]] = {}
            for kind, metric, name in aggregators:
                names_by_kind.setdefault(kind, {}).setdefault(metric, []).append(name)
            for kind, names in names_by_kind.items():
                groups = self._groups(snapshot, tuple(names), spec.filters, spec.dimensions, 0)
                n_series = groups.selection.num_rows
                last_plan = self.remote.druid_plan(
                    mode, window, snapshot, kind, n_series, tenant, spec.datasource
                ) or plan(mode, window, snapshot, kind, n_series)
                trace.engines |= {f.engine for f in last_plan.fragments}
                results = await self._run(last_plan, groups.selection, kind, bucketing, deadline, fallbacks)
                all_results += results
                for result in results:
                    cols = result.table.to_pydict()
                    for gid, bucket, value in zip(cols["gid"], cols["bucket"], cols["value"], strict=True):
                        metric, dims = groups.keys[gid]
                        for name in names[metric]:
                            buckets.setdefault((bucket, dims), {})[name] = value
        response = pb.QueryTimeseriesResponse()
        for (bucket, dims), result in sorted(buckets.items()):
            response.results.add(
                timestamp=format_time_ms(bucket),
                dimensions=dict(zip(spec.dimensions, dims, strict=True)),
                result=result,
            )
        if last_plan is not None:
            self._metadata(response.metadata, last_plan, all_results, started)
        response.metadata.fallbacks.update(fallbacks)
        return response

    # ---- capabilities and metadata --------------------------------------------------------
    async def capabilities(self) -> pb.GetCapabilitiesResponse:
        """What this deployment supports."""
        return pb.GetCapabilitiesResponse(
            engines=["hot", "duckdb", "cache", *self.remote.names],
            modes=list(MODES),
            aggregations=[*AGGREGATIONS],
            granularities=list(GRANULARITIES),
            limits=pb.Limits(
                max_points_per_series=self.limits.max_points_per_series,
                max_series=self.limits.max_series,
                max_request_bytes=self.limits.max_request_bytes,
            ),
        )

    async def metadata(self, datasource: str, tenant: str = DEFAULT_TENANT) -> pb.GetMetadataResponse:
        """Metrics, label keys with cardinality, time range and point count of a datasource.

        Costs one pass over the catalog's columns, the hot tier's series (each hot batch counts its
        points per series once), and each segment's points map index once (its points per series;
        per metric kept while it is live: segments are immutable)."""
        snapshot = self._snapshot(tenant, datasource)
        counts = await asyncio.to_thread(self._point_counts, tenant, datasource, snapshot)
        catalog = snapshot.catalog
        response = pb.GetMetadataResponse(datasource=datasource)
        for metric, series in sorted(catalog.series_per_metric().items()):
            if series:
                response.metrics.add(name=metric, series_count=series, point_count=counts.get(metric, 0))
        for key in catalog.label_names():
            response.label_keys.add(key=key, cardinality=catalog.cardinality(key))
        response.point_count = sum(counts.values())
        spans = [(s.min_ts, s.max_ts) for s in snapshot.segments]
        if snapshot.hot_min_ts is not None:
            spans.append((snapshot.hot_min_ts, snapshot.hot_max_ts))
        if spans:
            response.start = format_time_ms(min(lo for lo, _ in spans))
            response.end = format_time_ms(max(hi for _, hi in spans))
        return response

    def _point_counts(self, tenant: str, datasource: str, snapshot: Snapshot) -> dict[str, int]:
        """Points per metric: the hot tier from its batches' points per series (each batch counted
        once), each live segment once."""
        catalog = snapshot.catalog
        known = self._segment_points.get((tenant, datasource), {})
        live = {}
        for segment in snapshot.segments:
            counts = known.get(segment)
            if counts is None:
                counts = catalog.points_per_metric(*self.engine.maps.series_points(segment.map_path))
            live[segment] = counts
        # Replaced whole, so segments compacted or expired away are forgotten.
        self._segment_points[(tenant, datasource)] = live
        parts = list(live.values())
        if snapshot.hot is not None:
            parts.append(catalog.points_per_metric(*snapshot.hot.series_points()))
        totals: dict[str, int] = {}
        for part in parts:
            for metric, points in part.items():
                totals[metric] = totals.get(metric, 0) + points
        return totals

    # ---- helpers --------------------------------------------------------------------------
    def _snapshot(self, tenant: str, datasource: str) -> Snapshot:
        snapshot = self.store.snapshot(tenant, datasource)
        if snapshot is None and datasource == DEFAULT_DATASOURCE:
            # The default datasource always exists, empty until the first point arrives.
            return Snapshot(SeriesCatalog(), None, None, None, ())
        if snapshot is None:
            known = ", ".join(self.store.datasources(tenant)) or "none yet"
            raise NotFound(f"{datasource!r} does not exist (known: {known})", "datasource")
        return snapshot

    def _window(self, spec: QuerySpec) -> Window:
        if spec.aggregation == RAW:
            # Every timestamp is its own bucket; the answer is bounded by max_raw_points instead.
            return resolve_window(spec.lookback_ms, spec.start_ms, spec.end_ms, 1, _now_ms(), 2**62)
        return resolve_window(
            spec.lookback_ms,
            spec.start_ms,
            spec.end_ms,
            spec.step_ms,
            _now_ms(),
            self.limits.max_points_per_series,
        )

    def _groups(self, snapshot: Snapshot, metrics, filters, group_by, limit: int) -> Groups:
        catalog = snapshot.catalog
        known_labels = set(catalog.label_names())
        for i, label in enumerate(group_by):
            if label not in known_labels:
                raise InvalidArgument(f"label {label!r} does not exist in this datasource", f"group_by[{i}]")
        # Vectorised over the catalog's code columns: no Python object per series (at 1M series a
        # per-series loop dominated every metrics query).
        sids = catalog.select_ids(metrics, [(f.label, f.op, f.values) for f in filters])
        gids, keys = catalog.groups(sids, tuple(group_by))
        if not limit and len(keys) > self.limits.max_series:
            raise InvalidArgument(
                f"the query matches {len(keys)} series; at most {self.limits.max_series} can be returned: "
                "add filters, group by fewer labels or set limit",
                "limit",
            )
        order = sorted(range(len(keys)), key=keys.__getitem__)
        if limit:
            order = order[:limit]
        allowed = np.zeros(len(keys), dtype=bool)
        allowed[order] = True
        chosen = allowed[gids]
        selection = pa.table(
            {
                "series_id": arrowbuf.array(sids[chosen], pa.uint64()),
                "gid": arrowbuf.array(gids[chosen], pa.int32()),
            }
        )
        return Groups(selection, keys)

    async def _run(
        self,
        the_plan: Plan,
        selection: pa.Table,
        aggregation: str,
        bucketing: Bucketing,
        deadline: Deadline | None = None,
        fallbacks: dict[str, str] | None = None,
    ) -> list[FragmentResult]:
        if len(the_plan.fragments) == 1:  # no task to start and gather for one fragment
            (fragment,) = the_plan.fragments
            return [
                await self._run_fragment(fragment, selection, aggregation, bucketing, deadline, fallbacks)
            ]
        # Fragments run in worker threads at once; DuckDB releases the GIL while it scans.
        return list(
            await asyncio.gather(
                *(
                    self._run_fragment(fragment, selection, aggregation, bucketing, deadline, fallbacks)
                    for fragment in the_plan.fragments
                )
            )
        )

    def _plan(self, spec: QuerySpec, window: Window, snapshot: Snapshot, groups: Groups, tenant: str) -> Plan:
        """The plan of a metrics query (what Query runs and Explain shows): in realtime mode the hours
        Druid holds go to its broker; batch cold fragments go to Trino when configured."""
        n_series = groups.selection.num_rows
        if spec.mode == "realtime":
            on_druid = self.remote.druid_plan(
                "realtime", window, snapshot, spec.aggregation, n_series, tenant, spec.datasource
            )
            if on_druid is not None:
                return on_druid
        mode = "auto" if spec.mode == "cache" else spec.mode
        return plan(mode, window, snapshot, spec.aggregation, n_series, batch_engine=self.remote.batch_engine)

    async def _run_fragment(
        self,
        fragment: Fragment,
        selection: pa.Table,
        aggregation: str,
        bucketing: Bucketing,
        deadline: Deadline | None,
        fallbacks: dict[str, str] | None = None,
    ) -> FragmentResult:
        if fragment.engine in self.remote.names:
            result = await self.remote.run_fragment(
                fragment,
                selection,
                aggregation,
                bucketing,
                deadline,
                fallbacks if fallbacks is not None else {},
            )
            if result is not None:
                return result
            # Unreachable: the same fragment from the segments it was planned over.
            fragment = dataclasses.replace(fragment, engine="duckdb")
        try:
            if self.engine.runs_inline(fragment, selection.num_rows):
                # Sub-millisecond: no thread hand-off, nothing to cancel once started.
                if deadline is not None and deadline.remaining() <= 0:
                    raise deadline.exceeded()
                return self.engine.run(fragment, selection, aggregation, bucketing)
            # Stopped inside DuckDB (or between rollup files) when the deadline passes or the caller
            # goes away, so an abandoned query frees its core (cancel.py).
            return await run_interruptible(
                lambda token: self.engine.run(fragment, selection, aggregation, bucketing, token), deadline
            )
        except unreadable_data_errors():
            # The engine could not reach its data (a segment file, or a remote engine later).
            self.telemetry.engine_unreachable(fragment.engine)
            raise

    def _series(self, results: list[FragmentResult], groups: Groups, group_by, aggregation: str) -> bytes:
        """The answer's `series`, serialized (merged into the response with MergeFromString)."""
        tables = [r.table for r in results if r.table.num_rows]
        if not tables:
            return b""
        table = pa.concat_tables(tables)
        gids, buckets, values = (arrowbuf.numpy(table[c]) for c in ("gid", "bucket", "value"))
        # Points sorted by group then bucket, cut into one run per group (vectorised: an answer
        # can hold tens of thousands of points).
        order = np.lexsort((buckets, gids))
        gids, buckets, values = gids[order], buckets[order], values[order]
        cuts = np.flatnonzero(gids[1:] != gids[:-1]) + 1
        starts = np.concatenate(([0], cuts)).tolist()
        ends = np.concatenate((cuts, [len(gids)])).tolist()
        encoded = encode_point_runs(buckets, values, list(zip(starts, ends, strict=True)))
        points = {int(gids[a]): body for a, body in zip(starts, encoded, strict=True)}
        out = []
        for gid in sorted(points, key=lambda g: groups.keys[g]):
            metric, labels = groups.keys[gid]
            # A series lacks the label keys it does not carry: their group value is "".
            group = sorted((k, v) for k, v in zip(group_by, labels, strict=True) if v or aggregation != RAW)
            out.append(encode_series(metric, group, aggregation, points[gid]))
        return b"".join(out)

    def _metadata(
        self, meta: pb.QueryMetadata, the_plan: Plan, results: list[FragmentResult], started: float
    ) -> None:
        engines: dict[str, float] = {}
        for result in results:
            engines[result.engine] = engines.get(result.engine, 0.0) + result.seconds * 1000
        meta.engines[:] = list(engines)
        meta.engine_time_ms.update(engines)
        meta.points_scanned = sum(r.scanned for r in results)
        meta.cache_hit = False
        meta.plan.CopyFrom(_plan_message(the_plan))
        meta.total_time_ms = (time.perf_counter() - started) * 1000

    async def _sql(
        self, spec: QuerySpec, tenant: str, started: float, deadline: Deadline
    ) -> pb.QueryResponse:
        key = (tenant, "sql", spec.sql, spec.params)
        cached = self.cache.get(QUERY_CACHE, key) if spec.mode in ("auto", "cache") else None
        if cached is not None:
            return _from_cache(cached, started)
        mark = self.cache.mark()
        response = await self._run_sql(spec, tenant, started, deadline)
        if "trino" in response.metadata.fallbacks:  # answered in place of Trino: not kept past its outage
            return response
        # SQL may read any datasource of the tenant: any write of the tenant drops the entry.
        self.cache.put(
            QUERY_CACHE,
            key,
            _as_hit(response),
            self.limits.cache_ttl_seconds,
            scope=(tenant, ALL_DATASOURCES, -(2**63), 2**63),
            mark=mark,
        )
        response.metadata.fallbacks.update(self.cache.unavailable())
        return response

    async def _run_sql(
        self, spec: QuerySpec, tenant: str, started: float, deadline: Deadline
    ) -> pb.QueryResponse:
        snapshots = {ds: self.store.snapshot(tenant, ds) for ds in self.store.datasources(tenant)}
        fallback = None
        if self.remote.sql_engine == "trino":
            # Refused here, on DuckDB's parser, before anything reaches Trino.
            check_user_sql(spec.sql, VIEWS)
            live = {ds: snap for ds, snap in snapshots.items() if snap is not None}
            series_files = {ds: self.store.series_files(tenant, ds) for ds in live}
            try:
                response = await self.remote.run_sql(
                    spec, tenant, live, series_files, self.limits.sql_max_rows, deadline
                )
                response.metadata.total_time_ms = (time.perf_counter() - started) * 1000
                return response
            except EngineUnreachable as exc:
                fallback = exc.reason
        try:
            # Interrupted in DuckDB when the deadline passes or the caller goes away (cancel.py).
            answer = await run_interruptible(
                lambda token: run_tenant_sql(
                    self.sql_databases,
                    tenant,
                    snapshots,
                    spec.sql,
                    spec.params,
                    self.limits.sql_max_rows,
                    token,
                ),
                deadline,
            )
        except (Unavailable, OSError):
            self.telemetry.engine_unreachable("duckdb")
            raise
        response = pb.QueryResponse(columns=answer.columns)
        response.MergeFromString(encode_rows(answer.rows))
        meta = response.metadata
        meta.engines[:] = ["duckdb"]
        meta.engine_time_ms["duckdb"] = answer.seconds * 1000
        meta.plan.CopyFrom(
            pb.QueryPlan(
                mode="batch",
                reason=NARROWED_VIEWS if answer.narrowed else WHOLE_VIEWS,
                fragments=[pb.PlanFragment(engine="duckdb")],
            )
        )
        if fallback is not None:
            meta.fallbacks["trino"] = fallback
        meta.total_time_ms = (time.perf_counter() - started) * 1000
        return response


def _as_hit(response: pb.QueryResponse) -> pb.QueryResponse:
    """The copy a cache hit returns, marked once at store time."""
    hit = pb.QueryResponse()
    hit.CopyFrom(response)
    hit.metadata.cache_hit = True
    hit.metadata.engines[:] = ["cache"]
    hit.metadata.engine_time_ms.clear()
    return hit


def _from_cache(hit: pb.QueryResponse, started: float) -> pb.QueryResponse:
    """A cached answer. The stored message itself is returned (no copy, so a hit costs the same
    whatever the answer's size); only its timing is written, which is all a hit changes."""
    hit.metadata.total_time_ms = (time.perf_counter() - started) * 1000
    return hit


def _plan_message(the_plan: Plan) -> pb.QueryPlan:
    return pb.QueryPlan(
        mode=the_plan.mode,
        reason=the_plan.reason,
        fragments=[
            pb.PlanFragment(engine=f.engine, start_ms=f.start, end_ms=f.end) for f in the_plan.fragments
        ],
    )


def _cache_key(spec: QuerySpec, window: Window) -> tuple:
    return (
        spec.datasource,
        tuple(sorted(spec.metrics)),
        spec.aggregation,
        spec.group_by,
        tuple(sorted((f.label, f.op, f.values) for f in spec.filters)),
        window.start,
        window.end,
        window.bucketing,
        spec.limit,
    )


def _granularity_bucketing(spec: TimeseriesSpec, start: int, end: int, max_points: int) -> Bucketing:
    if spec.granularity in ("all", "month", "quarter", "year"):
        return Bucketing(None, spec.granularity)
    width = spec.granularity_ms
    points = -(-(end - start) // width)
    if points > max_points:
        raise InvalidArgument(
            f"granularity {spec.granularity!r} over this interval gives {points} buckets per series; "
            f"at most {max_points} are allowed",
            "granularity",
        )
    return Bucketing(width)
