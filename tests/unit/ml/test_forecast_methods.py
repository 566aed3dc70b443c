"""Each forecasting method on a clean weekly-seasonal series with trend: accuracy floors a broken
model fails, intervals that contain the forecast, and the auto choice by backtest."""

from __future__ import annotations

import numpy as np
import pytest

from services.ml.forecasting.backtest import SeriesJob, TooShort, mase, run, smape
from services.ml.forecasting.methods import DAY_MS, HOUR_MS, min_points, season_lengths

HORIZON = 14


def _series(n: int, noise: float = 0.3, seed: int = 0) -> np.ndarray:
    t = np.arange(n)
    rng = np.random.default_rng(seed)
    return 50 + 0.1 * t + 8 * np.sin(2 * np.pi * t / 7) + rng.normal(0, noise, n)


def _job(method: str, y: np.ndarray, backtest: bool = True) -> SeriesJob:
    # Daily steps: a weekly season of 7 keeps every model (auto_arima too) fast.
    return SeriesJob(y, 0, DAY_MS, method, HORIZON, (80.0, 95.0), season_lengths(DAY_MS), backtest=backtest)


@pytest.mark.parametrize(
    ("method", "floor"),
    [
        ("seasonal_naive", 4.0),  # misses only the trend over two weeks
        ("auto_ets", 2.5),
        ("auto_arima", 2.5),
        ("auto_theta", 2.5),
        ("mstl", 2.5),
        ("prophet", 3.0),
        ("seasonal_es", 4.0),  # a level per season step: the trend is missed as by seasonal naive
        ("seasonal_window_average", 4.5),  # two weeks averaged: a week further behind the trend
        ("stl_drift", 2.5),
        ("auto", 2.5),
    ],
)
def test_method_beats_floor_on_seasonal_trend(method: str, floor: float) -> None:
    y = _series(16 * 7 + HORIZON)
    train, test = y[:-HORIZON], y[-HORIZON:]
    out = run(_job(method, train))
    flat = smape(test, np.full(HORIZON, train.mean()))  # what a model ignoring season and trend scores
    assert smape(test, out.prediction.mean) < floor < flat
    for level in (80.0, 95.0):
        assert np.all(out.prediction.lower[level] <= out.prediction.mean + 1e-9)
        assert np.all(out.prediction.upper[level] >= out.prediction.mean - 1e-9)
    assert np.all(
        out.prediction.upper[95.0] - out.prediction.lower[95.0]
        >= out.prediction.upper[80.0] - out.prediction.lower[80.0] - 1e-9
    )
    assert out.windows == 2 and out.smape is not None and out.smape < floor


def test_auto_reports_candidates_and_picks_the_best_or_a_combination() -> None:
    out = run(_job("auto", _series(16 * 7)))
    assert set(out.candidates) == {
        "seasonal_naive:7",
        "seasonal_es:7",
        "seasonal_window_average:7",
        "stl_drift:7",
    }
    assert out.smape <= min(out.candidates.values()) + 1e-9
    if out.method == "combination":
        assert len(out.weights) >= 2 and sum(out.weights.values()) == pytest.approx(1.0)
    else:
        assert out.method in out.candidates and out.weights == {}


def test_auto_backtests_every_season_the_history_holds() -> None:
    # Hourly steps: the day and, with more than two weeks of history left for the backtest, the week.
    t = np.arange(24 * 7 * 4)
    y = (
        100
        + 10 * np.sin(2 * np.pi * t / 24)
        + 5 * (t // 24 % 7 >= 5)
        + np.random.default_rng(1).normal(0, 0.5, len(t))
    )
    job = SeriesJob(y, 0, HOUR_MS, "auto", 48, (80.0,), season_lengths(HOUR_MS))
    out = run(job)
    assert {name.rsplit(":", 1)[1] for name in out.candidates} == {"24", "168"}
    # The weekend step is weekly: whatever auto picks must know it (daily seasonal naive does not).
    assert out.smape < out.candidates["seasonal_naive:24"]


def test_too_short_history_names_the_minimum() -> None:
    with pytest.raises(TooShort) as err:
        run(_job("auto_ets", _series(10)))
    assert err.value.minimum == min_points("auto_ets", 7) == 14
    assert "at least 14 points" in str(err.value)


def test_errors_known_values() -> None:
    assert smape(np.array([100.0]), np.array([100.0])) == 0
    assert smape(np.array([100.0, 0.0]), np.array([50.0, 0.0])) == pytest.approx(100 * (2 * 50 / 150) / 2)
    train = np.array([1.0, 2.0, 3.0, 4.0])
    assert mase(np.array([6.0]), np.array([5.0]), train, 1) == pytest.approx(1.0)


def test_season_lengths_follow_the_step() -> None:
    assert season_lengths(HOUR_MS) == (24, 168)
    assert season_lengths(60_000) == (60,)
    assert season_lengths(DAY_MS) == (7,)
    assert season_lengths(7 * HOUR_MS) == (1,)


def test_a_passed_deadline_stops_the_worker_before_fitting() -> None:
    job = SeriesJob(_series(60), 0, DAY_MS, "auto_theta", HORIZON, (95.0,), (7,), deadline=0.0)
    with pytest.raises(TimeoutError):
        run(job)


def test_auto_follows_a_steady_trend_through_its_drift_candidate() -> None:
    # A disk filling up: three weeks of hourly points rising 0.5 an hour under a daily cycle. The
    # seasonal candidates repeat the last seasons (4 % sMAPE here); stl_drift extends the trend.
    t = np.arange(24 * 21 + 48)
    y = 200 + 0.5 * t + 10 * np.sin(2 * np.pi * t / 24) + np.random.default_rng(0).normal(0, 1, len(t))
    train, test = y[:-48], y[-48:]
    out = run(SeriesJob(train, 0, HOUR_MS, "auto", 48, (80.0,), season_lengths(HOUR_MS)))
    assert "stl_drift" in out.method or any(m.startswith("stl_drift") for m in out.weights)
    assert smape(test, out.prediction.mean) < 1.0
