"""Alerts through the real Envoy: `GET /api/v1/alerts` with its filters and 400s on the shared stack,
and, on a stack of its own with very low thresholds, an alert that fires from the service's own
query telemetry, arrives on the `alerts` WebSocket stream, and whose history survives a restart
of the whole stack (`analytics up`)."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest

from tests.e2e.conftest import Stack, own_stack, stack_env
from tests.e2e.test_gateway import http
from tests.helpers import wait_until

pytestmark = pytest.mark.e2e


def test_alerts_list_the_rules_with_their_thresholds(stack):
    status, _, body = http(stack, "GET", "/api/v1/alerts")
    assert status == 200
    rules = {(r["name"], r["threshold"]) for r in body["rules"]}
    assert ("SlowBatchQuery", 5.0) in rules and ("SlowRealtimeQuery", 0.5) in rules
    assert ("LowCacheHitRate", 0.7) in rules and ("AnomalyRateSpike", 3.0) in rules
    assert {r["name"] for r in body["rules"]} >= {"StreamBacklog", "EngineConnectionFailure"}
    assert all(r["for_seconds"] == 60 for r in body["rules"])


def test_alert_filters_are_accepted_from_the_query_string(stack):
    status, _, body = http(
        stack,
        "GET",
        "/api/v1/alerts?state=active&name=EngineConnectionFailure&severity=critical&time_range=1h&limit=5",
    )
    assert status == 200
    assert [r["name"] for r in body["rules"]] == ["EngineConnectionFailure"]


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("state=burning", "state: 'burning' is not a state"),
        ("name=Nope", "name: 'Nope' is not an alert rule"),
        ("severity=page", "severity: 'page' is not a severity"),
        ("time_range=forever", "time_range: 'forever' is not a duration"),
        ("limit=5000", "limit: must be between 1 and 1000"),
    ],
)
def test_a_bad_filter_is_400_naming_the_field(stack, query, message):
    status, _, reply = http(stack, "GET", f"/api/v1/alerts?{query}")
    assert status == 400
    assert reply["message"].startswith(message)


async def _fire_while_watching(s: Stack) -> dict:
    """Follow `alerts/SlowRealtimeQuery` on a WebSocket, make the rule fire with real-time queries,
    and return the frame that carries the firing transition."""
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(f"ws://127.0.0.1:{s.gateway_port}/api/v1/ws/alerts/SlowRealtimeQuery") as ws,
    ):
        assert (await ws.receive_json(timeout=10))["type"] == "hello"
        # A point ingested now and read back from the hot tier: queries counted as realtime.
        point = {"name": "cpu_usage", "value": 1, "timestamp_ms": int(time.time() * 1000)}
        point["labels"] = {"service_name": "auth-service"}
        async with session.post(f"{s.base}/api/v1/metrics/ingest", json={"points": [point]}) as reply:
            assert reply.status == 200
        for _ in range(3):
            query = {"metrics": ["cpu_usage"], "time_range": "5m", "mode": "realtime"}
            async with session.post(f"{s.base}/api/v1/query", json=query) as reply:
                answer = await reply.json()
            assert reply.status == 200 and answer["metadata"]["engines"] == ["hot"], answer
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            frame = await ws.receive_json(timeout=deadline - time.monotonic())
            if frame.get("alert", {}).get("state") == "firing":
                return frame
    raise AssertionError("no firing frame on the alerts stream within a minute")


def test_an_alert_fires_through_the_gateway_and_its_history_survives_a_restart(tmp_path):
    env = stack_env(
        tmp_path,
        DEMO="0",
        ANOMALY_STREAM="0",
        ALERT_REALTIME_QUERY_SECONDS="0.000001",
        ALERT_FOR_SECONDS="0",
        ALERT_EVAL_SECONDS="0.5",
        SELF_METRICS_INTERVAL_SECONDS="0.5",
    )
    with own_stack(env) as s:
        frame = asyncio.run(_fire_while_watching(s))
        assert frame["alert"]["name"] == "SlowRealtimeQuery" and frame["alert"]["state"] == "firing"
        assert frame["alert"]["from_state"] == "inactive"

        def firing():
            status, _, body = http(s, "GET", "/api/v1/alerts?state=firing&name=SlowRealtimeQuery")
            return status == 200 and body.get("alerts")

        wait_until(firing, 60, "SlowRealtimeQuery to fire")
        _, _, before = http(s, "GET", "/api/v1/alerts?name=SlowRealtimeQuery")
    first = before["history"][-1]
    assert (first["from_state"], first["alert"]["state"]) == ("inactive", "firing")

    with own_stack({**env, "ALERT_EVAL_SECONDS": "3600"}) as s:
        status, _, after = http(s, "GET", "/api/v1/alerts?name=SlowRealtimeQuery")
    assert status == 200
    assert first in after["history"]
