"""Monitor scopes: platform, service, simulation and resource summaries, computed from stored
metrics (through the query-router), stored anomalies (the ml service) and open alerts.

Figures over the time range are the mean of per-step averages; a status looks at the newest
step and the newest point (`health.status_of`). The keys of every answer are in docs/monitoring.md.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from libs.config import SERVICE_NAMES
from libs.errors import AnalyticsError, NotFound
from libs.selfmetrics import SELF_DATASOURCE
from libs.timeparse import parse_duration_ms
from platformq.analytics.v1 import common_pb2, events_pb2
from platformq.analytics.v1 import monitoring_service_pb2 as pb
from services.context import ServiceContext
from services.monitoring.health import (
    HealthRules,
    combine_hosts,
    compare,
    current,
    increase,
    mean,
    status_of,
    worst,
)
from services.monitoring.panels import (
    DEFAULT_DATASOURCE,
    NETWORK_PREFIXES,
    PLATFORM_METRICS,
    RESOURCE_METRICS,
    Known,
    choose_step_ms,
)
from services.monitoring.reader import PeerReader
from services.monitoring.scope_data import Catalog, Figures, ScopeData, soft_error

DEFAULT_TIME_RANGE = "1h"
MAX_RECENT_ANOMALIES = 50
# The analytics service's own health looks at its self-metrics over this window, like rate(x[5m]).
SELF_WINDOW = "5m"
SELF_COUNTERS = (
    "analytics_query_duration_seconds_count",
    "analytics_query_failures_total",
    "analytics_ingest_points_total",
    "analytics_cache_requests_total",
)
SELF_GAUGES = ("analytics_stream_lag_seconds", "analytics_bus_backlog_bytes", "analytics_ws_connections")
ENTITY_LABELS = ("service_name", "simulation_id", "host", "resource")

T = TypeVar("T")


class ActiveAlerts(Protocol):
    """Where open alerts come from (the AlertEngine): `active()` returns the alerts pending or
    firing."""

    def active(self) -> list[pb.Alert]:
        """Alerts pending or firing."""
        ...


@dataclass
class _Ask:
    """One monitor request while it is answered: its window, and the answer being built."""

    request: pb.MonitorRequest
    time_range: str
    range_ms: int
    step_ms: int
    now_ms: int
    response: pb.MonitorResponse
    alerts: list[pb.Alert] = field(default_factory=list)
    anomalies: list[events_pb2.AnomalyEvent] = field(default_factory=list)

    @property
    def since_ms(self) -> int:
        # Aligned to 10 s so that repeated calls share the query-router's cached SQL answer.
        return (self.now_ms - self.range_ms) // 10_000 * 10_000


class Scopes:
    """Answers MonitorRequests; `close` releases the peers' channels."""

    def __init__(
        self, context: ServiceContext, alerts: ActiveAlerts, reader: PeerReader | None = None
    ) -> None:
        self.context = context
        self.alerts = alerts
        settings = context.settings
        self.reader = reader or PeerReader(context.address_of, 4 * settings.max_request_bytes)
        self.data = ScopeData(self.reader, settings.request_timeout_seconds)
        self.rules = HealthRules.from_settings(settings)
        self.name = settings.service_name
        self.datasource = DEFAULT_DATASOURCE

    async def close(self) -> None:
        """Close the peers' channels."""
        await self.reader.close()

    async def monitor(self, request: pb.MonitorRequest) -> pb.MonitorResponse:
        """Summarise one scope (the request is validated by spec.check_monitor)."""
        time_range = request.time_range or DEFAULT_TIME_RANGE
        range_ms = parse_duration_ms(time_range, "time_range")
        ask = _Ask(
            request,
            time_range,
            range_ms,
            choose_step_ms(range_ms),
            int(time.time() * 1000),
            pb.MonitorResponse(scope=request.scope, id=request.id, time_range=time_range),
        )
        scope = {
            "platform": self._platform,
            "service": self._service,
            "simulation": self._simulation,
            "resource": self._resource,
        }[request.scope]
        await scope(ask)
        return ask.response

    # ---- scopes --------------------------------------------------------------------------------
    async def _platform(self, ask: _Ask) -> None:
        known, services, hosts_known = await self._labels(ask, "service_name")
        metrics = [m for m in PLATFORM_METRICS if known and m in known.metrics]
        figures, analytics, _ = await asyncio.gather(
            self._figures(ask, "service_name", "host" if hosts_known else "", metrics, services),
            self._self_health(ask),
            self._alerts_and_anomalies(ask, {}),
        )
        for name in services.names():
            entity = self._entity(ask, "service", name, figures.get(name, {}), services.last_seen(name))
            ask.response.entities.append(entity)
        _add_own_alerts(analytics, ask.alerts)
        ask.response.analytics.CopyFrom(analytics)
        ask.response.status = worst([*(e.status for e in ask.response.entities), analytics.status])

    async def _service(self, ask: _Ask) -> None:
        name = ask.request.id
        _, services, hosts_known = await self._labels(ask, "service_name")
        if name not in services:
            raise NotFound(_unknown("service", name, services, self.datasource), "id")
        metrics = services.metrics(name)
        hosts = Catalog()
        if hosts_known:
            hosts = await self.data.catalog(self.datasource, "host", ask.since_ms, ("service_name", name))
        figures, _ = await asyncio.gather(
            self._figures(ask, "service_name", "host" if hosts_known else "", metrics, services),
            self._alerts_and_anomalies(ask, {"service_name": name}),
        )
        service = self._entity(ask, "service", name, figures.get(name, {}), services.last_seen(name))
        ask.response.entities.append(service)
        for host in hosts.names():
            per_host = {
                m: [(h, p) for h, p in rows if h == host] for m, rows in figures.get(name, {}).items()
            }
            ask.response.entities.append(
                self._entity(ask, "host", host, per_host, hosts.last_seen(host), False)
            )
        for metric in metrics:
            values = {
                svc: value
                for svc, by_metric in figures.items()
                if metric in by_metric
                and (value := mean(combine_hosts(metric, [p for _, p in by_metric[metric]])[0])) is not None
            }
            comparison = compare(metric, name, values)
            if comparison is not None:
                ask.response.comparison.append(comparison)
        ask.response.status = service.status

    async def _simulation(self, ask: _Ask) -> None:
        name = ask.request.id
        _, simulations, resources_known = await self._labels(ask, "simulation_id", "resource")
        if name not in simulations:
            raise NotFound(_unknown("simulation", name, simulations, self.datasource), "id")
        resources = Catalog()
        if resources_known:
            resources = await self.data.catalog(
                self.datasource, "resource", ask.since_ms, ("simulation_id", name)
            )
        figures, _ = await asyncio.gather(
            self.data.figures(
                self.datasource,
                "simulation_id",
                "resource" if resources_known else "",
                simulations.metrics(name),
                ask.time_range,
                ask.step_ms,
                {"simulation_id": name},
            ),
            self._alerts_and_anomalies(ask, {"simulation_id": name}),
        )
        mine = figures.get(name, {})
        for metric, rows in sorted(mine.items()):
            for resource, points in rows:
                group = {"simulation_id": name, **({"resource": resource} if resource else {})}
                ask.response.series.append(_series(metric, group, points, "avg"))
        # Named as the resource scope names them ("sim-001/gpu"), so an entity is one name everywhere.
        per_resource = [
            self._entity(
                ask,
                "resource",
                f"{name}/{resource}",
                {m: [(r, p) for r, p in rows if r == resource] for m, rows in mine.items()},
                resources.last_seen(resource),
                False,
                match={"simulation_id": name, "resource": resource},
            )
            for resource in resources.names()
        ]
        flat = {_metric_key(m, r, len(rows)): p for m, rows in mine.items() for r, p in rows}
        simulation = self._entity(
            ask,
            "simulation",
            name,
            {k: [("", p)] for k, p in flat.items()},
            simulations.last_seen(name),
            False,
        )
        if per_resource:
            simulation.status = worst([simulation.status, *(e.status for e in per_resource)])
            simulation.reasons.extend(
                f"{e.name.rpartition('/')[2]}: {r}"
                for e in per_resource
                if e.status in ("degraded", "down")
                for r in e.reasons
            )
        ask.response.entities.extend([simulation, *per_resource])
        ask.response.status = simulation.status

    async def _resource(self, ask: _Ask) -> None:
        name = ask.request.id
        known = await self.data.known(self.datasource)
        keys = known.label_keys if known else frozenset()
        metrics = [m for m in RESOURCE_METRICS if known and m in known.metrics]
        metrics += sorted(m for m in (known.metrics if known else ()) if m.startswith(NETWORK_PREFIXES))
        per_simulation = "simulation_id" in keys
        hosts, resources = await asyncio.gather(
            self._catalog_if(ask, "host", "host" in keys),
            self._catalog_if(ask, "resource", "resource" in keys, "simulation_id" if per_simulation else ""),
        )
        chosen = [("host", h) for h in hosts.names() if not name or h == name]
        chosen += [
            ("resource", r) for r in resources.names() if not name or name in (r, r.rpartition("/")[2])
        ]
        if not chosen:
            if name:
                raise NotFound(
                    f"no host or resource is named {name!r} in {self.datasource} "
                    f"(known: {', '.join([*hosts.names(), *resources.names()][:20]) or 'none yet'})",
                    "id",
                )
            ask.response.warnings.append(f"no series of {self.datasource} carry a host or resource label")
        kinds = {kind for kind, _ in chosen}
        only_host = {"host": name} if name and "host" in kinds else None
        only_resource = {"resource": name.rpartition("/")[2]} if name and "resource" in kinds else None
        by_host = (
            self.data.figures(self.datasource, "host", "", metrics, ask.time_range, ask.step_ms, only_host)
            if "host" in kinds
            else _no_figures()
        )
        by_resource = (
            self.data.figures(
                self.datasource,
                "resource",
                "simulation_id" if per_simulation else "",
                metrics,
                ask.time_range,
                ask.step_ms,
                only_resource,
            )
            if "resource" in kinds
            else _no_figures()
        )
        host_figures, resource_figures, _ = await asyncio.gather(
            by_host, by_resource, self._alerts_and_anomalies(ask, _resource_labels(name, kinds))
        )
        for kind, entity in chosen:
            if kind == "host":
                by_metric, labels, catalog = host_figures.get(entity, {}), {"host": entity}, hosts
            else:
                simulation, _, resource = entity.rpartition("/")
                rows = resource_figures.get(resource, {})
                by_metric = {m: [(s, p) for s, p in r if s == simulation] for m, r in rows.items()}
                labels = {"resource": resource, **({"simulation_id": simulation} if simulation else {})}
                catalog = resources
            by_metric = {m: rows for m, rows in by_metric.items() if rows}
            health = self._entity(ask, kind, entity, by_metric, catalog.last_seen(entity), match=labels)
            ask.response.entities.append(health)
            for metric, rows in sorted(by_metric.items()):
                points, how = combine_hosts(metric, [p for _, p in rows])
                ask.response.series.append(_series(metric, labels, points, how))
        if not name:
            # Without an id the scope is every host and resource: keep their anomalies and alerts only.
            ask.anomalies = [a for a in ask.anomalies if "host" in a.labels or "resource" in a.labels]
            self._fill_anomalies(ask)
            del ask.response.active_alerts[:]
            ask.response.active_alerts.extend(
                a for a in ask.alerts if "host" in a.labels or "resource" in a.labels
            )
        ask.response.status = worst(e.status for e in ask.response.entities)

    # ---- parts ---------------------------------------------------------------------------------
    async def _labels(self, ask: _Ask, key: str, sub_key: str = "host") -> tuple[Known | None, Catalog, bool]:
        """(known, the catalog of label `key`, whether `sub_key` exists in the datasource)."""
        known = await self.data.known(self.datasource)
        keys = known.label_keys if known else frozenset()
        catalog = await self._catalog_if(ask, key, key in keys)
        if known is None:
            ask.response.warnings.append(f"datasource {self.datasource} holds no series yet")
        return known, catalog, sub_key in keys

    async def _catalog_if(self, ask: _Ask, key: str, present: bool, sub_key: str = "") -> Catalog:
        if not present:
            return Catalog()
        return await self.data.catalog(self.datasource, key, ask.since_ms, sub_key=sub_key)

    async def _figures(
        self, ask: _Ask, key: str, sub_key: str, metrics: Sequence[str], catalog: Catalog
    ) -> Figures:
        """Per-entity figures, and the scope's series: one per entity and metric, hosts combined."""
        if not catalog.names():
            return {}
        figures = await self.data.figures(self.datasource, key, sub_key, metrics, ask.time_range, ask.step_ms)
        wanted = ask.request.id
        for entity in sorted(figures):
            if wanted and entity != wanted:
                continue
            for metric, rows in sorted(figures[entity].items()):
                points, how = combine_hosts(metric, [p for _, p in rows])
                ask.response.series.append(_series(metric, {key: entity}, points, how))
        return figures

    def _entity(
        self,
        ask: _Ask,
        kind: str,
        name: str,
        by_metric: dict[str, list[tuple[str, list]]],
        last_seen: int | None,
        combine: bool = True,
        match: dict[str, str] | None = None,
    ) -> pb.EntityHealth:
        """An entity's health; its alerts and anomalies are those whose labels hold `match`
        (by default: the entity's own label equals its name)."""
        figures: dict[str, float] = {}
        now: dict[str, float] = {}
        for metric, rows in by_metric.items():
            points = (
                combine_hosts(metric, [p for _, p in rows])[0] if combine or len(rows) != 1 else rows[0][1]
            )
            if (value := mean(points)) is not None:
                figures[metric] = value
                now[metric] = current(points)  # type: ignore[assignment]
        match = match or {{"service": "service_name", "simulation": "simulation_id"}.get(kind, kind): name}

        def mine(labels: Mapping[str, str]) -> bool:
            return all(labels.get(k) == v for k, v in match.items())

        alerts = [a for a in ask.alerts if mine(a.labels)]
        firing = sum(1 for a in alerts if a.state == "firing")
        status, reasons = status_of(now, last_seen, ask.now_ms, self.rules, firing)
        return pb.EntityHealth(
            name=name,
            kind=kind,
            status=status,
            metrics=figures,
            open_alerts=len(alerts),
            recent_anomalies=sum(1 for a in ask.anomalies if mine(a.labels)),
            last_seen_ms=last_seen or 0,
            reasons=reasons,
        )

    async def _alerts_and_anomalies(self, ask: _Ask, labels: dict[str, str]) -> None:
        """Open alerts of the scope and its recent anomalies; anomalies missing are a warning."""
        alerts = self.alerts.active()  # from the engine's memory
        ask.alerts = [a for a in alerts if all(a.labels.get(k) == v for k, v in labels.items())]
        found = await self._soft(
            self.data.anomalies(self.datasource, ask.time_range, labels), ask, "anomalies"
        )
        if found is not None:
            ask.anomalies, more = found
            if more:
                ask.response.warnings.append(
                    "more anomalies than the newest 1000 in the time range: per-entity counts cover those"
                )
        self._fill_anomalies(ask)
        ask.response.active_alerts.extend(ask.alerts)

    def _fill_anomalies(self, ask: _Ask) -> None:
        del ask.response.recent_anomalies[:]
        ask.response.recent_anomalies.extend(ask.anomalies[:MAX_RECENT_ANOMALIES])

    async def _soft(self, call: Awaitable[T], ask: _Ask, what: str) -> T | None:
        try:
            return await call
        except AnalyticsError as exc:
            ask.response.warnings.append(soft_error(exc, what))
            return None

    async def _self_health(self, ask: _Ask) -> pb.EntityHealth:
        """The analytics service's own health: its peers' gRPC health and its self-metrics."""
        health = await asyncio.gather(*(self.reader.health(s) for s in SERVICE_NAMES))
        peers = dict(zip(SERVICE_NAMES, health, strict=True))
        entity = pb.EntityHealth(name=self.name, kind="service")
        down = [s for s, replicas in peers.items() if not any(v == "SERVING" for v in replicas.values())]
        partial = [
            f"{s} {address} is {status}"
            for s, replicas in peers.items()
            if s not in down
            for address, status in replicas.items()
            if status != "SERVING"
        ]
        entity.metrics["peers_total"] = len(peers)
        entity.metrics["peers_serving"] = len(peers) - len(down)
        series = await self._soft(
            self.data.raw(SELF_DATASOURCE, [*SELF_COUNTERS, *SELF_GAUGES], SELF_WINDOW), ask, "self-metrics"
        )
        if series is not None and not series:
            ask.response.warnings.append(
                f"no self-metrics in {SELF_DATASOURCE} over the last {SELF_WINDOW}: the analytics figures are missing"
            )
        entity.metrics.update(_self_figures(series or []))
        newest = [s.points[-1].timestamp_ms for s in series or [] if s.points]
        entity.last_seen_ms = max(newest, default=0)
        reasons = [f"{s} is not serving ({', '.join(peers[s].values()) or 'no address'})" for s in down]
        entity.reasons.extend(reasons + partial)
        entity.status = "down" if down else "degraded" if partial else "healthy"
        return entity


