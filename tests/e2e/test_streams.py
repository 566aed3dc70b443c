"""Live streams through the real Envoy, as a WebSocket client uses them: a metrics frame within a
second of an ingest acknowledgement, resume after a reconnect, bad input (unknown type, unknown id,
garbage frames), an analytics stream and an anomaly frame after an injected incident."""

from __future__ import annotations

import json
import time
from urllib.parse import quote

import aiohttp
import numpy as np
import pytest

STEP = 10_000


def _ws(stack, path: str) -> str:
    return f"ws://127.0.0.1:{stack.gateway_port}/api/v1/ws/{path}"


async def _ingest(session: aiohttp.ClientSession, stack, body: dict) -> float:
    """POST an ingest through Envoy; returns when the acknowledgement arrived (monotonic)."""
    async with session.post(f"{stack.base}/api/v1/metrics/ingest", json=body) as reply:
        answer = await reply.json()
        acknowledged = time.monotonic()
    assert reply.status == 200 and answer.get("rejected", "0") == "0", answer
    return acknowledged


def _points(name: str, labels: dict, ts: list[int], values: list[float]) -> dict:
    return {"series": [{"name": name, "labels": labels, "timestamps_ms": ts, "values": values}]}


async def _data(ws, timeout: float = 5) -> dict:
    """The next frame that is not a heartbeat."""
    deadline = time.monotonic() + timeout
    while True:
        frame = await ws.receive_json(timeout=max(deadline - time.monotonic(), 0.01))
        if frame["type"] != "heartbeat":
            return frame


async def test_a_metrics_frame_arrives_within_a_second_of_the_ingest_acknowledgement(stack):
    now = int(time.time() * 1000)
    labels = {"service_name": "ws-e2e"}
    async with aiohttp.ClientSession() as session:
        await _ingest(session, stack, _points("ws_latency", labels, [now - 1000], [1.0]))
        async with session.ws_connect(_ws(stack, "metrics/ws_latency?service_name=ws-e2e")) as ws:
            assert (await _data(ws))["type"] == "hello"
            acknowledged = await _ingest(session, stack, _points("ws_latency", labels, [now], [42.5]))
            frame = await _data(ws)
            received = time.monotonic()
    assert frame["type"] == "data"
    assert frame["series"] == [
        {"metric": "ws_latency", "group": labels, "points": [{"timestamp_ms": str(now), "value": 42.5}]}
    ]
    # The requirement: a frame within a second of the acknowledgement.
    assert received - acknowledged < 1.0, f"{received - acknowledged:.3f} s"


async def test_a_client_resumes_after_a_reconnect_with_since(stack):
    now = int(time.time() * 1000)
    async with aiohttp.ClientSession() as session:
        await _ingest(session, stack, _points("ws_resume", {}, [now], [1.0]))
        async with session.ws_connect(_ws(stack, "metrics/ws_resume")) as ws:
            await _data(ws)
            await _ingest(session, stack, _points("ws_resume", {}, [now + 1], [2.0]))
            cursor = (await _data(ws))["cursor"]
        # Disconnected: these two are missed, then given back on the resumed connection.
        await _ingest(session, stack, _points("ws_resume", {}, [now + 2], [3.0]))
        await _ingest(session, stack, _points("ws_resume", {}, [now + 3], [4.0]))
        async with session.ws_connect(_ws(stack, f"metrics/ws_resume?since={cursor}")) as ws:
            assert (await _data(ws))["type"] == "hello"
            missed = [(await _data(ws))["series"][0]["points"][0]["value"] for _ in range(2)]
            await _ingest(session, stack, _points("ws_resume", {}, [now + 4], [5.0]))
            live = (await _data(ws))["series"][0]["points"][0]["value"]
    assert (missed, live) == ([3.0, 4.0], 5.0)


async def test_an_unknown_stream_type_is_refused_with_a_404_json_reason(stack):
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.WSServerHandshakeError) as err:
            await session.ws_connect(_ws(stack, "weather/today"))
        assert err.value.status == 404
        async with session.get(f"{stack.base}/api/v1/ws/weather/today") as reply:
            body = await reply.json()
    assert reply.status == 404 and body["message"].startswith("stream_type: 'weather' is not one of metrics")


async def test_an_unknown_stream_id_gets_a_closing_frame_saying_why(stack):
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(_ws(stack, "metrics/no_such_metric")) as ws,
    ):
        closing = await ws.receive_json(timeout=5)
        assert closing["type"] == "closing"
        assert "'no_such_metric' is not in datasource 'platform_metrics'" in closing["reason"]
        assert (await ws.receive(timeout=5)).type == aiohttp.WSMsgType.CLOSE
    assert ws.close_code == 4404


