"""Forecasts in distributed mode: the ml process reads the stored history from the query-router
over gRPC (points ingested through the realtime replicas and stored by the query-router's Pulsar
consumer) and publishes the forecast on `predictions.forecast` on a real Pulsar broker."""

from __future__ import annotations

import asyncio
import time
import uuid

import grpc
import numpy as np
import pytest
from grpc import aio

from libs.bus.pulsar import PulsarBus
from platformq.analytics.v1 import (
    events_pb2,
    ml_service_pb2,
    ml_service_pb2_grpc,
    query_service_pb2,
    query_service_pb2_grpc,
)
from tests.integration.conftest import ingest_in_chunks, start_ml

pytestmark = pytest.mark.integration

HOUR_MS = 3_600_000


async def test_the_ml_process_forecasts_stored_history_and_publishes_on_pulsar(
    cluster, pulsar_broker, tmp_path
):
    datasource = f"f{uuid.uuid4().hex[:8]}"
    ml = start_ml(cluster, pulsar_broker.service_url, tmp_path / "ml", ANOMALY_STREAM="0")
    bus = PulsarBus(pulsar_broker.service_url)
    published: list[events_pb2.PredictionEvent] = []

    async def collect(envelope) -> None:
        published.append(envelope.decode(events_pb2.PredictionEvent))

    try:
        await bus.subscribe("predictions.forecast", f"test-{datasource}", collect)
        n = 24 * 7  # a week of hourly points with a daily cycle
        end = int(time.time() * 1000) // HOUR_MS * HOUR_MS
        ts = end - HOUR_MS * np.arange(n, 0, -1, dtype=np.int64)
        values = 50 + 10 * np.sin(2 * np.pi * np.arange(n) / 24)
        await ingest_in_chunks(cluster, datasource, "load", {"host": "h1"}, ts, values, 42)
        # The query-router's consumer stores the batches shortly after Pulsar has them.
        stored = query_service_pb2.QueryRequest(
            datasource=datasource, metrics=["load"], aggregation="raw", time_range="8d", mode="realtime"
        )
        async with aio.insecure_channel(f"127.0.0.1:{cluster['query-router'].port}") as channel:
            router = query_service_pb2_grpc.QueryServiceStub(channel)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                try:
                    answer = await router.Query(stored, timeout=10)
                except aio.AioRpcError as exc:
                    assert exc.code() == grpc.StatusCode.NOT_FOUND, exc  # nothing stored yet
                else:
                    if sum(len(s.points) for s in answer.series) == n:
                        break
                await asyncio.sleep(0.5)
        request = ml_service_pb2.ForecastRequest(
            metric="load",
            labels={"host": "h1"},
            datasource=datasource,
            horizon=24,
            step="1h",
            method="seasonal_naive",
        )
        async with aio.insecure_channel(f"127.0.0.1:{ml.port}") as channel:
            reply = await ml_service_pb2_grpc.MLServiceStub(channel).Forecast(request, timeout=60)
        forecast = reply.series[0]
        # Seasonal naive repeats the last stored day: the stored history came through the query-router.
        assert [round(p.value, 6) for p in forecast.points] == [round(v, 6) for v in values[-24:]]
        deadline = time.monotonic() + 30
        while not any(e.datasource == datasource for e in published) and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        event = next(e for e in published if e.datasource == datasource)
        assert (event.kind, event.metric, dict(event.labels)) == ("forecast", "load", {"host": "h1"})
        assert len(event.points) == 24 and event.points[0].timestamp_ms == int(ts[-1]) + HOUR_MS
    finally:
        await bus.close()
        ml.stop()
