"""Dashboard layouts: built-ins, panel queries per layout, and panels from answers."""

from __future__ import annotations

import pytest
from google.protobuf import json_format

from platformq.analytics.v1 import common_pb2, query_service_pb2
from platformq.analytics.v1 import monitoring_service_pb2 as pb
from services.monitoring.panels import (
    DASHBOARD_TYPES,
    Known,
    PanelResult,
    build_panels,
    builtin_dashboards,
    choose_step_ms,
    format_step,
    known_from_metadata,
    plan_panels,
    query_for,
)

DEMO = Known(
    frozenset(
        {"request_rate", "error_rate", "latency_p95", "cpu_usage", "memory_usage", "disk_io", "network_rx"}
    ),
    frozenset({"service_name", "host", "simulation_id", "resource"}),
)
SEED = {
    "name": "Service Performance",
    "type": "service-metrics",
    "config": {
        "services": ["auth-service", "analytics-service"],
        "metrics": ["latency", "throughput", "error_rate"],
        "time_range": "24h",
    },
    "refresh_interval": 30,
}


def dashboard(**fields) -> pb.Dashboard:
    return json_format.ParseDict(fields, pb.Dashboard())


def series(metric: str, group: dict[str, str], *values: float) -> common_pb2.SeriesResult:
    out = common_pb2.SeriesResult(metric=metric, group=group, aggregation="avg")
    for i, v in enumerate(values):
        out.points.add(timestamp_ms=i * 30_000, value=v)
    return out


def test_the_five_builtins_have_ids_and_defaults():
    builtins = builtin_dashboards()
    assert [d.type for d in builtins] == list(DASHBOARD_TYPES)
    assert [d.id for d in builtins] == [f"builtin:{t}" for t in DASHBOARD_TYPES]
    assert all(d.builtin and d.refresh_interval == 30 and d.config.time_range == "1h" for d in builtins)


@pytest.mark.parametrize(
    ("range_ms", "step"), [(3_600_000, "30s"), (86_400_000, "15m"), (300_000, "5s"), (7 * 86_400_000, "2h")]
)
def test_a_step_is_chosen_for_at_most_120_points(range_ms, step):
    assert format_step(choose_step_ms(range_ms)) == step
    assert range_ms / choose_step_ms(range_ms) <= 120


def test_format_step():
    assert [format_step(ms) for ms in (1_500, 60_000, 5_400_000, 86_400_000)] == ["1500ms", "1m", "90m", "1d"]


def test_platform_overview_is_one_query_per_metric_grouped_by_service():
    plans = plan_panels(builtin_dashboards()[0], DEMO)
    assert [p.metric for p in plans] == [
        "request_rate",
        "error_rate",
        "latency_p95",
        "cpu_usage",
        "memory_usage",
    ]
    request = query_for(plans[0], builtin_dashboards()[0])
    assert list(request.group_by) == ["service_name", "host"] and request.metrics == ["request_rate"]
    assert (request.time_range, request.step, request.aggregation, request.mode) == (
        "1h",
        "30s",
        "avg",
        "batch",
    )
    # all services: a missing label equals "" for the query-router, so != "" keeps every service
    assert [(f.label, f.op, f.value) for f in request.filters] == [("service_name", "!=", "")]


def test_the_seed_dashboard_plans_a_panel_per_service_and_metric_and_warns_about_unknown_metrics():
    seed = dashboard(**SEED)
    plans = plan_panels(seed, DEMO)
    assert [(p.metric, bool(p.warning)) for p in plans] == [
        ("latency", True),
        ("throughput", True),
        ("error_rate", False),
    ]
    assert "metric 'latency' does not exist in platform_metrics" in plans[0].warning
    request = query_for(plans[2], seed)
    assert list(request.group_by) == ["service_name", "host"] and request.step == "15m"
    assert [(f.label, f.op, list(f.values)) for f in request.filters] == [
        ("service_name", "in", ["auth-service", "analytics-service"])
    ]
    result = PanelResult()
    for plan in plans[:2]:
        build_panels(plan, seed, None, result)
    answer = [series("error_rate", {"service_name": "auth-service", "host": "auth-service-1"}, 0.01, 0.02)]
    build_panels(plans[2], seed, answer, result)
    got = [(p.title, len(p.series), p.warning.split(" in ")[0]) for p in result.panels]
    assert got == [
        ("auth-service · latency", 0, "metric 'latency' does not exist"),
        ("analytics-service · latency", 0, "metric 'latency' does not exist"),
        ("auth-service · throughput", 0, "metric 'throughput' does not exist"),
        ("analytics-service · throughput", 0, "metric 'throughput' does not exist"),
        ("auth-service · error_rate", 1, ""),
        ("analytics-service · error_rate", 0, "no data for error_rate of service_name=analytics-service"),
    ]
    assert all((p.aggregation, p.step) == ("avg", "15m") for p in result.panels)
    assert result.missing_metrics == ["latency", "throughput"]
    assert result.missing_entities == [("service_name", "analytics-service")]


