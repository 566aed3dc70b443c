"""Live refresh of dashboards: every dashboard (built-in and stored) is recomputed at its
refresh_interval and published as a DashboardUpdateEvent on `dashboard.updates.<topic id>`.

The cost is bounded three ways: a dashboard whose previous refresh is still running skips its
turn (at most one refresh in flight per dashboard, never a pile-up), at most `concurrency`
dashboards are computed at once, and a refresh is abandoned after its own interval (its panel
queries carry that timeout). A failed refresh is logged and retried at the next turn.

Built-in ids contain ':' ("builtin:service-metrics"), which Pulsar's tooling URL-encodes and its
documentation advises against in topic names, so a topic id is the dashboard id with ':' replaced by
'-': `dashboard.updates.builtin-service-metrics`; stored ids are hex and used as they are.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from libs.bus import Bus
from platformq.analytics.v1 import common_pb2, events_pb2
from platformq.analytics.v1 import monitoring_service_pb2 as pb
from services.monitoring.panels import DEFAULT_REFRESH_SECONDS

log = logging.getLogger(__name__)

TOPIC_PREFIX = "dashboard.updates."

ListDashboards = Callable[[], Awaitable[list[pb.Dashboard]]]
Compute = Callable[[pb.Dashboard, float | None], Awaitable[tuple[list[common_pb2.Panel], object]]]
OnComputed = Callable[[pb.Dashboard, list[common_pb2.Panel], int], object]


def topic_for(dashboard_id: str) -> str:
    """The bus topic of a dashboard's updates."""
    return TOPIC_PREFIX + dashboard_id.replace(":", "-")


class DashboardRefresher:
    """Recomputes each dashboard at its interval and publishes the panels; `stop` ends it all."""

    def __init__(
        self,
        list_dashboards: ListDashboards,
        compute: Compute,
        bus: Bus,
        min_interval: float,
        concurrency: int,
        tenant: str,
        on_computed: OnComputed | None = None,
        tick: float = 1.0,
    ) -> None:
        self._list = list_dashboards
        self._compute = compute
        self._bus = bus
        self.min_interval = min_interval
        self.tenant = tenant
        self.on_computed = on_computed
        self.tick = tick
        self._gate = asyncio.Semaphore(concurrency)
        self._due: dict[str, float] = {}
        self._versions: dict[str, int] = {}
        self._in_flight: dict[str, asyncio.Task[None]] = {}
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.published = 0
        self.skipped = 0
        self.failed = 0

    def interval(self, dashboard: pb.Dashboard) -> float:
        """Seconds between two refreshes of a dashboard."""
        return max(float(dashboard.refresh_interval or DEFAULT_REFRESH_SECONDS), self.min_interval)

    async def start(self) -> None:
        """Begin refreshing (the first turn of every dashboard is at once)."""
        if self._task is None:
            self._stopping.clear()
            self._task = asyncio.create_task(self._run(), name="dashboard-refresh")

    async def stop(self) -> None:
        """End the loop and cancel refreshes in flight."""
        self._stopping.set()
        tasks = [t for t in (self._task, *self._in_flight.values()) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._task = None
        self._in_flight.clear()

    async def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                await self.turn()
            except Exception:
                # The store or the bus failing once must not end live refresh for good.
                log.exception("dashboard refresh turn failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.tick)

    async def turn(self) -> None:
        """Start the refreshes that are due; a dashboard still refreshing skips its turn."""
        dashboards = await self._list()
        now = time.monotonic()
        present = {d.id for d in dashboards}
        for gone in set(self._due) - present:
            self._due.pop(gone, None)
            self._versions.pop(gone, None)
        for dashboard in dashboards:
            if self._versions.get(dashboard.id) != dashboard.updated_at_ms:
                self._versions[dashboard.id] = dashboard.updated_at_ms
                self._due[dashboard.id] = now  # new or changed: refresh at once
            if now < self._due[dashboard.id]:
                continue
            self._due[dashboard.id] = now + self.interval(dashboard)
            if dashboard.id in self._in_flight:
                self.skipped += 1
                log.warning(
                    "dashboard refresh skipped: the previous one is still running",
                    extra={"dashboard_id": dashboard.id},
                )
                continue
            task = asyncio.create_task(self._refresh(dashboard), name=f"dashboard-refresh-{dashboard.id}")
            self._in_flight[dashboard.id] = task
            task.add_done_callback(lambda _, key=dashboard.id: self._in_flight.pop(key, None))

    async def _refresh(self, dashboard: pb.Dashboard) -> None:
        async with self._gate:
            try:
                panels, _ = await self._compute(dashboard, self.interval(dashboard))
                computed_at = int(time.time() * 1000)
                if self.on_computed is not None:
                    self.on_computed(dashboard, panels, computed_at)
                event = events_pb2.DashboardUpdateEvent(
                    tenant=self.tenant,
                    dashboard_id=dashboard.id,
                    dashboard_type=dashboard.type,
                    panels=panels,
                    timestamp_ms=computed_at,
                )
                await self._bus.publish(topic_for(dashboard.id), event, key=dashboard.id)
                self.published += 1
            except asyncio.CancelledError:
                raise
            except Exception:
                # Logged, not fatal: the next turn tries again (a peer may be restarting).
                self.failed += 1
                log.warning("dashboard refresh failed", exc_info=True, extra={"dashboard_id": dashboard.id})
