"""The seed's alert rules, evaluated over the self-metrics stored in datasource `analytics_self`.

Each rule reads one metric (raw stored samples, as every process writes them every
SELF_METRICS_INTERVAL_SECONDS) and returns what holds now: one `Finding` per label set whose
condition is true. A label set with no samples in the window gives no finding: no data, no alert.

Counters are read the way Prometheus' `increase()` reads them, without extrapolation (like
VictoriaMetrics): the increase over a window is the sum of the deltas between consecutive samples,
starting from the last sample before the window; a drop is a counter reset (a process restart), so
the sample after it counts from zero, never negatively. A series with no sample before the window
was created inside it (labelled prometheus-client counters appear on first use), so its first
sample counts from zero, as Prometheus does with created timestamps: the first engine connection
failure is an increase of one, not a new series Prometheus would silently skip.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from libs.config import Settings
from libs.selfmetrics import SELF_CACHE_NAMESPACE

Labels = tuple[tuple[str, str], ...]
"""Sorted (key, value) pairs: an alert's identity within its rule."""

WARNING, CRITICAL = "warning", "critical"
SEVERITIES = (WARNING, CRITICAL)
RULE_NAMES = (
    "SlowBatchQuery",
    "SlowRealtimeQuery",
    "LowCacheHitRate",
    "AnomalyRateSpike",
    "StreamBacklog",
    "EngineConnectionFailure",
)
QUANTILE = 0.99


@dataclass(frozen=True)
class SelfSeries:
    """One stored self-metric series: its sample name, labels and (timestamp_ms, value) samples,
    oldest first."""

    metric: str
    labels: Mapping[str, str]
    points: Sequence[tuple[int, float]]


@dataclass(frozen=True)
class Finding:
    """A label set whose condition holds now, with the value compared and the threshold it crossed."""

    labels: Labels
    value: float
    threshold: float
    summary: str


def labels_of(labels: Mapping[str, str], drop: Iterable[str] = ()) -> Labels:
    """The sorted label pairs without the `drop` keys."""
    dropped = set(drop)
    return tuple(sorted((k, v) for k, v in labels.items() if k not in dropped))


def increase(points: Sequence[tuple[int, float]], start_ms: int, end_ms: int) -> float | None:
    """A counter's increase over (start_ms, end_ms], resets counted from zero; None without a sample
    in the window (no data)."""
    previous = 0.0  # no sample at or before the start: the series began inside the window, at zero
    total, seen = 0.0, False
    for ts, value in points:
        if ts <= start_ms:
            previous = value
            continue
        if ts > end_ms:
            break
        seen = True
        total += value - previous if value >= previous else value
        previous = value
    return total if seen else None


def latest(points: Sequence[tuple[int, float]], start_ms: int, end_ms: int) -> float | None:
    """A gauge's newest sample in (start_ms, end_ms]; None without one."""
    found = None
    for ts, value in points:
        if start_ms < ts <= end_ms:
            found = value
    return found


def histogram_quantile(q: float, buckets: Iterable[tuple[float, float]]) -> float | None:
    """The q-quantile of a histogram given as (upper bound `le`, cumulative count) pairs, the way
    Prometheus' histogram_quantile() computes it: linear interpolation inside the bucket holding the
    rank, the highest finite bound when the rank falls in +Inf. None without a +Inf bucket or without
    observations."""
    ordered = sorted(buckets)
    if not ordered or ordered[-1][0] != math.inf:
        return None
    counts, running = [], 0.0
    for _, count in ordered:
        running = max(running, count)  # increases over a window may be slightly non-monotonic
        counts.append(running)
    total = counts[-1]
    if total <= 0:
        return None
    rank = q * total
    index = next(i for i, count in enumerate(counts) if count >= rank)
    upper = ordered[index][0]
    if upper == math.inf:
        return ordered[-2][0] if len(ordered) > 1 else None
    lower, below = (0.0, 0.0) if index == 0 else (ordered[index - 1][0], counts[index - 1])
    if index == 0 and upper <= 0:
        return upper
    return lower + (upper - lower) * (rank - below) / (counts[index] - below)


def _fmt_seconds(seconds: float) -> str:
    return f"{seconds * 1000:.3g} ms" if seconds < 1 else f"{seconds:.3g} s"


