"""Anomaly detection requests: a snapshot of one simulation's metrics, stored series, or inline
series, scored by the chosen detector; anomalies found on stored data are kept in the anomaly
store. No gRPC here beyond the response messages it builds."""

from __future__ import annotations

import asyncio
import importlib
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from libs.cache import TtlCache
from libs.errors import InvalidArgument, NotFound
from libs.selfmetrics import SelfMetrics
from libs.storage import DEFAULT_TENANT
from platformq.analytics.v1 import common_pb2
from platformq.analytics.v1 import ml_service_pb2 as pb
from services.ml import detectors
from services.ml.anomaly_store import AnomalyFilter, AnomalyRecord, AnomalyStore, MethodPrecision, anomaly_id
from services.ml.detectors.auto import MEMORY_POINTS
from services.ml.detectors.base import (
    DEFAULT_SENSITIVITY,
    EPISODE_GAP,
    Scores,
    TooShort,
    deviation,
    explained_deviation,
    onsets,
    reason_at,
    threshold_for,
)
from services.ml.history import HistoryClient, StoredSeries
from services.ml.spec import DetectSpec, ListSpec
from services.ml.thresholds import series_threshold
from services.ml.versions import ConfigVersions, module_constants, release, unregistered
from services.query_router.spec import LabelMatch

ML_CACHE = "ml"
DETECTOR_VERSION = "1"
"""Bumped when a detector's code changes what it scores (its parameters are fingerprinted anyway)."""
SNAPSHOT_LOOKBACK_MS = 24 * 3_600_000
"""A snapshot value is judged against this much of its series' stored history."""
SNAPSHOT_LABELS = ("simulation_id", "service_name")
"""Label keys a snapshot's simulation_id is looked up under, in order."""
RESPONSE_MAX_ANOMALIES = 1000
HISTORY_POINTS = MEMORY_POINTS + EPISODE_GAP
"""Points before a window that make its scores and episodes those of the live scorer: the
detector's memory, then the episode gap scored from that exact state."""


# Each detector's module (its upper-case parameters are part of its configuration) and the
# libraries whose releases decide its scores.
DETECTOR_PARTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "auto": ("auto", ("numpy", "numba")),
    "zscore": ("rolling", ("numpy", "pandas")),
    "mad": ("rolling", ("numpy", "pandas")),
    "seasonal": ("seasonal", ("numpy", "pandas", "statsmodels")),
    "isolation_forest": ("iforest", ("numpy", "pyod", "scikit-learn")),
    "holt_winters": ("holtwinters", ("numpy", "statsmodels")),
    "prophet": ("prophet_detector", ("numpy", "pandas", "prophet")),
    "online": ("online", ("numpy", "river")),
}


def detector_model(method: str) -> str:
    """The registered MLflow model of a detector's configuration, e.g. "anomaly-auto"."""
    return f"anomaly-{method}"


def detector_config(method: str) -> dict[str, object]:
    """What decides a detector's scores: its parameters, the shared scoring rules and the library
    releases behind it. Imports the detector's module: call it off the event loop."""
    module_name, libraries = DETECTOR_PARTS[method]
    params: dict[str, object] = {
        "method": method,
        "detector_version": DETECTOR_VERSION,
        "min_points": detectors.MIN_POINTS[method],
        "first_fit": detectors.FIRST_FIT,
        "refit_every": detectors.REFIT_EVERY,
        "episode_gap": EPISODE_GAP,
    }
    module = importlib.import_module(f"services.ml.detectors.{module_name}")
    params.update(module_constants(module, "param."))
    for library in libraries:
        params[f"library.{library}"] = release(library)
    return params


def detector_configs() -> dict[str, Callable[[], dict[str, object]]]:
    """Every detector's configuration builder, by registered name (for `ConfigVersions`)."""
    return {detector_model(m): (lambda m=m: detector_config(m)) for m in detectors.METHODS}


