"""Distributed mode over a real Pulsar broker: every service its own process, ingest through Pulsar
into the store, queries across processes; replicas and the consumer killed; a poison message."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import grpc
import pulsar
import pytest
from google.protobuf import struct_pb2
from grpc import aio

from platformq.analytics.v1 import common_pb2, query_service_pb2, query_service_pb2_grpc
from platformq.analytics.v1 import realtime_service_pb2 as rpb
from platformq.analytics.v1 import realtime_service_pb2_grpc as rgrpc
from tests.helpers import REPO_ROOT, alive, descendants, free_port, free_port_block, wait_until

pytestmark = pytest.mark.integration


def _batch(datasource: str, n: int, points: int = 20) -> rpb.IngestMetricsRequest:
    """Batch n: `points` points of series host=h<n % 4> with unique timestamps and values."""
    base = 1_795_000_000_000 + n * points * 1000
    series = common_pb2.Series(
        name="load",
        labels={"host": f"h{n % 4}"},
        timestamps_ms=[base + i * 1000 for i in range(points)],
        values=[float(n * points + i) for i in range(points)],
    )
    return rpb.IngestMetricsRequest(datasource=datasource, series=[series])


async def _stored(query_port: int, datasource: str) -> dict[tuple[str, int], list[float]]:
    """Every stored point of the datasource, by (host, ts), with every copy's value."""
    sql = "SELECT labels.host, ts, value FROM metrics WHERE datasource = ? ORDER BY 1, 2"
    async with aio.insecure_channel(f"127.0.0.1:{query_port}") as channel:
        stub = query_service_pb2_grpc.QueryServiceStub(channel)
        reply = await stub.Query(
            query_service_pb2.QueryRequest(
                sql=sql, params=[struct_pb2.Value(string_value=datasource)], mode="batch"
            )
        )
    found: dict[tuple[str, int], list[float]] = {}
    for row in reply.rows:
        host, ts, value = (getattr(v, v.WhichOneof("kind")) for v in row.values)
        found.setdefault((host, int(ts)), []).append(value)
    return found


def _expected(batches: list[rpb.IngestMetricsRequest]) -> dict[tuple[str, int], list[float]]:
    out = {}
    for batch in batches:
        for s in batch.series:
            for ts, value in zip(s.timestamps_ms, s.values, strict=True):
                out[(s.labels["host"], ts)] = [value]
    return out


async def _wait_for(query_port: int, datasource: str, acked: list[rpb.IngestMetricsRequest]) -> dict:
    expected = _expected(acked)
    deadline = time.monotonic() + 60
    while True:
        found = await _stored(query_port, datasource)
        if all(key in found for key in expected) or time.monotonic() > deadline:
            return found
        await asyncio.sleep(0.2)


async def _ingest(port: int, batch: rpb.IngestMetricsRequest) -> bool:
    async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            reply = await rgrpc.RealtimeServiceStub(channel).IngestMetrics(batch, timeout=10)
        except grpc.aio.AioRpcError:
            return False
    return reply.accepted == len(batch.series[0].values)


def _assert_exactly_once(found: dict, acked: list[rpb.IngestMetricsRequest]) -> None:
    expected = _expected(acked)
    missing = [key for key in expected if key not in found]
    assert not missing, f"{len(missing)} acknowledged points missing, e.g. {missing[:3]}"
    doubled = {key: values for key, values in found.items() if len(values) > 1}
    assert not doubled, f"{len(doubled)} points stored more than once, e.g. {list(doubled.items())[:3]}"
    assert all(found[key] == expected[key] for key in expected)


async def test_ingest_flows_through_pulsar_to_queries_across_processes(cluster):
    datasource = f"d{uuid.uuid4().hex[:8]}"
    replicas = [cluster["realtime-1"].port, cluster["realtime-2"].port]
    batches = [_batch(datasource, n) for n in range(40)]
    acked = [b for n, b in enumerate(batches) if await _ingest(replicas[n % 2], b)]
    assert len(acked) == 40  # both replicas take their share
    found = await _wait_for(cluster["query-router"].port, datasource, acked)
    _assert_exactly_once(found, acked)


