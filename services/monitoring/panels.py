"""Dashboard layouts: the built-in dashboards, and how a dashboard's config becomes panel queries
and panels. Pure functions, no I/O: `dashboards.Dashboards` runs the queries through the query-router.

A dashboard's `type` is its layout (one of `DASHBOARD_TYPES`); its config narrows it (services,
simulations, metrics, time range, step, aggregation). Each layout turns into one query per metric
(and per label grouping), so a dashboard costs a handful of queries whatever its number of panels;
`split_by` then cuts one answer into a panel per service or simulation.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from libs.timeparse import parse_duration_ms, round_step_ms
from platformq.analytics.v1 import common_pb2, query_service_pb2
from platformq.analytics.v1 import monitoring_service_pb2 as pb
from services.monitoring.health import combine_hosts

DASHBOARD_TYPES = (
    "platform-overview",
    "service-metrics",
    "service-comparison",
    "resource-utilization",
    "simulation",
)
BUILTIN_PREFIX = "builtin:"
DEFAULT_DATASOURCE = "platform_metrics"
DEFAULT_TIME_RANGE = "1h"
DEFAULT_AGGREGATION = "avg"
DEFAULT_REFRESH_SECONDS = 30
# Bucket aggregations of the query-router a panel may use ("raw" has no buckets to draw).
PANEL_AGGREGATIONS = ("avg", "sum", "min", "max", "count", "p50", "p90", "p95", "p99", "rate", "last")
# A chart is read by a person: more points per series than this only costs queries and bytes.
MAX_PANEL_POINTS = 2_000
# Without a configured step a panel gets the smallest of these giving at most TARGET_POINTS buckets.
TARGET_POINTS = 120

PLATFORM_METRICS = ("request_rate", "error_rate", "latency_p95", "cpu_usage", "memory_usage")
RESOURCE_METRICS = ("cpu_usage", "memory_usage", "disk_io")
NETWORK_PREFIXES = ("network_", "net_")
# Which config lists each layout reads: services, simulations or both.
USES = {
    "platform-overview": ("services",),
    "service-metrics": ("services",),
    "service-comparison": ("services",),
    "resource-utilization": ("services", "simulations"),
    "simulation": ("simulations",),
}
_BUILTIN_NAMES = {
    "platform-overview": "Platform overview",
    "service-metrics": "Service metrics",
    "service-comparison": "Service comparison",
    "resource-utilization": "Resource utilization",
    "simulation": "Simulations",
}


def builtin_id(dashboard_type: str) -> str:
    """The id of the built-in dashboard of a type."""
    return BUILTIN_PREFIX + dashboard_type


def builtin_dashboards() -> list[pb.Dashboard]:
    """The five built-in dashboards: every service or simulation, the layout's default metrics."""
    return [
        pb.Dashboard(
            id=builtin_id(t),
            name=_BUILTIN_NAMES[t],
            type=t,
            config=pb.DashboardConfig(time_range=DEFAULT_TIME_RANGE, datasource=DEFAULT_DATASOURCE),
            refresh_interval=DEFAULT_REFRESH_SECONDS,
            builtin=True,
        )
        for t in DASHBOARD_TYPES
    ]


def format_step(ms: int) -> str:
    """A step as the shortest duration text: 30000 -> "30s", 3600000 -> "1h"."""
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1_000)):
        if ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"


def choose_step_ms(range_ms: int) -> int:
    """The smallest round step giving at most TARGET_POINTS buckets over `range_ms`."""
    return round_step_ms(range_ms, TARGET_POINTS)


@dataclass(frozen=True)
class Known:
    """What a datasource holds: its metrics, and which of the layouts' labels its series carry."""

    metrics: frozenset[str]
    label_keys: frozenset[str]


# The labels the layouts group and split by.
LAYOUT_LABELS = ("service_name", "host", "simulation_id", "resource")


