"""The ws bridge: /health aggregates every service (200 when all serve, 503 naming the one down);
streams of the shared hub over a real WebSocket: frames, ping, garbage, unknown ids, bad
parameters before the upgrade, resume."""

import asyncio
import time

import aiohttp
import pytest
from grpc import aio

from gateway.ws_bridge import start_bridge
from libs.config import SERVICE_NAMES, load_settings
from platformq.analytics.v1 import common_pb2, events_pb2, realtime_service_pb2, realtime_service_pb2_grpc
from services.context import ServiceContext
from services.runner import start_services
from tests.helpers import free_port


async def _health() -> tuple[int, dict]:
    """GET /health from a bridge started with the current environment."""
    runner, bridge, port = await start_bridge(load_settings(), port=0)
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{port}/health") as reply,
        ):
            return reply.status, await reply.json()
    finally:
        await runner.cleanup()
        await bridge.close()


async def test_health_is_200_when_every_service_serves(server, monkeypatch):
    monkeypatch.setenv("GRPC_PORT", str(server.port))
    status, body = await _health()
    assert status == 200
    assert body["services"]["ml"] == "SERVING"


async def test_health_is_503_naming_the_service_that_is_down(server, monkeypatch):
    monkeypatch.setenv("GRPC_PORT", str(server.port))
    monkeypatch.setenv("ML_ADDRESS", f"127.0.0.1:{free_port()}")  # nothing listens there
    status, body = await _health()
    assert status == 503
    assert body["status"] == "NOT_SERVING"
    assert body["services"]["ml"] == "UNREACHABLE (UNAVAILABLE)"
    assert body["services"]["query-router"] == "SERVING"


async def test_health_is_503_until_every_replica_serves(server, monkeypatch):
    # Envoy balances over every replica: one not listening yet would fail requests routed to it.
    down = f"127.0.0.1:{free_port()}"
    monkeypatch.setenv("GRPC_PORT", str(server.port))
    monkeypatch.setenv("REALTIME_ADDRESS", f"127.0.0.1:{server.port},{down}")
    status, body = await _health()
    assert status == 503
    assert body["services"]["realtime"] == f"NOT_SERVING ({down}: UNREACHABLE (UNAVAILABLE))"
    monkeypatch.setenv("REALTIME_ADDRESS", f"127.0.0.1:{server.port},127.0.0.1:{server.port}")
    status, body = await _health()
    assert (status, body["services"]["realtime"]) == (200, "SERVING")


async def test_health_is_503_while_services_drain(server, monkeypatch):
    monkeypatch.setenv("GRPC_PORT", str(server.port))
    await server.health.enter_graceful_shutdown()
    status, body = await _health()
    assert status == 503
    assert set(body["services"].values()) == {"NOT_SERVING", "SERVING"}


# Streams: the bridge serving the hub of a mode-all process, as `serve all` wires it.


@pytest.fixture
async def bridge(tmp_path):
    """A mode-all server and a bridge sharing its context; yields the bridge URL and a realtime stub."""
    settings = load_settings(data_dir=tmp_path, ws_heartbeat_seconds=0.3, anomaly_stream=False)
    context = ServiceContext(settings, hosted=SERVICE_NAMES)
    server = await start_services(list(SERVICE_NAMES), settings, 0, context=context)
    runner, ws_bridge, port = await start_bridge(settings, port=0, context=context)
    async with (
        aio.insecure_channel(f"127.0.0.1:{server.port}") as channel,
        aiohttp.ClientSession() as session,
    ):
        yield (
            f"ws://127.0.0.1:{port}/api/v1/ws",
            realtime_service_pb2_grpc.RealtimeServiceStub(channel),
            session,
        )
    await runner.cleanup()
    await ws_bridge.close()
    await server.stop(0)


async def _ingest(stub, name: str, labels: dict, ts: int, value: float) -> None:
    point = common_pb2.Point(name=name, labels=labels, timestamp_ms=ts, value=value)
    assert (await stub.IngestMetrics(realtime_service_pb2.IngestMetricsRequest(points=[point]))).accepted == 1


async def _data(ws) -> dict:
    """The next frame that is not a heartbeat."""
    while True:
        frame = await ws.receive_json(timeout=5)
        if frame["type"] != "heartbeat":
            return frame


async def test_a_stream_sends_hello_then_the_points_of_its_filter(bridge):
    base, stub, session = bridge
    t0 = int(time.time() * 1000)
    await _ingest(stub, "cpu_usage", {"service_name": "auth"}, t0, 1.0)
    async with session.ws_connect(f"{base}/metrics/cpu_usage?service_name=auth") as ws:
        hello = await _data(ws)
        assert hello["request"]["labels"] == {"service_name": "auth"} and hello["heartbeat_seconds"] == 0.3
        await _ingest(stub, "cpu_usage", {"service_name": "billing"}, t0 + 1, 2.0)
        await _ingest(stub, "cpu_usage", {"service_name": "auth"}, t0 + 2, 3.0)
        frame = await _data(ws)
        assert frame["series"] == [
            {
                "metric": "cpu_usage",
                "group": {"service_name": "auth"},
                "points": [{"timestamp_ms": str(t0 + 2), "value": 3.0}],
            }
        ]
        await ws.send_json({"type": "ping"})
        assert (await ws.receive_json(timeout=5))["type"] == "heartbeat"


