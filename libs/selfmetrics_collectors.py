"""Custom collectors of the self-metrics: figures other objects already keep (the cache's hit and
miss counts, the bus's event counts and backlog, the anomaly store's feedback tallies, the embedded
store's series, unflushed points and segments, Envoy's counts of the requests it refused), read
when the registry is collected rather than mirrored into counters on every event."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from typing import Protocol

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric


class Tally(Protocol):
    """What the model-quality collector needs of a method's feedback tally."""

    anomalies: int
    true_positive: int
    false_positive: int
    precision: float | None


class Counted(Protocol):
    """What the cache collector needs of a cache: lookups by namespace."""

    hits: dict[str, int]
    misses: dict[str, int]


class BusStats(Protocol):
    """What the bus collector needs of a bus: event counts and waiting bytes per subscription."""

    stats: dict[str, int]

    def backlog_bytes(self) -> dict[str, int]: ...


class CacheCollector:
    """`analytics_cache_requests_total{namespace,result}` from the cache's own hit and miss counts."""

    def __init__(self, cache: Counted) -> None:
        self.cache = cache

    def describe(self) -> list[Metric]:
        """The family this collector writes, without samples (for the registry's name checks)."""
        return [self._family()]

    def _family(self) -> CounterMetricFamily:
        return CounterMetricFamily(
            "analytics_cache_requests",
            "Cache lookups by namespace (query, self, dashboard, ml) and result (hit, miss).",
            labels=["namespace", "result"],
        )

    def collect(self) -> Iterator[Metric]:
        """The cache's counts now."""
        family = self._family()
        # dict() copies in one step under the GIL, so a lookup on the event loop cannot change
        # the mapping while a worker thread reads it.
        for result, counts in (("hit", dict(self.cache.hits)), ("miss", dict(self.cache.misses))):
            for namespace, count in sorted(counts.items()):
                family.add_metric([namespace, result], count)
        yield family


class BusCollector:
    """`analytics_bus_messages_total{event}` and `analytics_bus_backlog_bytes{subscription}`."""

    EVENTS = ("published", "delivered", "redelivered", "dead_lettered", "evicted")

    def __init__(self, bus: BusStats) -> None:
        self.bus = bus

    def describe(self) -> list[Metric]:
        """The families this collector writes, without samples (for the registry's name checks)."""
        return list(self._families())

    def _families(self) -> tuple[CounterMetricFamily, GaugeMetricFamily]:
        return (
            CounterMetricFamily(
                "analytics_bus_messages",
                "Bus messages by event: published, delivered, redelivered, dead_lettered, evicted.",
                labels=["event"],
            ),
            GaugeMetricFamily(
                "analytics_bus_backlog_bytes",
                "Bytes waiting in this process for a subscription's consumer (in-process bus only).",
                labels=["subscription"],
            ),
        )

    def collect(self) -> Iterator[Metric]:
        """The bus's counts and backlog now."""
        messages, backlog = self._families()
        stats = dict(self.bus.stats)
        for event in self.EVENTS:
            messages.add_metric([event], stats.get(event, 0))
        for subscription, size in sorted(self.bus.backlog_bytes().items()):
            backlog.add_metric([subscription], size)
        yield messages
        yield backlog


class ModelQualityCollector:
    """ML model quality from anomaly feedback: precision, verdicts and kept anomalies by method.

    The ml service attaches its anomaly store's tallies; until then (and in processes without
    the ml service) the families are declared with no samples."""

    def __init__(self) -> None:
        self._source: Callable[[], Mapping[str, Tally]] | None = None

    def attach(self, source: Callable[[], Mapping[str, Tally]]) -> None:
        """Read tallies from `source` (called on every collection, from a worker thread)."""
        self._source = source

    def describe(self) -> list[Metric]:
        """The families this collector writes, without samples (for the registry's name checks)."""
        return list(self._families())

    def _families(self) -> tuple[GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily]:
        return (
            GaugeMetricFamily(
                "analytics_ml_model_precision",
                "Precision of a detection method from feedback: true / (true + false positives).",
                labels=["method"],
            ),
            GaugeMetricFamily(
                "analytics_ml_feedback_verdicts",
                "Feedback verdicts recorded on kept anomalies, by method and verdict.",
                labels=["method", "verdict"],
            ),
            GaugeMetricFamily(
                "analytics_ml_anomalies_stored",
                "Anomalies kept in the anomaly store, by method.",
                labels=["method"],
            ),
        )

    def collect(self) -> Iterator[Metric]:
        """The attached tallies now (called from a worker thread: the ml source reads SQLite)."""
        precision, verdicts, stored = self._families()
        tallies = self._source() if self._source is not None else {}
        for method, tally in sorted(tallies.items()):
            stored.add_metric([method], tally.anomalies)
            verdicts.add_metric([method, "true_positive"], tally.true_positive)
            verdicts.add_metric([method, "false_positive"], tally.false_positive)
            if tally.precision is not None:
                precision.add_metric([method], tally.precision)
        yield from (precision, verdicts, stored)