def known_from_metadata(meta: query_service_pb2.GetMetadataResponse) -> Known | None:
    """Known from the query-router's GetMetadata (its series catalog, with point counts kept per
    segment: milliseconds at a million series, and no DuckDB); None when the datasource holds no
    series."""
    metrics = frozenset(m.name for m in meta.metrics if m.series_count)
    if not metrics:
        return None
    keys = {k.key for k in meta.label_keys}
    return Known(metrics, frozenset(key for key in LAYOUT_LABELS if key in keys))


@dataclass(frozen=True)
class PanelQuery:
    """One query to the query-router and how its answer becomes panels.

    `split_by` cuts the answer into one panel per value of that label (a service, a simulation);
    `expected` are the configured values that should each get a panel. `warning` set means the
    query is not run (the metric does not exist, a label is missing) and one panel says why.
    """

    metric: str
    group_by: tuple[str, ...]
    filters: tuple[tuple[str, str, tuple[str, ...]], ...]
    title: str
    split_by: str = ""
    expected: tuple[str, ...] = ()
    rank: bool = False  # series ordered by their mean, highest first
    # With the default aggregation, a service's hosts are queried apart and combined like the
    # monitor scopes do (request rates add up, the worst latency counts, the rest is averaged).
    combine_hosts: bool = False
    warning: str = ""
    optional: bool = False  # a default metric: no panel at all when it has no data


@dataclass
class PanelResult:
    """The panels of one dashboard computation and the problems found on the way."""

    panels: list[common_pb2.Panel] = field(default_factory=list)
    missing_metrics: list[str] = field(default_factory=list)
    expected: set[tuple[str, str]] = field(default_factory=set)  # configured (label, value)
    seen: set[tuple[str, str]] = field(default_factory=set)  # (label, value) with data

    @property
    def missing_entities(self) -> list[tuple[str, str]]:
        """Configured services or simulations no answered query had data for."""
        return sorted(self.expected - self.seen)


def effective(dashboard: pb.Dashboard) -> tuple[str, str, str, int]:
    """(datasource, time_range, aggregation, step_ms) with the defaults applied."""
    config = dashboard.config
    time_range = config.time_range or DEFAULT_TIME_RANGE
    range_ms = parse_duration_ms(time_range, "config.time_range")
    step_ms = parse_duration_ms(config.step, "config.step") if config.step else choose_step_ms(range_ms)
    return (
        config.datasource or DEFAULT_DATASOURCE,
        time_range,
        config.aggregation or DEFAULT_AGGREGATION,
        step_ms,
    )


def _selector(label: str, values: Sequence[str]) -> tuple[str, str, tuple[str, ...]]:
    # An empty list means every value; a missing label equals "" for the query-router.
    return (label, "in", tuple(values)) if values else (label, "!=", ("",))


def _network_metrics(known: Known) -> list[str]:
    return sorted(m for m in known.metrics if m.startswith(NETWORK_PREFIXES))


