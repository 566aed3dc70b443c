"""The forecasting methods: statsforecast's models and Prophet on one regular series.

Runs inside the forecast worker processes: statsforecast and prophet are imported here on first use,
never when the ml service is imported."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
STATSFORECAST_VERSION = "statsforecast-2.1.1"
PROPHET_VERSION = "prophet-1.5.0"
STATISTICAL = ("auto_ets", "auto_arima", "auto_theta", "mstl", "seasonal_naive")
# auto_arima with a daily season on hourly data takes ~30 s a series and auto_ets ~1.4 s
# (statsforecast 2.1.1, one core, M4 hourly) and were rarely chosen in backtests; prophet is the
# baseline auto has to beat: none is an auto candidate.
AUTO_CANDIDATES = ("auto_theta", "mstl", "seasonal_naive")
STL_JUMPS = {"seasonal_jump": 7, "trend_jump": 10, "low_pass_jump": 7}
ARIMA_MAX_POINTS = 14 * 24
"""auto_arima fits on the last 14 daily seasons at most: its cost grows steeply with length."""


@dataclass(frozen=True)
class Prediction:
    """A method's forecast: the mean and, per level, the lower and upper bounds."""

    mean: np.ndarray
    lower: dict[float, np.ndarray]
    upper: dict[float, np.ndarray]


MAX_SEASON = 1000
"""The longest seasonal period used, in steps: longer ones cost more than they explain."""


def season_lengths(step_ms: int) -> tuple[int, ...]:
    """Seasonal periods in steps: the day when the step divides it (else the hour; a week of 7 for
    daily steps), then the week for MSTL; none (1) when no period fits in MAX_SEASON steps."""

    def period(ms: int) -> int:
        return ms // step_ms if ms % step_ms == 0 and 2 <= ms // step_ms <= MAX_SEASON else 0

    if step_ms == DAY_MS:
        return (7,)
    main = period(DAY_MS) or period(HOUR_MS)
    if not main:
        return (1,)
    week = period(7 * DAY_MS)
    return (main, week) if week > main else (main,)


def usable_seasons(seasons: tuple[int, ...], points: int) -> tuple[int, ...]:
    """The seasons the history can estimate: two full cycles of each (MSTL needs them)."""
    return tuple(m for m in seasons if m > 1 and points >= 2 * m) or (1,)


def min_points(method: str, season: int) -> int:
    """The fewest history points `method` accepts for a series with the given main season."""
    if method == "seasonal_naive":
        return max(season, 2)
    if method == "prophet":
        return 3
    return max(2 * season, 10) if season > 1 else 10


def _statsforecast_model(method: str, seasons: tuple[int, ...]):
    from statsforecast.models import MSTL, AutoARIMA, AutoETS, AutoTheta, SeasonalNaive

    main = seasons[0]
    if method == "auto_ets":
        return AutoETS(season_length=main)
    if method == "auto_arima":
        return AutoARIMA(season_length=main)
    if method == "auto_theta":
        return AutoTheta(season_length=main)
    if method == "seasonal_naive":
        return SeasonalNaive(season_length=main)
    if len(seasons) == 1 and main == 1:
        return AutoETS(season_length=1)  # MSTL without a season is its trend model alone
    # LOESS evaluated every few points and interpolated (statsmodels STL's jumps): on the M4 hourly
    # series about 3x faster at the same sMAPE.
    return MSTL(season_length=list(seasons), trend_forecaster=AutoETS(model="ZZN"), stl_kwargs=STL_JUMPS)


def predict(
    method: str,
    y: np.ndarray,
    horizon: int,
    levels: tuple[float, ...],
    seasons: tuple[int, ...],
    step_ms: int,
    start_ms: int,
) -> Prediction:
    """Fit `method` on `y` (regular, oldest first) and forecast `horizon` steps with intervals."""
    if method == "prophet":
        return _prophet(y, horizon, levels, step_ms, start_ms)
    seasons = usable_seasons(seasons, len(y))
    if method != "mstl":
        seasons = seasons[:1]
    if method == "auto_arima":
        y = y[-max(ARIMA_MAX_POINTS, 2 * seasons[0]) :]
    model = _statsforecast_model(method, seasons)
    lv = [int(x) if float(x).is_integer() else x for x in levels]
    out = model.forecast(y=y, h=horizon, level=lv or None)
    mean = np.asarray(out["mean"], dtype=np.float64)
    return Prediction(
        mean,
        {level: np.asarray(out[f"lo-{v}"], dtype=np.float64) for level, v in zip(levels, lv, strict=True)},
        {level: np.asarray(out[f"hi-{v}"], dtype=np.float64) for level, v in zip(levels, lv, strict=True)},
    )


def _prophet(
    y: np.ndarray, horizon: int, levels: tuple[float, ...], step_ms: int, start_ms: int
) -> Prediction:
    import pandas as pd
    from prophet import Prophet

    # cmdstanpy logs every fit at INFO; the service's log is not the place for it.
    logging.getLogger("cmdstanpy").setLevel(logging.WARNING)
    ds = pd.to_datetime(start_ms + step_ms * np.arange(len(y) + horizon), unit="ms")
    history = pd.DataFrame({"ds": ds[: len(y)], "y": y})
    future = pd.DataFrame({"ds": ds[len(y) :]})
    model = Prophet(uncertainty_samples=200)
    model.fit(history)
    # One fit serves every level: the point forecast without sampling, the bands from the quantiles
    # of Prophet's own predictive samples (trend and observation noise).
    samples = model.predictive_samples(future)["yhat"]
    model.uncertainty_samples = 0
    mean = model.predict(future)["yhat"].to_numpy(np.float64)
    lower = {level: np.quantile(samples, (1 - level / 100) / 2, axis=1) for level in levels}
    upper = {level: np.quantile(samples, 1 - (1 - level / 100) / 2, axis=1) for level in levels}
    return Prediction(mean, lower, upper)


def model_version(method: str) -> str:
    """The version string of a method: its name and the library release that implements it."""
    if method == "prophet":
        return f"prophet/{PROPHET_VERSION}"
    return f"{method}/{STATSFORECAST_VERSION}"
