"""Prophet detector: the expected value and band are Prophet's forecast and uncertainty interval
for each point, from a model fitted on the points before it.

Prophet models trend changes and daily and weekly seasonality by the calendar (it decides which
seasonalities to fit from the span of the data), so it handles irregular timestamps and gaps
natively. It is the slowest method: it is fitted at each refit point (`refit_points`, on all
earlier points, at most `TRAIN_MAX`) and predicts the points up to the next one, a handful of fits
per series. The interval is `INTERVAL_WIDTH` wide, so its edge is about 3 sigma as for the
statistical methods; it is sampled, so the sampling is seeded (and the global numpy random state
restored afterwards) to make scores repeatable. Prophet's sampled interval depends on every row it
is asked about, so it is asked about a regular grid that starts at the segment's first point and
follows the schedule, not the data; each point reads the grid at its timestamp. Nothing about
later points enters a score.
"""

from __future__ import annotations

import logging
import warnings

import numpy as np

from services.ml.detectors import REFIT_EVERY, refit_points
from services.ml.detectors.base import FloatArray, IntArray, Scores
from services.ml.detectors.rolling import scores_from_band

TRAIN_MAX = 4000
INTERVAL_WIDTH = 0.997
UNCERTAINTY_SAMPLES = 1000
SEED = 0
GRID_SPAN = 1.5
"""The forecast grid covers this many times the segment's planned length at the training spacing
(room for gaps); a point past its end reads the grid's last value."""


def detect(ts: IntArray, values: FloatArray) -> Scores:
    """Score each point against the forecast of a Prophet model fitted on earlier points."""
    n = len(values)
    expected, lower, upper = (np.full(n, np.nan) for _ in range(3))
    # The schedule past n gives each segment's planned end, which does not depend on n.
    schedule = refit_points(n + REFIT_EVERY + 1)
    starts = [p for p in schedule if p < n]
    for k, start in enumerate(starts):
        stop = min(schedule[k + 1], n)
        begin = max(0, start - TRAIN_MAX)
        spacing = max(1.0, float(np.median(np.diff(ts[begin:start]))))
        grid = ts[start] + spacing * np.arange(int(GRID_SPAN * (schedule[k + 1] - start)))
        forecast = _forecast(ts[begin:start], values[begin:start], grid.astype(np.int64))
        for band, column in zip((expected, lower, upper), forecast, strict=True):
            band[start:stop] = np.interp(ts[start:stop], grid, column)
    return scores_from_band(values, expected, lower, upper, starts[0] if starts else n)


def _forecast(
    train_ts: IntArray, train_values: FloatArray, grid: IntArray
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Prophet's forecast and interval on `grid` (epoch ms), fitted on the training points."""
    import pandas as pd

    prophet = _prophet_class()
    model = prophet(interval_width=INTERVAL_WIDTH, uncertainty_samples=UNCERTAINTY_SAMPLES)
    state = np.random.get_state()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # Prophet's own pandas usage, not ours
        model.fit(pd.DataFrame({"ds": pd.to_datetime(train_ts, unit="ms"), "y": train_values}))
        try:
            np.random.seed(SEED)  # Prophet samples its interval from the global numpy generator
            frame = model.predict(pd.DataFrame({"ds": pd.to_datetime(grid, unit="ms")}))
        finally:
            np.random.set_state(state)
    return tuple(frame[c].to_numpy(dtype=np.float64) for c in ("yhat", "yhat_lower", "yhat_upper"))


def _prophet_class():
    """Prophet, imported with its chatter silenced (plotly's absence, cmdstanpy's per-fit INFO lines)."""
    logging.getLogger("prophet.plot").setLevel(logging.CRITICAL)
    from cmdstanpy.utils import get_logger
    from prophet import Prophet

    # cmdstanpy sets its logger up on first use (DEBUG, with its own handler if there is none):
    # set it up now, then keep only warnings.
    get_logger().setLevel(logging.WARNING)
    logging.getLogger("prophet").setLevel(logging.WARNING)
    return Prophet