def plan_panels(dashboard: pb.Dashboard, known: Known | None) -> list[PanelQuery]:
    """The queries of a dashboard, in panel order. `known` None: the datasource does not exist."""
    config = dashboard.config
    kind = dashboard.type
    services, simulations = tuple(config.services), tuple(config.simulations)
    configured = tuple(dict.fromkeys(config.metrics))
    all_metrics = sorted(known.metrics) if known else []
    plans: list[PanelQuery] = []
    if kind in ("platform-overview", "service-comparison"):
        # The same queries; the comparison ranks the services by their mean.
        ranked = kind == "service-comparison"
        for metric in configured or PLATFORM_METRICS:
            plans.append(
                PanelQuery(
                    metric,
                    ("service_name", "host"),
                    (_selector("service_name", services),),
                    f"{metric}: services ranked by mean" if ranked else f"{metric} by service",
                    expected=services,
                    rank=ranked,
                    combine_hosts=True,
                )
            )
    elif kind == "service-metrics":
        for metric in configured or all_metrics:
            plans.append(
                PanelQuery(
                    metric,
                    ("service_name", "host"),
                    (_selector("service_name", services),),
                    "{split} · " + metric,
                    split_by="service_name",
                    expected=services,
                    optional=not configured,
                )
            )
    elif kind == "simulation":
        for metric in configured or all_metrics:
            plans.append(
                PanelQuery(
                    metric,
                    ("simulation_id", "resource"),
                    (_selector("simulation_id", simulations),),
                    "{split} · " + metric,
                    split_by="simulation_id",
                    expected=simulations,
                    optional=not configured,
                )
            )
    elif kind == "resource-utilization":
        metrics = configured or (*RESOURCE_METRICS, *(_network_metrics(known) if known else ()))
        for metric in metrics:
            host_filters = [_selector("host", ())]
            if services:
                host_filters.append(_selector("service_name", services))
            plans.append(
                PanelQuery(
                    metric,
                    ("host",),
                    tuple(host_filters),
                    f"{metric} per host",
                    optional=not configured,
                )
            )
            plans.append(
                PanelQuery(
                    metric,
                    ("simulation_id", "resource"),
                    (
                        _selector("resource", ()),
                        *((_selector("simulation_id", simulations),) if simulations else ()),
                    ),
                    f"{metric} per simulation resource",
                    expected=simulations,
                    split_by="",
                    optional=not configured,
                )
            )
    return [_check(plan, known, dashboard) for plan in plans]


def _check(plan: PanelQuery, known: Known | None, dashboard: pb.Dashboard) -> PanelQuery:
    """Mark a plan that cannot run with the reason, so it becomes one panel with a warning."""
    datasource = dashboard.config.datasource or DEFAULT_DATASOURCE
    if known is None:
        return _warn(plan, f"datasource {datasource!r} does not exist yet")
    if plan.metric not in known.metrics:
        hint = ", ".join(sorted(known.metrics)[:20]) or "none yet"
        return _warn(plan, f"metric {plan.metric!r} does not exist in {datasource} (known: {hint})")
    needed = {plan.split_by, *(label for label, _, _ in plan.filters)} - {""}
    missing = sorted(needed - known.label_keys)
    if missing:
        return _warn(plan, f"no series of {datasource} carry the label {missing[0]!r}")
    # A grouping label that no series has would be refused by the query-router: group without it.
    group_by = tuple(label for label in plan.group_by if label in known.label_keys)
    combine = plan.combine_hosts and "host" in group_by and (dashboard.config.aggregation or "avg") == "avg"
    if plan.combine_hosts and not combine:
        group_by = tuple(label for label in group_by if label != "host")
    return PanelQuery(**{**plan.__dict__, "group_by": group_by, "combine_hosts": combine})


def _warn(plan: PanelQuery, reason: str) -> PanelQuery:
    return PanelQuery(**{**plan.__dict__, "warning": reason})


def query_for(plan: PanelQuery, dashboard: pb.Dashboard) -> query_service_pb2.QueryRequest:
    """The query-router request of one panel query."""
    datasource, time_range, aggregation, step_ms = effective(dashboard)
    return query_service_pb2.QueryRequest(
        datasource=datasource,
        metrics=[plan.metric],
        time_range=time_range,
        group_by=list(plan.group_by),
        aggregation=aggregation,
        step=format_step(step_ms),
        # batch: one DuckDB pass and no query-cache read (panels have their own cache, and a
        # cached answer may predate a write it raced with).
        mode="batch",
        filters=[
            common_pb2.LabelFilter(
                label=label, op=op, value=values[0] if op != "in" else "", values=values if op == "in" else []
            )
            for label, op, values in plan.filters
        ],
    )


def _mean(series: common_pb2.SeriesResult) -> float:
    return sum(p.value for p in series.points) / len(series.points) if series.points else float("-inf")


