"""Dashboards: the built-in ones and users' (stored in SQLite), their panel data computed through
the query-router and cached, and their live refresh. No gRPC servicer code here.

A key names a dashboard the way GET /api/v1/dashboards/{type} takes it, tried in this order: a
built-in id (`builtin:<type>`), a stored dashboard's id, the type of stored dashboards (the most
recently updated one), a built-in type. So a user who saves a `service-metrics` dashboard sees it
under that type; the built-in stays reachable as `builtin:service-metrics`.
"""

from __future__ import annotations

import asyncio
import logging
import time

from libs.errors import AnalyticsError, FailedPrecondition, InvalidArgument, NotFound
from libs.storage import DEFAULT_TENANT
from platformq.analytics.v1 import common_pb2
from platformq.analytics.v1 import monitoring_service_pb2 as pb
from services.context import ServiceContext
from services.monitoring.dashboard_refresh import DashboardRefresher
from services.monitoring.dashboard_store import DashboardStore, store_path
from services.monitoring.panels import (
    BUILTIN_PREFIX,
    DASHBOARD_TYPES,
    DEFAULT_DATASOURCE,
    DEFAULT_REFRESH_SECONDS,
    PanelQuery,
    PanelResult,
    build_panels,
    builtin_dashboards,
    effective,
    format_step,
    plan_panels,
    query_for,
)
from services.monitoring.reader import PeerReader

log = logging.getLogger(__name__)

DASHBOARD_CACHE = "dashboard"
# Panel queries of one dashboard run at once up to this many.
PANEL_QUERY_CONCURRENCY = 8


def _now_ms() -> int:
    return int(time.time() * 1000)


