"""Tenants through the real Envoy with real tokens (AUTH_MODE=jwt): what tenant `acme` writes, tenant
`globex` cannot find on any endpoint, even with every scope; `acme` finds it on each (so each check
can fail). Scopes: a read token cannot write (403 naming the scope)."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.parse
import urllib.request

import aiohttp
import pytest

from tests.e2e.test_auth import authed as authed
from tests.e2e.test_auth import call

pytestmark = pytest.mark.e2e

METRIC = "iso_cpu"
LABELS = {"service_name": "iso-svc", "simulation_id": "iso-sim"}
EVERY_SCOPE = "read write admin"


@pytest.fixture(scope="module")
def acme(authed):
    """acme's data: 400 points of iso_cpu with a spike, anomalies found in them, a dashboard and an
    online model; returns (stack, acme token, globex token, acme's dashboard id)."""
    stack, signer = authed
    a, b = signer.token("acme", EVERY_SCOPE), signer.token("globex", EVERY_SCOPE)
    now = int(time.time() * 1000) // 1000 * 1000
    stamps = [now - (400 - i) * 10_000 for i in range(400)]
    values = [50.0 + (i % 5) for i in range(399)] + [400.0]
    series = {"name": METRIC, "labels": LABELS, "timestamps_ms": stamps, "values": values}
    status, reply = call(stack.base, "POST", "/api/v1/metrics/ingest", {"series": [series]}, a)
    assert status == 200 and reply["accepted"] == "400", reply
    status, reply = call(
        stack.base,
        "POST",
        "/api/v1/ml/detect-anomalies",
        {"selection": {"metrics": [METRIC], "labels": LABELS, "time_range": "1h"}},
        a,
    )
    assert status == 200 and reply["anomalies"], reply
    status, reply = call(
        stack.base,
        "POST",
        "/api/v1/dashboards",
        {
            "name": "acme board",
            "type": "service-metrics",
            "config": {"services": ["iso-svc"], "metrics": [METRIC]},
        },
        a,
    )
    assert status == 200, reply
    board = reply["dashboard"]["id"]
    status, reply = call(
        stack.base,
        "POST",
        "/api/v1/ml/train-online",
        {"model_name": "iso-model", "samples": [{"features": {"x": 1.0}, "target": 2.0}]},
        a,
    )
    assert status == 200, reply
    return stack, a, b, board


def _series_points(reply: dict) -> int:
    return sum(len(s.get("points", [])) for s in reply.get("series", []))


QUERY = {"metrics": [METRIC], "time_range": "1h", "group_by": ["service_name"]}
SQL = {"sql": "SELECT count(*) FROM metrics WHERE metric = ?", "params": [METRIC]}
TIMESERIES = {
    "datasource": "platform_metrics",
    "metrics": [METRIC],
    # The last two hours (and the next ten minutes), as Druid's 'start/end'.
    "intervals": [
        time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 7200))
        + "/"
        + time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 600))
    ],
    "granularity": "minute",
}


@pytest.mark.parametrize(
    ("what", "method", "path", "body", "found"),
    [
        ("metrics query", "POST", "/api/v1/query", QUERY, _series_points),
        ("SQL", "POST", "/api/v1/query", SQL, lambda r: r["rows"][0][0]),
        (
            "timeseries",
            "POST",
            "/api/v1/query/timeseries",
            TIMESERIES,
            lambda r: len(r.get("results", [])),
        ),
        (
            "metadata",
            "GET",
            "/api/v1/analytics/metadata/platform_metrics",
            None,
            lambda r: sum(m["name"] == METRIC for m in r.get("metrics", [])),
        ),
        (
            "anomalies",
            "GET",
            f"/api/v1/ml/anomalies?metric={METRIC}",
            None,
            lambda r: len(r.get("anomalies", [])),
        ),
        (
            "anomaly stats",
            "GET",
            "/api/v1/ml/anomalies/stats",
            None,
            lambda r: sum(int(m["anomalies"]) for m in r.get("methods", {}).values()),
        ),
        (
            "Prometheus export",
            "GET",
            "/api/v1/export/prometheus?" + urllib.parse.urlencode({"match[]": METRIC}),
            None,
            lambda r: r["_text"].count(METRIC + "{"),
        ),
        (
            "service scope",
            "GET",
            "/api/v1/monitor/service?id=iso-svc",
            None,
            lambda r: _series_points(r),
        ),
    ],
)
def test_a_tenant_finds_nothing_of_another(acme, what, method, path, body, found):
    stack, a, b, _ = acme

    def answer(token: str) -> int:
        status, reply = call_any(stack.base, method, path, body, token)
        if status in (400, 404) and METRIC not in json.dumps(reply).replace("metric '" + METRIC, ""):
            return 0  # "does not exist" for this tenant, without echoing anything of the other's
        assert status == 200, (what, status, reply)
        return found(reply)

    assert answer(a) > 0, f"{what}: acme must find its own data"
    assert answer(b) == 0, f"{what}: globex found acme's data"