async def test_a_client_sending_garbage_is_closed_and_its_neighbour_keeps_receiving(bridge):
    base, stub, session = bridge
    t0 = int(time.time() * 1000)
    await _ingest(stub, "rps", {}, t0, 1.0)
    async with (
        session.ws_connect(f"{base}/metrics/rps") as rude,
        session.ws_connect(f"{base}/metrics/rps") as calm,
    ):
        await _data(rude), await _data(calm)
        await rude.send_bytes(b"\x00\x01")
        closing = await _data(rude)
        assert closing["type"] == "closing" and "binary frames" in closing["reason"]
        assert (await rude.receive(timeout=5)).type == aiohttp.WSMsgType.CLOSE
        assert rude.close_code == 1003
        await _ingest(stub, "rps", {}, t0 + 1, 2.0)
        assert (await _data(calm))["series"][0]["points"] == [{"timestamp_ms": str(t0 + 1), "value": 2.0}]


@pytest.mark.parametrize("garbage", ["not json", '{"type": "subscribe"}', "[1, 2]"])
async def test_any_text_but_a_ping_closes_with_1003(bridge, garbage):
    base, _, session = bridge
    async with session.ws_connect(f"{base}/anomalies/all") as ws:
        await _data(ws)
        await ws.send_str(garbage)
        assert (await _data(ws))["type"] == "closing"
        assert (await ws.receive(timeout=5)).type == aiohttp.WSMsgType.CLOSE
        assert ws.close_code == 1003


async def test_an_unknown_metric_gets_a_closing_frame_saying_why(bridge):
    base, _, session = bridge
    async with session.ws_connect(f"{base}/metrics/no_such_metric") as ws:
        closing = await ws.receive_json(timeout=5)
        assert closing["type"] == "closing"
        assert closing["reason"].startswith("stream_id: metric 'no_such_metric' is not in datasource")
        assert (await ws.receive(timeout=5)).type == aiohttp.WSMsgType.CLOSE
        assert ws.close_code == 4404


@pytest.mark.parametrize(
    ("path", "status", "message"),
    [
        ("/weather/today", 404, "stream_type: 'weather' is not one of"),
        ("/metrics/cpu?step=soon", 400, "step: 'soon' is not a duration"),
        ("/metrics/cpu?aggregation=max", 400, "aggregation: needs a step"),
        ("/metrics/cpu?since=yesterday", 400, "since: 'yesterday' is not a cursor"),
        ("/analytics/q?query=%7Bnope", 400, "query: not a query body"),
        ("/dashboard/d?service_name=x", 400, "service_name: dashboard streams take no label filters"),
    ],
)
async def test_bad_requests_are_refused_before_the_upgrade(bridge, path, status, message):
    base, _, session = bridge
    async with session.get(base.replace("ws://", "http://") + path) as reply:
        assert reply.status == status
        body = await reply.json()
    assert body["code"] == status and body["message"].startswith(message), body


async def test_resume_after_reconnect_replays_the_missed_frames(bridge):
    base, stub, session = bridge
    t0 = int(time.time() * 1000)
    await _ingest(stub, "disk", {}, t0, 1.0)
    async with session.ws_connect(f"{base}/metrics/disk") as ws:
        cursor = (await _data(ws))["cursor"]  # the hello's: resume from before any data
    await _ingest(stub, "disk", {}, t0 + 1, 2.0)
    await _ingest(stub, "disk", {}, t0 + 2, 3.0)
    async with session.ws_connect(f"{base}/metrics/disk?since={cursor}") as ws:
        assert (await _data(ws))["type"] == "hello"
        values = [(await _data(ws))["series"][0]["points"][0]["value"] for _ in range(2)]
    assert values == [2.0, 3.0]


async def test_a_client_frame_over_the_size_limit_is_closed_with_1009(bridge):
    base, _, session = bridge
    async with session.ws_connect(f"{base}/alerts/all") as ws:
        await _data(ws)
        await ws.send_str('{"type": "ping", "pad": "' + "x" * 5000 + '"}')
        while (message := await ws.receive(timeout=5)).type == aiohttp.WSMsgType.TEXT:
            pass  # a heartbeat may come first
        assert message.type == aiohttp.WSMsgType.CLOSE
        assert ws.close_code == 1009


async def test_a_client_that_stops_reading_is_dropped_and_the_others_keep_receiving(tmp_path):
    settings = load_settings(data_dir=tmp_path, ws_client_max_lag_seconds=0.5, ws_client_queue_frames=10_000)
    runner, ws_bridge, port = await start_bridge(settings, port=0)  # its own context: in-process bus
    url = f"ws://127.0.0.1:{port}/api/v1/ws/alerts/all"
    summary = "x" * 200_000  # a few of these fill the socket buffers of a client that does not read
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.ws_connect(url) as stuck,
            session.ws_connect(url) as reader,
        ):
            await _data(stuck), await _data(reader)
            for i in range(60):
                event = events_pb2.AlertEvent(name="Big", state="firing", summary=summary, value=float(i))
                await ws_bridge.context.bus.publish("alerts.Big", event)
                assert (await _data(reader))["alert"].get("value", 0.0) == float(i)
            registry = ws_bridge.metrics.registry
            deadline = time.monotonic() + 10
            while (
                registry.get_sample_value("analytics_stream_clients_closed_total", {"reason": "lagged"}) != 1
            ):
                assert time.monotonic() < deadline, "the stuck client was never dropped"
                await asyncio.sleep(0.05)
            assert not reader.closed
    finally:
        await runner.cleanup()
        await ws_bridge.close()
