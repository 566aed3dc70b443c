"""The RUL model on synthetic degrading units: accuracy floors, sensor selection, conformal
coverage, failure probability and driving sensors."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from services.ml.maintenance import model as rul
from tests.unit.ml.maintenance_data import units

CAP = 80.0


@pytest.fixture(scope="module")
def fitted() -> rul.RulModel:
    return rul.fit(units(24, seed=1), cap=CAP)


@pytest.fixture(scope="module")
def held_out() -> list[tuple[object, float]]:
    """Held-out units cut at random points, with their true remaining life."""
    rng = np.random.default_rng(7)
    out = []
    for h in units(30, seed=99):
        for remaining in rng.integers(1, 100, 3):
            n = len(h.steps) - int(remaining)
            out.append((h.truncated(n), float(remaining)))
    return out


def test_drops_constant_and_unrelated_sensors(fitted: rul.RulModel) -> None:
    assert set(fitted.dropped) == {"constant", "noise"}
    assert set(fitted.sensors) == {"pressure", "temperature"}


def test_beats_the_mean_by_far(fitted: rul.RulModel, held_out) -> None:
    truth = np.minimum([t for _, t in held_out], CAP)
    predicted = np.array([fitted.predict(h, 30).rul for h, _ in held_out])
    rmse = np.sqrt(np.mean((predicted - truth) ** 2))
    mean_rmse = np.sqrt(np.mean((truth.mean() - truth) ** 2))
    # A model that ignores the sensors scores about the mean's RMSE (~25 here); wear is readable to ~10.
    assert rmse < 12.0
    assert rmse < 0.5 * mean_rmse


def test_conformal_interval_covers_about_ninety_percent(fitted: rul.RulModel, held_out) -> None:
    truth = np.minimum([t for _, t in held_out], CAP)
    predictions = [fitted.predict(h, 30) for h, _ in held_out]
    covered = np.mean([p.lower <= t <= p.upper for p, t in zip(predictions, truth, strict=True)])
    assert 0.8 <= covered <= 0.99
    assert all(p.lower <= p.rul <= p.upper for p in predictions)


def test_failure_probability_tracks_remaining_life(fitted: rul.RulModel, held_out) -> None:
    near = [fitted.predict(h, 30).failure_probability for h, t in held_out if t <= 10]
    far = [fitted.predict(h, 30).failure_probability for h, t in held_out if t >= 70]
    assert np.mean(near) > 0.8
    assert np.mean(far) < 0.2


def test_driving_sensors_are_the_worn_ones(fitted: rul.RulModel) -> None:
    worn = units(1, seed=5)[0]
    p = fitted.predict(worn.truncated(len(worn.steps) - 5), 30)
    assert {d[0] for d in p.drivers} <= {"pressure", "temperature"}
    assert p.drivers and p.drivers[0][1] < 0  # wear shortens the life


def test_survives_pickling(fitted: rul.RulModel, held_out) -> None:
    again = pickle.loads(pickle.dumps(fitted))
    h, _ = held_out[0]
    assert again.predict(h, 30) == fitted.predict(h, 30)


def test_default_cap_is_125_cycles() -> None:
    assert rul.default_cap(units(3, seed=2)) == 125.0


def test_deadline_stops_training() -> None:
    from libs.errors import DeadlineExceeded

    with pytest.raises(DeadlineExceeded):
        rul.fit(units(4, seed=3), deadline=0.0)