def _now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True)
class Target:
    """One series to score and the slice of it the answer reports."""

    metric: str
    labels: dict[str, str]
    ts: np.ndarray
    values: np.ndarray
    report_from: int  # index of the first reported point (earlier points are history)


class AnomalyDetection:
    """Scores requests with the detectors and keeps what it finds on stored data."""

    def __init__(
        self,
        store: AnomalyStore,
        history: HistoryClient,
        cache: TtlCache,
        cache_ttl_seconds: float,
        metrics: SelfMetrics | None = None,
        versions: ConfigVersions | None = None,
    ) -> None:
        self.store = store
        self.history = history
        self.cache = cache
        self.cache_ttl_seconds = cache_ttl_seconds
        self.metrics = metrics
        self.versions = versions  # None: answers say "<model>/unregistered"

    # ---- DetectAnomalies ------------------------------------------------------------------
    async def detect(
        self, spec: DetectSpec, tenant: str, timeout: float | None = None
    ) -> pb.DetectAnomaliesResponse:
        """Score one request; the answer carries the method, model version and threshold."""
        started = time.monotonic()
        version = await self.model_version(spec.method, timeout)
        if timeout is not None:
            timeout = max(0.0, timeout - (time.monotonic() - started))
        if spec.kind == "snapshot":
            return await self._snapshot(spec, tenant, timeout, version)
        if spec.kind == "selection":
            return await self._selection(spec, tenant, timeout, version)
        targets = [Target(s.metric, s.labels, s.ts, s.values, 0) for s in spec.inline]
        response = await self._score_targets(spec, tenant, "", targets, store=False, version=version)
        return response

    async def model_version(self, method: str, timeout: float | None = None) -> str:
        """The registry version of a detector's configuration, "anomaly-<method>/<n>"."""
        if self.versions is None:
            return unregistered(detector_model(method))
        return await self.versions.version(detector_model(method), timeout)

    def _base(self, spec: DetectSpec, version: str) -> pb.DetectAnomaliesResponse:
        return pb.DetectAnomaliesResponse(
            method=spec.method,
            model_version=version,
            threshold=threshold_for(spec.sensitivity),
            sensitivity=spec.sensitivity,
        )

    async def _snapshot(
        self, spec: DetectSpec, tenant: str, timeout: float | None, version: str
    ) -> pb.DetectAnomaliesResponse:
        key = (tenant, "snapshot", spec.simulation_id, spec.snapshot, spec.method, spec.sensitivity)
        cached = self.cache.get(ML_CACHE, key)
        if cached is not None:
            return cached
        now = _now_ms()
        names = [name for name, _ in spec.snapshot]
        histories = await self._snapshot_history(spec, tenant, now, timeout)
        response = self._base(spec, version)
        started = time.perf_counter()
        response = await asyncio.to_thread(self._score_snapshot, spec, now, names, histories, response)
        self._scored(spec.method, started)
        self.cache.put(ML_CACHE, key, _as_hit(response), self.cache_ttl_seconds)
        return response

    async def _snapshot_history(
        self, spec: DetectSpec, tenant: str, now: int, timeout: float | None
    ) -> dict[str, list[StoredSeries]]:
        names = [name for name, _ in spec.snapshot]
        found: dict[str, list[StoredSeries]] = {}
        for label in SNAPSHOT_LABELS:
            missing = [n for n in names if n not in found]
            if not missing:
                break
            series = await self.history.raw(
                spec.datasource,
                missing,
                [_equals(label, spec.simulation_id)],
                now - SNAPSHOT_LOOKBACK_MS,
                now,
                timeout,
            )
            for s in series:
                if len(s.ts):
                    found.setdefault(s.metric, []).append(s)
        return found

    def _score_snapshot(
        self,
        spec: DetectSpec,
        now: int,
        names: list[str],
        histories: dict[str, list[StoredSeries]],
        response: pb.DetectAnomaliesResponse,
    ) -> pb.DetectAnomaliesResponse:
        threshold = threshold_for(spec.sensitivity)
        values = dict(spec.snapshot)
        if spec.method == "isolation_forest" and sum(1 for n in names if n in histories) >= 2:
            self._snapshot_entity(spec, now, values, histories, response)
        for name in names:
            if name in response.metric_scores:
                continue
            verdict = response.metric_scores[name]
            verdict.value = values[name]
            candidates = histories.get(name, [])
            if not candidates:
                verdict.note = (
                    f"no stored history of {name} for {spec.simulation_id}: nothing to compare with"
                )
                continue
            best = None
            for series in candidates:
                ts = np.append(series.ts[series.ts < now], now)
                vals = np.append(series.values[series.ts < now], values[name])
                try:
                    scores = detectors.detect(spec.method, ts, vals)
                except TooShort as exc:
                    verdict.note = f"{exc.minimum} stored points are needed, {len(ts) - 1} are stored"
                    verdict.history_points = len(ts) - 1
                    continue
                # Several series may match (cpu_usage of a CPU and of a GPU): the value is judged
                # against the one it fits best.
                if best is None or scores.score[-1] < best[1].score[-1]:
                    best = (series, scores, len(ts) - 1)
            if best is None:
                continue
            series, scores, count = best
            self._fill_verdict(verdict, values[name], scores, -1, count, series.labels, threshold)
            verdict.note = "" if scores.warmup < len(scores.score) else "still warming up"
        flagged = [(n, v) for n, v in response.metric_scores.items() if v.is_anomaly]
        response.score = max((v.score for v in response.metric_scores.values()), default=0.0)
        response.is_anomaly = bool(flagged)
        for name, verdict in flagged:
            response.anomalies.add(
                metric=name,
                timestamp_ms=now,
                value=verdict.value,
                score=verdict.score,
                labels=dict(verdict.labels),
                datasource=spec.datasource,
                method=spec.method,
                expected=verdict.expected,
                lower=verdict.lower,
                upper=verdict.upper,
                deviation=verdict.deviation,
                threshold=threshold,
                model_version=response.model_version,
                contributions={
                    n: v.contribution for n, v in response.metric_scores.items() if v.contribution
                },
            )
        if not any(v.history_points for v in response.metric_scores.values()):
            response.message = (
                f"no stored history for {spec.simulation_id}: every score is 0 until it has some"
            )
        return response

    def _snapshot_entity(self, spec, now, values, histories, response) -> None:
        """isolation_forest: the snapshot as one vector, scored against the aligned history."""
        names = [n for n in values if n in histories]
        common = None
        chosen = {n: histories[n][0] for n in names}
        for series in chosen.values():
            common = series.ts if common is None else np.intersect1d(common, series.ts)
        common = common[common < now]
        matrix = np.column_stack([chosen[n].values[np.searchsorted(chosen[n].ts, common)] for n in names])
        matrix = np.vstack([matrix, [values[n] for n in names]])
        ts = np.append(common, now)
        try:
            scores = detectors.detect_entity(spec.method, ts, matrix, names)
        except TooShort:
            return  # each metric falls back to its own univariate verdict
        threshold = threshold_for(spec.sensitivity)
        shares = scores.contributions[-1] if scores.contributions is not None else np.ones(len(names))
        top = float(shares.max()) or 1.0
        for j, name in enumerate(names):
            verdict = response.metric_scores[name]
            column = Scores(
                scores.score, scores.expected[:, j], scores.lower[:, j], scores.upper[:, j], scores.warmup
            )
            self._fill_verdict(verdict, values[name], column, -1, len(common), chosen[name].labels, threshold)
            # The entity's score goes to the metric that explains most of it, and to the others in
            # proportion to their share.
            verdict.contribution = float(shares[j])
            verdict.score = float(scores.score[-1]) * float(shares[j]) / top
            verdict.is_anomaly = verdict.score >= threshold

    @staticmethod
    def _fill_verdict(verdict, value, scores: Scores, i, count, labels, threshold) -> None:
        verdict.value = value
        verdict.score = float(scores.score[i])
        verdict.is_anomaly = verdict.score >= threshold
        verdict.expected = float(scores.expected[i])
        verdict.lower = float(scores.lower[i])
        verdict.upper = float(scores.upper[i])
        band = [np.array([verdict.expected]), np.array([verdict.lower]), np.array([verdict.upper])]
        verdict.deviation = float(deviation(np.array([value]), *band)[0])
        verdict.history_points = count
        verdict.labels.update(labels)

    async def _selection(
        self, spec: DetectSpec, tenant: str, timeout: float | None, version: str
    ) -> pb.DetectAnomaliesResponse:
        now = _now_ms()
        start, end = _resolve(spec, now)
        key = (
            tenant,
            "selection",
            spec.datasource,
            spec.metrics,
            spec.filters,
            start,
            end,
            spec.method,
            spec.sensitivity,
            spec.include_points,
        )
        cached = self.cache.get(ML_CACHE, key)
        if cached is not None:
            return cached
        filters = [_filter(f) for f in spec.filters]
        series = await self.history.raw(spec.datasource, list(spec.metrics), filters, start, end, timeout)
        if not series:
            response = self._base(spec, version)
            response.message = (
                f"no stored series of {', '.join(spec.metrics)} in {spec.datasource!r} match the selection "
                "in that time range"
            )
            return response
        # History before the window warms the detectors up, so a backtest equals the live scores.
        spacing = max(
            1, int(np.median(np.concatenate([np.diff(s.ts) for s in series if len(s.ts) > 1] or [[60_000]])))
        )
        earlier = await self.history.last_before(
            spec.datasource,
            list(spec.metrics),
            filters,
            start,
            HISTORY_POINTS,
            spacing,
            timeout,
        )
        targets = []
        for s in series:
            prior = earlier.get(s.key)
            if prior is not None:
                targets.append(
                    Target(
                        s.metric,
                        s.labels,
                        np.concatenate([prior.ts, s.ts]),
                        np.concatenate([prior.values, s.values]),
                        len(prior.ts),
                    )
                )
            else:
                targets.append(Target(s.metric, s.labels, s.ts, s.values, 0))
        response = await self._score_targets(
            spec, tenant, spec.datasource, targets, store=True, version=version
        )
        # A write into the window drops the entry, so a hit is what scoring again would say.
        self.cache.put(
            ML_CACHE,
            key,
            _as_hit(response),
            self.cache_ttl_seconds,
            scope=(tenant, spec.datasource, start, end),
        )
        return response

    async def _score_targets(
        self, spec: DetectSpec, tenant: str, datasource: str, targets: list[Target], store: bool, version: str
    ) -> pb.DetectAnomaliesResponse:
        response = self._base(spec, version)
        thresholds = {}
        if store:
            # One worker-thread hop for every series' feedback, not one per series.
            tallies = await asyncio.to_thread(
                lambda: [self.store.feedback_counts(tenant, datasource, t.metric, t.labels) for t in targets]
            )
            thresholds = {
                id(t): series_threshold(spec.sensitivity, tp, fp)
                for t, (tp, fp) in zip(targets, tallies, strict=True)
            }
        started = time.perf_counter()
        results = await asyncio.to_thread(_score_all, spec.method, targets)
        self._scored(spec.method, started)
        scored_any = False
        records: list[AnomalyRecord] = []
        detected_at = _now_ms()
        for target, outcome in zip(targets, results, strict=True):
            out = response.series.add(metric=target.metric, labels=target.labels)
            if isinstance(outcome, TooShort):
                out.warmup_points = len(target.ts) - target.report_from
                if spec.kind == "inline":
                    raise InvalidArgument(str(outcome), f"series[{len(response.series) - 1}]")
                continue
            scored_any = True
            threshold = thresholds.get(id(target), response.threshold)
            r = slice(target.report_from, None)
            score, ts, values = outcome.score[r], target.ts[r], target.values[r]
            warm = max(0, outcome.warmup - target.report_from)
            out.warmup_points = min(warm, len(ts))
            out.points_scored = len(ts) - out.warmup_points
            # Onsets over the whole scored array: the history before the window decides whether
            # its first points continue an episode that began before it.
            flags = np.flatnonzero(onsets(outcome.score, threshold)[0][r])
            out.anomaly_count = len(flags)
            out.max_score = float(score.max()) if len(score) else 0.0
            if spec.include_points:
                out.timestamps_ms.extend(ts.tolist())
                out.scores.extend(score.tolist())
                out.expected.extend(outcome.expected[r].tolist())
                out.lower.extend(outcome.lower[r].tolist())
                out.upper.extend(outcome.upper[r].tolist())
            dev = explained_deviation(values, outcome.expected[r], outcome.lower[r], outcome.upper[r], score)
            for i in flags:
                record = AnomalyRecord(
                    tenant=tenant,
                    datasource=datasource,
                    metric=target.metric,
                    labels=dict(target.labels),
                    timestamp_ms=int(ts[i]),
                    value=float(values[i]),
                    score=float(score[i]),
                    method=spec.method,
                    expected=float(outcome.expected[r][i]),
                    lower=float(outcome.lower[r][i]),
                    upper=float(outcome.upper[r][i]),
                    deviation=float(dev[i]),
                    threshold=threshold,
                    model_version=response.model_version,
                    contributions={},
                    source="request",
                    detected_at_ms=detected_at,
                    id=anomaly_id(tenant, datasource, target.metric, target.labels, int(ts[i]), spec.method)
                    if store
                    else "",
                    reason=reason_at(outcome, target.report_from + int(i)),
                )
                records.append(record)
        if not scored_any:
            minimum = detectors.MIN_POINTS[spec.method]
            raise InvalidArgument(
                f"{spec.method} needs at least {minimum} points per series; no series has that many",
                "selection" if spec.kind == "selection" else "series",
            )
        if store and records:
            added = await asyncio.to_thread(self.store.add, records)
            if self.metrics is not None:
                self.metrics.anomalies_detected.labels(spec.method, datasource).inc(added)
        records.sort(key=lambda a: -a.score)
        for record in records[:RESPONSE_MAX_ANOMALIES]:
            response.anomalies.append(anomaly_message(record))
        response.is_anomaly = bool(records)
        response.score = max((s.max_score for s in response.series), default=0.0)
        return response

    def _scored(self, method: str, started: float) -> None:
        if self.metrics is not None:
            self.metrics.ml_scoring_duration.labels(method).observe(time.perf_counter() - started)

    def model_quality(self, tenant: str = DEFAULT_TENANT) -> dict[str, MethodPrecision]:
        """Anomalies, verdicts and precision by method, for the self-metrics (called from a worker
        thread at each collection); empty while the anomaly store is closed (start-up, shutdown)."""
        try:
            return self.store.precision_by_method(tenant)
        except RuntimeError:  # the store raises it when it is not open
            return {}

    # ---- stored anomalies -------------------------------------------------------------------
    async def list(self, spec: ListSpec, tenant: str) -> pb.ListAnomaliesResponse:
        """One page of stored anomalies, newest first."""
        now = _now_ms()
        start, end = spec.start_ms, spec.end_ms
        if spec.lookback_ms is not None:
            start, end = now - spec.lookback_ms, now + 1
        f = AnomalyFilter(
            tenant=tenant,
            datasource=spec.datasource,
            metric=spec.metric,
            labels=spec.labels,
            start_ms=start,
            end_ms=end,
            min_score=spec.min_score,
            method=spec.method,
            limit=spec.limit,
            cursor=spec.cursor,
        )
        try:
            records, cursor = await asyncio.to_thread(self.store.list, f)
        except ValueError as exc:
            raise InvalidArgument(str(exc).removeprefix("cursor: "), "cursor") from None
        return pb.ListAnomaliesResponse(anomalies=[anomaly_message(r) for r in records], next_cursor=cursor)

    async def feedback(
        self, anomaly_id: str, verdict: str, comment: str, tenant: str
    ) -> pb.SubmitAnomalyFeedbackResponse:
        """Store a verdict; the series' threshold follows the documented rule."""
        try:
            record = await asyncio.to_thread(self.store.set_feedback, tenant, anomaly_id, verdict, comment)
        except KeyError:
            raise NotFound(f"no anomaly {anomaly_id!r}", "id") from None
        tp, fp = await asyncio.to_thread(
            self.store.feedback_counts, tenant, record.datasource, record.metric, record.labels
        )
        return pb.SubmitAnomalyFeedbackResponse(
            anomaly=anomaly_message(record), series_threshold=series_threshold(DEFAULT_SENSITIVITY, tp, fp)
        )

    async def stats(self, tenant: str) -> pb.GetAnomalyStatsResponse:
        """Precision per method from the feedback."""
        tallies = await asyncio.to_thread(self.store.precision_by_method, tenant)
        response = pb.GetAnomalyStatsResponse()
        for method, t in tallies.items():
            out = response.methods[method]
            out.anomalies, out.true_positive, out.false_positive = (
                t.anomalies,
                t.true_positive,
                t.false_positive,
            )
            if t.precision is not None:
                out.precision = t.precision
        return response


