"""The remote engines a query router may be configured with, and what happens when one is down.

- Trino (TRINO_HOST): user SQL and the cold fragment of batch-mode metrics queries, over the same
  segment files the embedded engines read (trino.py).
- Druid (DRUID_BROKER_URL): QueryTimeseries and realtime-mode fragments over the hours Druid holds,
  before the hot tier (druid.py; druid_loader.py feeds it).

A fragment planned for a remote engine runs there. When the engine cannot be reached, the same
fragment runs on the embedded engines instead (it was planned over the same segments), the answer's
`metadata.fallbacks` names the engine and the reason, and the failure is counted
(`analytics_engine_connection_failures_total{engine}`, the EngineConnectionFailure alert).

After a failure the engine is not tried for a pause (RETRY_MIN_SECONDS, doubled after each failure
in a row up to RETRY_MAX_SECONDS): meanwhile its fragments go straight to the embedded engines,
marked as skipped, so an engine that hangs costs one deadline per pause rather than one per query.
The first query after the pause tries it again; a success ends the outage.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pyarrow as pa

from libs.storage import Snapshot
from platformq.analytics.v1 import query_service_pb2 as pb
from services.query_router.cancel import Deadline, run_interruptible
from services.query_router.engine import Bucketing, EngineUnreachable, Fragment, FragmentResult
from services.query_router.planner import Plan, Window, plan
from services.query_router.rows import encode_rows
from services.query_router.telemetry import QueryTelemetry

if TYPE_CHECKING:  # the engines' modules (and their clients) load only when one is configured
    from services.query_router.druid import DruidEngine
    from services.query_router.trino import TrinoEngine

TRINO = "trino"
DRUID = "druid"
RETRY_MIN_SECONDS = 1.0
RETRY_MAX_SECONDS = 16.0


@dataclass
class _Outage:
    reason: str
    pause: float
    until: float


class RemoteEngines:
    """Trino and Druid as configured (either may be None), with the fallback rule above."""

    def __init__(
        self,
        trino: TrinoEngine | None,
        druid: DruidEngine | None,
        telemetry: QueryTelemetry,
        default_timeout_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.trino = trino
        self.druid = druid
        self.telemetry = telemetry
        self.default_timeout_seconds = default_timeout_seconds
        self.clock = clock
        self._outages: dict[str, _Outage] = {}
        # The configured remote engines, by name (fixed for the router's life).
        self.names = tuple(name for name, engine in ((TRINO, trino), (DRUID, druid)) if engine is not None)

    def _skip_reason(self, engine: str) -> str | None:
        """Why `engine` is not tried now (within the pause after a failure), or None to try it."""
        outage = self._outages.get(engine)
        if outage is None or self.clock() >= outage.until:
            return None
        return f"not tried for {outage.until - self.clock():.1f} s more after: {outage.reason}"

    def _failed(self, engine: str, reason: str) -> None:
        self.telemetry.engine_unreachable(engine)
        previous = self._outages.get(engine)
        pause = RETRY_MIN_SECONDS if previous is None else min(previous.pause * 2, RETRY_MAX_SECONDS)
        self._outages[engine] = _Outage(reason, pause, self.clock() + pause)

    def _succeeded(self, engine: str) -> None:
        self._outages.pop(engine, None)

    @property
    def batch_engine(self) -> str | None:
        """The engine batch-mode cold fragments go to (planner.plan's `batch_engine`)."""
        return TRINO if self.trino is not None else None

    @property
    def sql_engine(self) -> str:
        return TRINO if self.trino is not None else "duckdb"

    # ---- planning ---------------------------------------------------------------------------
    def druid_plan(
        self,
        mode: str,
        window: Window,
        snapshot: Snapshot,
        aggregation: str,
        n_series: int,
        tenant: str,
        datasource: str,
    ) -> Plan | None:
        """A plan whose first part runs on Druid: the hours Druid holds exactly, before the hot tier
        (DruidMirror.cut), planned as the embedded fragments they would be, with engine "druid" (so
        an unreachable broker falls back to exactly those); the rest planned as usual. None when
        Druid is not configured or cannot answer any part of the window."""
        if self.druid is None or aggregation not in self.druid.aggregations:
            return None
        cut = self.druid.mirror.cut(tenant, datasource, snapshot, window)
        if cut is None:
            return None
        head = plan(mode, Window(window.start, cut, window.bucketing), snapshot, aggregation, n_series)
        on_druid = tuple(dataclasses.replace(f, engine=DRUID) for f in head.fragments)
        if cut >= window.end:
            return Plan(mode, "druid: every hour in range is ingested in Druid", on_druid)
        tail = plan(mode, Window(cut, window.end, window.bucketing), snapshot, aggregation, n_series)
        return Plan(
            mode,
            f"druid before {cut} (hours ingested in Druid), then embedded: {tail.reason}",
            on_druid + tail.fragments,
        )

    # ---- running ----------------------------------------------------------------------------
    async def run_fragment(
        self,
        fragment: Fragment,
        selection: pa.Table,
        aggregation: str,
        bucketing: Bucketing,
        deadline: Deadline | None,
        fallbacks: dict[str, str],
    ) -> FragmentResult | None:
        """A fragment on its remote engine; None when that engine is unreachable (recorded in
        `fallbacks`, the failure counted), so the caller runs it embedded."""
        deadline = deadline or Deadline.within(self.default_timeout_seconds, "QUERY_TIMEOUT_SECONDS")
        engine = fragment.engine
        if (skipped := self._skip_reason(engine)) is not None:
            fallbacks[engine] = skipped
            return None
        try:
            if engine == DRUID and self.druid is not None:
                result = await self.druid.run_fragment(fragment, selection, aggregation, bucketing, deadline)
            elif engine == TRINO and self.trino is not None:
                trino = self.trino
                result = await run_interruptible(
                    lambda token: trino.run_fragment(
                        fragment, selection, aggregation, bucketing, deadline.remaining(), token
                    ),
                    deadline,
                )
            else:
                return None
        except EngineUnreachable as exc:
            self._failed(engine, exc.reason)
            fallbacks[engine] = exc.reason
            return None
        self._succeeded(engine)
        return result

    async def run_sql(
        self,
        spec,
        tenant: str,
        snapshots: dict[str, Snapshot],
        series_files: dict[str, list],
        max_rows: int,
        deadline: Deadline,
    ) -> pb.QueryResponse:
        """User SQL (already checked by sql_guard) on Trino over the tenant's flushed segments: points
        only in the hot tier are not in the answer, and the plan's reason says how many. Raises
        EngineUnreachable (counted here) when Trino cannot be reached or is within its pause."""
        trino = self.trino
        assert trino is not None
        if (skipped := self._skip_reason(TRINO)) is not None:
            raise EngineUnreachable(skipped)
        try:
            columns, rows, seconds = await run_interruptible(
                lambda token: trino.run_sql(
                    tenant,
                    snapshots,
                    series_files,
                    spec.sql,
                    spec.params,
                    max_rows,
                    deadline.remaining(),
                    token,
                ),
                deadline,
            )
        except EngineUnreachable as exc:
            self._failed(TRINO, exc.reason)
            raise
        self._succeeded(TRINO)
        response = pb.QueryResponse(columns=columns)
        response.MergeFromString(encode_rows(rows))
        meta = response.metadata
        meta.engines[:] = [TRINO]
        meta.engine_time_ms[TRINO] = seconds * 1000
        hot = sum(snap.hot.num_rows for snap in snapshots.values() if snap.hot is not None)
        reason = "SQL runs on Trino over the tenant's flushed segments"
        if hot:
            reason += f"; {hot} points not yet flushed (hot tier) are not in this answer"
        meta.plan.CopyFrom(
            pb.QueryPlan(mode="batch", reason=reason, fragments=[pb.PlanFragment(engine=TRINO)])
        )
        return response
