"""Health rules and figures of the monitor scopes: pure functions over query answers, no I/O.

A status is decided from an entity's newest bucket (its current values) and its newest point:
no point in the time range is "unknown", a newest point older than MONITOR_STALE_SECONDS is
"down", then error rate, latency and saturation thresholds (libs/config.py) decide between
"down", "degraded" and "healthy". Every finding is kept as a reason.
"""

from __future__ import annotations

import itertools
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from libs.config import Settings
from platformq.analytics.v1 import monitoring_service_pb2 as pb

STATUSES = ("healthy", "unknown", "degraded", "down")  # from best to worst
PERCENT_METRICS = ("cpu_usage", "memory_usage")
# How the hosts of a service add up, per metric: request rates add, the worst latency counts,
# everything else is averaged. The names are what a series' `aggregation` says.
SUM_OVER_HOSTS = ("request_rate",)
MAX_OVER_HOSTS = ("latency_p95",)

Points = list[tuple[int, float]]


@dataclass(frozen=True)
class HealthRules:
    """The thresholds of the health rules."""

    error_rate_degraded: float = 0.05
    error_rate_down: float = 0.5
    latency_degraded_ms: float = 2000.0
    stale_ms: int = 120_000
    saturation_percent: float = 90.0

    @classmethod
    def from_settings(cls, settings: Settings) -> HealthRules:
        """The rules configured by the MONITOR_* settings."""
        return cls(
            error_rate_degraded=settings.monitor_error_rate_degraded,
            error_rate_down=settings.monitor_error_rate_down,
            latency_degraded_ms=settings.monitor_latency_degraded_ms,
            stale_ms=int(settings.monitor_stale_seconds * 1000),
            saturation_percent=settings.monitor_saturation_percent,
        )


def status_of(
    current: Mapping[str, float],
    last_seen_ms: int | None,
    now_ms: int,
    rules: HealthRules,
    firing_alerts: int = 0,
) -> tuple[str, list[str]]:
    """(status, reasons) of one entity from its current values by metric and its newest point."""
    if last_seen_ms is None:
        return "unknown", ["no data in the time range"]
    age_ms = now_ms - last_seen_ms
    if age_ms > rules.stale_ms:
        return "down", [f"no data for {age_ms // 1000} s (MONITOR_STALE_SECONDS is {rules.stale_ms // 1000})"]
    down: list[str] = []
    degraded: list[str] = []
    errors = current.get("error_rate")
    if errors is not None and errors >= rules.error_rate_down:
        down.append(f"error_rate {errors:.3g} >= {rules.error_rate_down:g}")
    elif errors is not None and errors >= rules.error_rate_degraded:
        degraded.append(f"error_rate {errors:.3g} >= {rules.error_rate_degraded:g}")
    latency = current.get("latency_p95")
    if latency is not None and latency >= rules.latency_degraded_ms:
        degraded.append(f"latency_p95 {latency:.4g} ms >= {rules.latency_degraded_ms:g} ms")
    for metric in PERCENT_METRICS:
        value = current.get(metric)
        if value is not None and value >= rules.saturation_percent:
            degraded.append(f"{metric} {value:.3g}% >= {rules.saturation_percent:g}%")
    if firing_alerts:
        degraded.append(f"{firing_alerts} alert(s) firing")
    if down:
        return "down", down + degraded
    return ("degraded", degraded) if degraded else ("healthy", [])


def worst(statuses: Iterable[str]) -> str:
    """The worst of known statuses; "unknown" only when no status is known (an entity without
    data in the range does not hide the others' health)."""
    known = [s for s in statuses if s != "unknown"]
    return max(known, key=STATUSES.index) if known else "unknown"


def combine_hosts(metric: str, per_host: Sequence[Points]) -> tuple[Points, str]:
    """One series from the per-host series of a service, bucket by bucket, and its aggregation
    name: "sum_of_avg" for request rates, "max_of_avg" for latency, else "avg" (mean of hosts)."""
    buckets: dict[int, list[float]] = {}
    for points in per_host:
        for ts, value in points:
            buckets.setdefault(ts, []).append(value)
    if len(per_host) == 1:
        return sorted((ts, values[0]) for ts, values in buckets.items()), "avg"
    if metric in SUM_OVER_HOSTS:
        return sorted((ts, sum(v)) for ts, v in buckets.items()), "sum_of_avg"
    if metric in MAX_OVER_HOSTS:
        return sorted((ts, max(v)) for ts, v in buckets.items()), "max_of_avg"
    return sorted((ts, sum(v) / len(v)) for ts, v in buckets.items()), "avg"


def mean(points: Points) -> float | None:
    """The mean of a series' bucket values (Grafana's "Mean"), None when it has none."""
    return sum(v for _, v in points) / len(points) if points else None


def current(points: Points) -> float | None:
    """The newest bucket's value."""
    return points[-1][1] if points else None


def compare(metric: str, service: str, values: Mapping[str, float]) -> pb.PeerComparison | None:
    """A service's value beside its peers' (every other service with a value); rank 1 is the highest."""
    if service not in values:
        return None
    others = [v for name, v in values.items() if name != service]
    ordered = sorted(values.values(), reverse=True)
    value = values[service]
    comparison = pb.PeerComparison(
        metric=metric, value=value, rank=ordered.index(value) + 1, peers=len(values)
    )
    if others:
        comparison.peer_median = statistics.median(others)
        comparison.peer_min = min(others)
        comparison.peer_max = max(others)
    return comparison


def increase(points: Points) -> float:
    """A counter's increase over its points, a drop counted as a restart from zero (Prometheus'
    increase() without extrapolation)."""
    total = 0.0
    for (_, before), (_, after) in itertools.pairwise(points):
        total += after - before if after >= before else after
    return total