def call_any(base: str, method: str, path: str, body: dict | None, token: str) -> tuple[int, dict]:
    """`call`, also for the Prometheus export's text answer (as {"_text": ...})."""
    if "export/prometheus" not in path:
        return call(base, method, path, body, token)
    request = urllib.request.Request(base + path, headers={"authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return reply.status, {"_text": reply.read().decode()}
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


def test_forecasts_dashboards_and_models_are_the_tenants_own(acme):
    stack, a, b, board = acme
    forecast = {
        "selection": {"metrics": [METRIC], "labels": LABELS, "time_range": "2h"},
        "horizon": 3,
        "step": "10s",
    }
    status, reply = call(stack.base, "POST", "/api/v1/ml/forecast", forecast, a)
    assert status == 200 and reply["series"], reply
    status, reply = call(stack.base, "POST", "/api/v1/ml/forecast", forecast, b)
    assert status in (200, 400, 404) and not reply.get("series"), reply  # nothing to forecast

    assert board in {d["id"] for d in call(stack.base, "GET", "/api/v1/dashboards", None, a)[1]["dashboards"]}
    assert board not in {
        d["id"] for d in call(stack.base, "GET", "/api/v1/dashboards", None, b)[1]["dashboards"]
    }
    assert call(stack.base, "GET", f"/api/v1/dashboards/{board}", None, b)[0] == 404
    update = {"name": "taken", "type": "service-metrics", "config": {"services": ["x"]}}
    assert call(stack.base, "PUT", f"/api/v1/dashboards/{board}", update, b)[0] == 404
    assert call(stack.base, "DELETE", f"/api/v1/dashboards/{board}", None, b)[0] == 404
    assert (
        call(stack.base, "GET", f"/api/v1/dashboards/{board}", None, a)[1]["dashboard"]["name"]
        == "acme board"
    )

    sample = {"model_name": "iso-model", "samples": [{"features": {"x": 1.0}}]}
    assert call(stack.base, "POST", "/api/v1/ml/predict-online", sample, a)[0] == 200
    assert call(stack.base, "POST", "/api/v1/ml/predict-online", sample, b)[0] == 404

    anomaly = call(stack.base, "GET", f"/api/v1/ml/anomalies?metric={METRIC}", None, a)[1]["anomalies"][0][
        "id"
    ]
    judged = {"feedback": "false_positive"}
    assert call(stack.base, "POST", f"/api/v1/ml/anomalies/{anomaly}/feedback", judged, b)[0] == 404


async def test_a_tenants_stream_carries_none_of_anothers_points(acme):
    stack, a, b, _ = acme
    ws = f"ws://127.0.0.1:{stack.gateway_port}/api/v1/ws/metrics/{METRIC}"
    async with aiohttp.ClientSession() as session:
        # A tenant without the metric cannot follow it at all ("not in datasource": nothing of
        # acme's shows through); once globex has a point of its own, its stream opens.
        refused = await session.ws_connect(f"{ws}?access_token={b}")
        assert (await refused.receive_json(timeout=10))["type"] == "closing"
        await refused.close()
        own_point = {"name": METRIC, "value": 2.0, "timestamp_ms": int(time.time() * 1000) - 3_600_000}
        status, _ = await asyncio.to_thread(
            call, stack.base, "POST", "/api/v1/metrics/ingest", {"points": [own_point]}, b
        )
        assert status == 200
        own = await session.ws_connect(f"{ws}?access_token={a}")
        other = await session.ws_connect(f"{ws}?access_token={b}")
        hello = await own.receive_json(timeout=10)
        assert hello["type"] == "hello", json.dumps(hello)
        hello = await other.receive_json(timeout=10)
        assert hello["type"] == "hello", hello
        point = {"name": METRIC, "value": 1.0, "timestamp_ms": int(time.time() * 1000), "labels": LABELS}
        status, _ = await asyncio.to_thread(
            call, stack.base, "POST", "/api/v1/metrics/ingest", {"points": [point]}, a
        )
        assert status == 200
        while (frame := await own.receive_json(timeout=10))["type"] != "data":
            pass
        # acme's frame has gone out; globex's stream on the same metric gets nothing more in the next
        # 1.5 s (the hub sends a batch to every matching channel in one pass).
        other_frames = []
        while True:
            try:
                other_frames.append(await other.receive_json(timeout=1.5))
            except TimeoutError:
                break
        assert frame["series"] and all(f["type"] != "data" for f in other_frames), other_frames
        await own.close()
        await other.close()


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/api/v1/metrics/ingest", {"points": [{"name": METRIC, "value": 1}]}),
        ("POST", "/api/v1/dashboards", {"name": "x", "type": "service-metrics"}),
        (
            "POST",
            "/api/v1/ml/train-online",
            {"model_name": "r", "samples": [{"features": {"x": 1}, "target": 1}]},
        ),
    ],
)
def test_a_read_token_cannot_write(authed, method, path, body):
    stack, signer = authed
    status, reply = call(stack.base, method, path, body, signer.token("acme", "read"))
    assert status == 403 and "missing scope 'write'" in reply["message"], reply
    status, reply = call(stack.base, method, path, body, signer.token("acme", "write"))
    assert status == 200, reply
