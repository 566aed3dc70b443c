"""Windowed features of an entity's sensor history: for each reading, what a model can know at
that point (its value, recent means, spread and trend, the entity's age)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from services.ml.detectors.base import FloatArray
from services.ml.maintenance.history import EntityHistory

SHORT = 10
LONG = 40
TREND = 40
SMOOTHING = 0.03
PER_SENSOR = ("last", f"mean{SHORT}", f"mean{LONG}", f"std{LONG}", f"slope{TREND}", "ewm")


def feature_names(sensors: tuple[str, ...]) -> list[str]:
    """The feature columns for `sensors`, in the order `windowed` builds them; "age" last."""
    return [f"{s}:{f}" for s in sensors for f in PER_SENSOR] + ["age"]


def windowed(history: EntityHistory, sensors: tuple[str, ...], last_only: bool = False) -> FloatArray:
    """Features at every reading (or only the last) of `history`; windows shorter than asked at
    the start of a history use what there is."""
    frame = pd.DataFrame(history.columns(sensors))
    t = pd.Series(np.arange(len(frame), dtype=np.float64))
    mean_short = frame.rolling(SHORT, min_periods=1).mean()
    mean_long = frame.rolling(LONG, min_periods=1).mean()
    std_long = frame.rolling(LONG, min_periods=2).std().fillna(0.0)
    # Least-squares slope per reading: cov(x, t) / var(t) over the trend window.
    cov = frame.rolling(TREND, min_periods=2).cov(t)
    var_t = t.rolling(TREND, min_periods=2).var()
    slope = cov.div(var_t, axis=0).fillna(0.0)
    ewm = frame.ewm(alpha=SMOOTHING, adjust=True).mean()
    parts = [frame, mean_short, mean_long, std_long, slope, ewm]
    rows = slice(len(frame) - 1, len(frame)) if last_only else slice(None)
    stacked = np.stack([p.to_numpy(np.float64)[rows] for p in parts], axis=2)  # (n, sensors, features)
    flat = stacked.reshape(stacked.shape[0], -1)
    return np.column_stack([flat, history.ages()[rows]])
