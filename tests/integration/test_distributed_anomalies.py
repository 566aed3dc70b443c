"""The ml service in distributed mode: its own process consumes `simulation.metrics.*` from a real
Pulsar broker, scores the stream, publishes `anomalies.<datasource>` on Pulsar and lists what it
found; history comes from the query-router over gRPC."""

from __future__ import annotations

import asyncio
import time
import uuid

import numpy as np
import pytest
from grpc import aio

from libs.bus.pulsar import PulsarBus
from platformq.analytics.v1 import events_pb2, ml_service_pb2, ml_service_pb2_grpc
from tests.integration.conftest import ingest_in_chunks, start_ml

pytestmark = pytest.mark.integration


async def test_the_ml_process_scores_the_pulsar_stream_and_publishes_anomalies(
    cluster, pulsar_broker, tmp_path
):
    datasource = f"a{uuid.uuid4().hex[:8]}"
    ml = start_ml(cluster, pulsar_broker.service_url, tmp_path / "ml")
    bus = PulsarBus(pulsar_broker.service_url)
    published: list[events_pb2.AnomalyEvent] = []

    async def collect(envelope) -> None:
        published.append(envelope.decode(events_pb2.AnomalyEvent))

    try:
        await bus.subscribe(f"anomalies.{datasource}", f"test-{datasource}", collect)
        rng = np.random.default_rng(4)
        n, spike = 400, 330
        ts = 1_795_000_000_000 + 10_000 * np.arange(n, dtype=np.int64)
        values = 40 + rng.normal(0, 1, n)
        values[spike] += 12
        await ingest_in_chunks(cluster, datasource, "lat", {"host": "h1"}, ts, values, 50)
        deadline = time.monotonic() + 60
        while not any(e.timestamp_ms == ts[spike] for e in published) and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        event = next(e for e in published if e.timestamp_ms == ts[spike])
        assert (event.metric, dict(event.labels), event.datasource) == ("lat", {"host": "h1"}, datasource)
        assert event.score >= event.threshold and event.method == "auto" and event.id
        async with aio.insecure_channel(f"127.0.0.1:{ml.port}") as channel:
            listed = await ml_service_pb2_grpc.MLServiceStub(channel).ListAnomalies(
                ml_service_pb2.ListAnomaliesRequest(datasource=datasource)
            )
        assert event.id in {a.id for a in listed.anomalies}
        assert all(a.source == "stream" for a in listed.anomalies)
    finally:
        await bus.close()
        ml.stop()