class PartitionFigures(Protocol):
    """What the storage collector needs of a partition's state (libs.storage.PartitionState)."""

    tenant: str
    datasource: str
    series: int
    hot_points: int
    segments: int


class StorageCollector:
    """The embedded store of this process, by tenant and datasource: `analytics_storage_series`,
    `analytics_storage_hot_points` (held in the hot tier: acknowledged, durable in the WAL, not yet
    in segments) and `analytics_storage_segments`. The process that opens a store attaches its
    `state`; unattached (no store in this process) the families have no samples."""

    def __init__(self) -> None:
        self._source: Callable[[], list[PartitionFigures]] | None = None

    def attach(self, source: Callable[[], list[PartitionFigures]]) -> None:
        """Read partitions from `source` (called on every collection, possibly from a worker thread)."""
        self._source = source

    def describe(self) -> list[Metric]:
        """The families this collector writes, without samples (for the registry's name checks)."""
        return list(self._families())

    def _families(self) -> tuple[GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily]:
        labels = ["tenant", "datasource"]
        return (
            GaugeMetricFamily(
                "analytics_storage_series", "Series stored, by tenant and datasource.", labels=labels
            ),
            GaugeMetricFamily(
                "analytics_storage_hot_points",
                "Points held in the hot tier: acknowledged (durable in the WAL, queryable), not yet in segments.",
                labels=labels,
            ),
            GaugeMetricFamily(
                "analytics_storage_segments", "Live segment files, downsampled ones included.", labels=labels
            ),
        )

    def collect(self) -> Iterator[Metric]:
        """The attached store's partitions now."""
        series, hot, segments = self._families()
        for p in self._source() if self._source is not None else []:
            series.add_metric([p.tenant, p.datasource], p.series)
            hot.add_metric([p.tenant, p.datasource], p.hot_points)
            segments.add_metric([p.tenant, p.datasource], p.segments)
        yield from (series, hot, segments)


# Envoy's own counters of what it refused before any service saw the request, and their reasons.
GATEWAY_REFUSALS = {
    "http.gateway.jwt_authn.denied": "unauthenticated",
    "http.gateway.downstream_rq_too_large": "body_too_large",
    "http.gateway.downstream_rq_header_timeout": "headers_timeout",
    "http.gateway.downstream_cx_protocol_error": "bad_request",
    "listener.gateway.downstream_global_cx_overflow": "connections",
}


class GatewayRefusalCollector:
    """`analytics_gateway_refusals_total{reason}`: requests Envoy refused itself (a token it could not
    verify, a body over MAX_REQUEST_BYTES, headers too slow or malformed or over 60 KiB, a connection
    over GATEWAY_MAX_CONNECTIONS), read from
    Envoy's admin endpoint on loopback when the registry is collected. The process hosting the ws
    bridge (the gateway's neighbour) attaches the admin address; unattached, or with Envoy not
    running, it writes no samples."""

    def __init__(self) -> None:
        self._admin: str | None = None

    def attach(self, admin_host_port: str) -> None:
        """Read Envoy's counters from http://<admin_host_port>/stats."""
        self._admin = admin_host_port

    def _family(self) -> CounterMetricFamily:
        return CounterMetricFamily(
            "analytics_gateway_refusals",
            "Requests the gateway (Envoy) refused before any service saw them, by reason.",
            labels=["reason"],
        )

    def describe(self) -> list[Metric]:
        """The family this collector writes, without samples (for the registry's name checks)."""
        return [self._family()]

    def collect(self) -> Iterator[Metric]:
        """Envoy's counters now (a loopback call with a short timeout, from a worker thread)."""
        family = self._family()
        if self._admin is not None:
            names = "|".join(name.replace(".", "\\.") for name in GATEWAY_REFUSALS)
            url = f"http://{self._admin}/stats?format=json&filter={urllib.parse.quote(f'^({names})$')}"
            try:
                with urllib.request.urlopen(url, timeout=0.5) as reply:
                    stats = json.loads(reply.read())["stats"]
            except (OSError, ValueError, KeyError):
                # Envoy not running (a service started alone) or not answering: no samples, not zeros.
                yield family
                return
            counts = {
                GATEWAY_REFUSALS[s["name"]]: s.get("value", 0)
                for s in stats
                if s.get("name") in GATEWAY_REFUSALS
            }
            for reason in sorted(set(GATEWAY_REFUSALS.values())):
                family.add_metric([reason], counts.get(reason, 0))
        yield family
