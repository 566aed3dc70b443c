"""When a forecast crosses a threshold, and how likely it is to within the horizon."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from services.ml.forecasting.methods import Prediction


@dataclass(frozen=True)
class Crossing:
    """First crossing step (index into the horizon, None if none) of the forecast and its widest band."""

    forecast: int | None
    upper: int | None
    lower: int | None
    probability: float


def _first(values: np.ndarray, threshold: float, direction: str) -> int | None:
    hits = np.flatnonzero(values >= threshold if direction == "above" else values <= threshold)
    return int(hits[0]) if hits.size else None


def crossing(prediction: Prediction, threshold: float, direction: str) -> Crossing:
    """First crossings of the point forecast and of the widest band's bounds, and the probability of
    crossing within the horizon.

    The probability treats each step's forecast as normal with the mean forecast and the spread its
    widest band implies (the half-width on the side of the threshold over the level's z), and takes
    the largest step probability: exact when forecast errors move together across steps (as they
    mostly do, errors accumulate), a lower bound otherwise."""
    from scipy.stats import norm  # only when a threshold is asked: keeps scipy.stats off start-up

    widest = max(prediction.lower)
    mean = prediction.mean
    z = float(norm.ppf(0.5 + widest / 200))
    if direction == "above":
        sigma = (prediction.upper[widest] - mean) / z
        gap = threshold - mean
    else:
        sigma = (mean - prediction.lower[widest]) / z
        gap = mean - threshold
    with np.errstate(divide="ignore", invalid="ignore"):
        step_p = np.where(sigma > 0, norm.sf(gap / np.where(sigma > 0, sigma, 1)), (gap <= 0).astype(float))
    return Crossing(
        _first(mean, threshold, direction),
        _first(prediction.upper[widest], threshold, direction),
        _first(prediction.lower[widest], threshold, direction),
        float(np.clip(step_p.max(), 0.0, 1.0)) if step_p.size else 0.0,
    )