def test_a_services_hosts_are_combined_like_the_monitor_scopes():
    board = builtin_dashboards()[0]
    request_rate, error_rate = plan_panels(board, DEMO)[:2]
    result = PanelResult()
    build_panels(
        request_rate,
        board,
        [series("request_rate", {"service_name": "a", "host": f"a-{h}"}, 10 * h, 20 * h) for h in (1, 2)],
        result,
    )
    build_panels(
        error_rate,
        board,
        [series("error_rate", {"service_name": "a", "host": f"a-{h}"}, 0.1 * h) for h in (1, 2)],
        result,
    )
    rates, errors = (p.series[0] for p in result.panels)
    assert (dict(rates.group), rates.aggregation, [p.value for p in rates.points]) == (
        {"service_name": "a"},
        "sum_of_avg",
        [30, 60],
    )
    assert (errors.aggregation, [p.value for p in errors.points]) == ("avg", [pytest.approx(0.15)])
    # another aggregation is applied by the query-router over each service's samples
    by_max = dashboard(id="x", name="n", type="platform-overview", config={"aggregation": "max"})
    plan = plan_panels(by_max, DEMO)[0]
    assert plan.group_by == ("service_name",) and not plan.combine_hosts


def test_service_comparison_ranks_services_by_their_mean():
    board = builtin_dashboards()[2]
    plan = plan_panels(board, DEMO)[0]
    result = PanelResult()
    answer = [
        series("request_rate", {"service_name": "a"}, 1, 1),
        series("request_rate", {"service_name": "b"}, 5, 7),
        series("request_rate", {"service_name": "c"}, 3, 3),
    ]
    build_panels(plan, board, answer, result)
    assert [s.group["service_name"] for s in result.panels[0].series] == ["b", "c", "a"]
    assert result.panels[0].title == "request_rate: services ranked by mean"


def test_resource_utilization_shows_hosts_and_simulation_resources_and_network_metrics():
    plans = plan_panels(builtin_dashboards()[3], DEMO)
    assert [(p.metric, p.group_by) for p in plans] == [
        (m, g)
        for m in ("cpu_usage", "memory_usage", "disk_io", "network_rx")
        for g in (("host",), ("simulation_id", "resource"))
    ]


def test_simulation_layout_splits_per_simulation_and_drops_metrics_without_data():
    board = builtin_dashboards()[4]
    plans = plan_panels(board, DEMO)
    assert {p.metric for p in plans} == DEMO.metrics and all(p.split_by == "simulation_id" for p in plans)
    result = PanelResult()
    for plan in plans:
        rows = [
            series(plan.metric, {"simulation_id": s, "resource": "gpu"}, 90)
            for s in ("sim-002", "sim-001")
            if plan.metric == "cpu_usage"
        ]
        build_panels(plan, board, rows, result)
    assert [p.title for p in result.panels] == ["sim-001 · cpu_usage", "sim-002 · cpu_usage"]


def test_a_missing_label_or_datasource_is_a_panel_warning_not_a_query():
    no_labels = Known(frozenset({"cpu_usage"}), frozenset())
    board = dashboard(id="x", name="n", type="platform-overview", config={"metrics": ["cpu_usage"]})
    plan = plan_panels(board, no_labels)[0]
    assert plan.warning == "no series of platform_metrics carry the label 'service_name'"
    plan = plan_panels(board, None)[0]
    assert plan.warning == "datasource 'platform_metrics' does not exist yet"


def test_a_grouping_label_the_datasource_lacks_is_left_out():
    no_hosts = Known(frozenset({"cpu_usage"}), frozenset({"service_name"}))
    board = dashboard(id="x", name="n", type="service-metrics", config={"metrics": ["cpu_usage"]})
    assert plan_panels(board, no_hosts)[0].group_by == ("service_name",)


def test_a_failed_panel_query_keeps_the_reason():
    board = dashboard(id="x", name="n", type="platform-overview", config={"metrics": ["cpu_usage"]})
    result = PanelResult()
    build_panels(plan_panels(board, DEMO)[0], board, None, result, "step: too many points")
    assert [(p.title, p.warning) for p in result.panels] == [
        ("cpu_usage by service", "step: too many points")
    ]


def test_known_from_the_query_routers_metadata():
    meta = query_service_pb2.GetMetadataResponse(datasource="ds")
    meta.metrics.add(name="cpu_usage", series_count=3)
    meta.metrics.add(name="x", series_count=1)
    meta.metrics.add(name="gone", series_count=0)  # every series expired
    for key in ("service_name", "simulation_id", "host", "region"):
        meta.label_keys.add(key=key, cardinality=2)
    assert known_from_metadata(meta) == Known(
        frozenset({"cpu_usage", "x"}), frozenset({"service_name", "host", "simulation_id"})
    )
    assert known_from_metadata(query_service_pb2.GetMetadataResponse(datasource="ds")) is None
