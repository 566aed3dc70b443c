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
STATISTICAL = (
    "auto_ets",
    "auto_arima",
    "auto_theta",
    "mstl",
    "seasonal_naive",
    "seasonal_es",
    "seasonal_window_average",
    "stl_drift",
)
AUTO_METHODS = ("seasonal_naive", "seasonal_es", "seasonal_window_average", "stl_drift")
"""What `auto` backtests, at each season of the series. Each fit takes about a millisecond (stl_drift
about four) on an M4 hourly series, so the backtest and the final fits together cost less than a
tenth of one Prophet fit; on the M4 hourly series the choice among them beats auto_theta, mstl,
auto_ets and Prophet (docs/benchmarks.md). auto_arima (~30 s a series with a daily season on
hourly data), auto_ets (~1.4 s), mstl (~70 ms) and auto_theta (~50 ms) stay methods of their own."""
STL_DRIFT_SEASONS = 14
"""stl_drift decomposes the last 14 seasons only (two weeks of hourly points): its drift follows the
recent trend, and the fit costs a fifth less (same sMAPE on M4 hourly)."""
WINDOW_SEASONS = 2
"""seasonal_window_average forecasts each step as the mean of that step in the last two seasons."""
CONFORMAL_WINDOWS = 2
"""Models without intervals of their own get conformal ones from refits on past horizons: at least
two (statsforecast's least) ..."""
CONFORMAL_MAX_WINDOWS = 10
"""... and at most ten: the quantile of k errors per step cannot cover more than k/(k+1) of new ones,
two windows would cap a 95% band at 67%."""
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


@dataclass(frozen=True)
class Candidate:
    """One model `auto` backtests: a method at one seasonal period."""

    method: str
    season: int

    @property
    def name(self) -> str:
        """How answers name it, e.g. "seasonal_es:168"."""
        return f"{self.method}:{self.season}"


def auto_candidates(seasons: tuple[int, ...]) -> tuple[Candidate, ...]:
    """Every auto method at every season of the series (one step when it has none); stl_drift at the
    main season only (LOESS over a weekly season of hourly points costs 30 ms a fit)."""
    return tuple(
        Candidate(m, s) for i, s in enumerate(seasons) for m in AUTO_METHODS if i == 0 or m != "stl_drift"
    )


def conformal(method: str) -> bool:
    """Whether the method's intervals are conformal (from refits on past horizons), not its own."""
    return method in ("seasonal_es", "seasonal_window_average")


def min_points(method: str, season: int, horizon: int = 0) -> int:
    """The fewest history points `method` accepts for a series with the given main season (and, for
    methods with conformal intervals, the past horizons of `horizon` steps that calibrate them)."""
    calibration = CONFORMAL_WINDOWS * horizon if conformal(method) else 0
    if method == "seasonal_naive":
        return max(season, 2)
    if method == "seasonal_es":
        return max(season, 2) + calibration
    if method == "seasonal_window_average":
        return WINDOW_SEASONS * max(season, 1) + calibration
    if method == "prophet":
        return 3
    return max(2 * season, 10) if season > 1 else 10


def _statsforecast_model(method: str, seasons: tuple[int, ...], intervals: tuple[int, int] | None):
    from statsforecast.models import (
        MSTL,
        AutoARIMA,
        AutoETS,
        AutoTheta,
        RandomWalkWithDrift,
        SeasonalExponentialSmoothingOptimized,
        SeasonalNaive,
        SeasonalWindowAverage,
    )
    from statsforecast.utils import ConformalIntervals

    main = seasons[0]
    calibration = ConformalIntervals(h=intervals[0], n_windows=intervals[1]) if intervals else None
    if method == "seasonal_es":
        return SeasonalExponentialSmoothingOptimized(season_length=main, prediction_intervals=calibration)
    if method == "seasonal_window_average":
        return SeasonalWindowAverage(
            season_length=main, window_size=WINDOW_SEASONS, prediction_intervals=calibration
        )
    if method == "stl_drift":
        # One STL pass and a drifting trend: the cheap candidate that extrapolates a trend.
        if main == 1:
            return RandomWalkWithDrift()
        return MSTL(season_length=[main], trend_forecaster=RandomWalkWithDrift(), stl_kwargs=STL_JUMPS)
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
    if method == "stl_drift":
        y = y[-STL_DRIFT_SEASONS * max(seasons[0], 1) :]
    intervals = None
    if levels and conformal(method):
        fit = min_points(method, seasons[0])
        intervals = (horizon, max(CONFORMAL_WINDOWS, min(CONFORMAL_MAX_WINDOWS, (len(y) - fit) // horizon)))
    model = _statsforecast_model(method, seasons, intervals)
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
