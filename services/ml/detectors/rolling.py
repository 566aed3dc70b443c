"""Rolling z-score and MAD: the expected value is the mean (median) of the previous `WINDOW` points
and the band is 3 standard deviations (3 * 1.4826 * MAD) around it.

They know nothing of seasonality or trend, which makes them the cheapest detectors with the
shortest warm-up; `seasonal` falls back to `mad` where it finds no period. The window holds only
earlier points so a spike cannot widen its own band, and counts points, not time, so an irregular
series is judged against its last `WINDOW` observations. The helpers here (the sigma floor, the
band, the rolling median and MAD) are shared by the other statistical detectors.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from numpy.lib.stride_tricks import sliding_window_view

from services.ml.detectors.base import FloatArray, IntArray, Scores, deviation, score_from_deviation

WINDOW = 60
"""Earlier points in the window: an hour of minute data, ten hours of 10-minute data."""
WARMUP = 20
"""Points before the first score: the window needs this many earlier points to mean anything."""
SIGMAS = 3.0
"""The band edge, in (robust) standard deviations."""
MAD_TO_SIGMA = 1.4826
MEAN_AD_TO_SIGMA = 1.2533
RELATIVE_FLOOR = 1e-3
"""Sigma is at least this share of |expected|: a constant series scores 0 and a 1 % jump off it
lies three band widths out."""
ABSOLUTE_FLOOR = 1e-9


def zscore(ts: IntArray, values: FloatArray) -> Scores:
    """Score each point by its distance from the mean of the previous `WINDOW` points, in their std."""
    past = pd.Series(values).shift(1).rolling(WINDOW, min_periods=WARMUP)
    mean = past.mean().to_numpy()
    return scores_from_sigma(values, mean, past.std().to_numpy(), WARMUP)


def mad(ts: IntArray, values: FloatArray) -> Scores:
    """Score each point by its distance from the median of the previous `WINDOW` points, in robust sigma."""
    median, sigma = rolling_median_sigma(values, WINDOW, WARMUP)
    return scores_from_sigma(values, median, sigma, WARMUP)


def rolling_median_sigma(values: FloatArray, window: int, min_points: int) -> tuple[FloatArray, FloatArray]:
    """Median and robust sigma (1.4826 * MAD) of the (at most `window`) points before each point; NaN
    until `min_points` earlier points exist. Point i's statistics use values[max(0, i - window):i].

    Where the MAD is 0 but the window is not constant (a 0/1 flag, a mostly-0 count), sigma is the
    mean absolute deviation's (1.2533 * it) instead, or every non-median value would be anomalous;
    elsewhere sigma is at least half that, which only binds for lumpy, nearly discrete windows."""
    n = len(values)
    # Row i of `rows` is the window before point i, NaN-padded where it reaches before the start.
    rows = sliding_window_view(np.concatenate([np.full(window, np.nan), values[:-1]]), window)
    median, mad, mean_ad = np.empty(n), np.empty(n), np.empty(n)
    head = min(n, window)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the first row is all NaN
        median[:head] = np.nanmedian(rows[:head], axis=1)
        distance = np.abs(rows[:head] - median[:head, None])
        mad[:head], mean_ad[:head] = np.nanmedian(distance, axis=1), np.nanmean(distance, axis=1)
    median[head:] = np.median(rows[head:], axis=1)
    distance = np.abs(rows[head:] - median[head:, None])
    mad[head:], mean_ad[head:] = np.median(distance, axis=1), distance.mean(axis=1)
    mean_ad_sigma = MEAN_AD_TO_SIGMA * mean_ad
    sigma = np.where(mad > 0, np.maximum(MAD_TO_SIGMA * mad, 0.5 * mean_ad_sigma), mean_ad_sigma)
    too_few = np.arange(n) < min_points
    median[too_few] = np.nan
    sigma[too_few] = np.nan
    return median, sigma


def floor_sigma(sigma: FloatArray, expected: FloatArray) -> FloatArray:
    """Sigma no smaller than a small share of |expected| (NaN stays NaN), so zero spread scores sanely."""
    return np.maximum(sigma, RELATIVE_FLOOR * np.abs(expected) + ABSOLUTE_FLOOR)


def scores_from_sigma(values: FloatArray, expected: FloatArray, sigma: FloatArray, warmup: int) -> Scores:
    """Scores for a band of `SIGMAS` floored sigmas around `expected`."""
    sigma = floor_sigma(sigma, expected)
    return scores_from_band(values, expected, expected - SIGMAS * sigma, expected + SIGMAS * sigma, warmup)


def scores_from_band(
    values: FloatArray, expected: FloatArray, lower: FloatArray, upper: FloatArray, warmup: int
) -> Scores:
    """The contract's scores for a band: 0 and NaN band on the first `warmup` points."""
    expected, lower, upper = (np.array(a, dtype=np.float64) for a in (expected, lower, upper))
    for a in (expected, lower, upper):
        a[:warmup] = np.nan
    score = score_from_deviation(deviation(values, expected, lower, upper))
    score[:warmup] = 0.0
    return Scores(score=score, expected=expected, lower=lower, upper=upper, warmup=min(warmup, len(values)))