async def test_a_replica_killed_mid_ingest_loses_no_acknowledged_point(cluster):
    datasource = f"d{uuid.uuid4().hex[:8]}"
    replicas = [cluster["realtime-1"], cluster["realtime-2"]]
    acked = []
    for n in range(60):
        if n == 30:
            replicas[0].kill()  # in the middle of the stream; its in-flight calls fail, unacknowledged
        batch = _batch(datasource, n)
        target = replicas[n % 2] if replicas[n % 2].proc.poll() is None else replicas[1]
        if await _ingest(target.port, batch):
            acked.append(batch)
    assert len(acked) >= 45
    found = await _wait_for(cluster["query-router"].port, datasource, acked)
    _assert_exactly_once(found, acked)


async def test_the_consumer_killed_mid_stream_loses_nothing_and_duplicates_nothing(cluster):
    datasource = f"d{uuid.uuid4().hex[:8]}"
    router = cluster["query-router"]
    replica = cluster["realtime-1"].port
    acked = []

    async def sustained(start: int, count: int) -> None:
        for n in range(start, start + count):
            batch = _batch(datasource, n, points=50)
            if await _ingest(replica, batch):
                acked.append(batch)

    await sustained(0, 30)
    await _wait_for(router.port, datasource, acked[:5])  # the consumer is storing
    await asyncio.gather(sustained(30, 40), asyncio.to_thread(router.kill))
    router.start()  # WAL replay plus Pulsar's redelivery of what was not acknowledged
    await sustained(70, 10)
    found = await _wait_for(router.port, datasource, acked)
    _assert_exactly_once(found, acked)
    assert len(acked) == 80  # the replica and Pulsar kept accepting while the consumer was down


async def test_a_poison_message_is_dead_lettered_reported_and_the_stream_flows(cluster, pulsar_broker):
    datasource = f"d{uuid.uuid4().hex[:8]}"
    topic = f"persistent://public/default/simulation.metrics.{datasource}"
    client = pulsar.Client(pulsar_broker.service_url)
    try:
        dlq = client.subscribe(
            f"{topic}.dlq", "test-dlq-reader", initial_position=pulsar.InitialPosition.Earliest
        )
        producer = client.create_producer(topic)
        producer.send(b"\x08\x96\x01 this is not a MetricsBatchEvent \xff")
        log = cluster["query-router"].log
        wait_until(
            lambda: "message dead-lettered" in log.read_text(), 60, "the poison message to be dead-lettered"
        )
        dead = dlq.receive(timeout_millis=30_000)
        assert b"not a MetricsBatchEvent" in dead.data()
        entry = next(
            json.loads(line)
            for line in log.read_text().splitlines()
            if line.startswith("{") and "message dead-lettered" in line
        )
        assert entry["level"] == "ERROR" and entry["topic"].endswith(datasource)
    finally:
        client.close()
    batch = _batch(datasource, 1)
    assert await _ingest(cluster["realtime-2"].port, batch)
    _assert_exactly_once(await _wait_for(cluster["query-router"].port, datasource, [batch]), [batch])


