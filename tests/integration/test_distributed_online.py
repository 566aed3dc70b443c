"""Online stream bindings in distributed mode: an ml process on a real Pulsar broker learns a bound
model from points ingested through the realtime replicas (features and target of one host, in
separate batches and on separate replicas), and after an ml restart resumes with every sample
learned: redelivered points are not learned twice and new points go on counting."""

from __future__ import annotations

import asyncio
import json
import time
import uuid

import grpc
import numpy as np
import pytest
from grpc import aio

from platformq.analytics.v1 import ml_service_pb2, ml_service_pb2_grpc
from tests.integration.conftest import ingest_in_chunks, start_ml

pytestmark = pytest.mark.integration

STEP_MS = 10_000


def _points(start: int, n: int, seed: int):
    """cpu and rps of host h1 every 10 s, and the latency they make (2 cpu + rps / 20 + 10, noise 1)."""
    rng = np.random.default_rng(seed)
    ts = start + STEP_MS * np.arange(n, dtype=np.int64)
    cpu = rng.uniform(20, 80, n)
    rps = rng.uniform(100, 500, n)
    return ts, cpu, rps, 2 * cpu + rps / 20 + 10 + rng.normal(0, 1, n)


async def _ingest(cluster, datasource: str, ts, cpu, rps, lat) -> None:
    for name, values in (("cpu", cpu), ("rps", rps), ("lat", lat)):
        await ingest_in_chunks(cluster, datasource, name, {"host": "h1"}, ts, values, 50)


async def _learned(
    port: int, model: str, count: int, timeout: float = 60.0
) -> ml_service_pb2.PredictOnlineResponse:
    """PredictOnline on the model once it has seen `count` samples (the stream is asynchronous)."""
    probe = ml_service_pb2.PredictOnlineRequest(
        model_name=model, samples=[{"features": {"cpu": 50, "rps": 300}}]
    )
    deadline = time.monotonic() + timeout
    reply = None
    async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = ml_service_pb2_grpc.MLServiceStub(channel)
        while time.monotonic() < deadline:
            try:
                reply = await stub.PredictOnline(probe, timeout=10)
            except aio.AioRpcError as exc:
                assert exc.code() == grpc.StatusCode.NOT_FOUND, exc  # nothing learned yet
            else:
                if reply.samples_seen >= count:
                    return reply
            await asyncio.sleep(0.5)
    raise AssertionError(
        f"{model} saw {reply.samples_seen if reply else 0} samples, not {count}, in {timeout} s"
    )


async def test_a_binding_learns_from_the_pulsar_stream_and_survives_an_ml_restart(
    cluster, pulsar_broker, tmp_path
):
    datasource = f"o{uuid.uuid4().hex[:8]}"
    model = f"lat-{datasource}"
    binding = json.dumps(
        [{"model": model, "features": ["cpu", "rps"], "target": "lat", "datasource": datasource}]
    )
    env = {"ONLINE_BINDINGS": binding, "ANOMALY_STREAM": "0"}
    ml = start_ml(cluster, pulsar_broker.service_url, tmp_path / "ml", **env)
    try:
        start = int(time.time() * 1000) // STEP_MS * STEP_MS - 400 * STEP_MS
        await _ingest(cluster, datasource, *_points(start, 300, seed=1))
        reply = await _learned(ml.port, model, 300)
        assert reply.samples_seen == 300 and reply.metric_name == "mae"
        # learned, prequentially (each sample scored before it was learned), from a target spread
        # over 60 to 200: a model that learned nothing would be tens off
        assert reply.metric < 8
        assert abs(reply.predictions[0].value - 125) < 8  # 2 * 50 + 300 / 20 + 10
    finally:
        ml.stop()

    # Restarted on the same DATA_DIR: the checkpoint holds every sample, redeliveries are skipped,
    # and the new points are learned on top.
    ml = start_ml(cluster, pulsar_broker.service_url, tmp_path / "ml", **env)
    try:
        resumed = await _learned(ml.port, model, 300)
        assert resumed.samples_seen == 300
        await _ingest(cluster, datasource, *_points(start + 300 * STEP_MS, 100, seed=2))
        more = await _learned(ml.port, model, 400)
        assert more.samples_seen == 400 and more.metric <= reply.metric + 1
        assert abs(more.predictions[0].value - 125) < 8
    finally:
        ml.stop()
