"""Seasonal residual detector: a daily or weekly profile found in the data, plus a rolling level,
is the expected value; the band is 3 robust sigma of the past residuals.

Metrics of services follow the clock (load by hour of day, by day of week), and a detector that
ignores it either flags every peak or is too blind to see anything at night. The period is not
assumed: every `TEST_EVERY` points (`segments`) the autocorrelation of the past points decides,
at a lag of one week (of the change from the day before, which a purely daily pattern cancels)
and of one day (after removing a moving average), and the points up to the next test use that
decision. Where no period is significant, or before one could be tested (`MIN_CYCLES` periods
of history), the detector is `mad`.

For a period P the series is cut into cycles of P from its first timestamp. A cycle's profile is
the per-phase median over the previous `PROFILE_CYCLES` whole cycles of their values minus their
cycle median, so it is built from earlier cycles only. Phases are bins of the timestamp within
the cycle, which keeps irregular series aligned.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd

from services.ml.detectors import segments
from services.ml.detectors.base import FloatArray, IntArray, Scores
from services.ml.detectors.rolling import WARMUP, WINDOW, rolling_median_sigma, scores_from_sigma

DAY_MS = 86_400_000
WEEK_MS = 7 * DAY_MS
MIN_CYCLES = 3
"""Whole periods of history before a period is tested."""
ACF_MIN = 0.3
"""Autocorrelation at the period's lag (of the detrended series) that makes it seasonal."""
PROFILE_CYCLES = 4
LEVEL_WINDOW = 30
"""Earlier deseasonalised points whose median is the level: short, to follow level shifts."""
RESIDUAL_WINDOW = 120
"""Earlier residuals whose robust spread is sigma."""
TEST_EVERY = 200
"""The period is tested again every this many points (a cheap test, so more often than model refits)."""
MAX_DETECT_POINTS = 50_000
"""The period test looks at most at this many of the latest points (regridded), to stay cheap."""


@dataclass(frozen=True)
class Period:
    """A seasonal period: its length in ms and in points at the spacing seen when it was found."""

    ms: int
    points: int


def detect_period(ts: IntArray, values: FloatArray) -> Period | None:
    """The weekly or daily period of a series, or None when neither is significant."""
    if len(ts) < 2:
        return None
    spacing = float(np.median(np.diff(ts)))
    if spacing <= 0:
        return None
    grid = _regular_grid(ts, values, spacing)
    day, week = round(DAY_MS / spacing), round(WEEK_MS / spacing)
    if week >= 4 and len(grid) >= MIN_CYCLES * week:
        # A daily pattern repeats weekly too; a weekly one is what survives subtracting the day before.
        change = grid[day:] - grid[:-day] if day >= 1 else _detrended(grid, week)
        if _autocorrelation(change, week) >= ACF_MIN:
            return Period(WEEK_MS, week)
    if day >= 4 and len(grid) >= MIN_CYCLES * day and _autocorrelation(_detrended(grid, day), day) >= ACF_MIN:
        return Period(DAY_MS, day)
    return None


def detect(ts: IntArray, values: FloatArray) -> Scores:
    """Score each point against its seasonal expectation (or `mad` where there is no period)."""
    expected, sigma = rolling_median_sigma(values, WINDOW, WARMUP)
    periods = {}
    for start, stop in segments(len(values), first=TEST_EVERY, every=TEST_EVERY):
        period = detect_period(ts[:start], values[:start])
        if period is None:
            continue
        if period not in periods:
            periods[period] = _seasonal_model(ts, values, period)
        model_expected, model_sigma = periods[period]
        expected[start:stop] = model_expected[start:stop]
        sigma[start:stop] = model_sigma[start:stop]
    return scores_from_sigma(values, expected, sigma, WARMUP)


def _seasonal_model(ts: IntArray, values: FloatArray, period: Period) -> tuple[FloatArray, FloatArray]:
    """Expected value and residual sigma of every point for one period (NaN where unknown)."""
    bins = max(period.points, 1)
    elapsed = ts - ts[0]
    cycle = elapsed // period.ms
    phase = (elapsed % period.ms) * bins // period.ms
    cycles = int(cycle[-1]) + 1
    centred = values - pd.Series(values).groupby(cycle).transform("median").to_numpy()
    table = np.full((cycles, bins), np.nan)
    table[cycle, phase] = pd.Series(centred).groupby(cycle * bins + phase).transform("mean").to_numpy()
    # profiles[c] is the per-phase median of the PROFILE_CYCLES cycles before c.
    padded = np.vstack([np.full((PROFILE_CYCLES, bins), np.nan), table])
    windows = np.lib.stride_tricks.sliding_window_view(padded[:-1], PROFILE_CYCLES, axis=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a phase with no earlier cycle has no profile
        profiles = np.nanmedian(windows, axis=2)
    profile = np.nan_to_num(profiles[cycle, phase], nan=0.0)
    level, _ = rolling_median_sigma(values - profile, LEVEL_WINDOW, 1)
    expected = level + profile
    _, sigma = rolling_median_sigma(values - expected, RESIDUAL_WINDOW, WARMUP)
    return expected, sigma


def _regular_grid(ts: IntArray, values: FloatArray, spacing: float) -> FloatArray:
    """The latest values on a regular grid of `spacing`, gaps filled linearly."""
    slot = np.rint((ts - ts[0]) / spacing).astype(np.int64)
    keep = slot >= slot[-1] - MAX_DETECT_POINTS
    slot, values = slot[keep] - slot[keep][0], values[keep]
    return np.interp(np.arange(slot[-1] + 1), slot, values)


def _detrended(grid: FloatArray, lag: int) -> FloatArray:
    """The series minus its centred moving average over one period (its trend and level shifts)."""
    return grid - pd.Series(grid).rolling(lag, center=True, min_periods=1).mean().to_numpy()


def _autocorrelation(series: FloatArray, lag: int) -> float:
    from statsmodels.tsa.stattools import acf

    if len(series) <= lag or np.ptp(series) == 0:
        return 0.0
    return float(acf(series, nlags=lag, fft=True)[lag])
