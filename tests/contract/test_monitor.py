"""Monitor scopes over real gRPC: all four services in one server on a temporary DATA_DIR, a
small synthetic platform with the demo's metric names ingested through IngestMetrics, anomalies
found by the ml service on a stored selection."""

from __future__ import annotations

import time

import grpc
import numpy as np
import pytest
import pytest_asyncio
from grpc import aio

from libs.config import SERVICE_NAMES, load_settings
from platformq.analytics.v1 import (
    ml_service_pb2,
    ml_service_pb2_grpc,
    realtime_service_pb2,
    realtime_service_pb2_grpc,
)
from platformq.analytics.v1 import monitoring_service_pb2 as pb
from platformq.analytics.v1 import monitoring_service_pb2_grpc as pb_grpc
from services.runner import start_services

STEP = 10_000
POINTS = 360  # one hour
# (service, error_rate, seconds since its newest point)
SERVICES = (("auth-service", 0.01, 0), ("api-gateway", 0.2, 0), ("billing-service", 0.002, 600))
SIMULATIONS = ("sim-001", "sim-002")
SPIKE_AT = POINTS - 30  # five minutes ago: auth-service-1's latency jumps tenfold for one point

pytestmark = pytest.mark.asyncio(loop_scope="module")


def synthetic_platform() -> realtime_service_pb2.IngestMetricsRequest:
    """An hour of three services (two hosts each, the demo's six metrics) and two simulations
    (cpu, gpu, memory, disk resources; sim-001's gpu saturated)."""
    rng = np.random.default_rng(5)
    end = int(time.time() * 1000) // STEP * STEP
    request = realtime_service_pb2.IngestMetricsRequest(datasource="platform_metrics")

    def add(name: str, labels: dict[str, str], level: float, age_s: int = 0, noise: float = 0.0) -> None:
        ts = end - age_s * 1000 - STEP * np.arange(POINTS)[::-1]
        values = level + (rng.normal(0, noise, POINTS) if noise else np.zeros(POINTS))
        if name == "latency_p95" and labels.get("host") == "auth-service-1":
            values[SPIKE_AT] = level * 10
        request.series.add(name=name, labels=labels, timestamps_ms=ts.tolist(), values=values.tolist())

    for service, errors, age in SERVICES:
        for h in (1, 2):
            labels = {"service_name": service, "host": f"{service}-{h}", "region": "eu-west-1"}
            add("request_rate", labels, 100.0 * h, age)
            add("error_rate", labels, errors, age)
            add("latency_p95", labels, 50.0 * h, age, noise=1.0)
            add("cpu_usage", labels, 40.0 + h, age)
            add("memory_usage", labels, 60.0, age)
            add("disk_io", labels, 10.0, age)
    for sim in SIMULATIONS:
        gpu = 95.0 if sim == "sim-001" else 60.0
        for name, resource, level in (
            ("cpu_usage", "cpu", 50.0),
            ("cpu_usage", "gpu", gpu),
            ("memory_usage", "memory", 70.0),
            ("disk_io", "disk", 300.0),
        ):
            add(name, {"simulation_id": sim, "resource": resource}, level)
    return request


async def ingest_platform(channel: aio.Channel) -> None:
    reply = await realtime_service_pb2_grpc.RealtimeServiceStub(channel).IngestMetrics(synthetic_platform())
    assert reply.rejected == 0 and reply.accepted == (len(SERVICES) * 12 + len(SIMULATIONS) * 4) * POINTS


def server_settings(data_dir, **overrides):
    """A quiet mode-all server: no live anomaly scoring or self-metrics writer competing for CPU."""
    base = {"anomaly_stream": False, "self_metrics_interval_seconds": 0, "ml_checkpoint_seconds": 3600}
    return load_settings(data_dir=data_dir, **{**base, **overrides})


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def platform(tmp_path_factory):
    server = await start_services(list(SERVICE_NAMES), server_settings(tmp_path_factory.mktemp("monitor")), 0)
    async with aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        await ingest_platform(channel)
        # The ml service finds the latency spike on a stored selection and keeps it.
        found = await ml_service_pb2_grpc.MLServiceStub(channel).DetectAnomalies(
            ml_service_pb2.DetectAnomaliesRequest(
                selection={
                    "metrics": ["latency_p95"],
                    "labels": {"service_name": "auth-service", "host": "auth-service-1"},
                    "time_range": "2h",
                },
                config={"method": "mad"},
            )
        )
        assert found.anomalies, found.message
        yield pb_grpc.MonitoringServiceStub(channel)
    await server.stop(0)


