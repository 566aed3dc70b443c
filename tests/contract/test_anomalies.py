"""Anomaly detection over real gRPC, all four services in one server on a temporary DATA_DIR:
the seed's snapshot body, stored selections, inline series, the live scorer, the anomaly store,
feedback and the cache. History is ingested through IngestMetrics like any client's."""

from __future__ import annotations

import asyncio
import time

import grpc
import numpy as np
import pytest
from google.protobuf import json_format
from grpc import aio

from libs.config import SERVICE_NAMES, load_settings
from libs.timeparse import format_time_ms
from platformq.analytics.v1 import (
    ml_service_pb2,
    ml_service_pb2_grpc,
    realtime_service_pb2,
    realtime_service_pb2_grpc,
)
from services.ml.detectors.base import onsets, threshold_for
from services.runner import start_services

SEED = {
    "simulation_id": "sim-123",
    "metrics": {"cpu": 95.0, "memory": 87.5, "disk_io": 1200},
    "config": {"method": "isolation_forest", "sensitivity": 0.95},
}
STEP = 10_000


def _now() -> int:
    return int(time.time() * 1000)


async def _ingest(channel, datasource: str, series: list[tuple[str, dict, np.ndarray, np.ndarray]]) -> None:
    stub = realtime_service_pb2_grpc.RealtimeServiceStub(channel)
    request = realtime_service_pb2.IngestMetricsRequest(datasource=datasource)
    for name, labels, ts, values in series:
        request.series.add(name=name, labels=labels, timestamps_ms=ts.tolist(), values=values.tolist())
    reply = await stub.IngestMetrics(request)
    assert reply.rejected == 0, reply.errors


