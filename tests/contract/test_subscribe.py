"""RealtimeService.Subscribe over real gRPC, all four services in one server on a temporary DATA_DIR:
ingest then frame, analytics diffs, resume, bad parameters and unknown ids as statuses, and a
client that cancels leaves no subscriber behind."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest
from grpc import aio

from libs.config import SERVICE_NAMES, load_settings
from platformq.analytics.v1 import common_pb2, events_pb2, query_service_pb2
from platformq.analytics.v1 import realtime_service_pb2 as pb
from platformq.analytics.v1 import realtime_service_pb2_grpc as grpc_pb
from services.context import ServiceContext
from services.runner import start_services


@pytest.fixture
async def mode_all(tmp_path):
    """A mode-all server and its context (the hub's bus and metrics), with a stub of realtime."""
    settings = load_settings(data_dir=tmp_path, ws_heartbeat_seconds=0.5, anomaly_stream=False)
    context = ServiceContext(settings, hosted=SERVICE_NAMES)
    server = await start_services(list(SERVICE_NAMES), settings, 0, context=context)
    async with aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        yield grpc_pb.RealtimeServiceStub(channel), context
    await server.stop(0)


def _now() -> int:
    return int(time.time() * 1000)


async def _ingest(stub, name: str, labels: dict, ts: int, value: float) -> None:
    point = common_pb2.Point(name=name, labels=labels, timestamp_ms=ts, value=value)
    reply = await stub.IngestMetrics(pb.IngestMetricsRequest(points=[point]))
    assert reply.accepted == 1, reply


async def _next_data(call, timeout: float = 5.0) -> pb.SubscribeResponse:
    """The next frame that is not a heartbeat."""
    async with asyncio.timeout(timeout):
        while True:
            frame = await call.read()
            assert frame is not grpc.aio.EOF, "the stream ended"
            if frame.type != "heartbeat":
                return frame


async def _eventually(predicate, what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def test_an_ingested_point_arrives_as_a_metrics_frame(mode_all):
    stub, _ = mode_all
    t0 = _now()
    await _ingest(stub, "cpu_usage", {"service_name": "auth"}, t0, 1.0)
    call = stub.Subscribe(
        pb.SubscribeRequest(stream_type="metrics", stream_id="cpu_usage", labels={"service_name": "auth"})
    )
    hello = await _next_data(call)
    assert hello.type == "hello" and hello.request.datasource == "platform_metrics"
    assert hello.heartbeat_seconds == 0.5
    await _ingest(stub, "cpu_usage", {"service_name": "billing"}, t0 + 1, 5.0)  # filtered out
    await _ingest(stub, "cpu_usage", {"service_name": "auth"}, t0 + 2, 42.5)
    frame = await _next_data(call)
    assert frame.type == "data" and frame.cursor
    (series,) = frame.series
    assert (series.metric, dict(series.group)) == ("cpu_usage", {"service_name": "auth"})
    assert [(p.timestamp_ms, p.value) for p in series.points] == [(t0 + 2, 42.5)]
    call.cancel()


async def test_a_cancelled_subscription_leaves_no_subscriber(mode_all):
    stub, context = mode_all
    call = stub.Subscribe(pb.SubscribeRequest(stream_type="anomalies", stream_id="all"))
    assert (await _next_data(call)).type == "hello"
    registry = context.metrics.registry
    assert registry.get_sample_value("analytics_stream_subscribers", {"stream_type": "anomalies"}) == 1
    call.cancel()
    await _eventually(
        lambda: registry.get_sample_value("analytics_stream_subscribers", {"stream_type": "anomalies"}) == 0,
        "the subscriber to be removed",
    )


async def test_resume_with_since_replays_the_frames_missed(mode_all):
    stub, _ = mode_all
    t0 = _now()
    await _ingest(stub, "mem", {}, t0, 1.0)
    request = pb.SubscribeRequest(stream_type="metrics", stream_id="mem")
    first = stub.Subscribe(request)
    await _next_data(first)
    await _ingest(stub, "mem", {}, t0 + 1, 2.0)
    cursor = (await _next_data(first)).cursor
    first.cancel()
    await _ingest(stub, "mem", {}, t0 + 2, 3.0)
    await _ingest(stub, "mem", {}, t0 + 3, 4.0)
    resumed = stub.Subscribe(pb.SubscribeRequest(stream_type="metrics", stream_id="mem", since=cursor))
    assert (await _next_data(resumed)).type == "hello"
    missed = [await _next_data(resumed) for _ in range(2)]
    assert [f.series[0].points[0].value for f in missed] == [3.0, 4.0]
    resumed.cancel()


async def test_an_analytics_stream_sends_the_whole_answer_then_only_what_changed(mode_all):
    stub, _ = mode_all
    step = 60_000
    bucket = _now() // step * step
    await _ingest(stub, "latency", {"service_name": "a"}, bucket, 10.0)
    await _ingest(stub, "latency", {"service_name": "b"}, bucket, 20.0)
    query = query_service_pb2.QueryRequest(
        metrics=["latency"], time_range="10m", step="1m", group_by=["service_name"], aggregation="max"
    )
    call = stub.Subscribe(pb.SubscribeRequest(stream_type="analytics", stream_id="latency-max", query=query))
    assert (await _next_data(call)).type == "hello"
    whole = await _next_data(call)
    assert {s.group["service_name"]: [p.value for p in s.points] for s in whole.series} == {
        "a": [10.0],
        "b": [20.0],
    }
    await _ingest(stub, "latency", {"service_name": "a"}, bucket + 1, 15.0)
    change = await _next_data(call)
    assert [(dict(s.group), [(p.timestamp_ms, p.value) for p in s.points]) for s in change.series] == [
        ({"service_name": "a"}, [(bucket, 15.0)])
    ]
    call.cancel()


async def test_dashboard_updates_on_the_bus_reach_dashboard_subscribers(mode_all):
    stub, context = mode_all
    call = stub.Subscribe(pb.SubscribeRequest(stream_type="dashboard", stream_id="platform-overview"))
    assert (await _next_data(call)).type == "hello"
    panel = common_pb2.Panel(title="CPU", metric="cpu_usage")
    event = events_pb2.DashboardUpdateEvent(dashboard_id="platform-overview", panels=[panel])
    await context.bus.publish("dashboard.updates.platform-overview", event)
    frame = await _next_data(call)
    while frame.panels and frame.panels[0].title != "CPU":  # skip the current state sent first, if any
        frame = await _next_data(call)
    assert [p.title for p in frame.panels] == ["CPU"]
    call.cancel()


@pytest.mark.parametrize(
    ("request_fields", "status", "message"),
    [
        (
            {"stream_type": "weather", "stream_id": "x"},
            grpc.StatusCode.INVALID_ARGUMENT,
            "stream_type: 'weather'",
        ),
        (
            {"stream_type": "metrics", "stream_id": ""},
            grpc.StatusCode.INVALID_ARGUMENT,
            "stream_id: must not be",
        ),
        (
            {"stream_type": "metrics", "stream_id": "cpu", "step": "soon"},
            grpc.StatusCode.INVALID_ARGUMENT,
            "step:",
        ),
        (
            {"stream_type": "metrics", "stream_id": "cpu", "aggregation": "p99", "step": "10s"},
            grpc.StatusCode.INVALID_ARGUMENT,
            "aggregation: 'p99' is not allowed",
        ),
        (
            {"stream_type": "analytics", "stream_id": "q"},
            grpc.StatusCode.INVALID_ARGUMENT,
            "query: an analytics",
        ),
        (
            {
                "stream_type": "analytics",
                "stream_id": "q",
                "query": {"metrics": ["x"], "aggregation": "median"},
            },
            grpc.StatusCode.INVALID_ARGUMENT,
            "query.aggregation:",
        ),
        (
            {"stream_type": "metrics", "stream_id": "no_such_metric"},
            grpc.StatusCode.NOT_FOUND,
            "stream_id: metric",
        ),
        (
            {"stream_type": "metrics", "stream_id": "cpu", "datasource": "nope"},
            grpc.StatusCode.NOT_FOUND,
            "datasource:",
        ),
    ],
)
async def test_bad_subscriptions_are_refused_naming_the_field(mode_all, request_fields, status, message):
    stub, _ = mode_all
    request = pb.SubscribeRequest()
    query = request_fields.pop("query", None)
    for name, value in request_fields.items():
        setattr(request, name, value)
    if query:
        request.query.metrics.extend(query["metrics"])
        request.query.aggregation = query["aggregation"]
    call = stub.Subscribe(request)
    with pytest.raises(aio.AioRpcError) as err:
        await call.read()
    assert err.value.code() == status
    assert err.value.details().startswith(message), err.value.details()