async def test_platform_scope(platform):
    reply = await platform.Monitor(pb.MonitorRequest(scope="platform"))
    entities = {e.name: e for e in reply.entities}
    assert list(entities) == ["api-gateway", "auth-service", "billing-service"]
    auth = entities["auth-service"]
    assert (auth.status, auth.kind, auth.recent_anomalies) == ("healthy", "service", 1)
    assert auth.metrics["request_rate"] == pytest.approx(300)
    assert auth.metrics["error_rate"] == pytest.approx(0.01)
    assert auth.metrics["cpu_usage"] == pytest.approx(41.5)
    assert auth.last_seen_ms > int(time.time() * 1000) - 60_000
    assert (entities["api-gateway"].status, list(entities["api-gateway"].reasons)) == (
        "degraded",
        ["error_rate 0.2 >= 0.05"],
    )
    assert entities["billing-service"].status == "down"
    assert reply.status == "down" and reply.time_range == "1h"
    assert [a.metric for a in reply.recent_anomalies] == ["latency_p95"]
    assert reply.recent_anomalies[0].labels["host"] == "auth-service-1"
    assert reply.analytics.name == "analytics" and reply.analytics.status == "healthy"
    assert reply.analytics.metrics["peers_serving"] == 4
    assert len(reply.series) == 15  # three services x the five platform metrics


async def test_service_scope(platform):
    reply = await platform.Monitor(pb.MonitorRequest(scope="service", id="auth-service", time_range="30m"))
    assert [(e.name, e.kind) for e in reply.entities] == [
        ("auth-service", "service"),
        ("auth-service-1", "host"),
        ("auth-service-2", "host"),
    ]
    errors = next(c for c in reply.comparison if c.metric == "error_rate")
    assert (errors.rank, errors.peers) == (2, 3)
    assert errors.peer_min == pytest.approx(0.002) and errors.peer_max == pytest.approx(0.2)
    assert {s.metric for s in reply.series} == {
        "request_rate",
        "error_rate",
        "latency_p95",
        "cpu_usage",
        "memory_usage",
        "disk_io",
    }
    assert all(s.group["service_name"] == "auth-service" for s in reply.series)
    assert len(reply.recent_anomalies) == 1 and reply.entities[1].recent_anomalies == 1


async def test_simulation_scope(platform):
    reply = await platform.Monitor(pb.MonitorRequest(scope="simulation", id="sim-001"))
    assert reply.status == "degraded"
    assert [(e.name, e.kind, e.status) for e in reply.entities] == [
        ("sim-001", "simulation", "degraded"),
        ("sim-001/cpu", "resource", "healthy"),
        ("sim-001/disk", "resource", "healthy"),
        ("sim-001/gpu", "resource", "degraded"),
        ("sim-001/memory", "resource", "healthy"),
    ]
    assert reply.entities[0].metrics['cpu_usage{resource="gpu"}'] == pytest.approx(95)
    healthy = await platform.Monitor(pb.MonitorRequest(scope="simulation", id="sim-002"))
    assert healthy.status == "healthy"


async def test_resource_scope(platform):
    reply = await platform.Monitor(pb.MonitorRequest(scope="resource"))
    kinds = {(e.kind, e.name) for e in reply.entities}
    assert len([k for k in kinds if k[0] == "host"]) == 6
    assert {n for k, n in kinds if k == "resource"} == {
        f"{sim}/{r}" for sim in SIMULATIONS for r in ("cpu", "gpu", "memory", "disk")
    }
    host = await platform.Monitor(pb.MonitorRequest(scope="resource", id="auth-service-2"))
    assert [(e.name, e.status) for e in host.entities] == [("auth-service-2", "healthy")]
    assert host.entities[0].metrics["cpu_usage"] == pytest.approx(42)
    gpus = await platform.Monitor(pb.MonitorRequest(scope="resource", id="gpu"))
    assert [(e.name, e.status) for e in gpus.entities] == [
        ("sim-001/gpu", "degraded"),
        ("sim-002/gpu", "healthy"),
    ]
    assert gpus.status == "degraded"


@pytest.mark.parametrize(
    ("request_fields", "code", "details"),
    [
        ({"scope": "galaxy"}, grpc.StatusCode.INVALID_ARGUMENT, "scope: 'galaxy' is not a scope"),
        ({"scope": "service"}, grpc.StatusCode.INVALID_ARGUMENT, "id: the service scope needs an id"),
        ({"scope": "platform", "time_range": "a while"}, grpc.StatusCode.INVALID_ARGUMENT, "time_range: "),
        ({"scope": "service", "id": "nope"}, grpc.StatusCode.NOT_FOUND, "id: no service named 'nope'"),
        (
            {"scope": "simulation", "id": "sim-9"},
            grpc.StatusCode.NOT_FOUND,
            "id: no simulation named 'sim-9'",
        ),
        (
            {"scope": "resource", "id": "h9"},
            grpc.StatusCode.NOT_FOUND,
            "id: no host or resource is named 'h9'",
        ),
    ],
)
async def test_bad_monitor_requests(platform, request_fields, code, details):
    with pytest.raises(aio.AioRpcError) as err:
        await platform.Monitor(pb.MonitorRequest(**request_fields))
    assert err.value.code() == code
    assert err.value.details().startswith(details)
