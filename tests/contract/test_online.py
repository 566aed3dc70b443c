"""Online learning over real gRPC, all four services in one server on a temporary DATA_DIR: the
seed body, kinds and tasks, predictions, bad input that learns nothing, a restart that resumes,
and a stream binding that learns from points ingested through IngestMetrics."""

from __future__ import annotations

import asyncio
import json
import time

import grpc
import numpy as np
import pytest
from google.protobuf import json_format
from grpc import aio

from libs.config import SERVICE_NAMES, load_settings
from platformq.analytics.v1 import (
    ml_service_pb2,
    ml_service_pb2_grpc,
    realtime_service_pb2,
    realtime_service_pb2_grpc,
)
from services.runner import start_services

SEED = {"model_name": "latency", "samples": [{"features": {"cpu": 0.7}, "target": 120}]}
BINDING = [{"model": "lat-host", "features": ["cpu_usage", "request_rate"], "target": "latency_p95"}]


async def _server(data_dir, **overrides):
    settings = load_settings(data_dir=data_dir, anomaly_stream=False, **overrides)
    return await start_services(list(SERVICE_NAMES), settings, 0)


@pytest.fixture
async def ml(tmp_path):
    server = await _server(tmp_path, online_bindings=json.dumps(BINDING))
    async with aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        yield ml_service_pb2_grpc.MLServiceStub(channel), channel
    await server.stop(0)


def _train(body: dict) -> ml_service_pb2.TrainOnlineRequest:
    return json_format.ParseDict(body, ml_service_pb2.TrainOnlineRequest())


