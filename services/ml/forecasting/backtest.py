"""Rolling-origin backtests and the `auto` choice: per series, the best method or the mean of the
best few, judged on the last horizons of its own history. Runs in the forecast worker processes."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from services.ml.forecasting.methods import (
    Candidate,
    Prediction,
    auto_candidates,
    min_points,
    model_version,
    predict,
    usable_seasons,
)

MAX_WINDOWS = 2
"""Rolling origins per backtest: the last two horizons of the history."""
MAX_COMBINED = 4
"""A combination averages the best two to four candidates (the M4 winners were combinations)."""


@dataclass(frozen=True)
class SeriesJob:
    """One regular series to forecast, as sent to a worker process."""

    y: np.ndarray
    start_ms: int
    step_ms: int
    method: str
    horizon: int
    levels: tuple[float, ...]
    seasons: tuple[int, ...]
    deadline: float | None = None  # epoch seconds; the request's deadline
    backtest: bool = True


@dataclass
class SeriesOutcome:
    """The forecast of one series: the method chosen, its backtest error and the prediction."""

    method: str
    prediction: Prediction
    model_version: str
    weights: dict[str, float] = field(default_factory=dict)
    smape: float | None = None
    mase: float | None = None
    windows: int = 0
    candidates: dict[str, float] = field(default_factory=dict)


class TooShort(ValueError):
    """The history is shorter than the method needs; `minimum` says how many points it needs."""

    def __init__(self, method: str, minimum: int, got: int) -> None:
        self.method, self.minimum, self.got = method, minimum, got
        super().__init__(f"{method} needs at least {minimum} points of history; the series has {got}")

    def __reduce__(self):
        # Raised in a worker process: it must pickle back with its fields.
        return TooShort, (self.method, self.minimum, self.got)


def smape(actual: np.ndarray, forecast: np.ndarray) -> float:
    """Symmetric MAPE in percent, as in M4 (a 0/0 term counts as 0)."""
    denom = np.abs(actual) + np.abs(forecast)
    terms = np.divide(2 * np.abs(actual - forecast), denom, out=np.zeros_like(denom), where=denom > 0)
    return float(100 * terms.mean())


def mase(actual: np.ndarray, forecast: np.ndarray, train: np.ndarray, season: int) -> float:
    """Mean absolute scaled error: the error over the in-sample seasonal naive error (as in M4)."""
    m = season if len(train) > season else 1
    scale = float(np.mean(np.abs(train[m:] - train[:-m]))) if len(train) > m else 0.0
    error = float(np.mean(np.abs(actual - forecast)))
    if scale == 0:
        return 0.0 if error == 0 else float("inf")
    return error / scale


def _check_deadline(deadline: float | None) -> None:
    if deadline is not None and time.time() > deadline:
        raise TimeoutError("the request's deadline passed while fitting forecasts")


def _fit(
    job: SeriesJob, method: str, seasons: tuple[int, ...], y: np.ndarray, levels: tuple[float, ...]
) -> Prediction:
    _check_deadline(job.deadline)
    return predict(method, y, job.horizon, levels, seasons, job.step_ms, job.start_ms)


def run(job: SeriesJob) -> SeriesOutcome:
    """Forecast one series with its method, or for `auto` choose by backtest (worker entry point)."""
    if job.method != "auto":
        return _single(job)
    n, h, season = len(job.y), job.horizon, job.seasons[0]
    # Every candidate needs a backtest window: the shortest history auto accepts fits the cheapest
    # candidate (seasonal naive at the main season) and one horizon to judge it on.
    least = min_points("seasonal_naive", season) + h
    if n < least:
        raise TooShort("auto", least, n)
    windows = 1
    while windows < MAX_WINDOWS and n - (windows + 1) * h >= min_points("seasonal_naive", season):
        windows += 1
    shortest = n - windows * h
    usable = [
        c
        for c in auto_candidates(usable_seasons(job.seasons, shortest))
        if min_points(c.method, c.season, h) <= shortest
    ] or [Candidate("seasonal_naive", season if shortest >= season else 1)]
    actual, backtests = [], {c: [] for c in usable}
    for w in range(windows, 0, -1):
        train, test = job.y[: n - w * h], job.y[n - w * h : n - w * h + h]
        actual.append((train, test))
        for c in usable:
            backtests[c].append(_fit(job, c.method, (c.season,), train, ()).mean)
    scores = {
        c: np.mean([smape(t, f) for (_, t), f in zip(actual, backtests[c], strict=True)]) for c in usable
    }
    ranked = sorted(usable, key=lambda c: scores[c])
    options: list[tuple[float, tuple[Candidate, ...]]] = [(scores[ranked[0]], (ranked[0],))]
    for k in range(2, min(MAX_COMBINED, len(ranked)) + 1):
        members = tuple(ranked[:k])
        combined = [np.mean([backtests[c][i] for c in members], axis=0) for i in range(windows)]
        options.append(
            (float(np.mean([smape(t, f) for (_, t), f in zip(actual, combined, strict=True)])), members)
        )
    best_smape, members = min(options, key=lambda o: o[0])
    chosen = [np.mean([backtests[c][i] for c in members], axis=0) for i in range(windows)]
    best_mase = float(np.mean([mase(t, f, tr, season) for (tr, t), f in zip(actual, chosen, strict=True)]))
    finals = [_fit(job, c.method, (c.season,), job.y, job.levels) for c in members]
    if len(members) == 1:
        method, prediction, weights = members[0].name, finals[0], {}
    else:
        # Bands of a combination: the mean of the members' bounds (as the M4 combination entries did).
        method = "combination"
        prediction = Prediction(
            np.mean([p.mean for p in finals], axis=0),
            {lv: np.mean([p.lower[lv] for p in finals], axis=0) for lv in job.levels},
            {lv: np.mean([p.upper[lv] for p in finals], axis=0) for lv in job.levels},
        )
        weights = {c.name: 1 / len(members) for c in members}
    return SeriesOutcome(
        method,
        prediction,
        model_version("auto"),
        weights,
        float(best_smape),
        best_mase,
        windows,
        {c.name: float(scores[c]) for c in usable},
    )


def _single(job: SeriesJob) -> SeriesOutcome:
    """One named method: fitted on the whole history, with its backtest error when the history
    holds a window beyond what the method needs."""
    n, h, season = len(job.y), job.horizon, job.seasons[0]
    need = min_points(job.method, season, h if job.levels else 0)
    if n < need:
        raise TooShort(job.method, need, n)
    windows = 0
    if job.backtest:
        while windows < MAX_WINDOWS and n - (windows + 1) * h >= min_points(job.method, season):
            windows += 1
    outcome = SeriesOutcome(
        job.method, _fit(job, job.method, job.seasons, job.y, job.levels), model_version(job.method)
    )
    if windows:
        actual = [(job.y[: n - w * h], job.y[n - w * h : n - w * h + h]) for w in range(windows, 0, -1)]
        forecasts = [_fit(job, job.method, job.seasons, train, ()).mean for train, _ in actual]
        outcome.smape = float(np.mean([smape(t, f) for (_, t), f in zip(actual, forecasts, strict=True)]))
        outcome.mase = float(
            np.mean([mase(t, f, tr, season) for (tr, t), f in zip(actual, forecasts, strict=True)])
        )
        outcome.windows = windows
    return outcome
