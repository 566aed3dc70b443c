"""Threshold crossing on a known line and band."""

from __future__ import annotations

import numpy as np
import pytest

from services.ml.forecasting.crossing import crossing
from services.ml.forecasting.methods import Prediction


def _line() -> Prediction:
    mean = np.arange(10, dtype=float)  # 0, 1, ..., 9
    return Prediction(mean, {80.0: mean - 1, 95.0: mean - 2}, {80.0: mean + 1, 95.0: mean + 2})


def test_crossing_above_times_of_forecast_and_bands() -> None:
    c = crossing(_line(), 5.0, "above")
    assert (c.forecast, c.upper, c.lower) == (5, 3, 7)  # the widest (95%) band is +-2
    assert c.probability > 0.99  # the mean itself passes 5 by 4 at the last step


def test_crossing_below_and_never() -> None:
    c = crossing(_line(), 0.5, "below")
    assert (c.forecast, c.upper, c.lower) == (0, None, 0)
    never = crossing(_line(), 100.0, "above")
    assert (never.forecast, never.upper, never.lower) == (None, None, None)
    assert never.probability < 1e-6


def test_probability_is_one_half_when_the_last_mean_touches_the_threshold() -> None:
    assert crossing(_line(), 9.0, "above").probability == pytest.approx(0.5)
    # the upper 95% bound touching the threshold is a 2.5% chance at that step
    assert crossing(_line(), 11.0, "above").probability == pytest.approx(0.025, abs=1e-6)
