"""Every ML answer's model_version is a registry version, over real gRPC (all four services in one
server on a temporary DATA_DIR): a forecast's and a detection's model_version, and a live anomaly
event's on `anomalies.*`, name a version that exists in the local MLflow store; a restart with the
same configuration answers with the same versions; each forecast's backtest run is logged (after
the answer) with that version. Also FORECAST_MAX_SERIES: a group-by over the limit is refused
naming the field, the count and the limit, and nothing is fitted."""

from __future__ import annotations

import asyncio
import multiprocessing
import time

import grpc
import numpy as np
import pytest
from grpc import aio

from libs.config import SERVICE_NAMES, load_settings
from platformq.analytics.v1 import (
    events_pb2,
    ml_service_pb2,
    ml_service_pb2_grpc,
    realtime_service_pb2,
    realtime_service_pb2_grpc,
)
from services.context import ServiceContext
from services.ml.tracking import FINGERPRINT_TAG, local_tracking_uri
from services.runner import start_services

HOUR = 3_600_000
STEP = 10_000


def _hourly(service: str, level: float, days: int = 4):
    n = 24 * days
    ts = (int(time.time() * 1000) // HOUR - n) * HOUR + HOUR * np.arange(n, dtype=np.int64)
    rng = np.random.default_rng(len(service))
    return (
        "cpu_usage",
        {"service_name": service},
        ts,
        level + 10 * np.sin(2 * np.pi * ts / HOUR / 24) + rng.normal(0, 0.5, n),
    )


def _spiky(n: int, spike: int):
    rng = np.random.default_rng(3)
    ts = (int(time.time() * 1000) // STEP - n) * STEP + STEP * np.arange(n, dtype=np.int64)
    values = 20 + rng.normal(0, 1, n)
    values[spike] += 15
    return ts, values


async def _ingest(channel, datasource: str, series) -> None:
    stub = realtime_service_pb2_grpc.RealtimeServiceStub(channel)
    request = realtime_service_pb2.IngestMetricsRequest(datasource=datasource)
    for name, labels, ts, values in series:
        request.series.add(name=name, labels=labels, timestamps_ms=ts.tolist(), values=values.tolist())
    reply = await stub.IngestMetrics(request)
    assert reply.rejected == 0, reply.errors


async def _start(data_dir, **overrides):
    settings = load_settings(data_dir=data_dir, ml_checkpoint_seconds=3600, **overrides)
    context = ServiceContext(settings, hosted=tuple(SERVICE_NAMES))
    server = await start_services(list(SERVICE_NAMES), settings, 0, context=context)
    return server, context


def _registered(data_dir, model_version: str):
    """The MLflow version `model_version` ("<name>/<n>") names in the local store."""
    from mlflow.tracking import MlflowClient

    uri = local_tracking_uri(data_dir)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    name, _, number = model_version.rpartition("/")
    assert number.isdigit(), model_version
    return client, client.get_model_version(name, number)


FORECAST = ml_service_pb2.ForecastRequest(
    metric="cpu_usage", labels={"service_name": "auth"}, horizon=12, step="1h", method="auto"
)
DETECT = ml_service_pb2.DetectAnomaliesRequest(
    selection={"datasource": "live", "metrics": ["lat"], "time_range": "2h"}, config={"method": "auto"}
)


async def test_answers_and_live_events_carry_registered_versions_that_a_restart_keeps(data_dir):
    server, context = await _start(data_dir)
    events: asyncio.Queue[events_pb2.AnomalyEvent] = asyncio.Queue()

    async def on_anomaly(envelope) -> None:
        await events.put(events_pb2.AnomalyEvent.FromString(envelope.payload))

    await context.bus.subscribe("anomalies.*", "test-versions", on_anomaly)
    async with aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = ml_service_pb2_grpc.MLServiceStub(channel)
        await _ingest(channel, "platform_metrics", [_hourly("auth", 50)])
        forecast = await stub.Forecast(FORECAST, timeout=120)
        ts, values = _spiky(600, 500)
        await _ingest(channel, "live", [("lat", {"host": "a"}, ts, values)])
        detected = await stub.DetectAnomalies(DETECT, timeout=60)
        live = await asyncio.wait_for(events.get(), 60)  # the live scorer flags the spike too
    await server.stop(0)  # also waits for the forecast's backtest run to be logged

    assert forecast.model_version == forecast.series[0].model_version == "forecast-auto/1"
    assert detected.model_version == "anomaly-auto/1" and detected.anomalies
    assert {a.model_version for a in detected.anomalies} == {"anomaly-auto/1"}
    assert live.model_version == detected.model_version  # the same detector configuration
    client, version = _registered(data_dir, forecast.model_version)
    params = client.get_run(version.run_id).data.params
    assert params["method"] == "auto" and params["library.statsforecast"] == "2.1.1"
    assert version.tags[FINGERPRINT_TAG]
    _, detector = _registered(data_dir, detected.model_version)
    assert client.get_run(detector.run_id).data.params["method"] == "auto"
    (run,) = client.search_runs([client.get_experiment_by_name("forecast").experiment_id])
    assert run.data.tags["model_version"] == "forecast-auto/1"
    assert run.data.metrics["backtest_smape"] == pytest.approx(forecast.series[0].backtest_smape)

    # A restart with the same configuration: the same versions, none registered anew.
    server, _ = await _start(data_dir)
    async with aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = ml_service_pb2_grpc.MLServiceStub(channel)
        again = await stub.Forecast(FORECAST, timeout=120)
        redetected = await stub.DetectAnomalies(DETECT, timeout=60)
    await server.stop(0)
    assert again.model_version == "forecast-auto/1" and redetected.model_version == "anomaly-auto/1"
    assert [v.version for v in client.search_model_versions("name = 'forecast-auto'")] == [1]
    assert [v.version for v in client.search_model_versions("name = 'anomaly-auto'")] == [1]


async def test_a_group_by_over_the_series_limit_is_refused_and_nothing_is_fitted(data_dir):
    server, context = await _start(data_dir, forecast_max_series=2)
    published = []

    async def on_prediction(envelope) -> None:
        published.append(envelope.topic)

    await context.bus.subscribe("predictions.*", "test-limit", on_prediction)
    workers = set(multiprocessing.active_children())
    async with aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = ml_service_pb2_grpc.MLServiceStub(channel)
        await _ingest(channel, "platform_metrics", [_hourly(s, 40) for s in ("a", "b", "c")])
        request = ml_service_pb2.ForecastRequest(
            selection={"metrics": ["cpu_usage"], "time_range": "7d"},
            group_by=["service_name"],
            horizon=6,
            method="seasonal_naive",
        )
        with pytest.raises(aio.AioRpcError) as err:
            await stub.Forecast(request, timeout=60)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        details = err.value.details()
        assert "group_by" in details and "too many series" in details
        assert "3 series" in details and "limit of 2" in details and "FORECAST_MAX_SERIES" in details
        # no worker process was started to fit, no prediction went out
        assert set(multiprocessing.active_children()) <= workers and published == []
        # within the limit, the same selection forecasts
        request.selection.filters.add(label="service_name", op="in", values=["a", "b"])
        reply = await stub.Forecast(request, timeout=120)
        assert [dict(s.labels) for s in reply.series] == [{"service_name": "a"}, {"service_name": "b"}]
    await server.stop(0)
