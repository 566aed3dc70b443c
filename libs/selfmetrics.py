"""The service's own metrics: one prometheus-client registry per process, owned by its context.

Every process (one per service in distributed mode, one for all in mode all) counts what it does
here; the monitoring service renders them for Prometheus, and each process writes them into the
store as datasource `analytics_self` so dashboards, queries and alert rules can use them.
Nothing here is module-level state: the registry and its metrics live on a `SelfMetrics` object.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

SELF_DATASOURCE = "analytics_self"
"""The datasource the self-metrics are written to."""

QUERY_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class SelfMetrics:
    """The metrics of one process. Attributes are prometheus-client metrics; use them directly."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.query_duration = Histogram(
            "analytics_query_duration_seconds",
            "Query execution time by engine and mode (batch, realtime, cache).",
            ["engine", "mode"],
            buckets=QUERY_BUCKETS,
            registry=r,
        )
        self.query_failures = Counter(
            "analytics_query_failures",
            "Queries that failed, by engine and gRPC status code.",
            ["engine", "code"],
            registry=r,
        )
        self.engine_connection_failures = Counter(
            "analytics_engine_connection_failures",
            "Failures to reach a query engine or a peer service.",
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
        self.stream_lag = Gauge(
            "analytics_stream_lag_seconds",
            "Age of the newest batch a stream consumer has processed when it processed it.",
            ["consumer"],
            registry=r,
        )
        self.anomalies_detected = Counter(
            "analytics_anomalies_detected",
            "Anomalies found, by method and datasource.",
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
