"""Tenants and scopes over real gRPC, all four services in one server on a temporary DATA_DIR.

The identity headers Envoy sets (`x-platformq-tenant`, `x-platformq-scopes`) are sent here as gRPC
metadata directly: tenant A ingests, and tenant B finds none of it on any read path; a read-only
caller cannot write; AUTH_MODE=none without headers is tenant `default`; AUTH_MODE=jwt refuses a
call without a tenant."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import grpc
import numpy as np
import pytest
from grpc import aio

from gateway.ws_bridge import start_bridge
from libs.config import SERVICE_NAMES, load_settings
from libs.timeparse import format_time_ms
from platformq.analytics.v1 import (
    common_pb2,
    ml_service_pb2,
    ml_service_pb2_grpc,
    monitoring_service_pb2,
    monitoring_service_pb2_grpc,
    query_service_pb2,
    query_service_pb2_grpc,
)
from platformq.analytics.v1 import realtime_service_pb2 as rt
from platformq.analytics.v1 import realtime_service_pb2_grpc as rt_grpc
from services.context import ServiceContext
from services.runner import start_services

STEP = 10_000
N = 400


def who(tenant: str, scopes: str = "read write") -> tuple[tuple[str, str], ...]:
    """The metadata Envoy would set for a caller of `tenant` with `scopes`."""
    return (("x-platformq-tenant", tenant), ("x-platformq-scopes", scopes))


A, B = who("tenant-a"), who("tenant-b")


def _now() -> int:
    return int(time.time() * 1000)


class Stubs:
    """A stub of every service on one channel."""

    def __init__(self, channel: aio.Channel) -> None:
        self.query = query_service_pb2_grpc.QueryServiceStub(channel)
        self.realtime = rt_grpc.RealtimeServiceStub(channel)
        self.ml = ml_service_pb2_grpc.MLServiceStub(channel)
        self.monitoring = monitoring_service_pb2_grpc.MonitoringServiceStub(channel)


async def _serve(tmp_path, **overrides):
    settings = load_settings(data_dir=tmp_path, anomaly_stream=False, ml_checkpoint_seconds=3600, **overrides)
    server = await start_services(list(SERVICE_NAMES), settings, 0)
    channel = aio.insecure_channel(f"127.0.0.1:{server.port}")
    return server, channel


@pytest.fixture
async def stubs(tmp_path):
    server, channel = await _serve(tmp_path)
    yield Stubs(channel)
    await channel.close()
    await server.stop(0)


def _history(n: int = N) -> rt.IngestMetricsRequest:
    """cpu_usage of one service, every 10 s until now, with a spike near the end."""
    rng = np.random.default_rng(7)
    ts = (_now() // STEP - n) * STEP + STEP * np.arange(n, dtype=np.int64)
    values = 50 + rng.normal(0, 1, n)
    values[-5] = 400.0
    request = rt.IngestMetricsRequest(datasource="platform_metrics")
    request.series.add(
        name="cpu_usage", labels={"service_name": "auth"}, timestamps_ms=ts.tolist(), values=values.tolist()
    )
    return request


async def _denied(call, code: grpc.StatusCode) -> str:
    with pytest.raises(aio.AioRpcError) as caught:
        await call
    assert caught.value.code() == code, caught.value.details()
    return caught.value.details()


async def _nothing(call, field: str) -> None:
    """The answer holds nothing in `field`, or the call says NOT_FOUND (an unknown datasource)."""
    try:
        reply = await call
    except aio.AioRpcError as exc:
        assert exc.code() == grpc.StatusCode.NOT_FOUND, exc.details()
        return
    assert not getattr(reply, field), reply


async def test_tenant_b_finds_nothing_of_tenant_a_on_any_read_path(stubs):
    reply = await stubs.realtime.IngestMetrics(_history(), metadata=A)
    assert (reply.accepted, reply.rejected) == (N, 0)

    query = query_service_pb2.QueryRequest(metrics=["cpu_usage"], time_range="2h", mode="auto")
    assert len((await stubs.query.Query(query, metadata=A)).series) == 1
    await _nothing(stubs.query.Query(query, metadata=B), "series")

    series = query_service_pb2.QueryTimeseriesRequest(
        datasource="platform_metrics",
        metrics=["cpu_usage"],
        intervals=[f"{format_time_ms(_now() - 7_200_000)}/{format_time_ms(_now() + 60_000)}"],
        granularity="minute",
    )
    assert (await stubs.query.QueryTimeseries(series, metadata=A)).results
    await _nothing(stubs.query.QueryTimeseries(series, metadata=B), "results")

    meta = query_service_pb2.GetMetadataRequest(datasource="platform_metrics")
    assert [m.name for m in (await stubs.query.GetMetadata(meta, metadata=A)).metrics] == ["cpu_usage"]
    await _nothing(stubs.query.GetMetadata(meta, metadata=B), "metrics")

    sql = query_service_pb2.QueryRequest(sql="SELECT count(*) AS n FROM metrics", mode="batch")
    a_rows = (await stubs.query.Query(sql, metadata=A)).rows
    assert a_rows[0].values[0].number_value == N
    try:
        b_rows = (await stubs.query.Query(sql, metadata=B)).rows
    except aio.AioRpcError as exc:  # B has no view at all
        assert exc.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT), exc.details()
    else:
        assert b_rows[0].values[0].number_value == 0

    export = monitoring_service_pb2.ExportPrometheusRequest(match=["cpu_usage"])
    assert b"cpu_usage{" in (await stubs.monitoring.ExportPrometheus(export, metadata=A)).data
    assert b"cpu_usage" not in (await stubs.monitoring.ExportPrometheus(export, metadata=B)).data


async def test_anomalies_and_forecasts_stay_with_their_tenant(stubs):
    await stubs.realtime.IngestMetrics(_history(), metadata=A)
    detect = ml_service_pb2.DetectAnomaliesRequest(
        selection={"metrics": ["cpu_usage"], "time_range": "2h"}, config={"method": "mad"}
    )
    found = await stubs.ml.DetectAnomalies(detect, metadata=A)
    assert found.is_anomaly and found.anomalies
    assert not (await stubs.ml.DetectAnomalies(detect, metadata=B)).anomalies

    listing = ml_service_pb2.ListAnomaliesRequest(method="mad", time_range="2h")
    assert (await stubs.ml.ListAnomalies(listing, metadata=A)).anomalies
    assert not (await stubs.ml.ListAnomalies(listing, metadata=B)).anomalies
    assert (await stubs.ml.GetAnomalyStats(ml_service_pb2.GetAnomalyStatsRequest(), metadata=A)).methods
    assert not (await stubs.ml.GetAnomalyStats(ml_service_pb2.GetAnomalyStatsRequest(), metadata=B)).methods
    # B cannot judge A's anomaly either: to B it does not exist.
    feedback = ml_service_pb2.SubmitAnomalyFeedbackRequest(id=found.anomalies[0].id, feedback="true_positive")
    await _denied(stubs.ml.SubmitAnomalyFeedback(feedback, metadata=B), grpc.StatusCode.NOT_FOUND)

    forecast = ml_service_pb2.ForecastRequest(
        metric="cpu_usage", horizon=3, step="10s", method="seasonal_naive"
    )
    assert (await stubs.ml.Forecast(forecast, metadata=A, timeout=120)).series
    b_forecast = await stubs.ml.Forecast(forecast, metadata=B, timeout=120)
    assert not b_forecast.series and "no stored series" in b_forecast.message


async def test_dashboards_stay_with_their_tenant(stubs):
    created = await stubs.monitoring.CreateDashboard(
        monitoring_service_pb2.CreateDashboardRequest(
            name="A's", type="service-metrics", config={"services": ["auth"], "metrics": ["cpu_usage"]}
        ),
        metadata=A,
    )
    dashboard_id = created.dashboard.id
    listed_a = await stubs.monitoring.ListDashboards(
        monitoring_service_pb2.ListDashboardsRequest(), metadata=A
    )
    listed_b = await stubs.monitoring.ListDashboards(
        monitoring_service_pb2.ListDashboardsRequest(), metadata=B
    )
    assert dashboard_id in [d.id for d in listed_a.dashboards]
    assert dashboard_id not in [d.id for d in listed_b.dashboards]
    get = monitoring_service_pb2.GetDashboardRequest(type=dashboard_id)
    assert (await stubs.monitoring.GetDashboard(get, metadata=A)).dashboard.id == dashboard_id
    await _denied(stubs.monitoring.GetDashboard(get, metadata=B), grpc.StatusCode.NOT_FOUND)
    delete = monitoring_service_pb2.DeleteDashboardRequest(id=dashboard_id)
    await _denied(stubs.monitoring.DeleteDashboard(delete, metadata=B), grpc.StatusCode.NOT_FOUND)
    assert (await stubs.monitoring.DeleteDashboard(delete, metadata=A)).id == dashboard_id


async def _next_data(call) -> rt.SubscribeResponse:
    async with asyncio.timeout(10):
        while True:
            frame = await call.read()
            assert frame is not aio.EOF, "the stream ended"
            if frame.type not in ("heartbeat", "hello"):
                return frame


async def test_a_subscriber_gets_its_own_tenants_frames_only(stubs):
    t0 = _now()

    def point(value: float, ts: int) -> rt.IngestMetricsRequest:
        return rt.IngestMetricsRequest(
            points=[
                common_pb2.Point(
                    name="cpu_usage", labels={"service_name": "auth"}, timestamp_ms=ts, value=value
                )
            ]
        )

    # Both tenants hold the metric, so both streams open.
    await stubs.realtime.IngestMetrics(point(1.0, t0), metadata=A)
    await stubs.realtime.IngestMetrics(point(2.0, t0), metadata=B)
    subscribe = rt.SubscribeRequest(stream_type="metrics", stream_id="cpu_usage")
    call_b = stubs.realtime.Subscribe(subscribe, metadata=B)
    hello = await call_b.read()
    assert hello.type == "hello"
    await stubs.realtime.IngestMetrics(point(111.0, t0 + 1), metadata=A)
    await stubs.realtime.IngestMetrics(point(222.0, t0 + 2), metadata=B)
    frame = await _next_data(call_b)
    # A's point came first on the bus: had it leaked, it would be in this frame or before it.
    assert [p.value for s in frame.series for p in s.points] == [222.0]
    call_b.cancel()


@pytest.mark.parametrize(
    "call",
    [
        lambda s, md: s.realtime.IngestMetrics(_history(10), metadata=md),
        lambda s, md: s.monitoring.CreateDashboard(
            monitoring_service_pb2.CreateDashboardRequest(name="x", type="service-metrics"), metadata=md
        ),
        lambda s, md: s.ml.TrainOnline(
            ml_service_pb2.TrainOnlineRequest(
                model_name="m", samples=[{"features": {"x": 1.0}, "target": 1.0}]
            ),
            metadata=md,
        ),
        lambda s, md: s.ml.DetectAnomalies(
            ml_service_pb2.DetectAnomaliesRequest(selection={"metrics": ["cpu_usage"], "time_range": "1h"}),
            metadata=md,
        ),
    ],
    ids=["ingest", "create-dashboard", "train-online", "detect-stored-selection"],
)
async def test_a_read_only_caller_cannot_write_and_is_told_the_missing_scope(stubs, call):
    details = await _denied(call(stubs, who("tenant-a", "read")), grpc.StatusCode.PERMISSION_DENIED)
    assert "missing scope 'write'" in details


async def test_a_write_scope_can_write_and_admin_alone_cannot_read(stubs):
    reply = await stubs.realtime.IngestMetrics(_history(10), metadata=who("tenant-a", "write"))
    assert reply.accepted == 10
    query = query_service_pb2.QueryRequest(metrics=["cpu_usage"], time_range="2h")
    details = await _denied(
        stubs.query.Query(query, metadata=who("tenant-a", "admin")), grpc.StatusCode.PERMISSION_DENIED
    )
    assert "missing scope 'read'" in details
    # The service's own metrics are the operator's: admin.
    own = monitoring_service_pb2.ExportPrometheusRequest()
    details = await _denied(
        stubs.monitoring.ExportPrometheus(own, metadata=A), grpc.StatusCode.PERMISSION_DENIED
    )
    assert "missing scope 'admin'" in details


async def test_without_headers_in_mode_none_a_call_is_tenant_default_with_every_scope(stubs):
    assert (await stubs.realtime.IngestMetrics(_history(10))).accepted == 10
    meta = query_service_pb2.GetMetadataRequest(datasource="platform_metrics")
    assert (await stubs.query.GetMetadata(meta, metadata=who("default", "read"))).metrics
    await _nothing(stubs.query.GetMetadata(meta, metadata=A), "metrics")
    assert (
        b"# HELP"
        in (await stubs.monitoring.ExportPrometheus(monitoring_service_pb2.ExportPrometheusRequest())).data
    )


async def test_a_bad_tenant_id_is_unauthenticated_naming_the_header(stubs):
    meta = query_service_pb2.GetMetadataRequest(datasource="platform_metrics")
    details = await _denied(
        stubs.query.GetMetadata(meta, metadata=who("../etc", "read")), grpc.StatusCode.UNAUTHENTICATED
    )
    assert details.startswith("x-platformq-tenant:")


async def test_in_mode_jwt_a_call_without_a_tenant_is_unauthenticated(tmp_path):
    server, channel = await _serve(tmp_path, auth_mode="jwt")
    try:
        stubs = Stubs(channel)
        details = await _denied(stubs.realtime.IngestMetrics(_history(10)), grpc.StatusCode.UNAUTHENTICATED)
        assert "x-platformq-tenant" in details
        call = stubs.realtime.Subscribe(rt.SubscribeRequest(stream_type="anomalies", stream_id="all"))
        with pytest.raises(aio.AioRpcError) as caught:
            await call.read()
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        # With the gateway's headers everything works, and health needs none.
        assert (await stubs.realtime.IngestMetrics(_history(10), metadata=A)).accepted == 10
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        assert health.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        await channel.close()
        await server.stop(0)


async def test_online_models_are_the_tenants_own(stubs):
    train = ml_service_pb2.TrainOnlineRequest(
        model_name="latency", samples=[{"features": {"x": float(i)}, "target": 2.0 * i} for i in range(20)]
    )
    trained = await stubs.ml.TrainOnline(train, metadata=A)
    assert (trained.model_name, trained.created) == ("latency", True)
    predict = ml_service_pb2.PredictOnlineRequest(model_name="latency", samples=[{"features": {"x": 3.0}}])
    assert (await stubs.ml.PredictOnline(predict, metadata=A)).model_name == "latency"
    details = await _denied(stubs.ml.PredictOnline(predict, metadata=B), grpc.StatusCode.NOT_FOUND)
    assert "no online model 'latency'" in details
    # B's model of the same name is another model.
    assert (await stubs.ml.TrainOnline(train, metadata=B)).created


@pytest.mark.parametrize("auth_mode", ["none", "jwt"])
async def test_a_websocket_streams_the_tenant_of_its_upgrade_headers(tmp_path, auth_mode):
    settings = load_settings(data_dir=tmp_path, anomaly_stream=False, auth_mode=auth_mode)
    context = ServiceContext(settings, hosted=SERVICE_NAMES)
    server = await start_services(list(SERVICE_NAMES), settings, 0, context=context)
    runner, ws_bridge, port = await start_bridge(settings, port=0, context=context)
    base = f"ws://127.0.0.1:{port}/api/v1/ws/metrics/cpu_usage"
    t0 = _now()

    def point(value: float, ts: int) -> rt.IngestMetricsRequest:
        sample = common_pb2.Point(
            name="cpu_usage", labels={"service_name": "auth"}, timestamp_ms=ts, value=value
        )
        return rt.IngestMetricsRequest(points=[sample])

    try:
        async with (
            aio.insecure_channel(f"127.0.0.1:{server.port}") as channel,
            aiohttp.ClientSession() as session,
        ):
            stub = rt_grpc.RealtimeServiceStub(channel)
            await stub.IngestMetrics(point(1.0, t0), metadata=A)
            await stub.IngestMetrics(point(2.0, t0), metadata=B)
            async with session.get(base, headers=dict(who("tenant-b", "write"))) as refused:
                assert refused.status == 403
                assert "missing scope 'read'" in (await refused.json())["message"]
            async with session.get(base) as anonymous:
                # Mode jwt: no identity, refused before anything else. Mode none: admitted as tenant
                # default, then refused because a plain GET is not an upgrade.
                assert anonymous.status == (401 if auth_mode == "jwt" else 400)
            async with session.ws_connect(base, headers=dict(B)) as ws:
                assert (await ws.receive_json(timeout=5))["type"] == "hello"
                await stub.IngestMetrics(point(111.0, t0 + 1), metadata=A)
                await stub.IngestMetrics(point(222.0, t0 + 2), metadata=B)
                while (frame := await ws.receive_json(timeout=5))["type"] == "heartbeat":
                    pass
                assert [p["value"] for s in frame["series"] for p in s["points"]] == [222.0]
    finally:
        await runner.cleanup()
        await ws_bridge.close()
        await server.stop(0)