async def test_a_client_sending_garbage_is_closed_and_nothing_else_notices(stack):
    now = int(time.time() * 1000)
    async with aiohttp.ClientSession() as session:
        await _ingest(session, stack, _points("ws_garbage", {}, [now], [1.0]))
        async with (
            session.ws_connect(_ws(stack, "metrics/ws_garbage")) as rude,
            session.ws_connect(_ws(stack, "metrics/ws_garbage")) as calm,
        ):
            await _data(rude), await _data(calm)
            await rude.send_str("DROP TABLE metrics")
            closing = await _data(rude)
            assert closing["type"] == "closing" and "not JSON" in closing["reason"]
            assert (await rude.receive(timeout=5)).type == aiohttp.WSMsgType.CLOSE
            assert rude.close_code == 1003
            await _ingest(session, stack, _points("ws_garbage", {}, [now + 1], [2.0]))
            frame = await _data(calm)
            await calm.send_json({"type": "ping"})
            pong = await calm.receive_json(timeout=5)
    assert frame["series"][0]["points"] == [{"timestamp_ms": str(now + 1), "value": 2.0}]
    assert pong["type"] == "heartbeat"


async def test_an_analytics_stream_pushes_the_answer_then_what_changed(stack):
    bucket = int(time.time() * 1000) // 60_000 * 60_000
    labels = {"service_name": "ws-analytics"}
    query = {
        "metrics": ["ws_requests"],
        "time_range": "10m",
        "step": "1m",
        "aggregation": "sum",
        "group_by": ["service_name"],
    }
    async with aiohttp.ClientSession() as session:
        await _ingest(session, stack, _points("ws_requests", labels, [bucket], [5.0]))
        path = f"analytics/requests?query={quote(json.dumps(query))}"
        async with session.ws_connect(_ws(stack, path)) as ws:
            hello = await _data(ws)
            whole = await _data(ws)
            await _ingest(session, stack, _points("ws_requests", labels, [bucket + 1], [2.0]))
            change = await _data(ws)
    assert hello["request"]["query"]["metrics"] == ["ws_requests"]
    assert whole["series"][0]["points"] == [{"timestamp_ms": str(bucket), "value": 5.0}]
    assert change["series"] == [
        {
            "metric": "ws_requests",
            "group": labels,
            "aggregation": "sum",
            "points": [{"timestamp_ms": str(bucket), "value": 7.0}],
        }
    ]


async def test_an_injected_incident_arrives_as_an_anomaly_frame(stack):
    sim = "sim-ws-incident"
    rng = np.random.default_rng(21)
    n = 1080  # three hours of normal behaviour every 10 s
    first = (int(time.time() * 1000) // STEP - n - 30) * STEP
    ts = first + STEP * np.arange(n, dtype=np.int64)
    async with aiohttp.ClientSession() as session:
        await _ingest(
            session,
            stack,
            _points("cpu", {"simulation_id": sim}, ts.tolist(), (55 + rng.normal(0, 3, n)).tolist()),
        )
        async with session.ws_connect(_ws(stack, f"anomalies/{sim}")) as ws:
            assert (await _data(ws))["type"] == "hello"
            live = int(ts[-1]) + STEP * np.arange(1, 31, dtype=np.int64)
            values = 55 + rng.normal(0, 3, 30)
            values[20] = 99.0
            await _ingest(
                session, stack, _points("cpu", {"simulation_id": sim}, live.tolist(), values.tolist())
            )
            deadline = time.monotonic() + 60
            found = None
            while found is None and time.monotonic() < deadline:
                frame = await _data(ws, timeout=deadline - time.monotonic())
                anomaly = frame.get("anomaly", {})
                if int(anomaly.get("timestamp_ms", 0)) == int(live[20]):
                    found = anomaly
    assert found is not None, "no anomaly frame for the spike within a minute"
    assert found["metric"] == "cpu" and found["labels"] == {"simulation_id": sim} and found["value"] == 99.0
    assert found["score"] > 0.5


async def test_a_created_dashboard_streams_its_panels_and_their_updates(stack):
    """The seed's dashboard shape, created through REST, followed on `dashboard/{id}`: the current
    panels first, then the refresher's update carrying a point ingested after the connect."""
    service = "ws-dash-svc"
    now = int(time.time() * 1000) // STEP * STEP
    history = [now - 900_000 - i * STEP for i in range(30)][::-1]  # well before the new point's bucket
    body = {
        "name": "Live errors",
        "type": "service-metrics",
        "config": {"services": [service], "metrics": ["error_rate"], "time_range": "1h"},
        "refresh_interval": 5,
    }
    async with aiohttp.ClientSession() as session:
        labels = {"service_name": service, "host": f"{service}-1"}
        await _ingest(session, stack, _points("error_rate", labels, history, [0.01] * len(history)))
        async with session.post(f"{stack.base}/api/v1/dashboards", json=body) as reply:
            created = await reply.json()
        assert reply.status == 200, created
        dashboard_id = created["dashboard"]["id"]
        async with session.ws_connect(_ws(stack, f"dashboard/{dashboard_id}")) as ws:
            assert (await _data(ws))["type"] == "hello"
            first = await _data(ws)
            assert first["type"] == "data" and [p["metric"] for p in first["panels"]] == ["error_rate"]
            await _ingest(session, stack, _points("error_rate", labels, [now], [0.77]))
            deadline = time.monotonic() + 30  # two refresh intervals and some
            values: list[float] = []
            while 0.77 not in values and time.monotonic() < deadline:
                frame = await _data(ws, timeout=deadline - time.monotonic())
                values = [
                    point["value"]
                    for panel in frame.get("panels", ())
                    for series in panel.get("series", ())
                    for point in series["points"]
                ]
    assert 0.77 in values, "the dashboard's update with the new point never arrived"
