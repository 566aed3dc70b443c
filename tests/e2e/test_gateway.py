"""End-to-end through the real Envoy on the gateway port: REST, gRPC, WebSocket, errors."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import aiohttp
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from platformq.analytics.v1 import (
    common_pb2,
    query_service_pb2,
    query_service_pb2_grpc,
    realtime_service_pb2,
    realtime_service_pb2_grpc,
)
from services.query_router.sql_views import NARROWED_VIEWS
from tests.e2e.conftest import ANALYTICS

SEED_EXAMPLES = [
    (
        "/api/v1/query",
        '{"metrics": ["cpu_usage", "memory_usage"], "time_range": "1h", "group_by": ["service_name"], "mode": "auto"}',
    ),
    (
        "/api/v1/query/timeseries",
        '{"datasource": "platform_metrics", "metrics": ["request_rate", "error_rate"], '
        '"intervals": ["2024-01-01/2024-01-02"], "granularity": "hour"}',
    ),
    (
        "/api/v1/ml/detect-anomalies",
        '{"simulation_id": "sim-123", "metrics": {"cpu": 95.0, "memory": 87.5, "disk_io": 1200}, '
        '"config": {"method": "isolation_forest", "sensitivity": 0.95}}',
    ),
    (
        "/api/v1/dashboards",
        '{"name": "Service Performance", "type": "service-metrics", "config": {"services": ["auth-service", '
        '"analytics-service"], "metrics": ["latency", "throughput", "error_rate"], "time_range": "24h"}, '
        '"refresh_interval": 30}',
    ),
]

# Every other REST endpoint of ARCHITECTURE.md's table, with a body the RPC accepts.
OTHER_ENDPOINTS = [
    ("GET", "/api/v1/analytics/capabilities", None),
    ("GET", "/api/v1/analytics/metadata/platform_metrics", None),
    ("POST", "/api/v1/metrics/ingest", '{"points": [{"name": "cpu_usage", "value": 1, "timestamp_ms": 1}]}'),
    ("POST", "/api/v1/ml/forecast", '{"metric": "cpu_usage", "horizon": 24}'),
    ("POST", "/api/v1/ml/predict-maintenance", '{"entity_id": "engine-1", "sensors": {"s2": 641.8}}'),
    (
        "POST",
        "/api/v1/ml/train-online",
        '{"model_name": "m", "samples": [{"features": {"x": 1}, "target": 2}]}',
    ),
    ("GET", "/api/v1/monitor/platform", None),
    ("GET", "/api/v1/monitor/service?id=auth-service&time_range=1h", None),
    ("GET", "/api/v1/dashboards/service-metrics", None),
    # GET /api/v1/export/prometheus answers text, not JSON: tests/e2e/test_prometheus.py.
]


def http(stack, method: str, path: str, body: str | bytes | None = None) -> tuple[int, dict, dict]:
    data = body.encode() if isinstance(body, str) else body
    request = urllib.request.Request(
        stack.base + path, data=data, method=method, headers={"content-type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return reply.status, dict(reply.headers), json.loads(reply.read() or b"{}")
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), json.loads(err.read() or b"{}")


def test_health_lists_every_service(stack):
    status, _, body = http(stack, "GET", "/health")
    assert status == 200
    assert body["status"] == "SERVING"
    assert set(body["services"]) == {"query-router", "realtime", "ml", "monitoring", "ws-bridge"}
    assert set(body["services"].values()) == {"SERVING"}


@pytest.fixture(scope="module")
def seeded(stack):
    """A few minutes of cpu_usage and memory_usage for two services, ingested through REST."""
    now = int(time.time() * 1000) // 10_000 * 10_000
    points = [
        {
            "name": metric,
            "value": float(i % 7 + k),
            "timestamp_ms": now - i * 10_000,
            "labels": {"service_name": service},
        }
        for i in range(30)
        for k, (metric, service) in enumerate(
            [(m, s) for m in ("cpu_usage", "memory_usage") for s in ("auth-service", "analytics-service")]
        )
    ]
    status, _, reply = http(
        stack,
        "POST",
        "/api/v1/metrics/ingest",
        json.dumps({"datasource": "platform_metrics", "points": points}),
    )
    assert status == 200 and reply["accepted"] == "120" and reply["rejected"] == "0", reply
    return now


def test_seed_query_returns_curves(stack, seeded):
    status, _, reply = http(stack, "POST", SEED_EXAMPLES[0][0], SEED_EXAMPLES[0][1])
    assert status == 200, reply
    groups = {(s["metric"], s["group"]["service_name"]) for s in reply["series"]}
    assert groups == {
        (m, s) for m in ("cpu_usage", "memory_usage") for s in ("auth-service", "analytics-service")
    }
    assert all(len(s["points"]) >= 10 for s in reply["series"])
    assert reply["metadata"]["engines"] == ["hot"]


@pytest.mark.parametrize(("path", "body"), SEED_EXAMPLES, ids=[p for p, _ in SEED_EXAMPLES])
def test_seed_examples_reach_their_rpc(stack, seeded, path, body):
    status, headers, reply = http(stack, "POST", path, body)
    # 501 comes from the RPC itself (UNIMPLEMENTED, gRPC code 12), never from the gateway.
    assert status in (200, 501), reply
    if status == 501:
        assert reply["code"] == 12 and "not built yet" in reply["message"]
    assert headers["content-type"] == "application/json"


@pytest.mark.parametrize(("method", "path", "body"), OTHER_ENDPOINTS, ids=[p for _, p, _ in OTHER_ENDPOINTS])
def test_every_rest_endpoint_is_routed(stack, seeded, method, path, body):
    status, _, reply = http(stack, method, path, body)
    # The RPC answered (Envoy's own 404 says "no route"): 200, or its own refusal naming a field
    # (a forecast needs more history than the seeded minutes; no maintenance model is trained yet).
    assert "no route" not in reply.get("message", ""), reply
    assert status == 200 or (status in (400, 404) and ": " in reply["message"]), reply


@pytest.mark.parametrize(
    ("path", "body", "status", "expected"),
    [
        (
            "/api/v1/query",
            '{"metrics": ["cpu_usage"], "mode": "fast"}',
            400,
            "mode: 'fast' is not allowed; use one of auto, batch, realtime, cache",
        ),
        ("/api/v1/query", '{"metrics": ["cpu_usage"], "mode": ', 400, "Unexpected end of string"),
        ("/api/v1/query", '{"metrics": 5}', 400, "metrics"),
        ("/api/v1/query", '{"metrics": ["a"], "time_range": 60}', 400, "time_range"),
        # Envoy's transcoder drops unknown body fields (no option to reject them, see docs/api.md);
        # the service then names the field that is missing.
        ("/api/v1/query", '{"metricz": ["a"]}', 400, "metrics: give at least one metric"),
        (
            "/api/v1/query/timeseries",
            '{"metrics": ["a"], "intervals": ["2024-01-01/2024-01-02"], "granularity": "fortnight"}',
            400,
            "granularity: 'fortnight' is not a granularity",
        ),
        ("/api/v1/ml/detect-anomalies", '{"metrics": {"cpu": "high"}}', 400, "metrics[0].value"),
        (
            "/api/v1/dashboards",
            '{"name": "x", "type": "service-metrics", "refresh_interval": -5}',
            400,
            "refresh_interval: must not be negative",
        ),
    ],
)
def test_bad_input_gets_400_naming_the_problem(stack, path, body, status, expected):
    got, headers, reply = http(stack, "POST", path, body)
    assert got == status
    assert headers["content-type"] == "application/json"
    assert expected in reply["message"]
    assert http(stack, "GET", "/health")[0] == 200  # still serving


def test_bad_scope_is_400(stack):
    status, _, reply = http(stack, "GET", "/api/v1/monitor/galaxy")
    assert status == 400
    assert reply["message"].startswith("scope: 'galaxy' is not a scope")


def test_body_over_the_limit_is_413(stack):
    big = '{"sql": "' + "x" * (2 * 1024 * 1024) + '"}'
    status, headers, reply = http(stack, "POST", "/api/v1/query", big)
    assert status == 413
    assert headers["content-type"] == "application/json"
    assert reply["code"] == 413
    assert http(stack, "GET", "/health")[0] == 200


@pytest.mark.parametrize("path", ["/nope", "/api/v1/nothing-here", "/api/v2/query"])
def test_unknown_path_is_404_json(stack, path):
    status, headers, reply = http(stack, "GET", path)
    assert status == 404
    assert headers["content-type"] == "application/json"
    assert reply == {"code": 404, "message": "no route for this path; the README lists the REST endpoints"}


def test_native_grpc_through_the_gateway(stack):
    with grpc.insecure_channel(f"127.0.0.1:{stack.gateway_port}") as channel:
        health = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=5
        )
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        stub = query_service_pb2_grpc.QueryServiceStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            stub.Query(query_service_pb2.QueryRequest(metrics=["cpu_usage"], mode="fast"), timeout=5)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.value.details().startswith("mode: ")
        capabilities = stub.GetCapabilities(query_service_pb2.GetCapabilitiesRequest(), timeout=5)
        assert "duckdb" in capabilities.engines


def test_native_grpc_ingest_through_the_gateway_is_queryable_and_names_a_bad_point(stack):
    # A request every point of which is acceptable (the compiled fast path), then one with a bad
    # row (the Python path, which names it): both through Envoy, the accepted points queryable.
    now = int(time.time() * 1000) // 1000 * 1000
    labels = {"host": "grpc-e2e"}
    good = realtime_service_pb2.IngestMetricsRequest(
        series=[
            common_pb2.Series(
                name="grpc_e2e", labels=labels, timestamps_ms=[now - 2000, now - 1000], values=[1, 2]
            )
        ],
        points=[common_pb2.Point(name="grpc_e2e", labels=labels, timestamp_ms=now - 3000, value=4)],
    )
    bad = realtime_service_pb2.IngestMetricsRequest(
        points=[
            common_pb2.Point(name="grpc_e2e", labels=labels, timestamp_ms=now, value=8),
            common_pb2.Point(name="grpc_e2e", labels=labels, timestamp_ms=now - 500, value=float("nan")),
        ]
    )
    with grpc.insecure_channel(f"127.0.0.1:{stack.gateway_port}") as channel:
        stub = realtime_service_pb2_grpc.RealtimeServiceStub(channel)
        first = stub.IngestMetrics(good, timeout=10)
        second = stub.IngestMetrics(bad, timeout=10)
    assert (first.accepted, first.rejected, list(first.errors)) == (3, 0, [])
    assert (second.accepted, second.rejected) == (1, 1)
    assert [(e.field, e.reason) for e in second.errors] == [
        ("points[1].value", "NaN and infinite values are not accepted")
    ]
    body = json.dumps({"metrics": ["grpc_e2e"], "time_range": "1h", "aggregation": "sum", "step": "1h"})
    status, _, answer = http(stack, "POST", "/api/v1/query", body)
    assert status == 200, answer
    assert sum(p["value"] for s in answer["series"] for p in s["points"]) == 15


def test_reflection_through_the_gateway_lists_the_four_services(stack):
    with grpc.insecure_channel(f"127.0.0.1:{stack.gateway_port}") as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        replies = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        names = {s.name for s in next(replies).list_services_response.service}
    assert {
        "platformq.analytics.v1.QueryService",
        "platformq.analytics.v1.RealtimeService",
        "platformq.analytics.v1.MLService",
        "platformq.analytics.v1.MonitoringService",
    } <= names


async def test_websocket_through_the_gateway(stack):
    url = f"ws://127.0.0.1:{stack.gateway_port}/api/v1/ws/anomalies/all"
    async with aiohttp.ClientSession() as session, session.ws_connect(url) as ws:
        hello = await ws.receive_json(timeout=5)
        assert hello["type"] == "hello"
        assert (hello["stream_type"], hello["stream_id"]) == ("anomalies", "all")
        heartbeat = await ws.receive_json(timeout=5)
        assert heartbeat["type"] == "heartbeat"
        assert int(heartbeat["timestamp_ms"]) >= int(hello["timestamp_ms"])


async def test_websocket_unknown_stream_type_is_404(stack):
    url = f"ws://127.0.0.1:{stack.gateway_port}/api/v1/ws/weather/today"
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.WSServerHandshakeError) as err:
            await session.ws_connect(url)
    assert err.value.status == 404


def test_rendered_config_passes_envoy_validation(stack, tmp_path):
    config = Path(stack.env["DATA_DIR"]) / "gateway" / "envoy.yaml"
    envoy = str(Path(ANALYTICS).with_name("envoy"))
    result = subprocess.run(
        [envoy, "--mode", "validate", "-c", str(config)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr[-2000:]


def test_an_acknowledged_point_answers_the_next_query(stack):
    now = int(time.time() * 1000)
    body = {
        "datasource": "e2e_fresh",
        "points": [{"name": "probe", "value": 7.25, "timestamp_ms": now, "labels": {"host": "h1"}}],
    }
    status, _, reply = http(stack, "POST", "/api/v1/metrics/ingest", json.dumps(body))
    assert (status, reply["accepted"]) == (200, "1")
    query = {
        "datasource": "e2e_fresh",
        "metrics": ["probe"],
        "aggregation": "last",
        "step": "1m",
        "start": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now / 1000 - 60)),
        "end": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now / 1000 + 60)),
    }
    status, _, reply = http(stack, "POST", "/api/v1/query", json.dumps(query))
    assert status == 200, reply
    assert [p["value"] for s in reply["series"] for p in s["points"]] == [7.25]


@pytest.mark.parametrize(
    ("path", "body", "status", "expected"),
    [
        (
            "/api/v1/query",
            '{"datasource": "nope", "metrics": ["cpu_usage"]}',
            404,
            "datasource: 'nope' does not exist",
        ),
        ("/api/v1/query", '{"metrics": ["cpu_usage"], "time_range": "7d", "step": "10s"}', 400, "step: "),
        ("/api/v1/query", '{"metrics": ["cpu_usage"], "group_by": ["no_such_label"]}', 400, "group_by[0]: "),
        (
            "/api/v1/query",
            '{"metrics": ["a"], "start": "2026-01-02T00:00:00Z", "end": "2026-01-01T00:00:00Z"}',
            400,
            "end: end must be after start",
        ),
        ("/api/v1/query", '{"sql": "DROP TABLE metrics"}', 400, "sql: "),
        ("/api/v1/query", '{"sql": "SELECT * FROM read_csv(\'/etc/passwd\')"}', 400, "sql: "),
        ("/api/v1/metrics/ingest", '{"datasource": "../etc", "points": []}', 400, "datasource: "),
    ],
)
def test_pipeline_bad_input_is_a_precise_4xx(stack, seeded, path, body, status, expected):
    got, _, reply = http(stack, "POST", path, body)
    assert got == status, reply
    assert expected in reply["message"]


def test_bad_points_are_named_and_the_good_ones_kept(stack):
    now = int(time.time() * 1000)
    points = [
        {"name": "probe2", "value": 1.0, "timestamp_ms": now},
        {"name": "probe2", "value": "NaN", "timestamp_ms": now + 1},
        {"name": "", "value": 1.0, "timestamp_ms": now},
        {"name": "probe2", "value": 1.0, "timestamp_ms": now + 3 * 86_400_000},
        {"name": "probe2", "value": 1.0, "timestamp_ms": now, "labels": {"bad-key": "x"}},
    ]
    status, _, reply = http(
        stack, "POST", "/api/v1/metrics/ingest", json.dumps({"datasource": "e2e_bad", "points": points})
    )
    assert status == 200
    assert (reply["accepted"], reply["rejected"]) == ("1", "4")
    assert [(e.get("index", 0), e["field"]) for e in reply["errors"]] == [
        (1, "points[1].value"),
        (2, "points[2].name"),
        (3, "points[3].timestamp"),
        (4, "points[4].labels.bad-key"),
    ]
    status, _, meta = http(stack, "GET", "/api/v1/analytics/metadata/e2e_bad")
    assert status == 200 and meta["point_count"] == "1"


def test_sql_explain_and_cache_through_the_gateway(stack, seeded):
    # Within the seeded window only: other modules of the shared stack store cpu_usage too.
    body = {
        "sql": "SELECT labels.service_name AS service, count(*) AS n FROM metrics WHERE metric = ? AND ts > ? "
        "GROUP BY 1 ORDER BY 1",
        "params": ["cpu_usage", seeded - 300_000],
    }
    status, _, reply = http(stack, "POST", "/api/v1/query", json.dumps(body))
    assert status == 200, reply
    assert reply["columns"] == ["service", "n"]
    assert reply["rows"] == [["analytics-service", 30], ["auth-service", 30]]
    # Its WHERE names a metric and a window: `metrics` held only those points, and the plan says so,
    # as Explain does before it runs; a refused statement is a 400 from Explain too.
    assert reply["metadata"]["plan"]["reason"] == NARROWED_VIEWS
    status, _, plan = http(stack, "POST", "/api/v1/query/explain", json.dumps({"query": body}))
    assert status == 200 and plan["plan"]["reason"].startswith(NARROWED_VIEWS)
    refused = {"query": {"sql": "DROP TABLE metrics"}}
    status, _, plan = http(stack, "POST", "/api/v1/query/explain", json.dumps(refused))
    assert status == 400 and plan["message"].startswith("sql: "), plan
    status, _, again = http(stack, "POST", "/api/v1/query", json.dumps(body))
    assert (status, again["metadata"]["cache_hit"], again["rows"]) == (200, True, reply["rows"])

    query = {"metrics": ["cpu_usage"], "time_range": "1h", "explain": True}
    status, _, explained = http(stack, "POST", "/api/v1/query", json.dumps(query))
    assert status == 200 and explained["series"] == []
    assert explained["metadata"]["plan"]["fragments"][0]["engine"] == "hot"
    status, _, plan = http(stack, "POST", "/api/v1/query/explain", json.dumps({"query": query}))
    assert status == 200 and plan["plan"]["mode"] == "auto"


def test_answers_are_gzipped_for_clients_that_ask_and_plain_for_others(stack, seeded):
    import gzip

    def fetch(path: str, **headers: str) -> tuple[dict, bytes]:
        with urllib.request.urlopen(
            urllib.request.Request(stack.base + path, headers=headers), timeout=10
        ) as r:
            return dict(r.headers), r.read()

    headers, body = fetch("/api/v1/dashboards", **{"Accept-Encoding": "gzip"})  # over 1 KiB
    plain_headers, plain = fetch("/api/v1/dashboards")
    assert headers.get("content-encoding") == "gzip" and "content-encoding" not in plain_headers
    assert json.loads(gzip.decompress(body)) == json.loads(plain)
    headers, body = fetch("/ui/js/main.js", **{"Accept-Encoding": "gzip"})
    assert headers.get("content-encoding") == "gzip" and headers["etag"].startswith('W/"')
    assert b"Shell" in gzip.decompress(body)
