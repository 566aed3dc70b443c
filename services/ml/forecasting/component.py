"""The Forecasting component: reads stored history (through the query-router) or takes inline
history, fits in worker processes, answers, caches, publishes and tracks. No gRPC servicing here.

Each method's configuration (the forecasting modules' parameters, the library releases) is a
registered MLflow model, "forecast-<method>"; answers carry its registry version (`ConfigVersions`).
Each request's backtest summary is logged as an MLflow run in the background, after the answer."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import multiprocessing
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass

import numpy as np

from libs.bus.base import Bus
from libs.cache import TtlCache
from libs.errors import DeadlineExceeded, InvalidArgument, Unavailable
from platformq.analytics.v1 import common_pb2, events_pb2
from platformq.analytics.v1 import ml_service_pb2 as pb
from services.ml.forecasting import backtest, methods
from services.ml.forecasting.backtest import SeriesJob, SeriesOutcome, TooShort
from services.ml.forecasting.crossing import crossing
from services.ml.forecasting.methods import season_lengths
from services.ml.forecasting.spec import METHODS, ForecastSpec, check_series_count
from services.ml.history import HistoryClient
from services.ml.tracking import ModelTracking
from services.ml.versions import ConfigVersions, module_constants, release, unregistered

log = logging.getLogger(__name__)

ML_CACHE = "ml"
TOPIC = "predictions.forecast"
MAX_GRID_POINTS = 200_000
"""A step that spreads one series over more points than this is refused (it names the step)."""
MAX_PENDING_RUNS = 100
"""Backtest runs waiting for MLflow at most; beyond, a run is not logged (a warning says so)."""


def forecast_model(method: str) -> str:
    """The registered MLflow model of a forecasting method's configuration, e.g. "forecast-auto"."""
    return f"forecast-{method}"


def forecast_config(method: str) -> dict[str, object]:
    """What decides a method's forecasts: the method, the forecasting and backtest modules'
    parameters (auto's candidates, seasons, backtest windows, ..., read from the modules, so a
    changed one is a new configuration) and the library releases."""
    params: dict[str, object] = {"method": method}
    params.update(module_constants(methods, "methods."))
    params.update(module_constants(backtest, "backtest."))
    libraries = ["numpy", "statsforecast"] + (["prophet"] if method in ("prophet", "auto") else [])
    for library in libraries:
        params[f"library.{library}"] = release(library)
    return params


def forecast_configs() -> dict[str, Callable[[], dict[str, object]]]:
    """Every method's configuration builder, by registered name (for `ConfigVersions`)."""
    return {forecast_model(m): (lambda m=m: forecast_config(m)) for m in METHODS}


def _series_text(metric: str, labels: dict[str, str]) -> str:
    """A series as Prometheus writes it: cpu_usage{host="a",service_name="auth"}."""
    inner = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    return f"{metric}{{{inner}}}"


@dataclass(frozen=True)
class Regular:
    """One series on a regular grid: what a worker fits."""

    metric: str
    labels: dict[str, str]
    field: str  # the request field the series came from, for errors
    start_ms: int
    step_ms: int
    y: np.ndarray


def infer_step(ts: np.ndarray) -> int:
    """The series' own interval: the median spacing of its timestamps."""
    gaps = np.diff(np.unique(ts))
    return int(np.median(gaps)) if gaps.size else 0


def regularise(ts: np.ndarray, values: np.ndarray, step_ms: int, field: str) -> tuple[int, np.ndarray]:
    """Bucket points on the step grid (the mean of a bucket's points; several series of a group
    average), and fill empty buckets by linear interpolation. Returns (first bucket time, values)."""
    buckets = ts // step_ms
    first = int(buckets.min())
    size = int(buckets.max()) - first + 1
    if size > MAX_GRID_POINTS:
        raise InvalidArgument(
            f"gives {size} points for one series, over {MAX_GRID_POINTS}; use a larger step", "step"
        )
    index = buckets - first
    sums = np.bincount(index, weights=values, minlength=size)
    counts = np.bincount(index, minlength=size)
    filled = counts > 0
    grid = np.arange(size)
    y = np.interp(grid, grid[filled], sums[filled] / counts[filled])
    return first * step_ms, y


