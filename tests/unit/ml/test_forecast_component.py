"""The Forecasting component on inline and (fake) stored history: answers, cache, events, errors."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from libs.cache import TtlCache
from libs.errors import InvalidArgument
from platformq.analytics.v1 import common_pb2
from platformq.analytics.v1 import ml_service_pb2 as pb
from services.ml.forecasting.component import Forecasting, forecast_configs, regularise
from services.ml.forecasting.spec import forecast_from_proto
from services.ml.history import StoredSeries
from services.ml.versions import ConfigVersions
from tests.helpers import REPO_ROOT

HOUR = 3_600_000


class RecordingBus:
    """Keeps what is published."""

    def __init__(self) -> None:
        self.published: list[tuple[str, object]] = []

    async def publish(self, topic: str, message, key: str = "") -> None:
        self.published.append((topic, message))


class FakeHistory:
    """Two hosts' hourly cpu series, as the query-router would return them."""

    def __init__(self) -> None:
        self.calls = 0

    async def raw(self, datasource, metrics, filters, start_ms, end_ms, timeout=None):
        self.calls += 1
        t = np.arange(24 * 10) * HOUR
        base = 50 + 10 * np.sin(2 * np.pi * np.arange(len(t)) / 24)
        return [
            StoredSeries("cpu", {"host": "a", "service_name": "auth"}, t, base),
            StoredSeries("cpu", {"host": "b", "service_name": "auth"}, t, base + 2),
        ]


class FakeTracking:
    """Records runs like ModelTracking.log_run and registers configurations like register_config."""

    def __init__(self) -> None:
        self.runs: list[tuple[str, dict, dict, dict]] = []
        self.configs: dict[str, dict] = {}

    async def log_run(self, experiment, *, params, metrics, tags=None) -> str:
        self.runs.append((experiment, params, metrics, tags or {}))
        return f"run-{len(self.runs)}"

    async def register_config(self, name, *, params) -> str:
        self.configs[name] = params
        return f"{name}/7"


@pytest.fixture
async def component():
    bus, history, tracking = RecordingBus(), FakeHistory(), FakeTracking()
    versions = ConfigVersions(tracking, forecast_configs())
    forecasting = Forecasting(history, bus, TtlCache(), 300.0, tracking, workers=2, versions=versions)
    yield forecasting, bus, history, tracking
    await forecasting.close()


def _inline_request(n: int, **fields) -> pb.ForecastRequest:
    t = np.arange(n) * HOUR
    y = 20 + 5 * np.sin(2 * np.pi * np.arange(n) / 24) + 0.05 * np.arange(n)
    history = common_pb2.Series(
        name="latency", labels={"service_name": "auth"}, timestamps_ms=t.tolist(), values=y.tolist()
    )
    return pb.ForecastRequest(history=history, **fields)


async def test_inline_forecast_is_cached_published_and_tracked(component) -> None:
    forecasting, bus, _, tracking = component
    spec = forecast_from_proto(
        _inline_request(24 * 8, horizon=24, method="seasonal_naive", threshold=26), 100
    )
    first = await forecasting.forecast(spec, "default", 60)
    assert not first.cached and first.step_ms == HOUR and len(first.points) == 24
    series = first.series[0]
    # the registry version of the method's configuration, registered once with its parameters
    assert series.method == "seasonal_naive" and series.model_version == "forecast-seasonal_naive/7"
    assert first.model_version == series.model_version
    config = tracking.configs["forecast-seasonal_naive"]
    assert config["method"] == "seasonal_naive" and config["library.statsforecast"] == "2.1.1"
    assert series.points[0].timestamp_ms == 24 * 8 * HOUR and series.step_ms == HOUR
    assert [i.level for i in series.points[0].intervals] == [80, 95]
    assert series.HasField("backtest_smape") and series.backtest_smape < 5
    # the daily peak (about 25 + trend) passes 26 in the forecast
    assert series.crossing.HasField("forecast_ms") and series.crossing.upper_ms <= series.crossing.forecast_ms
    assert 0.5 < series.crossing.probability <= 1
    second = await forecasting.forecast(spec, "default", 60)
    assert second.cached and list(second.points) == list(first.points)
    assert [topic for topic, _ in bus.published] == ["predictions.forecast"]  # the hit publishes nothing
    event = bus.published[0][1]
    assert event.kind == "forecast" and event.metric == "latency" and len(event.points) == 24
    assert event.source == "auth" and event.method == "seasonal_naive"
    assert event.model_version == "forecast-seasonal_naive/7"
    await forecasting.close()  # the backtest run is logged in the background; close waits for it
    assert len(tracking.runs) == 1 and tracking.runs[0][0] == "forecast"
    assert tracking.runs[0][3]["model_version"] == "forecast-seasonal_naive/7"


