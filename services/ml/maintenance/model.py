"""The remaining-useful-life model: sensor selection, gradient boosting on windowed features with
a capped target, a cross-conformal 90% interval calibrated on out-of-fold predictions of entities
on their way to failure, failure probability within a horizon, and the sensors that drive a
prediction. Pure scikit-learn and numpy; no service code."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
from sklearn.ensemble import HistGradientBoostingRegressor
from sklearn.model_selection import GroupKFold
from threadpoolctl import threadpool_limits

from libs.errors import DeadlineExceeded
from services.ml.detectors.base import FloatArray
from services.ml.maintenance.features import PER_SENSOR, feature_names, windowed
from services.ml.maintenance.history import CYCLES, EntityHistory

COVERAGE = 0.9
FOLDS = 4
BINS = 5
MIN_BIN_RESIDUALS = 30
# Calibration readings: those within CALIBRATION_SPAN caps of failure (145 cycles for the usual cap
# of 125, the range of the C-MAPSS test sets). Earlier readings are trivially right (both the
# prediction and the capped target sit at the cap) and would make the interval too narrow for
# entities that are wearing out, the ones predictions matter for.
CALIBRATION_SPAN = 1.16
MIN_CORRELATION = 0.05
DEFAULT_CAP_CYCLES = 125.0
TOP_DRIVERS = 5
BOOSTING = {"max_iter": 150, "learning_rate": 0.1, "max_leaf_nodes": 15, "min_samples_leaf": 20}
# One OpenMP thread per fit and prediction: they share the machine with the service's event loop and
# other processes, and OpenMP threads spinning on a busy machine made a fit (and a 16-row prediction)
# about 10x slower than on one core.
FIT_THREADS = 1


@dataclass(frozen=True)
class Prediction:
    """One prediction: RUL and its 90% interval, P(failure within horizon), driving sensors."""

    rul: float
    lower: float
    upper: float
    failure_probability: float
    drivers: list[tuple[str, float, float]]  # (sensor, effect on RUL, latest value)


@dataclass
class RulModel:
    """A fitted model; pickled as the tracked artifact."""

    sensors: tuple[str, ...]
    dropped: tuple[str, ...]
    unit: str
    cap: float
    regressor: HistGradientBoostingRegressor
    bin_edges: FloatArray  # upper edges of the predicted-RUL bins (last is +inf)
    residuals: list[FloatArray]  # out-of-fold residuals (true - predicted) per bin
    half_widths: FloatArray  # conformal half-width per bin
    healthy: FloatArray  # typical feature values of a healthy entity (RUL at the cap)
    cv_rmse: float  # out-of-fold, calibration readings, against the capped RUL
    cv_rmse_uncapped: float  # the same readings against the true RUL
    entities: int
    readings: int
    params: dict[str, object] = field(default_factory=dict)
    # The per-sensor features the regressor was fitted on. Models pickled before the features since
    # the history's start existed lack the field; the default is the set they were fitted on.
    per_sensor: tuple[str, ...] = PER_SENSOR[:6]

    @property
    def half_width(self) -> float:
        """The conformal half-width over all bins (the widest), for reporting."""
        return float(self.half_widths.max())

    def predict(self, history: EntityHistory, horizon: float) -> Prediction:
        """RUL at the last reading of `history` (which carries every model sensor)."""
        x = windowed(history, self.sensors, last_only=True, per_sensor=self.per_sensor)
        # One row per sensor with that sensor's features set to a healthy entity's: the change
        # in RUL is what its readings contribute.
        k = len(self.per_sensor)
        probes = np.repeat(x, len(self.sensors) + 1, axis=0)
        for j in range(len(self.sensors)):
            probes[j + 1, j * k : (j + 1) * k] = self.healthy[j * k : (j + 1) * k]
        with threadpool_limits(limits=FIT_THREADS, user_api="openmp"):
            out = np.clip(self.regressor.predict(probes), 0.0, self.cap)
        rul = float(out[0])
        b = int(np.searchsorted(self.bin_edges, rul, side="left"))
        lower = max(0.0, rul - float(self.half_widths[b]))
        upper = min(self.cap, rul + float(self.half_widths[b]))
        probability = float(np.mean(rul + self.residuals[b] <= horizon))
        latest = history.columns(self.sensors)[-1]
        effects = [(s, rul - float(out[j + 1]), float(latest[j])) for j, s in enumerate(self.sensors)]
        effects.sort(key=lambda e: -abs(e[1]))
        drivers = [e for e in effects[:TOP_DRIVERS] if abs(e[1]) > 1e-9]
        return Prediction(rul, lower, upper, probability, drivers)


def select_sensors(histories: list[EntityHistory], cap: float) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(kept, dropped): sensors that are constant, or whose rank correlation with the capped RUL
    is below MIN_CORRELATION, carry no information about wear."""
    names = histories[0].sensors
    values = np.concatenate([h.columns(names) for h in histories])
    target = np.concatenate([np.minimum(h.remaining(), cap) for h in histories])
    kept, dropped = [], []
    ranked_target = _ranks(target)
    for j, name in enumerate(names):
        column = values[:, j]
        spread = np.nanstd(column)
        if not np.isfinite(spread) or spread <= 1e-9 * (1.0 + abs(float(np.nanmean(column)))):
            dropped.append(name)
            continue
        correlation = np.corrcoef(_ranks(column), ranked_target)[0, 1]
        (kept if abs(correlation) >= MIN_CORRELATION else dropped).append(name)
    return tuple(kept), tuple(dropped)