def _label_filter(match) -> common_pb2.LabelFilter:
    if match.op == "in":
        return common_pb2.LabelFilter(label=match.label, op="in", values=list(match.values))
    return common_pb2.LabelFilter(label=match.label, op=match.op, value=match.values[0])


def _cache_key(spec: ForecastSpec, tenant: str) -> tuple:
    digest = hashlib.sha256()
    for s in spec.inline:
        digest.update(repr((s.metric, sorted(s.labels.items()))).encode())
        digest.update(s.ts.tobytes())
        digest.update(s.values.tobytes())
    stored = (
        spec.datasource,
        spec.metrics,
        spec.filters,
        spec.group_by,
        spec.lookback_ms,
        spec.start_ms,
        spec.end_ms,
    )
    return (
        "forecast",
        tenant,
        spec.kind,
        stored,
        spec.method,
        spec.horizon,
        spec.step_ms,
        spec.levels,
        spec.threshold,
        spec.direction,
        digest.hexdigest(),
    )


class Forecasting:
    """Forecasts stored or inline series; several series of one request fit in parallel processes."""

    def __init__(
        self,
        history: HistoryClient,
        bus: Bus,
        cache: TtlCache,
        cache_ttl_seconds: float,
        tracking: ModelTracking | None,
        workers: int,
        versions: ConfigVersions | None = None,
        max_series: int = 100,
    ) -> None:
        self.history = history
        self.bus = bus
        self.cache = cache
        self.cache_ttl_seconds = cache_ttl_seconds
        self.tracking = tracking
        self.workers = workers
        self.versions = versions  # None: answers say "forecast-<method>/unregistered"
        self.max_series = max_series
        self._pool: ProcessPoolExecutor | None = None
        self._runs: set[asyncio.Task[None]] = set()  # backtest runs being logged to MLflow

    def _executor(self) -> ProcessPoolExecutor:
        # Started on the first forecast, not at start-up: /health stays as fast as before. Spawned,
        # not forked: forking a process that runs gRPC threads is unsafe.
        if self._pool is None:
            context = multiprocessing.get_context("spawn")
            self._pool = ProcessPoolExecutor(max_workers=self.workers, mp_context=context)
        return self._pool

    async def close(self) -> None:
        """Stop the worker processes (cancelling queued fits) and let pending backtest runs be logged."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
        if self._runs:
            await asyncio.gather(*self._runs, return_exceptions=True)

    async def model_version(self, method: str, timeout: float | None = None) -> str:
        """The registry version of a method's configuration, "forecast-<method>/<n>"."""
        if self.versions is None:
            return unregistered(forecast_model(method))
        return await self.versions.version(forecast_model(method), timeout)

    async def forecast(
        self, spec: ForecastSpec, tenant: str, timeout: float | None = None
    ) -> pb.ForecastResponse:
        """Forecast every series the spec names; cached for the ML cache TTL."""
        key = _cache_key(spec, tenant)
        cached = self.cache.get(ML_CACHE, key)
        if cached is not None:
            return cached
        deadline = time.time() + timeout if timeout is not None else None
        # The registry version resolves (only the first time: MLflow) while history is read and fitted.
        version = asyncio.ensure_future(self.model_version(spec.method, timeout))
        version.add_done_callback(_retrieved)
        try:
            response = await self._forecast(spec, tenant, timeout, deadline, version)
        finally:
            version.cancel()  # a no-op once it is done
        if not response.series:
            return response
        await self._publish(spec, tenant, response)
        self._track_later(spec, response)
        hit = pb.ForecastResponse()
        hit.CopyFrom(response)
        hit.cached = True
        self.cache.put(ML_CACHE, key, hit, self.cache_ttl_seconds)
        return response

    async def _forecast(
        self,
        spec: ForecastSpec,
        tenant: str,
        timeout: float | None,
        deadline: float | None,
        version: asyncio.Future[str],
    ) -> pb.ForecastResponse:
        if spec.kind == "inline":
            raw = [
                (s.metric, s.labels, self._field(spec, i), s.ts, s.values) for i, s in enumerate(spec.inline)
            ]
        else:
            raw = await self._stored(spec, tenant, timeout)
        response = pb.ForecastResponse(horizon=spec.horizon, levels=spec.levels)
        if not raw:
            response.message = f"no stored series of {', '.join(spec.metrics)} in {spec.datasource} matched over the history range"
            return response
        # Counted before anything is fitted: a selection over the limit fits nothing.
        check_series_count(len(raw), self.max_series, self._count_field(spec))
        series = self._regular(spec, raw)
        response.step_ms = series[0].step_ms
        outcomes = await self._fit(spec, series, deadline, timeout)
        model_version = await version
        for s, outcome in zip(series, outcomes, strict=True):
            response.series.append(self._answer(spec, s, outcome, model_version))
        first = response.series[0]
        response.points.extend(first.points)
        response.method, response.model_version = first.method, model_version
        return response

    @staticmethod
    def _count_field(spec: ForecastSpec) -> str:
        if spec.group_by:
            return "group_by"
        return {"selection": "selection", "metric": "labels"}.get(spec.origin, spec.origin)

    @staticmethod
    def _field(spec: ForecastSpec, i: int) -> str:
        return {"history": "history", "series": f"series[{i}]", "selection": "selection.metrics"}.get(
            spec.origin, "metric"
        )

    async def _stored(self, spec: ForecastSpec, tenant: str, timeout: float | None) -> list[tuple]:
        now = int(time.time() * 1000)
        end = spec.end_ms if spec.end_ms is not None else now + 1
        start = spec.start_ms if spec.start_ms is not None else end - spec.lookback_ms
        found = await self.history.raw(
            spec.datasource,
            list(spec.metrics),
            [_label_filter(f) for f in spec.filters],
            start,
            end,
            timeout,
        )
        found = [s for s in found if len(s.ts)]
        field = self._field(spec, 0)
        if not spec.group_by:
            return [(s.metric, s.labels, field, s.ts, s.values) for s in found]
        groups: dict[tuple, list] = {}
        for s in found:
            groups.setdefault((s.metric, tuple(s.labels.get(g, "") for g in spec.group_by)), []).append(s)
        return [
            (
                metric,
                dict(zip(spec.group_by, values, strict=True)),
                field,
                np.concatenate([m.ts for m in members]),
                np.concatenate([m.values for m in members]),
            )
            for (metric, values), members in sorted(groups.items())
        ]

    @staticmethod
    def _regular(spec: ForecastSpec, raw: list[tuple]) -> list[Regular]:
        out = []
        for metric, labels, field, ts, values in raw:
            step = spec.step_ms or infer_step(ts)
            if step <= 0:
                raise InvalidArgument(
                    "a single point has no interval to forecast on; give more history", field
                )
            start, y = regularise(ts, values, step, field)
            out.append(Regular(metric, labels, field, start, step, y))
        return out

    async def _fit(
        self, spec: ForecastSpec, series: list[Regular], deadline: float | None, timeout: float | None
    ) -> list[SeriesOutcome]:
        loop = asyncio.get_running_loop()
        pool = self._executor()
        jobs = [
            SeriesJob(
                s.y,
                s.start_ms,
                s.step_ms,
                spec.method,
                spec.horizon,
                spec.levels,
                season_lengths(s.step_ms),
                deadline,
            )
            for s in series
        ]
        futures = [loop.run_in_executor(pool, backtest.run, job) for job in jobs]

        async def one(s: Regular, future: asyncio.Future) -> SeriesOutcome:
            try:
                return await future
            except TooShort as exc:
                # A stored selection can match series of very different lengths: say which is short.
                which = f" {_series_text(s.metric, s.labels)}" if s.labels else ""
                raise InvalidArgument(
                    f"{exc.method} needs at least {exc.minimum} points of history at this step; the series"
                    f"{which} has {exc.got}",
                    s.field,
                ) from None

        try:
            return await asyncio.wait_for(
                asyncio.gather(*(one(s, f) for s, f in zip(series, futures, strict=True))), timeout
            )
        except TimeoutError:
            raise DeadlineExceeded("the request's deadline passed while fitting forecasts") from None
        except BrokenProcessPool:
            # A worker died (killed, out of memory): the next request gets a fresh pool.
            self._pool = None
            raise Unavailable("a forecast worker process died; retry the request") from None
        finally:
            for f in futures:
                f.cancel()

    @staticmethod
    def _answer(spec: ForecastSpec, s: Regular, o: SeriesOutcome, model_version: str) -> pb.SeriesForecast:
        times = s.start_ms + s.step_ms * (len(s.y) + np.arange(spec.horizon))
        widest = max(spec.levels)
        p = o.prediction
        out = pb.SeriesForecast(
            metric=s.metric,
            labels=s.labels,
            method=o.method,
            weights=o.weights,
            backtest_windows=o.windows,
            candidates=o.candidates,
            model_version=model_version,
            history_points=len(s.y),
            step_ms=s.step_ms,
            season_lengths=[m for m in season_lengths(s.step_ms) if m > 1 and len(s.y) >= 2 * m],
        )
        if o.smape is not None:
            out.backtest_smape = o.smape
        if o.mase is not None and np.isfinite(o.mase):
            out.backtest_mase = o.mase
        for i, t in enumerate(times):
            point = out.points.add(
                timestamp_ms=int(t),
                value=float(p.mean[i]),
                lower=float(p.lower[widest][i]),
                upper=float(p.upper[widest][i]),
            )
            for level in spec.levels:
                point.intervals.add(
                    level=level, lower=float(p.lower[level][i]), upper=float(p.upper[level][i])
                )
        if spec.threshold is not None:
            c = crossing(p, spec.threshold, spec.direction)
            out.crossing.threshold, out.crossing.direction = spec.threshold, spec.direction
            out.crossing.probability = c.probability
            for name, step in (("forecast_ms", c.forecast), ("upper_ms", c.upper), ("lower_ms", c.lower)):
                if step is not None:
                    setattr(out.crossing, name, int(times[step]))
        return out

    async def _publish(self, spec: ForecastSpec, tenant: str, response: pb.ForecastResponse) -> None:
        datasource = spec.datasource if spec.kind == "stored" else ""
        for s in response.series:
            labels = dict(s.labels)
            event = events_pb2.PredictionEvent(
                tenant=tenant,
                source=labels.get("simulation_id") or labels.get("service_name") or s.metric,
                kind="forecast",
                metric=s.metric,
                points=[common_pb2.DataPoint(timestamp_ms=p.timestamp_ms, value=p.value) for p in s.points],
                model_version=s.model_version,
                labels=labels,
                datasource=datasource,
                method=s.method,
            )
            await self.bus.publish(TOPIC, event, key=f"{s.metric}{sorted(labels.items())}")

    def _track_later(self, spec: ForecastSpec, response: pb.ForecastResponse) -> None:
        """Log the backtest summary in the background: the answer never waits for MLflow."""
        if self.tracking is None:
            return
        if len(self._runs) >= MAX_PENDING_RUNS:
            log.warning(
                "forecast backtest run not logged: MLflow is behind", extra={"pending": len(self._runs)}
            )
            return
        task = asyncio.create_task(self._track(spec, response), name="forecast-run")
        self._runs.add(task)
        task.add_done_callback(self._runs.discard)

    async def _track(self, spec: ForecastSpec, response: pb.ForecastResponse) -> None:
        """Log the request's backtest summary as an MLflow run (forecasts keep no fitted model); a
        failure is logged, never raised: the answer is out already."""
        try:
            await self._log_run(spec, response)
        except Unavailable as exc:
            log.warning("forecast backtest run not logged", extra={"error": exc.reason})

    async def _log_run(self, spec: ForecastSpec, response: pb.ForecastResponse) -> None:
        scored = [s for s in response.series if s.HasField("backtest_smape")]
        metrics = {"series": float(len(response.series))}
        if scored:
            metrics["backtest_smape"] = float(np.mean([s.backtest_smape for s in scored]))
            mases = [s.backtest_mase for s in scored if s.HasField("backtest_mase")]
            if mases:
                metrics["backtest_mase"] = float(np.mean(mases))
        chosen = sorted({s.method for s in response.series})
        await self.tracking.log_run(
            "forecast",
            params={
                "method": spec.method,
                "horizon": spec.horizon,
                "step_ms": response.step_ms,
                "levels": ",".join(f"{x:g}" for x in spec.levels),
                "chosen": ",".join(chosen),
            },
            metrics=metrics,
            tags={
                "kind": spec.kind,
                "metrics": ",".join(sorted({s.metric for s in response.series})),
                "model_version": response.model_version,
            },
        )


def _retrieved(task: asyncio.Future) -> None:
    # A version lookup whose request failed first: its outcome is read here, so asyncio does not
    # log it as never retrieved.
    if not task.cancelled():
        task.exception()