def _add_own_alerts(entity: pb.EntityHealth, alerts: Sequence[pb.Alert]) -> None:
    """Count the analytics service's own alerts (those about no service, simulation, host or
    resource: every rule of the seed watches the analytics service itself) in its health."""
    own = [a for a in alerts if not any(k in a.labels for k in ENTITY_LABELS)]
    firing = sum(1 for a in own if a.state == "firing")
    entity.open_alerts = len(own)
    if firing:
        entity.reasons.append(f"{firing} alert(s) firing")
        if entity.status == "healthy":
            entity.status = "degraded"


def _self_figures(series: Sequence[common_pb2.SeriesResult]) -> dict[str, float]:
    """Rates of the counters over the window (per series: increase over its span, summed) and
    the newest values of the gauges."""
    rates: dict[str, float] = {}
    newest: dict[str, list[float]] = {}
    hits = lookups = 0.0
    instances = set()
    for s in series:
        points = [(p.timestamp_ms, p.value) for p in s.points]
        if not points:
            continue
        instances.add(s.group.get("instance", ""))
        if s.metric in SELF_GAUGES:
            newest.setdefault(s.metric, []).append(points[-1][1])
            continue
        if s.metric == "analytics_ingest_points_total" and (
            s.group.get("result") != "accepted" or s.group.get("datasource") == SELF_DATASOURCE
        ):
            continue  # rejected points, and the self-metrics' own ingest, are not users' traffic
        span = (points[-1][0] - points[0][0]) / 1000
        grown = increase(points)
        if s.metric == "analytics_cache_requests_total":
            lookups += grown
            hits += grown if s.group.get("result") == "hit" else 0.0
        elif span > 0:
            rates[s.metric] = rates.get(s.metric, 0.0) + grown / span
    out = {"instances": float(len(instances))} if instances else {}
    names = {
        "analytics_query_duration_seconds_count": "queries_per_second",
        "analytics_query_failures_total": "query_failures_per_second",
        "analytics_ingest_points_total": "ingest_points_per_second",
    }
    out.update({names[m]: v for m, v in rates.items()})
    if lookups > 0:
        out["cache_hit_ratio"] = hits / lookups
    if "analytics_stream_lag_seconds" in newest:
        out["stream_lag_seconds"] = max(newest["analytics_stream_lag_seconds"])
    if "analytics_bus_backlog_bytes" in newest:
        out["bus_backlog_bytes"] = max(newest["analytics_bus_backlog_bytes"])
    if "analytics_ws_connections" in newest:
        out["ws_connections"] = sum(newest["analytics_ws_connections"])
    return out


async def _no_figures() -> Figures:
    return {}


def _resource_labels(name: str, kinds: set[str]) -> dict[str, str]:
    """The labels an anomaly or alert of the resource scope's `id` carries."""
    if not name:
        return {}
    if "host" in kinds:
        return {"host": name}
    simulation, _, resource = name.rpartition("/")
    return {"resource": resource, **({"simulation_id": simulation} if simulation else {})}


def _series(metric: str, group: dict[str, str], points: list, aggregation: str) -> common_pb2.SeriesResult:
    out = common_pb2.SeriesResult(metric=metric, group=group, aggregation=aggregation)
    for ts, value in points:
        out.points.add(timestamp_ms=ts, value=value)
    return out


def _metric_key(metric: str, resource: str, count: int) -> str:
    # A simulation's cpu_usage of its cpu and of its gpu are two figures: name them PromQL-style.
    return metric if count == 1 or not resource else f'{metric}{{resource="{resource}"}}'


def _unknown(kind: str, name: str, catalog: Catalog, datasource: str) -> str:
    names = catalog.names()
    hint = ", ".join(names[:20]) + (", ..." if len(names) > 20 else "")
    return f"no {kind} named {name!r} has series in {datasource} (known: {hint or 'none yet'})"
