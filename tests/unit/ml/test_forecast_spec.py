"""Forecast request validation: every rejection names its field."""

from __future__ import annotations

import pytest

from libs.errors import InvalidArgument
from platformq.analytics.v1 import common_pb2
from platformq.analytics.v1 import ml_service_pb2 as pb
from services.ml.forecasting.spec import DEFAULT_LEVELS, METHODS, forecast_from_proto

MAX = 100


def _inline(**fields) -> pb.ForecastRequest:
    history = common_pb2.Series(name="cpu", timestamps_ms=[0, 1000, 2000], values=[1.0, 2.0, 3.0])
    return pb.ForecastRequest(history=history, horizon=fields.pop("horizon", 5), **fields)


def _rejects(request: pb.ForecastRequest, field: str) -> str:
    with pytest.raises(InvalidArgument) as err:
        forecast_from_proto(request, MAX)
    assert err.value.field == field
    return err.value.reason


def test_seed_body_is_a_stored_forecast_with_defaults() -> None:
    spec = forecast_from_proto(
        pb.ForecastRequest(metric="cpu_usage", labels={"service_name": "auth"}, horizon=24, step="1h"), MAX
    )
    assert (spec.kind, spec.method, spec.horizon, spec.step_ms, spec.levels) == (
        "stored",
        "auto",
        24,
        3_600_000,
        DEFAULT_LEVELS,
    )
    assert spec.metrics == ("cpu_usage",) and spec.filters[0].label == "service_name"


@pytest.mark.parametrize("horizon", [0, -3, MAX + 1])
def test_horizon_out_of_range(horizon: int) -> None:
    assert f"between 1 and {MAX}" in _rejects(_inline(horizon=horizon), "horizon")


def test_unknown_method_lists_them() -> None:
    reason = _rejects(_inline(method="arima"), "method")
    assert all(m in reason for m in METHODS)


def test_bad_levels_direction_step_and_shapes() -> None:
    _rejects(_inline(levels=[80, 100]), "levels[1]")
    _rejects(_inline(levels=[80, 80]), "levels")
    assert "above" in _rejects(_inline(threshold=3, direction="up"), "direction")
    _rejects(_inline(step="soon"), "step")
    _rejects(pb.ForecastRequest(horizon=3), "metric")
    _rejects(_inline(metric="cpu"), "history")
    _rejects(_inline(group_by=["host"]), "group_by")


def test_inline_history_errors_name_history() -> None:
    request = pb.ForecastRequest(
        history=common_pb2.Series(timestamps_ms=[0, 0], values=[1.0, 2.0]), horizon=3
    )
    _rejects(request, "history.timestamps_ms[1]")


def test_selection_with_group_by_and_threshold() -> None:
    request = pb.ForecastRequest(
        selection=pb.SeriesSelection(metrics=["cpu", "mem"], labels={"region": "eu"}, time_range="2d"),
        group_by=["service_name"],
        horizon=12,
        threshold=90,
        direction="above",
        levels=[95, 50],
    )
    spec = forecast_from_proto(request, MAX)
    assert spec.metrics == ("cpu", "mem") and spec.group_by == ("service_name",)
    assert spec.lookback_ms == 2 * 86_400_000 and spec.threshold == 90 and spec.levels == (50.0, 95.0)
