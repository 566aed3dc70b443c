"""The service's own metrics: one prometheus-client registry per process, owned by its context.

Every process (one per service in distributed mode, one for all in mode all) counts what it does
here; the monitoring service renders them for Prometheus, and each process writes them into the
store as datasource `analytics_self` so dashboards, queries and alert rules can use them.
Nothing here is module-level state: the registry and its metrics live on a `SelfMetrics` object.

Counters have no `_created` series: prometheus-client only turns them off process-wide
(`disable_created_metrics()`, global state), so `SelfMetrics.families` leaves them out instead.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import Metric

from libs.selfmetrics_collectors import (
    BusCollector,
    BusStats,
    CacheCollector,
    Counted,
    GatewayRefusalCollector,
    ModelQualityCollector,
    StorageCollector,
)

SELF_CACHE_NAMESPACE = "self"
"""The cache namespace of queries over the service's own metrics (alert rules, self dashboards), so
their hits and misses are counted apart from users' queries (and the cache alert ignores them)."""

SELF_DATASOURCE = "analytics_self"
"""The datasource the self-metrics are written to."""

SEND_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
QUERY_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

EXPOSITION_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
"""The Prometheus text exposition format that `exposition` writes."""

# The sample names a family of each type writes (without `_created`, which is never exported).
SAMPLE_SUFFIXES = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_sum", "_count"),
    "summary": ("", "_sum", "_count"),
    "info": ("_info",),
    "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
}


@dataclass(frozen=True)
class SelfSample:
    """One exposition sample: the name Prometheus shows, its labels and its value."""

    name: str
    labels: dict[str, str]
    value: float