def _ranks(x: FloatArray) -> FloatArray:
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = np.arange(len(x), dtype=np.float64)
    return ranks


def default_cap(histories: list[EntityHistory]) -> float:
    """125 cycles (usual for C-MAPSS); for timed histories, half the median life."""
    if histories[0].unit == CYCLES:
        return DEFAULT_CAP_CYCLES
    return float(np.median([h.remaining()[0] for h in histories])) / 2.0


def fit(
    histories: list[EntityHistory],
    cap: float | None = None,
    deadline: float | None = None,
    seed: int = 0,
) -> RulModel:
    """Fit on run-to-failure `histories` (at least two, the same sensors, each with a failure).
    Folds by entity give every reading an out-of-fold prediction made from its truncated history,
    as a real prediction is; those within CALIBRATION_SPAN caps of failure set the interval and the
    failure probability, binned by predicted RUL. The final model is fitted on everything.
    `deadline` (time.monotonic) stops the work when passed."""
    cap = cap or default_cap(histories)
    sensors, dropped = select_sensors(histories, cap)
    if not sensors:
        sensors, dropped = histories[0].sensors, ()  # nothing correlates: keep all rather than none
    xs = [windowed(h, sensors) for h in histories]
    remaining = np.concatenate([h.remaining() for h in histories])
    x, y = np.concatenate(xs), np.minimum(remaining, cap)
    groups = np.concatenate([np.full(len(h.steps), i) for i, h in enumerate(histories)])
    params = {**BOOSTING, "random_state": seed}
    oof = np.empty(len(y))
    with threadpool_limits(limits=FIT_THREADS, user_api="openmp"):
        for train, test in GroupKFold(n_splits=min(FOLDS, len(histories))).split(x, y, groups):
            _check(deadline)
            oof[test] = np.clip(
                HistGradientBoostingRegressor(**params).fit(x[train], y[train]).predict(x[test]), 0, cap
            )
        _check(deadline)
        regressor = HistGradientBoostingRegressor(**params).fit(x, y)
    near = remaining <= CALIBRATION_SPAN * cap
    predicted, residuals = oof[near], (y - oof)[near]
    edges, per_bin, widths = _calibrate(predicted, residuals)
    healthy_rows = x[y >= cap]
    healthy = np.median(healthy_rows if len(healthy_rows) else x, axis=0)
    return RulModel(
        sensors=sensors,
        dropped=dropped,
        unit=histories[0].unit,
        cap=float(cap),
        regressor=regressor,
        bin_edges=edges,
        residuals=per_bin,
        half_widths=widths,
        healthy=healthy,
        cv_rmse=float(np.sqrt(np.mean(residuals**2))),
        cv_rmse_uncapped=float(np.sqrt(np.mean((oof[near] - remaining[near]) ** 2))),
        entities=len(histories),
        readings=len(y),
        params={**params, "features": len(feature_names(sensors)), "rul_cap": float(cap), "folds": FOLDS},
        per_sensor=PER_SENSOR,
    )


def _calibrate(
    predicted: FloatArray, residuals: FloatArray
) -> tuple[FloatArray, list[FloatArray], FloatArray]:
    """(upper bin edges, residuals per bin, conformal half-width per bin): BINS bins of equal count
    by predicted RUL, since errors are small near failure and grow with the remaining life."""
    edges = np.append(np.unique(np.quantile(predicted, np.linspace(0, 1, BINS + 1)[1:-1])), np.inf)
    bins = np.searchsorted(edges, predicted, side="left")
    per_bin, widths = [], []
    for b in range(len(edges)):
        r = residuals[bins == b]
        if len(r) < MIN_BIN_RESIDUALS:
            r = residuals  # too few to trust alone
        per_bin.append(r.astype(np.float32))
        widths.append(_conformal(np.abs(r)))
    return edges, per_bin, np.array(widths)


def _conformal(scores: FloatArray) -> float:
    """The split-conformal quantile: the ceil((n + 1) * COVERAGE)-th smallest score."""
    n = len(scores)
    rank = min(n, int(np.ceil((n + 1) * COVERAGE)))
    return float(np.sort(scores)[rank - 1])


def _check(deadline: float | None) -> None:
    if deadline is not None and time.monotonic() > deadline:
        raise DeadlineExceeded("the request's deadline passed while training the maintenance model")