def build_panels(
    plan: PanelQuery,
    dashboard: pb.Dashboard,
    series: Iterable[common_pb2.SeriesResult] | None,
    result: PanelResult,
    error: str = "",
) -> None:
    """Add the panels of one answered panel query to `result`; `error` says why it failed."""
    _, time_range, aggregation, step_ms = effective(dashboard)
    step = format_step(step_ms)
    datasource = dashboard.config.datasource or DEFAULT_DATASOURCE
    whole = plan.title if not plan.split_by else f"{plan.metric} by {plan.split_by}"

    def panel(title: str, rows: list[common_pb2.SeriesResult], warning: str = "") -> common_pb2.Panel:
        if plan.rank:
            rows = sorted(rows, key=lambda s: (-_mean(s), sorted(s.group.items())))
        return common_pb2.Panel(
            title=title, metric=plan.metric, series=rows, warning=warning, aggregation=aggregation, step=step
        )

    if plan.warning or error:
        if plan.warning.startswith("metric "):
            result.missing_metrics.append(plan.metric)
        if plan.optional and not error:
            return  # a default metric this datasource lacks: no panel to show
        titles = [plan.title.format(split=v) for v in plan.expected] if plan.split_by else []
        result.panels.extend(panel(t, [], plan.warning or error) for t in titles or [whole])
        return
    rows = _combined(plan, series or [])
    label = _expected_label(plan)
    result.expected.update((label, v) for v in plan.expected)
    result.seen.update((label, s.group.get(label, "")) for s in rows)
    if not plan.split_by:
        present = {s.group.get(label, "") for s in rows}
        absent = [v for v in plan.expected if v not in present]
        note = _no_data(label, absent, datasource, time_range) if absent else ""
        if not rows:
            if plan.optional:
                return
            note = note or f"no data for {plan.metric} in {datasource} over the last {time_range}"
        result.panels.append(panel(plan.title, rows, note))
        return
    by_value: dict[str, list[common_pb2.SeriesResult]] = {}
    for s in rows:
        by_value.setdefault(s.group.get(plan.split_by, ""), []).append(s)
    values = list(plan.expected) or sorted(by_value)
    if plan.optional:
        # A default metric: panels only where it has data (every metric of the datasource is listed).
        values = [v for v in values if v in by_value]
    elif not values:
        note = f"no data for {plan.metric} in {datasource} over the last {time_range}"
        result.panels.append(panel(whole, [], note))
    for value in values:
        found = by_value.get(value, [])
        note = "" if found else _no_data(plan.split_by, [value], datasource, time_range, plan.metric)
        result.panels.append(panel(plan.title.format(split=value), found, note))


def _combined(plan: PanelQuery, series: Iterable[common_pb2.SeriesResult]) -> list[common_pb2.SeriesResult]:
    """The answer's series, a service's hosts combined into one series when the plan says so."""
    rows = list(series)
    if not plan.combine_hosts:
        return rows
    by_service: dict[str, list[list[tuple[int, float]]]] = {}
    for s in rows:
        by_service.setdefault(s.group.get("service_name", ""), []).append(
            [(p.timestamp_ms, p.value) for p in s.points]
        )
    out = []
    for service, per_host in sorted(by_service.items()):
        points, how = combine_hosts(plan.metric, per_host)
        combined = common_pb2.SeriesResult(
            metric=plan.metric, group={"service_name": service}, aggregation=how
        )
        for ts, value in points:
            combined.points.add(timestamp_ms=ts, value=value)
        out.append(combined)
    return out


def _expected_label(plan: PanelQuery) -> str:
    # The label the configured values name: the split label, else the filter that lists them.
    if plan.split_by:
        return plan.split_by
    for label, op, _ in plan.filters:
        if op == "in":
            return label
    return plan.group_by[0] if plan.group_by else ""


def _no_data(label: str, values: Sequence[str], datasource: str, time_range: str, metric: str = "") -> str:
    which = f"{metric} of " if metric else ""
    names = ", ".join(f"{label}={v}" for v in values)
    return f"no data for {which}{names} in {datasource} over the last {time_range}"
