"""Dashboards and monitor scopes through the real Envoy, as a REST client calls them: the seed's
dashboard body verbatim, read by id and by type, list, update, delete, monitor scopes, and the 400s
and 404s naming their field. Services named e2e-svc-* keep this module's data apart from others'."""

from __future__ import annotations

import json
import time

import pytest

from tests.e2e.test_gateway import SEED_EXAMPLES, http

SEED_BODY = dict(SEED_EXAMPLES)["/api/v1/dashboards"]
STEP = 10_000
SERVICES = {"e2e-svc-a": 0.01, "e2e-svc-b": 0.3}  # service: its error rate


@pytest.fixture(scope="module")
def platform(stack):
    """Ten minutes of request_rate, error_rate and latency_p95 for two services of two hosts."""
    end = int(time.time() * 1000) // STEP * STEP
    series = [
        {
            "name": metric,
            "labels": {"service_name": service, "host": f"{service}-{h}"},
            "timestamps_ms": [end - i * STEP for i in range(60)][::-1],
            "values": [value] * 60,
        }
        for service, errors in SERVICES.items()
        for h in (1, 2)
        for metric, value in (("request_rate", 10.0 * h), ("error_rate", errors), ("latency_p95", 40.0 * h))
    ]
    status, _, reply = http(
        stack,
        "POST",
        "/api/v1/metrics/ingest",
        json.dumps({"datasource": "platform_metrics", "series": series}),
    )
    assert status == 200 and reply["accepted"] == str(12 * 60), reply
    return end


def test_the_seed_body_verbatim_creates_a_dashboard_read_by_id_and_by_type(stack, platform):
    status, headers, created = http(stack, "POST", "/api/v1/dashboards", SEED_BODY)
    assert status == 200, created
    assert headers["content-type"] == "application/json"
    board = created["dashboard"]
    assert (board["name"], board["type"], board["refresh_interval"]) == (
        "Service Performance",
        "service-metrics",
        30,
    )
    assert board["config"]["services"] == ["auth-service", "analytics-service"]
    assert "metric 'latency' has no stored data in platform_metrics" in created["warnings"]
    assert "metric 'throughput' has no stored data in platform_metrics" in created["warnings"]
    status, _, by_id = http(stack, "GET", f"/api/v1/dashboards/{board['id']}")
    assert status == 200 and by_id["dashboard"] == board
    titles = [p["title"] for p in by_id["panels"]]
    assert titles == [
        "auth-service · latency",
        "analytics-service · latency",
        "auth-service · throughput",
        "analytics-service · throughput",
        "auth-service · error_rate",
        "analytics-service · error_rate",
    ]
    assert by_id["panels"][0]["warning"].startswith("metric 'latency' does not exist in platform_metrics")
    assert int(by_id["computed_at_ms"]) > 0
    status, _, by_type = http(stack, "GET", "/api/v1/dashboards/service-metrics")
    assert status == 200 and by_type["dashboard"]["id"] == board["id"]  # the newest of the type
    status, _, builtin = http(stack, "GET", "/api/v1/dashboards/builtin:service-metrics")
    assert status == 200 and builtin["dashboard"]["builtin"] is True
    http(stack, "DELETE", f"/api/v1/dashboards/{board['id']}")


def test_a_dashboard_carries_its_panels_data(stack, platform):
    body = {
        "name": "E2E errors",
        "type": "platform-overview",
        "config": {"services": list(SERVICES), "metrics": ["error_rate"], "time_range": "30m", "step": "1m"},
        "refresh_interval": 10,
    }
    status, _, created = http(stack, "POST", "/api/v1/dashboards", json.dumps(body))
    assert status == 200 and created.get("warnings", []) == [], created
    status, _, reply = http(stack, "GET", f"/api/v1/dashboards/{created['dashboard']['id']}")
    assert status == 200
    (panel,) = reply["panels"]
    assert (panel["title"], panel["metric"], panel["step"], panel["aggregation"]) == (
        "error_rate by service",
        "error_rate",
        "1m",
        "avg",
    )
    values = {s["group"]["service_name"]: [p["value"] for p in s["points"]] for s in panel["series"]}
    assert set(values) == {"e2e-svc-a", "e2e-svc-b"} and all(len(v) >= 10 for v in values.values())
    assert values["e2e-svc-a"] == pytest.approx([0.01] * len(values["e2e-svc-a"]))
    assert values["e2e-svc-b"] == pytest.approx([0.3] * len(values["e2e-svc-b"]))
    http(stack, "DELETE", f"/api/v1/dashboards/{created['dashboard']['id']}")


