import pytest
from google.protobuf import json_format

from libs.errors import InvalidArgument
from platformq.analytics.v1 import ml_service_pb2, monitoring_service_pb2
from services.ml.spec import detect_from_proto
from services.monitoring.spec import check_create_dashboard, check_monitor

SEED_DETECT = {
    "simulation_id": "sim-123",
    "metrics": {"cpu": 95.0, "memory": 87.5, "disk_io": 1200},
    "config": {"method": "isolation_forest", "sensitivity": 0.95},
}
SEED_DASHBOARD = {
    "name": "Service Performance",
    "type": "service-metrics",
    "config": {
        "services": ["auth-service", "analytics-service"],
        "metrics": ["latency", "throughput", "error_rate"],
        "time_range": "24h",
    },
    "refresh_interval": 30,
}


def test_seed_bodies_pass_validation():
    spec = detect_from_proto(json_format.ParseDict(SEED_DETECT, ml_service_pb2.DetectAnomaliesRequest()))
    assert (spec.kind, spec.method, spec.sensitivity) == ("snapshot", "isolation_forest", 0.95)
    check_create_dashboard(
        json_format.ParseDict(SEED_DASHBOARD, monitoring_service_pb2.CreateDashboardRequest())
    )


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"config": {"method": "magic"}}, "config.method"),
        ({"config": {"sensitivity": 1.5}}, "config.sensitivity"),
        ({"config": {"sensitivity": 1.0}}, "config.sensitivity"),
        ({"config": {"sensitivity": -0.1}}, "config.sensitivity"),
        ({"metrics": {}}, "metrics"),
        ({"simulation_id": ""}, "simulation_id"),
        ({"metrics": {"cpu": "NaN"}}, "metrics.cpu"),
        ({"metrics": {"cpu": "Infinity"}}, "metrics.cpu"),
        ({"selection": {"metrics": ["cpu"]}}, "selection"),
        ({"metrics": {}, "selection": {}}, "selection.metrics"),
        ({"metrics": {}, "selection": {"metrics": ["cpu"], "time_range": "soon"}}, "selection.time_range"),
        (
            {"metrics": {}, "selection": {"metrics": ["cpu"], "filters": [{"label": "a b"}]}},
            "selection.filters[0].label",
        ),
        (
            {"metrics": {}, "series": [{"name": "x", "timestamps_ms": [1, 2], "values": [1.0]}]},
            "series[0].values",
        ),
        (
            {"metrics": {}, "series": [{"name": "x", "timestamps_ms": [1, 2], "values": [1.0, "NaN"]}]},
            "series[0].values[1]",
        ),
        (
            {"metrics": {}, "series": [{"name": "x", "timestamps_ms": [2, 2], "values": [1.0, 2.0]}]},
            "series[0].timestamps_ms[1]",
        ),
        ({"metrics": {}, "series": [{"name": "", "timestamps_ms": [1], "values": [1.0]}]}, "series[0].name"),
    ],
)
def test_bad_detect_requests(change, field):
    with pytest.raises(InvalidArgument) as err:
        detect_from_proto(
            json_format.ParseDict({**SEED_DETECT, **change}, ml_service_pb2.DetectAnomaliesRequest())
        )
    assert err.value.field == field


def test_unknown_method_lists_the_methods():
    with pytest.raises(InvalidArgument, match="auto, zscore, mad, seasonal, isolation_forest"):
        detect_from_proto(ml_service_pb2.DetectAnomaliesRequest(config={"method": "lof"}))


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"name": " "}, "name"),
        ({"refresh_interval": -1}, "refresh_interval"),
        ({"refresh_interval": 86_401}, "refresh_interval"),
        ({"config": {"time_range": "a day"}}, "config.time_range"),
        ({"type": ""}, "type"),
        ({"type": "my-board"}, "type"),
        ({"config": {"step": "soon"}}, "config.step"),
        ({"config": {"time_range": "1h", "step": "2h"}}, "config.step"),
        ({"config": {"time_range": "30d", "step": "1m"}}, "config.step"),
        ({"config": {"aggregation": "raw"}}, "config.aggregation"),
        ({"config": {"aggregation": "median"}}, "config.aggregation"),
        ({"config": {"datasource": "../etc"}}, "config.datasource"),
        ({"config": {"metrics": ["cpu_usage", " "]}}, "config.metrics[1]"),
        ({"config": {"services": [""]}}, "config.services[0]"),
        ({"config": {"simulations": ["sim-001"]}}, "config.simulations"),
        ({"type": "simulation", "config": {"services": ["auth-service"]}}, "config.services"),
    ],
)
def test_bad_dashboards(change, field):
    body = {**SEED_DASHBOARD, **change}
    with pytest.raises(InvalidArgument) as err:
        check_create_dashboard(json_format.ParseDict(body, monitoring_service_pb2.CreateDashboardRequest()))
    assert err.value.field == field


@pytest.mark.parametrize(
    "body",
    [
        {
            "type": "platform-overview",
            "config": {"metrics": ["cpu_usage"], "step": "1m", "aggregation": "p95"},
        },
        {"type": "resource-utilization", "config": {"services": ["a"], "simulations": ["sim-001"]}},
        {
            "type": "simulation",
            "config": {"simulations": ["sim-001"], "datasource": "lab.v2"},
            "refresh_interval": 0,
        },
    ],
)
def test_good_dashboards(body):
    check_create_dashboard(
        json_format.ParseDict({**SEED_DASHBOARD, **body}, monitoring_service_pb2.CreateDashboardRequest())
    )


def test_monitor_scope():
    check_monitor(monitoring_service_pb2.MonitorRequest(scope="platform"))
    check_monitor(monitoring_service_pb2.MonitorRequest(scope="resource"))
    check_monitor(monitoring_service_pb2.MonitorRequest(scope="service", id="auth-service", time_range="7d"))
    with pytest.raises(InvalidArgument, match="scope"):
        check_monitor(monitoring_service_pb2.MonitorRequest(scope="galaxy"))


@pytest.mark.parametrize(
    ("request_fields", "field"),
    [
        ({"scope": "service"}, "id"),
        ({"scope": "simulation", "id": " "}, "id"),
        ({"scope": "platform", "id": "x"}, "id"),
        ({"scope": "platform", "time_range": "soon"}, "time_range"),
        ({"scope": "platform", "time_range": "32d"}, "time_range"),
    ],
)
def test_bad_monitor_requests(request_fields, field):
    with pytest.raises(InvalidArgument) as err:
        check_monitor(monitoring_service_pb2.MonitorRequest(**request_fields))
    assert err.value.field == field
