"""Dashboards over real gRPC: all four services in one server on a temporary DATA_DIR, the
synthetic platform of test_monitor ingested, every operation, the live refresh on the bus, and
a restart on the same DATA_DIR that keeps the stored dashboards."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from google.protobuf import json_format
from grpc import aio

from libs.bus import Envelope
from libs.config import SERVICE_NAMES
from platformq.analytics.v1 import events_pb2
from platformq.analytics.v1 import monitoring_service_pb2 as pb
from platformq.analytics.v1 import monitoring_service_pb2_grpc as pb_grpc
from services.context import ServiceContext
from services.runner import start_services
from tests.contract.test_monitor import ingest_platform, server_settings

SEED = {
    "name": "Service Performance",
    "type": "service-metrics",
    "config": {
        "services": ["auth-service", "analytics-service"],
        "metrics": ["latency", "throughput", "error_rate"],
        "time_range": "24h",
    },
    "refresh_interval": 30,
}


async def start(data_dir, **overrides):
    """A server sharing its context, so the test can listen on its bus."""
    # No dashboard cache: reads right after the ingest see it (the refresh ran before it).
    settings = server_settings(data_dir, dashboard_cache_ttl_seconds=0, **overrides)
    context = ServiceContext(settings, hosted=tuple(SERVICE_NAMES))
    server = await start_services(list(SERVICE_NAMES), settings, 0, context=context)
    return server, context


@pytest.fixture
async def served(tmp_path):
    server, context = await start(tmp_path, dashboard_min_refresh_seconds=0.5)
    async with aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        await ingest_platform(channel)
        yield pb_grpc.MonitoringServiceStub(channel), context
    await server.stop(0)


async def test_the_seed_body_creates_a_dashboard_read_by_id_and_by_type(served):
    stub, _ = served
    created = await stub.CreateDashboard(json_format.ParseDict(SEED, pb.CreateDashboardRequest()))
    board = created.dashboard
    assert len(board.id) == 32 and not board.builtin and board.created_at_ms == board.updated_at_ms > 0
    assert list(created.warnings) == [
        "metric 'latency' has no stored data in platform_metrics",
        "metric 'throughput' has no stored data in platform_metrics",
        "service 'analytics-service' has no data in platform_metrics over the last 24h",
    ]
    by_id = await stub.GetDashboard(pb.GetDashboardRequest(type=board.id))
    by_type = await stub.GetDashboard(pb.GetDashboardRequest(type="service-metrics"))
    assert by_id.dashboard == by_type.dashboard == board
    panels = {p.title: p for p in by_id.panels}
    assert len(panels) == 6
    errors = panels["auth-service · error_rate"]
    assert (errors.metric, errors.aggregation, errors.step, errors.warning) == (
        "error_rate",
        "avg",
        "15m",
        "",
    )
    assert {s.group["host"] for s in errors.series} == {"auth-service-1", "auth-service-2"}
    assert all(p.value == pytest.approx(0.01) for s in errors.series for p in s.points)
    assert panels["auth-service · latency"].warning.startswith(
        "metric 'latency' does not exist in platform_metrics"
    )
    assert panels["analytics-service · error_rate"].warning.startswith(
        "no data for error_rate of service_name="
    )


async def test_builtin_dashboards_work_with_no_set_up(served):
    stub, _ = served
    overview = await stub.GetDashboard(pb.GetDashboardRequest(type="platform-overview"))
    assert overview.dashboard.id == "builtin:platform-overview" and overview.dashboard.builtin
    assert [p.metric for p in overview.panels] == [
        "request_rate",
        "error_rate",
        "latency_p95",
        "cpu_usage",
        "memory_usage",
    ]
    assert all(len(p.series) == 3 and not p.warning for p in overview.panels)
    comparison = await stub.GetDashboard(pb.GetDashboardRequest(type="service-comparison"))
    errors = next(p for p in comparison.panels if p.metric == "error_rate")
    assert [s.group["service_name"] for s in errors.series] == [
        "api-gateway",
        "auth-service",
        "billing-service",
    ]
    resources = await stub.GetDashboard(pb.GetDashboardRequest(type="resource-utilization"))
    assert [p.title for p in resources.panels][:2] == [
        "cpu_usage per host",
        "cpu_usage per simulation resource",
    ]
    assert len(resources.panels[0].series) == 6 and len(resources.panels[1].series) == 4
    simulation = await stub.GetDashboard(pb.GetDashboardRequest(type="builtin:simulation"))
    assert [p.title for p in simulation.panels][:2] == ["sim-001 · cpu_usage", "sim-002 · cpu_usage"]
    metrics = await stub.GetDashboard(pb.GetDashboardRequest(type="service-metrics"))
    assert len(metrics.panels) == 3 * 6  # three services, six metrics each


async def test_list_update_and_delete(served):
    stub, _ = served
    created = (await stub.CreateDashboard(json_format.ParseDict(SEED, pb.CreateDashboardRequest()))).dashboard
    listed = await stub.ListDashboards(pb.ListDashboardsRequest())
    assert [d.id for d in listed.dashboards] == [
        "builtin:platform-overview",
        "builtin:service-metrics",
        "builtin:service-comparison",
        "builtin:resource-utilization",
        "builtin:simulation",
        created.id,
    ]
    assert not any(d.builtin for d in listed.dashboards[5:])
    only = await stub.ListDashboards(pb.ListDashboardsRequest(type="simulation"))
    assert [d.id for d in only.dashboards] == ["builtin:simulation"]
    updated = await stub.UpdateDashboard(
        pb.UpdateDashboardRequest(
            id=created.id,
            name="Errors",
            type="platform-overview",
            config=pb.DashboardConfig(metrics=["error_rate"], time_range="30m", step="5m", aggregation="max"),
            refresh_interval=60,
        )
    )
    assert (updated.dashboard.name, updated.dashboard.refresh_interval, list(updated.warnings)) == (
        "Errors",
        60,
        [],
    )
    reply = await stub.GetDashboard(pb.GetDashboardRequest(type=created.id))
    (panel,) = reply.panels
    assert (panel.title, panel.step, panel.aggregation) == ("error_rate by service", "5m", "max")
    assert all(len(s.points) <= 7 for s in panel.series)
    assert (await stub.DeleteDashboard(pb.DeleteDashboardRequest(id=created.id))).id == created.id
    with pytest.raises(aio.AioRpcError) as err:
        await stub.GetDashboard(pb.GetDashboardRequest(type=created.id))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert err.value.details().startswith(
        f"type: {created.id!r} is neither a dashboard id nor a dashboard type"
    )


@pytest.mark.parametrize(
    ("call", "code", "details"),
    [
        (
            lambda s: s.CreateDashboard(
                pb.CreateDashboardRequest(name="x", type="service-metrics", config={"time_range": "a day"})
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "config.time_range: 'a day' is not a duration",
        ),
        (
            lambda s: s.CreateDashboard(pb.CreateDashboardRequest(name="x", type="weather")),
            grpc.StatusCode.INVALID_ARGUMENT,
            "type: 'weather' is not a dashboard type",
        ),
        (
            lambda s: s.CreateDashboard(
                pb.CreateDashboardRequest(name="x", type="simulation", config={"step": "1x"})
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "config.step: ",
        ),
        (
            lambda s: s.UpdateDashboard(
                pb.UpdateDashboardRequest(id="builtin:simulation", name="x", type="simulation")
            ),
            grpc.StatusCode.FAILED_PRECONDITION,
            "id: 'builtin:simulation' is a built-in dashboard and cannot be changed",
        ),
        (
            lambda s: s.UpdateDashboard(pb.UpdateDashboardRequest(id="nope", name="x", type="simulation")),
            grpc.StatusCode.NOT_FOUND,
            "id: no stored dashboard has the id 'nope'",
        ),
        (
            lambda s: s.DeleteDashboard(pb.DeleteDashboardRequest(id="nope")),
            grpc.StatusCode.NOT_FOUND,
            "id: no stored dashboard has the id 'nope'",
        ),
        (
            lambda s: s.DeleteDashboard(pb.DeleteDashboardRequest(id="builtin:platform-overview")),
            grpc.StatusCode.FAILED_PRECONDITION,
            "id: 'builtin:platform-overview' is a built-in dashboard and cannot be deleted",
        ),
        (
            lambda s: s.GetDashboard(pb.GetDashboardRequest(type="")),
            grpc.StatusCode.INVALID_ARGUMENT,
            "type: must not be empty",
        ),
    ],
)
async def test_bad_dashboard_requests(served, call, code, details):
    stub, _ = served
    with pytest.raises(aio.AioRpcError) as err:
        await call(stub)
    assert err.value.code() == code
    assert err.value.details().startswith(details)


async def test_live_refresh_publishes_a_created_dashboard_on_its_topic(served):
    stub, context = served
    received: asyncio.Queue[Envelope] = asyncio.Queue()
    await context.bus.subscribe("dashboard.updates.*", "contract-test", received.put)
    created = (await stub.CreateDashboard(json_format.ParseDict(SEED, pb.CreateDashboardRequest()))).dashboard

    async def next_of_mine() -> Envelope:
        while (envelope := await received.get()).topic != f"dashboard.updates.{created.id}":
            pass
        return envelope

    envelope = await asyncio.wait_for(next_of_mine(), 20)
    event = envelope.decode(events_pb2.DashboardUpdateEvent)
    assert (event.dashboard_id, event.dashboard_type, event.tenant) == (
        created.id,
        "service-metrics",
        "default",
    )
    assert len(event.panels) == 6 and event.timestamp_ms > 0
    errors = next(p for p in event.panels if p.title == "auth-service · error_rate")
    assert len(errors.series) == 2


async def test_dashboards_survive_a_restart(tmp_path):
    server, _ = await start(tmp_path)
    async with aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        created = await pb_grpc.MonitoringServiceStub(channel).CreateDashboard(
            json_format.ParseDict(SEED, pb.CreateDashboardRequest())
        )
    await server.stop(0)
    again, _ = await start(tmp_path)
    async with aio.insecure_channel(f"127.0.0.1:{again.port}") as channel:
        stub = pb_grpc.MonitoringServiceStub(channel)
        listed = await stub.ListDashboards(pb.ListDashboardsRequest(type="service-metrics"))
        assert [d.id for d in listed.dashboards] == ["builtin:service-metrics", created.dashboard.id]
        reply = await stub.GetDashboard(pb.GetDashboardRequest(type=created.dashboard.id))
        assert reply.dashboard == created.dashboard
    await again.stop(0)