class SelfMetrics:
    """The metrics of one process. Attributes are prometheus-client metrics; use them directly.

    `cache` and `bus`, when given, are read at collection time (hit/miss counts, bus events and
    backlog). Process metrics (CPU, memory, file descriptors) and `python_info` are included."""

    def __init__(self, cache: Counted | None = None, bus: BusStats | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        if cache is not None:
            r.register(CacheCollector(cache))
        if bus is not None:
            r.register(BusCollector(bus))
        self.model_quality = ModelQualityCollector()
        r.register(self.model_quality)
        self.storage = StorageCollector()
        r.register(self.storage)
        self.gateway_refusals = GatewayRefusalCollector()
        r.register(self.gateway_refusals)
        self.query_duration = Histogram(
            "analytics_query_duration_seconds",
            "Query execution time by engine (hot, duckdb, duckdb+hot, cache) and mode (batch, realtime, cache).",
            ["engine", "mode"],
            buckets=QUERY_BUCKETS,
            registry=r,
        )
        self.query_failures = Counter(
            "analytics_query_failures",
            "Queries that failed, by engine (none: refused before any engine ran) and gRPC status code.",
            ["engine", "code"],
            registry=r,
        )
        self.tenant_refusals = Counter(
            "analytics_tenant_refusals",
            "Calls and streams refused because their tenant was over a limit (rate, queries, streams).",
            ["limit"],
            registry=r,
        )
        self.engine_connection_failures = Counter(
            "analytics_engine_connection_failures",
            "Failures to reach a query engine's data or a peer service.",
            ["engine"],
            registry=r,
        )
        self.ingest_points = Counter(
            "analytics_ingest_points",
            "Points received by ingest, by datasource and result (accepted, rejected).",
            ["datasource", "result"],
            registry=r,
        )
        self.ingest_batches = Counter(
            "analytics_ingest_batches",
            "Ingest batches acknowledged, by datasource.",
            ["datasource"],
            registry=r,
        )
        self.ingest_parsers = Counter(
            "analytics_ingest_parser_batches",
            "Ingest requests by the parser that read them: compiled (the fast path, from the "
            "request's bytes) or python (protobuf, then the Python checks).",
            ["parser"],
            registry=r,
        )
        self.stream_lag = Gauge(
            "analytics_stream_lag_seconds",
            "Age of the newest batch a stream consumer has processed when it processed it.",
            ["consumer"],
            registry=r,
        )
        self.anomalies_detected = Counter(
            "analytics_anomalies_detected",
            "Anomalies found and kept (each once), by method and datasource.",
            ["method", "datasource"],
            registry=r,
        )
        self.ml_scoring_duration = Histogram(
            "analytics_ml_scoring_duration_seconds",
            "Time to score one request or one live batch, by method.",
            ["method"],
            buckets=QUERY_BUCKETS,
            registry=r,
        )
        self.ws_connections = Gauge(
            "analytics_ws_connections",
            "Open WebSocket connections, by stream type.",
            ["stream_type"],
            registry=r,
        )
        self.stream_subscribers = Gauge(
            "analytics_stream_subscribers",
            "Live stream subscribers (WebSocket and gRPC), by stream type.",
            ["stream_type"],
            registry=r,
        )
        self.stream_frames_sent = Counter(
            "analytics_stream_frames_sent", "Frames sent to stream subscribers.", ["stream_type"], registry=r
        )
        self.stream_send_delay = Histogram(
            "analytics_stream_send_delay_seconds",
            "Time from a frame entering a subscriber's queue to its write to the client (the server's "
            "share of live latency), by stream type.",
            ["stream_type"],
            buckets=SEND_BUCKETS,
            registry=r,
        )
        self.stream_frames_dropped = Counter(
            "analytics_stream_frames_dropped",
            "Frames dropped because a subscriber was too slow.",
            ["stream_type"],
            registry=r,
        )
        self.stream_clients_closed = Counter(
            "analytics_stream_clients_closed",
            "Subscribers closed by the server, by reason (lagged, bad_frame, unknown_stream).",
            ["reason"],
            registry=r,
        )
        self.alerts_active = Gauge(
            "analytics_alerts_active",
            "Alerts pending or firing, by rule and state.",
            ["alertname", "state"],
            registry=r,
        )
        self.self_metrics_writes = Counter(
            "analytics_self_metrics_writes",
            "Writes of this process's self-metrics into datasource analytics_self, by result (ok, failed).",
            ["result"],
            registry=r,
        )

    def families(self, extra_labels: Mapping[str, str] | None = None) -> list[Metric]:
        """Every metric family now, without `_created` samples, each sample carrying `extra_labels`.

        Reads /proc and the collectors' sources: call it from a worker thread."""
        extra = dict(extra_labels or {})
        out = []
        for family in self.registry.collect():
            copy = Metric(family.name, family.documentation, family.type, family.unit)
            for s in family.samples:
                if s.name.endswith("_created"):
                    continue
                copy.add_sample(s.name, {**s.labels, **extra}, s.value, s.timestamp)
            out.append(copy)
        return out

    def samples(self, extra_labels: Mapping[str, str] | None = None) -> list[SelfSample]:
        """The finite samples of `families` (NaN and infinite values cannot be stored)."""
        return [
            SelfSample(s.name, dict(s.labels), float(s.value))
            for family in self.families(extra_labels)
            for s in family.samples
            if math.isfinite(s.value)
        ]


def sample_families(families: Iterable[Metric]) -> dict[str, Metric]:
    """Which family each exported sample name belongs to (e.g. `x_bucket` -> histogram `x`)."""
    out = {}
    for family in families:
        for suffix in SAMPLE_SUFFIXES.get(family.type, ("",)):
            out[family.name + suffix] = family
    return out


class _Families:
    """A collector over a fixed list of families, which is all generate_latest needs."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self._families = list(families)

    def collect(self) -> Iterable[Metric]:
        return self._families


def exposition(families: Iterable[Metric]) -> bytes:
    """The families in the text exposition format 0.0.4, rendered by prometheus-client (names
    outside Prometheus' character set are escaped with underscores)."""
    return generate_latest(_Families(families))