def test_list_update_and_delete(stack):
    status, _, created = http(stack, "POST", "/api/v1/dashboards", SEED_BODY)
    assert status == 200
    board_id = created["dashboard"]["id"]
    status, _, listed = http(stack, "GET", "/api/v1/dashboards")
    assert status == 200
    ids = [d["id"] for d in listed["dashboards"]]
    assert ids[:5] == [
        "builtin:platform-overview",
        "builtin:service-metrics",
        "builtin:service-comparison",
        "builtin:resource-utilization",
        "builtin:simulation",
    ]
    assert board_id in ids[5:]
    status, _, only = http(stack, "GET", "/api/v1/dashboards?type=simulation")
    assert status == 200 and [d["id"] for d in only["dashboards"]] == ["builtin:simulation"]
    change = {"name": "Sims", "type": "simulation", "config": {"time_range": "6h"}, "refresh_interval": 60}
    status, _, updated = http(stack, "PUT", f"/api/v1/dashboards/{board_id}", json.dumps(change))
    assert status == 200, updated
    assert (updated["dashboard"]["name"], updated["dashboard"]["type"]) == ("Sims", "simulation")
    assert int(updated["dashboard"]["updated_at_ms"]) > int(updated["dashboard"]["created_at_ms"]) - 1
    status, _, deleted = http(stack, "DELETE", f"/api/v1/dashboards/{board_id}")
    assert (status, deleted) == (200, {"id": board_id})
    status, _, gone = http(stack, "GET", f"/api/v1/dashboards/{board_id}")
    assert status == 404 and gone["message"].startswith(f"type: '{board_id}' is neither a dashboard id")


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "expected"),
    [
        (
            "POST",
            "/api/v1/dashboards",
            '{"name": "x", "type": "service-metrics", "config": {"time_range": "a day"}}',
            400,
            "config.time_range: 'a day' is not a duration",
        ),
        (
            "POST",
            "/api/v1/dashboards",
            '{"name": "x", "type": "service-metrics", "config": {"aggregation": "median"}}',
            400,
            "config.aggregation: 'median' is not a panel aggregation",
        ),
        (
            "POST",
            "/api/v1/dashboards",
            '{"name": "", "type": "service-metrics"}',
            400,
            "name: must not be empty",
        ),
        (
            "POST",
            "/api/v1/dashboards",
            '{"name": "x", "type": "weather"}',
            400,
            "type: 'weather' is not a dashboard",
        ),
        (
            "GET",
            "/api/v1/dashboards/no-such-board",
            None,
            404,
            "type: 'no-such-board' is neither a dashboard id",
        ),
        ("DELETE", "/api/v1/dashboards/nope", None, 404, "id: no stored dashboard has the id 'nope'"),
        (
            "PUT",
            "/api/v1/dashboards/nope",
            '{"name": "x", "type": "simulation"}',
            404,
            "id: no stored dashboard has the id 'nope'",
        ),
        (
            "PUT",
            "/api/v1/dashboards/builtin:simulation",
            '{"name": "x", "type": "simulation"}',
            400,
            "id: 'builtin:simulation' is a built-in dashboard and cannot be changed",
        ),
        ("GET", "/api/v1/monitor/service", None, 400, "id: the service scope needs an id"),
        (
            "GET",
            "/api/v1/monitor/platform?time_range=soon",
            None,
            400,
            "time_range: 'soon' is not a duration",
        ),
        ("GET", "/api/v1/monitor/service?id=e2e-nope", None, 404, "id: no service named 'e2e-nope'"),
        (
            "GET",
            "/api/v1/monitor/simulation?id=sim-e2e-nope",
            None,
            404,
            "id: no simulation named 'sim-e2e-nope'",
        ),
        (
            "GET",
            "/api/v1/monitor/resource?id=nowhere",
            None,
            404,
            "id: no host or resource is named 'nowhere'",
        ),
    ],
)
def test_bad_input_names_the_field(stack, platform, method, path, body, status, expected):
    got, headers, reply = http(stack, method, path, body)
    assert got == status, reply
    assert headers["content-type"] == "application/json"
    assert reply["message"].startswith(expected), reply


def test_monitor_scopes_through_the_gateway(stack, platform):
    status, _, reply = http(stack, "GET", "/api/v1/monitor/service?id=e2e-svc-b&time_range=15m")
    assert status == 200, reply
    assert (reply["scope"], reply["id"], reply["time_range"], reply["status"]) == (
        "service",
        "e2e-svc-b",
        "15m",
        "degraded",
    )
    service, *hosts = reply["entities"]
    assert service["reasons"] == ["error_rate 0.3 >= 0.05"]
    assert service["metrics"]["request_rate"] == pytest.approx(30.0)  # two hosts' rates add up
    assert [h["name"] for h in hosts] == ["e2e-svc-b-1", "e2e-svc-b-2"]
    errors = next(c for c in reply["comparison"] if c["metric"] == "error_rate")
    assert errors["rank"] == 1 and errors["value"] == pytest.approx(0.3)
    status, _, platform_reply = http(stack, "GET", "/api/v1/monitor/platform")
    assert status == 200
    mine = {e["name"]: e["status"] for e in platform_reply["entities"] if e["name"].startswith("e2e-svc-")}
    assert mine == {"e2e-svc-a": "healthy", "e2e-svc-b": "degraded"}
    assert platform_reply["analytics"]["name"] == "analytics"
    assert platform_reply["analytics"]["metrics"]["peers_serving"] == 4
    status, _, resource = http(stack, "GET", "/api/v1/monitor/resource?id=e2e-svc-a-1")
    assert status == 200 and [e["name"] for e in resource["entities"]] == ["e2e-svc-a-1"]
