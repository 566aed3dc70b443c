"""Live streams in distributed mode on a real Pulsar: an `analytics bridge` process follows the bus
on its own ephemeral subscription, so a point ingested through any realtime replica reaches its
WebSocket clients; stopping the bridge removes its subscription from the broker."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from urllib.parse import quote

import aiohttp
import pytest
from grpc import aio

from platformq.analytics.v1 import common_pb2, query_service_pb2, query_service_pb2_grpc
from platformq.analytics.v1 import realtime_service_pb2 as rpb
from platformq.analytics.v1 import realtime_service_pb2_grpc as rgrpc
from tests.helpers import REPO_ROOT, free_port, wait_until

pytestmark = pytest.mark.integration

TOPIC = "simulation.metrics.platform_metrics"


def _answers(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1):
            return True
    except urllib.error.HTTPError:
        return True  # 503: the bridge answers, some services (ml, monitoring) are not running here
    except OSError:
        return False


def _subscriptions(http_url: str) -> list[str]:
    path = f"{http_url}/admin/v2/persistent/public/default/{quote(TOPIC)}/stats"
    with urllib.request.urlopen(path, timeout=30) as reply:
        return list(json.loads(reply.read())["subscriptions"])


@pytest.fixture
def bridge(cluster, pulsar_broker, tmp_path):
    """`analytics bridge` on the cluster's broker; yields its port."""
    service = cluster["query-router"]
    port = free_port()
    env = {
        **service.env,
        "WS_BRIDGE_PORT": str(port),
        "QUERY_ROUTER_ADDRESS": f"127.0.0.1:{service.port}",
        "REALTIME_ADDRESS": f"127.0.0.1:{cluster['realtime-1'].port}",
        "SERVICE_NAME": "ws-bridge",
        "DATA_DIR": str(tmp_path / "bridge"),
    }
    log = (tmp_path / "bridge.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "services.cli", "bridge"], cwd=REPO_ROOT, env=env, stdout=log, stderr=log
    )
    try:
        wait_until(lambda: _answers(port) or process.poll() is not None, 60, "the bridge to listen")
        assert process.poll() is None, (tmp_path / "bridge.log").read_text()[-3000:]
        yield port, process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.wait(30)
        log.close()


async def _ingest(port: int, ts: int, value: float) -> None:
    series = common_pb2.Series(name="load", labels={"host": "h9"}, timestamps_ms=[ts], values=[value])
    async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        reply = await rgrpc.RealtimeServiceStub(channel).IngestMetrics(
            rpb.IngestMetricsRequest(series=[series])
        )
    assert reply.accepted == 1, reply


async def _stored(query_port: int) -> bool:
    async with aio.insecure_channel(f"127.0.0.1:{query_port}") as channel:
        reply = await query_service_pb2_grpc.QueryServiceStub(channel).GetMetadata(
            query_service_pb2.GetMetadataRequest(datasource="platform_metrics")
        )
    return any(m.name == "load" for m in reply.metrics)


async def _data(ws) -> dict:
    while True:
        frame = await ws.receive_json(timeout=30)
        if frame["type"] != "heartbeat":
            return frame


async def test_a_point_ingested_through_a_replica_reaches_the_bridges_websocket(
    cluster, pulsar_broker, bridge
):
    port, process = bridge
    now = int(time.time() * 1000)
    # The metric must exist (the bridge asks the query-router) and the topic too.
    await _ingest(cluster["realtime-1"].port, now - 1000, 1.0)
    deadline = time.monotonic() + 60
    while not await _stored(cluster["query-router"].port):
        assert time.monotonic() < deadline, "the first point was never stored"
        await asyncio.sleep(0.2)  # polling period
    url = f"ws://127.0.0.1:{port}/api/v1/ws/metrics/load?host=h9"
    async with aiohttp.ClientSession() as session, session.ws_connect(url) as ws:
        assert (await _data(ws))["type"] == "hello"
        subscribed = [s for s in _subscriptions(pulsar_broker.http_url) if s.startswith("streams-")]
        assert len(subscribed) == 1, subscribed
        for replica, ts, value in (("realtime-2", now, 2.0), ("realtime-1", now + 1, 3.0)):
            await _ingest(cluster[replica].port, ts, value)
            frame = await _data(ws)
            assert frame["series"] == [
                {
                    "metric": "load",
                    "group": {"host": "h9"},
                    "points": [{"timestamp_ms": str(ts), "value": value}],
                }
            ]
    process.send_signal(signal.SIGTERM)
    assert process.wait(30) == 0
    # Ephemeral: the bridge deleted its subscription, so no backlog accumulates for a dead process.
    assert not [s for s in _subscriptions(pulsar_broker.http_url) if s.startswith("streams-")]
