import pytest
from google.protobuf import json_format

from libs.errors import InvalidArgument
from platformq.analytics.v1 import ml_service_pb2, monitoring_service_pb2
from services.ml.spec import check_detect
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
    check_detect(json_format.ParseDict(SEED_DETECT, ml_service_pb2.DetectAnomaliesRequest()))
    check_create_dashboard(
        json_format.ParseDict(SEED_DASHBOARD, monitoring_service_pb2.CreateDashboardRequest())
    )


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"config": {"method": "magic"}}, "config.method"),
        ({"config": {"sensitivity": 1.5}}, "config.sensitivity"),
        ({"metrics": {}}, "metrics"),
    ],
)
def test_bad_detect_requests(change, field):
    with pytest.raises(InvalidArgument) as err:
        check_detect(
            json_format.ParseDict({**SEED_DETECT, **change}, ml_service_pb2.DetectAnomaliesRequest())
        )
    assert err.value.field == field


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"name": " "}, "name"),
        ({"refresh_interval": -1}, "refresh_interval"),
        ({"config": {"time_range": "a day"}}, "config.time_range"),
    ],
)
def test_bad_dashboards(change, field):
    body = {**SEED_DASHBOARD, **change}
    with pytest.raises(InvalidArgument) as err:
        check_create_dashboard(json_format.ParseDict(body, monitoring_service_pb2.CreateDashboardRequest()))
    assert err.value.field == field


def test_monitor_scope():
    check_monitor(monitoring_service_pb2.MonitorRequest(scope="platform"))
    with pytest.raises(InvalidArgument, match="scope"):
        check_monitor(monitoring_service_pb2.MonitorRequest(scope="galaxy"))