def _sim_history(sim: str, n: int = 400, seed: int = 1):
    """Normal behaviour of one simulation: cpu ~50, memory ~87, disk_io ~1200, every 10 s until now."""
    rng = np.random.default_rng(seed)
    ts = (_now() // STEP - n) * STEP + STEP * np.arange(n, dtype=np.int64)
    return [
        ("cpu", {"simulation_id": sim}, ts, 50 + rng.normal(0, 2, n)),
        ("memory", {"simulation_id": sim}, ts, 87 + rng.normal(0, 1, n)),
        ("disk_io", {"simulation_id": sim}, ts, 1200 + rng.normal(0, 40, n)),
    ]


async def _server(data_dir, **overrides):
    settings = load_settings(data_dir=data_dir, ml_checkpoint_seconds=3600, **overrides)
    return await start_services(list(SERVICE_NAMES), settings, 0)


@pytest.fixture
async def ml(data_dir):
    server = await _server(data_dir)
    async with aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        yield ml_service_pb2_grpc.MLServiceStub(channel), channel
    await server.stop(0)


async def test_the_seed_body_without_history_answers_with_score_zero_and_says_why(ml):
    stub, _ = ml
    reply = await stub.DetectAnomalies(json_format.ParseDict(SEED, ml_service_pb2.DetectAnomaliesRequest()))
    assert (reply.is_anomaly, reply.score, reply.method) == (False, 0.0, "isolation_forest")
    assert "no stored history" in reply.message
    assert set(reply.metric_scores) == {"cpu", "memory", "disk_io"}
    assert all(v.history_points == 0 and v.note for v in reply.metric_scores.values())


@pytest.mark.parametrize("method", ["isolation_forest", "auto", "mad"])
async def test_the_seed_body_is_scored_against_the_simulations_history(ml, method):
    stub, channel = ml
    await _ingest(channel, "platform_metrics", _sim_history("sim-123"))
    body = {**SEED, "config": {"method": method, "sensitivity": 0.95}}
    reply = await stub.DetectAnomalies(json_format.ParseDict(body, ml_service_pb2.DetectAnomaliesRequest()))
    cpu, memory, disk = (reply.metric_scores[m] for m in ("cpu", "memory", "disk_io"))
    assert reply.is_anomaly and cpu.is_anomaly and cpu.score > 0.9
    assert not memory.is_anomaly and not disk.is_anomaly
    assert cpu.lower < 50 < cpu.upper and cpu.upper < 95 and cpu.deviation > 1
    assert cpu.history_points >= 300 and dict(cpu.labels) == {"simulation_id": "sim-123"}
    assert [a.metric for a in reply.anomalies] == ["cpu"]
    assert reply.threshold == pytest.approx(threshold_for(0.95))
    assert reply.model_version == f"anomaly-{method}/1"  # the detector configuration's registry version
    if method == "isolation_forest":
        assert cpu.contribution > max(memory.contribution, disk.contribution)


async def test_a_repeated_snapshot_comes_from_the_ml_cache(ml):
    stub, channel = ml
    await _ingest(channel, "platform_metrics", _sim_history("sim-9"))
    body = json_format.ParseDict({**SEED, "simulation_id": "sim-9"}, ml_service_pb2.DetectAnomaliesRequest())
    first = await stub.DetectAnomalies(body)
    second = await stub.DetectAnomalies(body)
    assert not first.cached and second.cached
    assert second.metric_scores["cpu"].score == first.metric_scores["cpu"].score


def _spiky(n: int, spikes: list[int], seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    ts = (_now() // STEP - n) * STEP + STEP * np.arange(n, dtype=np.int64)
    values = 20 + rng.normal(0, 1, n)
    values[spikes] += 15
    return ts, values


async def test_a_stored_selection_is_scored_point_by_point_and_its_anomalies_are_kept(ml):
    stub, channel = ml
    ts, values = _spiky(600, [300, 450])
    await _ingest(channel, "lab", [("temp", {"host": "h1"}, ts, values)])
    request = ml_service_pb2.DetectAnomaliesRequest(
        selection={
            "datasource": "lab",
            "metrics": ["temp"],
            "labels": {"host": "h1"},
            "start": format_time_ms(int(ts[0])),
            "end": format_time_ms(int(ts[-1]) + 1),
        },
        config={"method": "mad"},
        include_points=True,
    )
    reply = await stub.DetectAnomalies(request)
    (series,) = reply.series
    assert len(series.scores) == len(series.timestamps_ms) == 600
    flagged = {a.timestamp_ms for a in reply.anomalies}
    assert {int(ts[300]), int(ts[450])} <= flagged and len(flagged) <= 6
    assert all(a.id and a.source == "request" and a.datasource == "lab" for a in reply.anomalies)
    listed = await stub.ListAnomalies(ml_service_pb2.ListAnomaliesRequest(datasource="lab", method="mad"))
    assert {a.timestamp_ms for a in listed.anomalies} == flagged
    again = await stub.DetectAnomalies(request)
    assert again.cached and len(again.anomalies) == len(reply.anomalies)
    stored = await stub.ListAnomalies(ml_service_pb2.ListAnomaliesRequest(datasource="lab", method="mad"))
    assert len(stored.anomalies) == len(listed.anomalies)  # once per (series, timestamp, method)


async def test_a_selection_matching_nothing_is_an_empty_answer_with_a_message(ml):
    stub, _ = ml
    reply = await stub.DetectAnomalies(
        ml_service_pb2.DetectAnomaliesRequest(selection={"metrics": ["nope"], "time_range": "1h"})
    )
    assert not reply.series and not reply.is_anomaly and "no stored series" in reply.message


async def test_inline_series_are_scored_and_not_stored(ml):
    stub, _ = ml
    ts, values = _spiky(300, [200])
    reply = await stub.DetectAnomalies(
        ml_service_pb2.DetectAnomaliesRequest(
            series=[{"name": "x", "timestamps_ms": ts.tolist(), "values": values.tolist()}],
            config={"method": "zscore"},
        )
    )
    assert int(ts[200]) in {a.timestamp_ms for a in reply.anomalies}
    assert all(not a.id for a in reply.anomalies)
    listed = await stub.ListAnomalies(ml_service_pb2.ListAnomaliesRequest(method="zscore"))
    assert not listed.anomalies


async def test_an_inline_series_too_short_for_the_method_names_the_minimum(ml):
    stub, _ = ml
    with pytest.raises(aio.AioRpcError) as err:
        await stub.DetectAnomalies(
            ml_service_pb2.DetectAnomaliesRequest(
                series=[{"name": "x", "timestamps_ms": [1, 2, 3], "values": [1.0, 2.0, 3.0]}],
                config={"method": "isolation_forest"},
            )
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith("series[0]: ") and "at least" in err.value.details()


async def _stream_anomalies(stub, datasource: str, count: int, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while True:
        listed = await stub.ListAnomalies(
            ml_service_pb2.ListAnomaliesRequest(datasource=datasource, method="auto", limit=1000)
        )
        found = [a for a in listed.anomalies if a.source == "stream"]
        if len(found) >= count or time.monotonic() > deadline:
            return found
        await asyncio.sleep(0.1)


async def test_the_live_scorer_flags_ingested_spikes_and_a_backtest_says_exactly_the_same(ml):
    stub, channel = ml
    spikes = [700, 900, 1100]
    ts, values = _spiky(1400, spikes, seed=5)
    for lo in range(0, 1400, 100):  # batches, as a live feed sends them
        await _ingest(channel, "live", [("lat", {"host": "a"}, ts[lo : lo + 100], values[lo : lo + 100])])
    live = await _stream_anomalies(stub, "live", 3)
    assert {int(ts[i]) for i in spikes} <= {a.timestamp_ms for a in live}
    # The backtest starts mid-way: the history before it warms the detector up to the live state.
    start = int(ts[600])
    reply = await stub.DetectAnomalies(
        ml_service_pb2.DetectAnomaliesRequest(
            selection={
                "datasource": "live",
                "metrics": ["lat"],
                "start": format_time_ms(start),
                "end": format_time_ms(int(ts[-1]) + 1),
            },
            include_points=True,
        )
    )
    (series,) = reply.series
    by_ts = dict(zip(series.timestamps_ms, series.scores, strict=True))
    for a in live:
        if a.timestamp_ms >= start:
            assert by_ts[a.timestamp_ms] == a.score
    flags, _ = onsets(np.array(series.scores), reply.threshold)
    assert {a.timestamp_ms for a in live if a.timestamp_ms >= start} == {
        t for t, flagged in zip(series.timestamps_ms, flags, strict=True) if flagged
    }


async def test_feedback_is_stored_tightens_the_series_and_gives_precision(ml):
    stub, channel = ml
    ts, values = _spiky(600, [300, 400, 500])
    await _ingest(channel, "fb", [("temp", {"host": "h1"}, ts, values)])
    reply = await stub.DetectAnomalies(
        ml_service_pb2.DetectAnomaliesRequest(
            selection={"datasource": "fb", "metrics": ["temp"], "time_range": "3h"}, config={"method": "mad"}
        )
    )
    first, second = reply.anomalies[0], reply.anomalies[1]
    marked = await stub.SubmitAnomalyFeedback(
        ml_service_pb2.SubmitAnomalyFeedbackRequest(id=first.id, feedback="false_positive")
    )
    assert marked.anomaly.feedback == "false_positive" and marked.series_threshold > reply.threshold
    await stub.SubmitAnomalyFeedback(
        ml_service_pb2.SubmitAnomalyFeedbackRequest(id=second.id, feedback="true_positive")
    )
    stats = await stub.GetAnomalyStats(ml_service_pb2.GetAnomalyStatsRequest())
    assert stats.methods["mad"].precision == pytest.approx(0.5)
    assert (stats.methods["mad"].true_positive, stats.methods["mad"].false_positive) == (1, 1)
    for request, code in [
        (
            ml_service_pb2.SubmitAnomalyFeedbackRequest(id="0" * 16, feedback="true_positive"),
            grpc.StatusCode.NOT_FOUND,
        ),
        (
            ml_service_pb2.SubmitAnomalyFeedbackRequest(id=first.id, feedback="maybe"),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
    ]:
        with pytest.raises(aio.AioRpcError) as err:
            await stub.SubmitAnomalyFeedback(request)
        assert err.value.code() == code


async def test_anomalies_feedback_and_live_state_survive_a_restart(data_dir):
    tmp_path = data_dir
    server = await _server(tmp_path)
    ts, values = _spiky(800, [500, 700], seed=8)
    async with aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = ml_service_pb2_grpc.MLServiceStub(channel)
        await _ingest(channel, "keep", [("lat", {"host": "a"}, ts, values)])
        before = await _stream_anomalies(stub, "keep", 2)
        await stub.SubmitAnomalyFeedback(
            ml_service_pb2.SubmitAnomalyFeedbackRequest(id=before[0].id, feedback="true_positive")
        )
    await server.stop(0)
    assert (tmp_path / "ml" / "stream_state.bin").stat().st_size > 0
    server = await _server(tmp_path)
    try:
        async with aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = ml_service_pb2_grpc.MLServiceStub(channel)
            after = await stub.ListAnomalies(ml_service_pb2.ListAnomaliesRequest(datasource="keep"))
            assert {(a.id, a.score) for a in after.anomalies} == {(a.id, a.score) for a in before}
            assert {a.feedback for a in after.anomalies if a.id == before[0].id} == {"true_positive"}
    finally:
        await server.stop(0)