class Dashboards:
    """Stored and built-in dashboards with their panel data; `start` opens the store and begins
    the live refresh, `stop` ends both."""

    def __init__(self, context: ServiceContext, reader: PeerReader | None = None) -> None:
        self.context = context
        settings = context.settings
        # The live refresh runs as the service itself (no caller): it keeps tenant `default`'s
        # dashboards fresh; requests name their own tenant.
        self.tenant = DEFAULT_TENANT
        self.store = DashboardStore(store_path(settings.data_dir))
        self.reader = reader or PeerReader(context.address_of, 4 * settings.max_request_bytes)
        self.ttl = settings.dashboard_cache_ttl_seconds
        self.timeout = settings.request_timeout_seconds
        self.builtins = {d.type: d for d in builtin_dashboards()}
        self.refresher = DashboardRefresher(
            self.all_dashboards,
            self.compute,
            context.bus,
            min_interval=settings.dashboard_min_refresh_seconds,
            concurrency=settings.dashboard_refresh_concurrency,
            tenant=self.tenant,
            on_computed=self._cache,
        )

    async def start(self) -> None:
        """Open the store and start the live refresh."""
        await asyncio.to_thread(self.store.open)
        await self.refresher.start()

    async def stop(self) -> None:
        """Stop the live refresh, close the peers' channels and the store."""
        await self.refresher.stop()
        await self.reader.close()
        await asyncio.to_thread(self.store.close)

    async def close(self) -> None:
        """The same as stop."""
        await self.stop()

    # ---- reading -------------------------------------------------------------------------------
    async def all_dashboards(self, tenant: str | None = None) -> list[pb.Dashboard]:
        """Built-in dashboards, then the tenant's stored ones (oldest first); without a tenant, the
        live refresh's."""
        stored = await asyncio.to_thread(self.store.list, tenant or self.tenant)
        return [*self.builtins.values(), *stored]

    async def resolve(self, key: str, tenant: str = DEFAULT_TENANT) -> pb.Dashboard:
        """The dashboard a key names for `tenant` (see the module's docstring); NotFound names the key."""
        if key.startswith(BUILTIN_PREFIX) and key[len(BUILTIN_PREFIX) :] in self.builtins:
            return self.builtins[key[len(BUILTIN_PREFIX) :]]
        found = await asyncio.to_thread(self.store.get, tenant, key)
        if found is None:
            found = await asyncio.to_thread(self.store.latest_of_type, tenant, key)
        if found is None and key in self.builtins:
            found = self.builtins[key]
        if found is None:
            raise NotFound(
                f"{key!r} is neither a dashboard id nor a dashboard type; built-in types: "
                f"{', '.join(DASHBOARD_TYPES)} (GET /api/v1/dashboards lists every dashboard)",
                "type",
            )
        return found

    async def get(self, key: str, tenant: str = DEFAULT_TENANT) -> pb.GetDashboardResponse:
        """A tenant's dashboard with its panel data (over the tenant's series), from the cache when
        computed less than DASHBOARD_CACHE_TTL_SECONDS ago."""
        dashboard = await self.resolve(key, tenant)
        cache_key = (tenant, dashboard.id, dashboard.updated_at_ms)
        cached = self.context.cache.get(DASHBOARD_CACHE, cache_key)
        if cached is not None:
            return cached
        panels, _ = await self.compute(dashboard, self.timeout)
        return self._cache(dashboard, panels, _now_ms(), tenant)

    def _cache(
        self,
        dashboard: pb.Dashboard,
        panels: list[common_pb2.Panel],
        computed_at_ms: int,
        tenant: str | None = None,
    ) -> pb.GetDashboardResponse:
        """Keep freshly computed panels for DASHBOARD_CACHE_TTL_SECONDS; returns the answer. An answer
        without a single series (no data yet: a cold start before the first batch) is not kept, so
        the data shows as soon as it arrives instead of a TTL later."""
        response = pb.GetDashboardResponse(dashboard=dashboard, panels=panels, computed_at_ms=computed_at_ms)
        if any(panel.series for panel in panels):
            self.context.cache.put(
                DASHBOARD_CACHE,
                (tenant or self.tenant, dashboard.id, dashboard.updated_at_ms),
                response,
                self.ttl,
            )
        return response

    async def list(
        self, request: pb.ListDashboardsRequest, tenant: str = DEFAULT_TENANT
    ) -> pb.ListDashboardsResponse:
        """Built-in dashboards first, then the tenant's stored ones; `type` keeps one type."""
        dashboards = [
            d for d in await self.all_dashboards(tenant) if not request.type or d.type == request.type
        ]
        return pb.ListDashboardsResponse(dashboards=dashboards)

    # ---- writing -------------------------------------------------------------------------------
    async def create(
        self, request: pb.CreateDashboardRequest, tenant: str = DEFAULT_TENANT
    ) -> pb.CreateDashboardResponse:
        """Store a dashboard; warnings name configured metrics, services or simulations that have
        no data (the dashboard is stored anyway: the data may come later)."""
        dashboard = _dashboard_from(request)
        stored = await asyncio.to_thread(self.store.create, tenant, dashboard, _now_ms())
        log.info("dashboard created", extra={"dashboard_id": stored.id, "type": stored.type})
        return pb.CreateDashboardResponse(dashboard=stored, warnings=await self._check(stored))

    async def update(
        self, request: pb.UpdateDashboardRequest, tenant: str = DEFAULT_TENANT
    ) -> pb.UpdateDashboardResponse:
        """Replace a stored dashboard's name, type, config and refresh interval."""
        await self._refuse_builtin(request.id, "changed")
        dashboard = _dashboard_from(request)
        dashboard.id = request.id
        updated = await asyncio.to_thread(self.store.update, tenant, dashboard, _now_ms())
        if updated is None:
            raise NotFound(f"no stored dashboard has the id {request.id!r}", "id")
        return pb.UpdateDashboardResponse(dashboard=updated, warnings=await self._check(updated))

    async def delete(self, dashboard_id: str, tenant: str = DEFAULT_TENANT) -> pb.DeleteDashboardResponse:
        """Remove a stored dashboard."""
        await self._refuse_builtin(dashboard_id, "deleted")
        if not await asyncio.to_thread(self.store.delete, tenant, dashboard_id):
            raise NotFound(f"no stored dashboard has the id {dashboard_id!r}", "id")
        log.info("dashboard deleted", extra={"dashboard_id": dashboard_id})
        return pb.DeleteDashboardResponse(id=dashboard_id)

    async def _refuse_builtin(self, dashboard_id: str, what: str) -> None:
        if dashboard_id.startswith(BUILTIN_PREFIX):
            raise FailedPrecondition(
                f"{dashboard_id!r} is a built-in dashboard and cannot be {what}; "
                "POST /api/v1/dashboards creates your own of the same type",
                "id",
            )

    async def _check(self, dashboard: pb.Dashboard) -> list[str]:
        """Compute the panels once (which also fills the cache) and say what has no data."""
        try:
            panels, result = await self.compute(dashboard, self.timeout)
        except AnalyticsError as exc:
            # Stored all the same: the query-router may be restarting, the data may come later.
            return [f"the configuration could not be checked against stored data: {exc.message}"]
        self._cache(dashboard, panels, _now_ms())
        datasource = dashboard.config.datasource or DEFAULT_DATASOURCE
        _, time_range, _, _ = effective(dashboard)
        warnings = [
            f"metric {m!r} has no stored data in {datasource}" for m in dict.fromkeys(result.missing_metrics)
        ]
        warnings += [
            f"{_entity(label)} {value!r} has no data in {datasource} over the last {time_range}"
            for label, value in result.missing_entities
        ]
        return warnings

    # ---- panel data ----------------------------------------------------------------------------
    async def compute(
        self, dashboard: pb.Dashboard, timeout: float | None
    ) -> tuple[list[common_pb2.Panel], PanelResult]:
        """The dashboard's panels, computed now through the query-router (no cache). A panel whose
        query the query-router refuses carries the reason; an unreachable query-router raises."""
        datasource = dashboard.config.datasource or DEFAULT_DATASOURCE
        known = await self.reader.known(datasource, timeout)
        plans = plan_panels(dashboard, known)
        gate = asyncio.Semaphore(PANEL_QUERY_CONCURRENCY)

        async def answer(plan: PanelQuery) -> tuple[list[common_pb2.SeriesResult] | None, str]:
            if plan.warning:
                return None, ""
            async with gate:
                try:
                    reply = await self.reader.query(query_for(plan, dashboard), timeout)
                except (InvalidArgument, NotFound) as exc:
                    return None, exc.message
            return list(reply.series), ""

        answers = await asyncio.gather(*(answer(plan) for plan in plans))
        result = PanelResult()
        for plan, (series, error) in zip(plans, answers, strict=True):
            build_panels(plan, dashboard, series, result, error)
        if not result.panels:
            # Every panel was a default metric without data: say so rather than show nothing.
            _, time_range, aggregation, step_ms = effective(dashboard)
            reason = f"no data for this layout in {datasource} over the last {time_range}"
            if known is None:
                reason = f"datasource {datasource!r} does not exist yet"
            result.panels.append(
                common_pb2.Panel(
                    title=dashboard.name, warning=reason, aggregation=aggregation, step=format_step(step_ms)
                )
            )
        return result.panels, result


def _entity(label: str) -> str:
    return {"service_name": "service", "simulation_id": "simulation"}.get(label, label)


def _dashboard_from(request: pb.CreateDashboardRequest | pb.UpdateDashboardRequest) -> pb.Dashboard:
    """The dashboard a create or update request describes, with the defaults applied."""
    return pb.Dashboard(
        name=request.name.strip(),
        type=request.type.strip(),
        config=request.config,
        refresh_interval=request.refresh_interval or DEFAULT_REFRESH_SECONDS,
    )
