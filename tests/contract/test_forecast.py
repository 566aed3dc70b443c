"""Forecast over real gRPC, all four services in one server on a temporary DATA_DIR: the seed's
body on stored series (ingested through IngestMetrics), a stored selection with group_by and a
threshold, the cache, and bad input as INVALID_ARGUMENT."""

from __future__ import annotations

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

HOUR = 3_600_000
SEED = {"metric": "cpu_usage", "labels": {"service_name": "auth-service"}, "horizon": 24, "step": "1h"}


def _history(service: str, level: float, days: int = 8):
    """A daily cycle around `level`, hourly, ending at the last full hour."""
    n = 24 * days
    ts = (int(time.time() * 1000) // HOUR - n) * HOUR + HOUR * np.arange(n, dtype=np.int64)
    hours = (ts // HOUR) % 24
    rng = np.random.default_rng(len(service))
    return (
        "cpu_usage",
        {"service_name": service},
        ts,
        level + 10 * np.sin(2 * np.pi * hours / 24) + rng.normal(0, 0.5, n),
    )


@pytest.fixture
async def ml(data_dir):
    settings = load_settings(data_dir=data_dir, ml_checkpoint_seconds=3600, forecast_max_horizon=500)
    server = await start_services(list(SERVICE_NAMES), settings, 0)
    async with aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = realtime_service_pb2_grpc.RealtimeServiceStub(channel)
        request = realtime_service_pb2.IngestMetricsRequest(datasource="platform_metrics")
        for name, labels, ts, values in (_history("auth-service", 50), _history("billing", 30)):
            request.series.add(name=name, labels=labels, timestamps_ms=ts.tolist(), values=values.tolist())
        reply = await stub.IngestMetrics(request)
        assert reply.rejected == 0, reply.errors
        yield ml_service_pb2_grpc.MLServiceStub(channel)
    await server.stop(0)


async def test_seed_body_forecasts_the_stored_series_and_is_cached(ml):
    request = json_format.ParseDict(SEED, ml_service_pb2.ForecastRequest())
    reply = await ml.Forecast(request, timeout=120)
    assert len(reply.points) == 24 and reply.step_ms == HOUR and list(reply.levels) == [80, 95]
    (series,) = reply.series
    assert (
        dict(series.labels) == {"service_name": "auth-service"} and series.history_points >= 24 * 6
    )  # the default 7-day lookback
    assert reply.method in (*series.candidates, "combination") and series.backtest_windows == 2
    assert series.backtest_smape < 5 and series.backtest_mase < 2
    values = np.array([p.value for p in reply.points])
    assert 38 < values.min() < 42 and 58 < values.max() < 62  # the daily cycle of 50 +- 10 goes on
    assert all(p.lower <= p.value <= p.upper for p in reply.points)
    again = await ml.Forecast(request, timeout=120)
    assert again.cached and list(again.points) == list(reply.points)
    assert reply.model_version == series.model_version == "forecast-auto/1"
    # the backtest summary's MLflow run is logged after the answer: tests/contract/test_model_versions.py


async def test_selection_group_by_with_threshold(ml):
    request = ml_service_pb2.ForecastRequest(
        selection=ml_service_pb2.SeriesSelection(metrics=["cpu_usage"], time_range="9d"),
        group_by=["service_name"],
        horizon=24,
        method="seasonal_naive",
        threshold=55,
        levels=[90],
    )
    reply = await ml.Forecast(request, timeout=120)
    by = {s.labels["service_name"]: s for s in reply.series}
    assert set(by) == {"auth-service", "billing"}
    auth, billing = by["auth-service"].crossing, by["billing"].crossing
    assert auth.HasField("forecast_ms") and auth.probability > 0.9  # peaks at 60 pass 55
    assert not billing.HasField("forecast_ms") and billing.probability < 0.01  # peaks at 40 never do
    assert [i.level for i in by["billing"].points[0].intervals] == [90]


@pytest.mark.parametrize(
    ("body", "field", "says"),
    [
        ({**SEED, "horizon": 0}, "horizon", "between 1 and 500"),
        ({**SEED, "horizon": 501}, "horizon", "between 1 and 500"),
        ({**SEED, "method": "lstm"}, "method", "auto_arima"),
        ({**SEED, "method": "mstl", "step": "1d"}, "metric", "at least 14 points"),
    ],
)
async def test_bad_input_is_invalid_argument_naming_the_field(ml, body, field, says):
    with pytest.raises(aio.AioRpcError) as err:
        await ml.Forecast(json_format.ParseDict(body, ml_service_pb2.ForecastRequest()), timeout=120)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith(f"{field}:") and says in err.value.details()


async def test_no_stored_series_says_so(ml):
    reply = await ml.Forecast(ml_service_pb2.ForecastRequest(metric="nope", horizon=3), timeout=60)
    assert not reply.series and "no stored series of nope" in reply.message