def _linear(n: int, seed: int) -> tuple[list[dict], np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    cpu, rate = rng.uniform(0, 100, n), rng.uniform(10, 50, n)
    latency = 2 * cpu + 3 * rate + 50 + rng.normal(0, 2, n)
    samples = [
        {"features": {"cpu": float(c), "rate": float(r)}, "target": float(y)}
        for c, r, y in zip(cpu, rate, latency, strict=True)
    ]
    return samples, cpu, rate


async def test_the_seed_body_creates_a_linear_model_and_learns_the_sample(ml):
    stub, _ = ml
    reply = await stub.TrainOnline(_train(SEED))
    assert reply.created and (reply.samples_seen, reply.samples_learned) == (1, 1)
    assert (reply.kind, reply.task, reply.metric_name) == ("linear_regression", "regression", "mae")
    assert reply.metric == pytest.approx(120.0)  # the first sample is predicted as 0 before it is learned
    assert reply.model_version == "online-latency/unregistered"
    again = await stub.TrainOnline(_train(SEED))
    assert not again.created and again.samples_seen == 2


async def test_a_hoeffding_tree_learns_a_linear_target_and_predicts_samples_without_one(ml):
    stub, _ = ml
    samples, _, _ = _linear(800, seed=1)
    body = {
        "model_name": "tree",
        "kind": "hoeffding_tree",
        "samples": [*samples, {"features": {"cpu": 50, "rate": 30}}],
    }
    reply = await stub.TrainOnline(_train(body))
    assert reply.samples_seen == 800 and reply.metric < 15  # predicting the mean gives about 50
    (p,) = reply.predictions
    assert p.index == 800 and p.value == pytest.approx(240.0, abs=25.0)
    predicted = await stub.PredictOnline(
        ml_service_pb2.PredictOnlineRequest(
            model_name="tree", samples=[{"features": {"cpu": 50, "rate": 30}}]
        )
    )
    assert predicted.samples_seen == 800 and predicted.predictions[0].value == pytest.approx(p.value)


async def test_a_classifier_takes_labels_and_reports_accuracy(ml):
    stub, _ = ml
    rng = np.random.default_rng(2)
    cpu = rng.uniform(0, 1, 600)
    samples = [{"features": {"cpu": float(c)}, "label": "high" if c > 0.6 else "low"} for c in cpu]
    body = {
        "model_name": "errors",
        "kind": "adaptive_random_forest",
        "task": "classification",
        "samples": samples,
    }
    reply = await stub.TrainOnline(_train(body))
    assert reply.metric_name == "accuracy" and reply.metric > 0.85
    predicted = await stub.PredictOnline(
        ml_service_pb2.PredictOnlineRequest(model_name="errors", samples=[{"features": {"cpu": 0.95}}])
    )
    assert predicted.predictions[0].label == "high"


async def test_drift_is_reported_after_the_concept_changes(ml):
    stub, _ = ml
    samples, _, _ = _linear(1000, seed=3)
    first = await stub.TrainOnline(_train({"model_name": "drifty", "samples": samples}))
    assert first.drift_count == 0 and first.last_drift_at == ""
    changed = [{**s, "target": 500 - s["target"]} for s in _linear(600, seed=4)[0]]
    second = await stub.TrainOnline(_train({"model_name": "drifty", "samples": changed}))
    assert second.drift_count >= 1 and second.last_drift_at and 1000 < second.last_drift_sample <= 1300


@pytest.mark.parametrize(
    ("body", "field", "says"),
    [
        (
            {**SEED, "kind": "svm"},
            "kind",
            "linear_regression, logistic_regression, hoeffding_tree, adaptive_random_forest",
        ),
        (
            {"model_name": "c", "task": "classification", "samples": [{"features": {"x": 1}, "target": 0.5}]},
            "samples[0].target",
            "integer target or a label",
        ),
        (
            {"model_name": "latency", "samples": [{"features": {"x": 1}, "label": "a"}]},
            "samples[0].label",
            "numeric target",
        ),
        ({"model_name": "../etc", "samples": [{"features": {"x": 1}}]}, "model_name", "not a model name"),
        ({"model_name": "m"}, "samples", "at least one sample"),
    ],
)
async def test_bad_input_is_invalid_argument_naming_the_field(ml, body, field, says):
    stub, _ = ml
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.TrainOnline(_train(body))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith(f"{field}: ") and says in err.value.details()


async def test_a_bad_batch_learns_nothing_of_itself(ml):
    stub, _ = ml
    await stub.TrainOnline(
        _train(
            {"model_name": "cls", "task": "classification", "samples": [{"features": {"x": 1}, "target": 1}]}
        )
    )
    bad = [{"features": {"x": 2}, "target": 0}, {"features": {"x": 3}, "target": 2.5}]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.TrainOnline(_train({"model_name": "cls", "samples": bad}))
    assert err.value.details().startswith("samples[1].target: ")
    reply = await stub.PredictOnline(
        ml_service_pb2.PredictOnlineRequest(model_name="cls", samples=[{"features": {"x": 1}}])
    )
    assert reply.samples_seen == 1


async def test_predicting_with_an_unknown_model_is_not_found(ml):
    stub, _ = ml
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.PredictOnline(
            ml_service_pb2.PredictOnlineRequest(model_name="nope", samples=[{"features": {"x": 1}}])
        )
    assert err.value.code() == grpc.StatusCode.NOT_FOUND and "nope" in err.value.details()


async def test_a_restart_resumes_with_every_sample_learned(tmp_path):
    samples, _, _ = _linear(300, seed=5)
    server = await _server(tmp_path)
    async with aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = ml_service_pb2_grpc.MLServiceStub(channel)
        before = await stub.TrainOnline(
            _train({"model_name": "kept", "kind": "hoeffding_tree", "samples": samples})
        )
    await server.stop(0)
    server = await _server(tmp_path)
    async with aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = ml_service_pb2_grpc.MLServiceStub(channel)
        after = await stub.TrainOnline(_train({"model_name": "kept", "samples": samples[:10]}))
    await server.stop(0)
    assert not after.created and after.kind == "hoeffding_tree" and after.samples_seen == 310
    # The metric goes on over all 310 samples; a fresh model would score 10 samples from scratch.
    assert after.metric == pytest.approx(before.metric, rel=0.2)


async def test_checkpoints_are_registered_in_mlflow_and_give_the_model_version(tmp_path):
    samples, _, _ = _linear(150, seed=7)
    server = await _server(tmp_path, online_track_samples=100)
    try:
        async with aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = ml_service_pb2_grpc.MLServiceStub(channel)
            first = await stub.TrainOnline(_train({"model_name": "tracked", "samples": samples}))
            assert first.model_version == "online-tracked/unregistered"  # logged in the background
            probe = ml_service_pb2.PredictOnlineRequest(
                model_name="tracked", samples=[{"features": {"cpu": 1}}]
            )
            deadline = time.monotonic() + 60  # the first MLflow call imports MLflow: seconds
            while (reply := await stub.PredictOnline(probe)).model_version.endswith("unregistered"):
                assert time.monotonic() < deadline, "no MLflow checkpoint was registered"
                await asyncio.sleep(0.1)
            assert reply.model_version == "online-tracked/1"
            again = await stub.TrainOnline(_train({"model_name": "tracked", "samples": samples[:5]}))
            assert again.model_version == "online-tracked/1"  # 5 new samples: no new checkpoint is due
    finally:
        await server.stop(0)
    assert (tmp_path / "mlflow").exists()


async def test_a_stream_binding_learns_from_ingested_points(ml):
    stub, channel = ml
    rng = np.random.default_rng(6)
    n, step = 400, 10_000
    ts = (int(time.time() * 1000) // step - n) * step + step * np.arange(n, dtype=np.int64)
    cpu, rate = rng.uniform(5, 95, n), rng.uniform(10, 50, n)
    latency = 2 * cpu + 3 * rate + 50 + rng.normal(0, 2, n)
    ingest = realtime_service_pb2_grpc.RealtimeServiceStub(channel)
    for lo in range(0, n, 100):  # batches, as a live feed sends them
        request = realtime_service_pb2.IngestMetricsRequest(datasource="platform_metrics")
        for name, values in (("cpu_usage", cpu), ("request_rate", rate), ("latency_p95", latency)):
            request.series.add(
                name=name,
                labels={"host": "web-1"},
                timestamps_ms=ts[lo : lo + 100].tolist(),
                values=values[lo : lo + 100].tolist(),
            )
        assert (await ingest.IngestMetrics(request)).rejected == 0
    probe = ml_service_pb2.PredictOnlineRequest(
        model_name="lat-host", samples=[{"features": {"cpu_usage": 50, "request_rate": 30}}]
    )
    deadline = time.monotonic() + 20
    reply = None
    while time.monotonic() < deadline:
        try:
            reply = await stub.PredictOnline(probe)
        except grpc.aio.AioRpcError as err:
            assert err.code() == grpc.StatusCode.NOT_FOUND  # the first batch is not learned yet
        if reply is not None and reply.samples_seen == n:
            break
        await asyncio.sleep(0.1)
    assert reply is not None and reply.samples_seen == n, "the binding did not learn every ingested point"
    assert reply.predictions[0].value == pytest.approx(240.0, abs=25.0)