def test_make_up_distributed_serves_rest_through_envoy(pulsar_broker, tmp_path):
    gateway = free_port()
    env = {
        **os.environ,
        "DEMO": "0",
        "DATA_DIR": str(tmp_path),
        "GATEWAY_PORT": str(gateway),
        "ENVOY_ADMIN_PORT": str(free_port()),
        "WS_BRIDGE_PORT": str(free_port()),
        # The launcher gives the services GRPC_PORT and the four ports after it.
        "GRPC_PORT": str(free_port_block(5)),
        # The session's broker: the launcher finds it running and leaves it alone.
        "PULSAR_PORT": pulsar_broker.service_url.rsplit(":", 1)[1],
        "PULSAR_HTTP_PORT": pulsar_broker.http_url.rsplit(":", 1)[1],
    }
    (tmp_path / "pulsar").symlink_to(pulsar_broker.data_dir)
    launcher = subprocess.Popen(
        [str(Path(sys.executable).with_name("analytics")), "up-distributed"],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "up.log").open("w"),
    )
    base = f"http://127.0.0.1:{gateway}"

    def call(method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(base + path, data=data, method=method)
        try:
            with urllib.request.urlopen(request, timeout=10) as reply:
                return reply.status, json.loads(reply.read())
        except OSError as err:
            return getattr(err, "code", 0), {}

    try:
        wait_until(lambda: call("GET", "/health")[0] == 200, 120, "the distributed stack's /health")
        serving = [
            pid
            for pid in descendants(launcher.pid)
            if b"services.cli\x00serve\x00" in Path(f"/proc/{pid}/cmdline").read_bytes()
        ]
        assert len(serving) == 5  # query-router, two realtime replicas, ml, monitoring: one process each
        now = int(time.time() * 1000)
        points = [
            {"name": "rps", "value": float(i), "timestamp_ms": now - i * 1000, "labels": {"svc": "a"}}
            for i in range(50)
        ]
        status, reply = call("POST", "/api/v1/metrics/ingest", {"datasource": "dist_e2e", "points": points})
        assert (status, reply.get("accepted")) == (200, "50")
        query = {
            "datasource": "dist_e2e",
            "metrics": ["rps"],
            "aggregation": "count",
            "step": "1h",
            "start": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now / 1000 - 3600)),
            "end": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now / 1000 + 60)),
            "mode": "batch",
        }
        wait_until(
            lambda: (
                sum(
                    p["value"]
                    for s in call("POST", "/api/v1/query", query)[1].get("series", [])
                    for p in s["points"]
                )
                == 50
            ),
            60,
            "the points to answer queries",
        )
        children = descendants(launcher.pid)
        launcher.send_signal(signal.SIGTERM)
        launcher.wait(60)
        wait_until(lambda: not any(alive(pid) for pid in children), 30, "every child to exit")
        assert alive(int((pulsar_broker.data_dir / "pulsar.pid").read_text()))  # not ours to stop
    finally:
        if launcher.poll() is None:
            launcher.kill()


async def test_a_tenant_travels_with_its_batch_through_pulsar(cluster):
    """Tenant acme's batch, ingested on a realtime replica, is stored by the query-router's consumer
    as acme's: acme finds it, globex (on the same datasource) does not."""
    datasource = f"t{uuid.uuid4().hex[:8]}"
    acme = (("x-platformq-tenant", "acme"), ("x-platformq-scopes", "read write"))
    globex = (("x-platformq-tenant", "globex"), ("x-platformq-scopes", "read"))
    batch = _batch(datasource, 1)
    async with aio.insecure_channel(f"127.0.0.1:{cluster['realtime-1'].port}") as channel:
        reply = await rgrpc.RealtimeServiceStub(channel).IngestMetrics(batch, metadata=acme, timeout=10)
    assert reply.accepted == len(batch.series[0].values)
    sql = "SELECT count(*) FROM metrics WHERE datasource = ?"
    request = query_service_pb2.QueryRequest(
        sql=sql, params=[struct_pb2.Value(string_value=datasource)], mode="batch"
    )

    async def count(identity) -> int:
        async with aio.insecure_channel(f"127.0.0.1:{cluster['query-router'].port}") as channel:
            answer = await query_service_pb2_grpc.QueryServiceStub(channel).Query(request, metadata=identity)
        return int(answer.rows[0].values[0].number_value)

    deadline = time.monotonic() + 60
    while await count(acme) < len(batch.series[0].values):
        assert time.monotonic() < deadline, "acme's batch never reached the store"
        await asyncio.sleep(0.2)
    assert await count(globex) == 0
    assert await count(()) == 0  # no identity: tenant default, which has nothing of acme's either