async def test_stored_group_by_forecasts_each_group(component) -> None:
    forecasting, bus, history, _ = component
    request = pb.ForecastRequest(
        selection=pb.SeriesSelection(metrics=["cpu"]), group_by=["host"], horizon=6, method="auto_theta"
    )
    response = await forecasting.forecast(forecast_from_proto(request, 100), "default", 60)
    assert [dict(s.labels) for s in response.series] == [{"host": "a"}, {"host": "b"}]
    a, b = (np.array([p.value for p in s.points]) for s in response.series)
    assert np.allclose(b - a, 2, atol=0.5)  # host b runs 2 above host a
    assert history.calls == 1 and len(bus.published) == 2


async def test_a_selection_over_the_series_limit_is_refused_before_fitting() -> None:
    bus, tracking = RecordingBus(), FakeTracking()
    forecasting = Forecasting(FakeHistory(), bus, TtlCache(), 300.0, tracking, workers=1, max_series=1)
    request = pb.ForecastRequest(
        selection=pb.SeriesSelection(metrics=["cpu"]), group_by=["host"], horizon=6, method="auto_theta"
    )
    with pytest.raises(InvalidArgument) as err:
        await forecasting.forecast(forecast_from_proto(request, 100), "default", 60)
    await forecasting.close()
    assert err.value.field == "group_by"
    assert "too many series" in err.value.reason and "2 series" in err.value.reason
    assert "limit of 1" in err.value.reason and "FORECAST_MAX_SERIES" in err.value.reason
    assert bus.published == [] and tracking.runs == []  # nothing fitted, published or logged
    # without group_by the two stored series are two forecasts: refused on the selection
    ungrouped = pb.ForecastRequest(selection=pb.SeriesSelection(metrics=["cpu"]), horizon=6)
    with pytest.raises(InvalidArgument) as err:
        await forecasting.forecast(forecast_from_proto(ungrouped, 100), "default", 60)
    assert err.value.field == "selection"


async def test_history_too_short_names_the_minimum_and_field(component) -> None:
    forecasting, *_ = component
    spec = forecast_from_proto(_inline_request(30, horizon=24, method="auto_ets"), 100)
    with pytest.raises(InvalidArgument) as err:
        await forecasting.forecast(spec, "default", 60)
    assert err.value.field == "history" and "at least 48 points" in err.value.reason


def test_regularise_buckets_and_fills_gaps() -> None:
    ts = np.array([0, 10, 3600_000, 3 * HOUR + 5])
    start, y = regularise(ts, np.array([1.0, 3.0, 4.0, 8.0]), HOUR, "history")
    assert start == 0 and y.tolist() == [2.0, 4.0, 6.0, 8.0]


def test_the_ml_service_imports_no_forecasting_library_at_start_up() -> None:
    # statsforecast, prophet and mlflow load in the forecast workers (and on the first run logged),
    # never on the path to /health.
    code = (
        "import sys, services.ml, services.ml.core, services.ml.servicer, services.ml.forecasting.component; "
        "print(sorted(m for m in ('statsforecast', 'prophet', 'mlflow') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO_ROOT
    )
    assert out.stdout.strip() == "[]"


class UnevenHistory(FakeHistory):
    """Ten days of one host, and one point of another (a stray write under the same labels)."""

    async def raw(self, datasource, metrics, filters, start_ms, end_ms, timeout=None):
        (long, _) = await super().raw(datasource, metrics, filters, start_ms, end_ms, timeout)
        stray = StoredSeries("cpu", {"service_name": "auth"}, np.array([0]), np.array([42.5]))
        return [long, stray]


async def test_a_stored_series_too_short_is_named_by_its_labels() -> None:
    tracking = FakeTracking()
    versions = ConfigVersions(tracking, forecast_configs())
    forecasting = Forecasting(
        UnevenHistory(), RecordingBus(), TtlCache(), 300.0, tracking, workers=1, versions=versions
    )
    request = pb.ForecastRequest(metric="cpu", labels={"service_name": "auth"}, horizon=6, step="1h")
    try:
        with pytest.raises(InvalidArgument) as err:
            await forecasting.forecast(forecast_from_proto(request, 100), "default", 60)
    finally:
        await forecasting.close()
    assert err.value.field == "metric"
    assert 'the series cpu{service_name="auth"} has 1' in err.value.reason
