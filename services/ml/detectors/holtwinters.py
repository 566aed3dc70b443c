"""Holt-Winters detector: the expected value is the one-step-ahead forecast of exponential smoothing
(additive damped trend, plus an additive season where `seasonal.detect_period` finds one); the
band is 3 robust sigma of the recent one-step forecast errors.

Smoothing follows level and trend changes that a rolling window only catches up with, and the
forecast error is a sharper residual than a window median. The parameters are fitted by
statsmodels on the points before each refit point (`segments`, at most `TRAIN_MAX` of them)
and then held fixed while the smoother runs on through the next segment, so each forecast uses
earlier points only. The level smoothing is bounded below by `MIN_LEVEL_SMOOTHING`: fitted on a
calm stretch it would tend to 0, and the forecast would never follow a shift.
"""

from __future__ import annotations

import warnings

import numpy as np

from services.ml.detectors import segments
from services.ml.detectors.base import FloatArray, IntArray, Scores
from services.ml.detectors.rolling import WARMUP, rolling_median_sigma, scores_from_sigma
from services.ml.detectors.seasonal import detect_period

TRAIN_MAX = 2000
"""Points the parameters are fitted on, at most (or `SEASON_CYCLES` periods, if more)."""
SEASON_CYCLES = 3
MAX_SEASON_POINTS = 2016
"""Longer periods (a week of 5-minute data or finer) are left out: one state per phase is too many."""
MIN_LEVEL_SMOOTHING = 0.1
ERROR_WINDOW = 120
"""Earlier one-step errors whose robust spread is sigma."""


def detect(ts: IntArray, values: FloatArray) -> Scores:
    """Score each point against its one-step-ahead Holt-Winters forecast."""
    n = len(values)
    expected = np.full(n, np.nan)
    sigma = np.full(n, np.nan)
    parts = segments(n)
    for start, stop in parts:
        period = detect_period(ts[:start], values[:start])
        season = period.points if period is not None and period.points <= MAX_SEASON_POINTS else None
        begin = max(0, start - max(TRAIN_MAX, SEASON_CYCLES * (season or 0)))
        if season is not None and start - begin < 2 * season + 10:
            season = None  # too few whole periods to initialise the season
        forecast = one_step_forecasts(values[begin:stop], start - begin, season)
        _, error_sigma = rolling_median_sigma(values[begin:stop] - forecast, ERROR_WINDOW, WARMUP)
        expected[start:stop] = forecast[start - begin :]
        sigma[start:stop] = error_sigma[start - begin :]
    return scores_from_sigma(values, expected, sigma, parts[0][0] if parts else n)


def one_step_forecasts(values: FloatArray, train: int, season: int | None) -> FloatArray:
    """One-step-ahead forecasts of every point of `values`, with parameters fitted on `values[:train]`."""
    from statsmodels.tsa.holtwinters import ExponentialSmoothing

    shape = {
        "trend": "add",
        "damped_trend": True,
        "seasonal": "add" if season else None,
        "seasonal_periods": season,
    }
    with warnings.catch_warnings():
        # A calm or constant training stretch makes the optimiser warn; the fit is still usable.
        warnings.simplefilter("ignore")
        fitted = ExponentialSmoothing(
            values[:train],
            initialization_method="heuristic" if season else "estimated",
            bounds={"smoothing_level": (MIN_LEVEL_SMOOTHING, 1.0)},
            **shape,
        ).fit(use_brute=False)
        p = fitted.params
        smoother = ExponentialSmoothing(
            values,
            initialization_method="known",
            initial_level=p["initial_level"],
            initial_trend=p["initial_trend"],
            initial_seasonal=p["initial_seasons"] if season else None,
            **shape,
        ).fit(
            smoothing_level=p["smoothing_level"],
            smoothing_trend=p["smoothing_trend"],
            smoothing_seasonal=p["smoothing_seasonal"] if season else None,
            damping_trend=p["damping_trend"],
            optimized=False,
        )
    return np.asarray(smoother.fittedvalues, dtype=np.float64)