def _as_hit(response: pb.DetectAnomaliesResponse) -> pb.DetectAnomaliesResponse:
    hit = pb.DetectAnomaliesResponse()
    hit.CopyFrom(response)
    hit.cached = True
    return hit


def _score_all(method: str, targets: list[Target]) -> list[Scores | TooShort]:
    """Score every target (in a worker thread); a series too short for the method is reported."""
    out: list[Scores | TooShort] = []
    for t in targets:
        try:
            out.append(detectors.detect(method, t.ts, t.values))
        except TooShort as exc:
            out.append(exc)
    return out


# The fields an anomaly's API message and its bus event share, named alike in both.
_SHARED_FIELDS = (
    "id",
    "metric",
    "labels",
    "datasource",
    "timestamp_ms",
    "value",
    "score",
    "method",
    "expected",
    "lower",
    "upper",
    "deviation",
    "threshold",
    "model_version",
    "detected_at_ms",
    "reason",
)


def shared_fields(record: AnomalyRecord) -> dict[str, object]:
    """What `pb.Anomaly` and `events_pb2.AnomalyEvent` both carry of a record."""
    return {name: getattr(record, name) for name in _SHARED_FIELDS}


def anomaly_message(record: AnomalyRecord) -> pb.Anomaly:
    """A stored (or just found) anomaly as its API message."""
    return pb.Anomaly(
        **shared_fields(record),
        contributions=record.contributions,
        peers=record.peers,
        peer_series=record.peer_series,
        feedback=record.feedback,
        source=record.source,
    )


def _resolve(spec: DetectSpec, now: int) -> tuple[int, int]:
    if spec.start_ms is not None:
        return spec.start_ms, spec.end_ms if spec.end_ms is not None else now + 1
    end = spec.end_ms if spec.end_ms is not None else now + 1
    return end - spec.lookback_ms, end


def _equals(label: str, value: str) -> common_pb2.LabelFilter:
    return common_pb2.LabelFilter(label=label, op="=", value=value)


def _filter(match: LabelMatch) -> common_pb2.LabelFilter:
    if match.op == "in":
        return common_pb2.LabelFilter(label=match.label, op="in", values=list(match.values))
    return common_pb2.LabelFilter(label=match.label, op=match.op, value=match.values[0])
