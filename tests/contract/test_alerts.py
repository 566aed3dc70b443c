"""Alerts over real gRPC: a mode-all server with a temporary DATA_DIR and thresholds set very low
evaluates the rules over the self-metrics it writes into `analytics_self` itself (the real path:
query telemetry, the self-metrics writer, the query-router's raw read), fires, publishes the
AlertEvent on the bus, lists it, and keeps it and its history across a restart. A monitoring
service whose query-router cannot be reached raises EngineConnectionFailure."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest
from grpc import aio

from libs.config import SERVICE_NAMES, load_settings
from platformq.analytics.v1 import (
    events_pb2,
    monitoring_service_pb2,
    monitoring_service_pb2_grpc,
    query_service_pb2,
    query_service_pb2_grpc,
    realtime_service_pb2,
    realtime_service_pb2_grpc,
)
from services.context import ServiceContext
from services.runner import start_services
from tests.helpers import free_port

FAST = {
    "alert_eval_seconds": 0.3,
    "alert_for_seconds": 0,
    "alert_window_seconds": 120,
    "alert_realtime_query_seconds": 0.000001,
    "self_metrics_interval_seconds": 0.3,
    "anomaly_stream": False,
}


async def eventually(probe, timeout: float, what: str):
    """Poll the async `probe` until it returns something truthy; fail naming `what`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = await probe()
        if found:
            return found
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


async def list_alerts(channel, **filters) -> monitoring_service_pb2.ListAlertsResponse:
    stub = monitoring_service_pb2_grpc.MonitoringServiceStub(channel)
    return await stub.ListAlerts(monitoring_service_pb2.ListAlertsRequest(**filters))


async def some_realtime_queries(channel) -> None:
    """A point ingested now, read back from the hot tier: queries the telemetry counts as realtime."""
    now = int(time.time() * 1000)
    ingest = realtime_service_pb2_grpc.RealtimeServiceStub(channel)
    batch = realtime_service_pb2.IngestMetricsRequest()
    batch.points.add(name="cpu_usage", value=42.0, timestamp_ms=now, labels={"service_name": "auth-service"})
    assert (await ingest.IngestMetrics(batch)).accepted == 1
    query = query_service_pb2_grpc.QueryServiceStub(channel)
    for _ in range(3):
        reply = await query.Query(
            query_service_pb2.QueryRequest(metrics=["cpu_usage"], time_range="5m", mode="realtime")
        )
        assert list(reply.metadata.engines) == ["hot"]


async def test_slow_realtime_query_fires_is_published_listed_and_survives_a_restart(tmp_path):
    settings = load_settings(data_dir=tmp_path, **FAST)
    context = ServiceContext(settings, hosted=tuple(SERVICE_NAMES))
    events: list[events_pb2.AlertEvent] = []

    async def on_alert(envelope):
        events.append(events_pb2.AlertEvent.FromString(envelope.payload))

    await context.bus.subscribe("alerts.*", "contract-test", on_alert)
    server = await start_services(list(SERVICE_NAMES), settings, 0, context=context)
    try:
        async with aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            await some_realtime_queries(channel)

            async def firing():
                reply = await list_alerts(channel, name="SlowRealtimeQuery", state="firing")
                return [a for a in reply.alerts if a.labels["engine"] == "hot"]

            (alert, *_) = await eventually(firing, 30, "SlowRealtimeQuery to fire")
            assert alert.severity == "warning" and alert.threshold == pytest.approx(0.000001)
            assert alert.value > alert.threshold and alert.labels["mode"] == "realtime"
            assert alert.labels["instance"] == "all" and alert.labels["replica"]
            assert "p99 realtime query time" in alert.summary
            assert alert.active_since_ms == alert.timestamp_ms > 0

            def published():
                return [
                    e
                    for e in events
                    if e.name == "SlowRealtimeQuery" and dict(e.labels) == dict(alert.labels)
                ]

            (event, *_) = await eventually(
                lambda: asyncio.sleep(0, published()), 10, "the AlertEvent on alerts.SlowRealtimeQuery"
            )
            assert (event.state, event.from_state, event.severity) == ("firing", "inactive", "warning")
            assert event.active_since_ms == alert.active_since_ms and event.threshold == alert.threshold
            gauge = context.metrics.registry.get_sample_value(
                "analytics_alerts_active", {"alertname": "SlowRealtimeQuery", "state": "firing"}
            )
            assert gauge >= 1

            everything = await list_alerts(channel)
            transition = next(
                t
                for t in everything.history
                if t.alert.name == "SlowRealtimeQuery" and t.alert.labels == alert.labels
            )
            assert (transition.from_state, transition.alert.state) == ("inactive", "firing")
            slow = next(r for r in everything.rules if r.name == "SlowRealtimeQuery")
            assert slow.threshold == pytest.approx(0.000001) and len(everything.rules) == 7
            assert all(r.for_seconds == 0 and "PromQL" in r.expression for r in everything.rules)
            assert not (await list_alerts(channel, state="pending", name="SlowRealtimeQuery")).alerts
            assert not (await list_alerts(channel, severity="critical", name="SlowRealtimeQuery")).history
    finally:
        await server.stop(0)

    # Same DATA_DIR: the alert is still firing since the same moment, the history is intact.
    server = await start_services(list(SERVICE_NAMES), load_settings(data_dir=tmp_path, **FAST), 0)
    try:
        async with aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            again = await list_alerts(channel, name="SlowRealtimeQuery")
            same = [a for a in again.alerts if a.labels == alert.labels]
            assert [(a.state, a.active_since_ms) for a in same] == [("firing", alert.active_since_ms)]
            assert transition.id in {t.id for t in again.history}
    finally:
        await server.stop(0)


async def test_an_unreachable_query_router_raises_engine_connection_failure(tmp_path):
    nowhere = f"127.0.0.1:{free_port()}"
    settings = load_settings(
        data_dir=tmp_path,
        query_router_address=nowhere,
        realtime_address=nowhere,
        ml_address=nowhere,
        alert_eval_seconds=0.3,
        alert_for_seconds=0,
        self_metrics_interval_seconds=0,
    )
    server = await start_services(["monitoring"], settings, 0)
    try:
        async with aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:

            async def firing():
                reply = await list_alerts(channel, name="EngineConnectionFailure", state="firing")
                return reply.alerts

            (alert,) = await eventually(firing, 30, "EngineConnectionFailure to fire")
            assert alert.labels["engine"] == "query-router" and alert.labels["instance"] == "monitoring"
            assert alert.severity == "critical" and alert.value >= 1
            assert "query-router" in alert.summary
            # Nothing else could be read, so nothing else changed.
            assert [a.name for a in (await list_alerts(channel)).alerts] == ["EngineConnectionFailure"]
    finally:
        await server.stop(0)


async def test_a_bad_filter_is_invalid_argument_naming_the_field(server, channel):
    with pytest.raises(aio.AioRpcError) as err:
        await list_alerts(channel, state="burning")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith("state: 'burning' is not a state")