def _fmt_window(ms: int) -> str:
    seconds = ms // 1000
    for unit, size in (("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _where(labels: Labels) -> str:
    return ", ".join(f"{k}={v}" for k, v in labels)


@dataclass(frozen=True, kw_only=True)
class Rule:
    """One alerting rule: what it reads, what it compares, and how long it must hold before firing."""

    id: str
    """Unique among the rules (two rules may share an alert name, as in Prometheus)."""
    name: str
    severity: str
    expression: str
    """What is compared, in words."""
    promql: str
    """The same in PromQL terms, for Prometheus users."""
    threshold: float
    for_ms: int
    window_ms: int
    metric: str
    """The stored sample name the rule reads."""
    filters: tuple[tuple[str, str], ...] = ()
    """label = value filters on that metric."""

    @property
    def lookback_ms(self) -> int:
        """How far back the rule's read goes: the window and as much again before it, for the sample
        each counter's increase starts from."""
        return 2 * self.window_ms

    def needs_history_start(self, series: Sequence[SelfSeries], now_ms: int) -> bool:
        """True when `evaluate` needs the time of the oldest stored self-metric to decide."""
        return False

    def evaluate(
        self, series: Sequence[SelfSeries], now_ms: int, history_start_ms: int | None = None
    ) -> list[Finding]:
        """The label sets whose condition holds at `now_ms`."""
        raise NotImplementedError


@dataclass(frozen=True, kw_only=True)
class LatencyRule(Rule):
    """p99 of a query duration histogram over the window above a threshold in seconds."""

    mode: str

    def evaluate(
        self, series: Sequence[SelfSeries], now_ms: int, history_start_ms: int | None = None
    ) -> list[Finding]:
        start = now_ms - self.window_ms
        groups: dict[Labels, list[tuple[float, float]]] = {}
        for s in series:
            le = s.labels.get("le")
            counted = increase(s.points, start, now_ms)
            if le is None or counted is None:
                continue
            try:
                bound = float(le)
            except ValueError:
                continue
            groups.setdefault(labels_of(s.labels, ("le",)), []).append((bound, counted))
        out = []
        for labels, buckets in sorted(groups.items()):
            p99 = histogram_quantile(QUANTILE, buckets)
            if p99 is None or p99 <= self.threshold:
                continue
            summary = (
                f"p99 {self.mode} query time is {_fmt_seconds(p99)} over the last "
                f"{_fmt_window(self.window_ms)} ({_where(labels)}), above {_fmt_seconds(self.threshold)}"
            )
            out.append(Finding(labels, p99, self.threshold, summary))
        return out


@dataclass(frozen=True, kw_only=True)
class CacheHitRule(Rule):
    """hits / (hits + misses) over the window below a ratio, given enough lookups."""

    min_lookups: int

    def evaluate(
        self, series: Sequence[SelfSeries], now_ms: int, history_start_ms: int | None = None
    ) -> list[Finding]:
        start = now_ms - self.window_ms
        groups: dict[Labels, dict[str, float]] = {}
        for s in series:
            if s.labels.get("namespace") == SELF_CACHE_NAMESPACE:
                continue  # the service reading its own metrics is not a cache users depend on
            result = s.labels.get("result")
            counted = increase(s.points, start, now_ms)
            if result not in ("hit", "miss") or counted is None:
                continue
            tally = groups.setdefault(labels_of(s.labels, ("result",)), {"hit": 0.0, "miss": 0.0})
            tally[result] += counted
        out = []
        for labels, tally in sorted(groups.items()):
            lookups = tally["hit"] + tally["miss"]
            if lookups <= 0 or lookups < self.min_lookups:
                continue  # an idle cache has no hit rate to speak of
            rate = tally["hit"] / lookups
            if rate >= self.threshold:
                continue
            summary = (
                f"cache hit rate is {rate:.1%} over {lookups:.0f} lookups in the last "
                f"{_fmt_window(self.window_ms)} ({_where(labels)}), below {self.threshold:.0%}"
            )
            out.append(Finding(labels, rate, self.threshold, summary))
        return out


@dataclass(frozen=True, kw_only=True)
class AnomalySpikeRule(Rule):
    """Anomalies found per datasource in the window against the rate of the baseline period before it."""

    baseline_ms: int
    min_count: int

    @property
    def lookback_ms(self) -> int:
        """The window, the baseline before it, and a window more for the baseline's first sample."""
        return 2 * self.window_ms + self.baseline_ms

    def _counts(self, series: Sequence[SelfSeries], now_ms: int) -> dict[Labels, tuple[float, float]]:
        # One alert per datasource: the methods and the ml replicas that found them are summed.
        window_start = now_ms - self.window_ms
        baseline_start = window_start - self.baseline_ms
        counts: dict[Labels, tuple[float, float]] = {}
        for s in series:
            found = increase(s.points, window_start, now_ms)
            if found is None:
                continue
            before = increase(s.points, baseline_start, window_start) or 0.0
            key = labels_of(s.labels, ("method", "instance", "replica"))
            now_count, base_count = counts.get(key, (0.0, 0.0))
            counts[key] = (now_count + found, base_count + before)
        return counts

    def needs_history_start(self, series: Sequence[SelfSeries], now_ms: int) -> bool:
        """Only a window with enough anomalies needs to know how far back the baseline is known."""
        return any(found >= self.min_count for found, _ in self._counts(series, now_ms).values())

    def evaluate(
        self, series: Sequence[SelfSeries], now_ms: int, history_start_ms: int | None = None
    ) -> list[Finding]:
        if history_start_ms is None:
            return []  # no stored self-metrics before the window: no baseline to compare with
        window_start = now_ms - self.window_ms
        # The baseline is the part of the baseline period the self-metrics cover; a baseline
        # series with no sample there counted nothing while the others were being written.
        covered = window_start - max(window_start - self.baseline_ms, history_start_ms)
        if covered < self.window_ms:
            return []  # less than one window of history: too little to call anything a spike
        out = []
        for labels, (found, before) in sorted(self._counts(series, now_ms).items()):
            expected = before / covered * self.window_ms
            if found < self.min_count or found <= self.threshold * expected:
                continue
            limit = max(self.threshold * expected, float(self.min_count))
            summary = (
                f"{found:.0f} anomalies found in the last {_fmt_window(self.window_ms)} ({_where(labels)}), "
                f"over {self.threshold:g}x the baseline of {expected:.1f} per {_fmt_window(self.window_ms)} "
                f"measured over the {_fmt_window(covered)} before"
            )
            out.append(Finding(labels, found, limit, summary))
        return out


@dataclass(frozen=True, kw_only=True)
class GaugeRule(Rule):
    """A gauge's newest sample in the window above a threshold."""

    what: str
    unit: str = ""

    def evaluate(
        self, series: Sequence[SelfSeries], now_ms: int, history_start_ms: int | None = None
    ) -> list[Finding]:
        out = []
        for s in series:
            value = latest(s.points, now_ms - self.window_ms, now_ms)
            if value is None or value <= self.threshold:
                continue
            labels = labels_of(s.labels)
            summary = (
                f"{self.what} is {value:g}{self.unit} ({_where(labels)}), above {self.threshold:g}{self.unit}"
            )
            out.append(Finding(labels, value, self.threshold, summary))
        return sorted(out, key=lambda f: f.labels)


@dataclass(frozen=True, kw_only=True)
class IncreaseRule(Rule):
    """A counter's increase over the window above a threshold (0: any increase)."""

    what: str

    def evaluate(
        self, series: Sequence[SelfSeries], now_ms: int, history_start_ms: int | None = None
    ) -> list[Finding]:
        out = []
        for s in series:
            counted = increase(s.points, now_ms - self.window_ms, now_ms)
            if counted is None or counted <= self.threshold:
                continue
            labels = labels_of(s.labels)
            out.append(Finding(labels, counted, self.threshold, self.describe(labels, counted)))
        return sorted(out, key=lambda f: f.labels)

    def describe(self, labels: Labels, counted: float) -> str:
        """The summary of a finding."""
        return f"{counted:.0f} {self.what} in the last {_fmt_window(self.window_ms)} ({_where(labels)})"


@dataclass(frozen=True)
class RuleSet:
    """The configured rules, in the order they are listed."""

    rules: tuple[Rule, ...] = field(default_factory=tuple)

    def by_name(self, name: str) -> tuple[Rule, ...]:
        """The rules of one alert name."""
        return tuple(r for r in self.rules if r.name == name)


def seed_rules(settings: Settings) -> RuleSet:
    """The seed's rules with the thresholds, window and "for" duration of the settings."""
    window = int(settings.alert_window_seconds * 1000)
    for_ms = int(settings.alert_for_seconds * 1000)
    w = _fmt_window(window)
    common = {"for_ms": for_ms, "window_ms": window}
    duration = "analytics_query_duration_seconds_bucket"
    batch, realtime = settings.alert_batch_query_seconds, settings.alert_realtime_query_seconds
    hit_rate, factor = settings.alert_cache_hit_rate, settings.alert_anomaly_rate_factor
    baseline = int(settings.alert_anomaly_baseline_seconds * 1000)
    backlog, lag = settings.alert_stream_backlog_bytes, settings.alert_stream_lag_seconds
    return RuleSet(
        (
            LatencyRule(
                id="SlowBatchQuery",
                name="SlowBatchQuery",
                severity=WARNING,
                mode="batch",
                expression=f"p99 of batch query time over the last {w} above {batch:g} s, per engine and instance",
                promql=f'histogram_quantile(0.99, increase({duration}{{mode="batch"}}[{w}])) > {batch:g}',
                threshold=batch,
                metric=duration,
                filters=(("mode", "batch"),),
                **common,
            ),
            LatencyRule(
                id="SlowRealtimeQuery",
                name="SlowRealtimeQuery",
                severity=WARNING,
                mode="realtime",
                expression=f"p99 of real-time query time over the last {w} above {realtime:g} s, per engine and instance",
                promql=f'histogram_quantile(0.99, increase({duration}{{mode="realtime"}}[{w}])) > {realtime:g}',
                threshold=realtime,
                metric=duration,
                filters=(("mode", "realtime"),),
                **common,
            ),
            CacheHitRule(
                id="LowCacheHitRate",
                name="LowCacheHitRate",
                severity=WARNING,
                min_lookups=settings.alert_cache_min_lookups,
                expression=(
                    f"cache hits / lookups over the last {w} below {hit_rate:g}, per namespace and instance, "
                    f"when there were at least {settings.alert_cache_min_lookups} lookups"
                ),
                promql=(
                    f'sum without (result) (increase(analytics_cache_requests_total{{result="hit",namespace!="self"}}[{w}])) '
                    f'/ sum without (result) (increase(analytics_cache_requests_total{{namespace!="self"}}[{w}])) '
                    f"< {hit_rate:g} "
                    f'and sum without (result) (increase(analytics_cache_requests_total{{namespace!="self"}}[{w}])) '
                    f">= {settings.alert_cache_min_lookups}"
                ),
                threshold=hit_rate,
                metric="analytics_cache_requests_total",
                **common,
            ),
            AnomalySpikeRule(
                id="AnomalyRateSpike",
                name="AnomalyRateSpike",
                severity=WARNING,
                baseline_ms=baseline,
                min_count=settings.alert_anomaly_min_count,
                expression=(
                    f"anomalies found per datasource in the last {w} above {factor:g}x the rate of the "
                    f"{_fmt_window(baseline)} before, and at least {settings.alert_anomaly_min_count}"
                ),
                promql=(
                    f"sum by (datasource) (increase(analytics_anomalies_detected_total[{w}])) > {factor:g} * "
                    f"sum by (datasource) (increase(analytics_anomalies_detected_total[{_fmt_window(baseline)}] "
                    f"offset {w})) * {window / baseline:.4g} and sum by (datasource) "
                    f"(increase(analytics_anomalies_detected_total[{w}])) >= {settings.alert_anomaly_min_count}"
                ),
                threshold=factor,
                metric="analytics_anomalies_detected_total",
                **common,
            ),
            GaugeRule(
                id="StreamBacklog:bytes",
                name="StreamBacklog",
                severity=WARNING,
                what="bus backlog",
                unit=" bytes",
                expression=f"a bus subscription's backlog above {backlog} bytes",
                promql=f"last_over_time(analytics_bus_backlog_bytes[{w}]) > {backlog}",
                threshold=float(backlog),
                metric="analytics_bus_backlog_bytes",
                **common,
            ),
            GaugeRule(
                id="StreamBacklog:lag",
                name="StreamBacklog",
                severity=WARNING,
                what="stream processing lag",
                unit=" s",
                expression=f"a stream consumer's lag above {lag:g} s",
                promql=f"last_over_time(analytics_stream_lag_seconds[{w}]) > {lag:g}",
                threshold=lag,
                metric="analytics_stream_lag_seconds",
                **common,
            ),
            IncreaseRule(
                id="EngineConnectionFailure",
                name="EngineConnectionFailure",
                severity=CRITICAL,
                what="failures to reach the engine or peer",
                expression=f"any failure to reach a query engine or peer service in the last {w}, per engine and instance",
                promql=f"increase(analytics_engine_connection_failures_total[{w}]) > 0",
                threshold=0.0,
                metric="analytics_engine_connection_failures_total",
                **common,
            ),
        )
    )
