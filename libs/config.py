"""Configuration from the environment, with the seed's variable names.

A missing or bad value stops start-up with a message that names the variable; so does an
unauthenticated bind others can reach (`refuse_open_exposure`, docs/security.md).
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from libs.errors import ConfigError

PROTO_PACKAGE = "platformq.analytics.v1"


@dataclass(frozen=True)
class ServiceInfo:
    """One of the services: its name (as `analytics serve <name>` takes it), its proto service in
    PROTO_PACKAGE, and its gRPC port when it runs alone."""

    name: str
    proto_service: str
    default_port: int

    @property
    def full_name(self) -> str:
        """The proto service's full name (gRPC paths, health, reflection, the gateway's routes)."""
        return f"{PROTO_PACKAGE}.{self.proto_service}"

    @property
    def ident(self) -> str:
        """The name as an identifier: its package under services/, its *_ADDRESS setting, its
        Envoy cluster."""
        return self.name.replace("-", "_")


SERVICES = (
    ServiceInfo("query-router", "QueryService", 50051),
    ServiceInfo("realtime", "RealtimeService", 50052),
    ServiceInfo("ml", "MLService", 50053),
    ServiceInfo("monitoring", "MonitoringService", 50054),
)
"""The one table of the services, read by the settings, the runner, the launcher, the gateway's
Envoy config and the ws bridge. The first one's port is also `serve all`'s."""

SERVICE_NAMES = tuple(s.name for s in SERVICES)


def service_info(name: str) -> ServiceInfo:
    """The table's row of the service called `name`."""
    for info in SERVICES:
        if info.name == name:
            return info
    raise ConfigError(f"unknown service {name!r}; the services are {', '.join(SERVICE_NAMES)}")


class Settings(BaseSettings):
    """Every setting of the service; each field reads the upper-case environment variable."""

    model_config = SettingsConfigDict(
        extra="forbid", use_attribute_docstrings=True, frozen=True, case_sensitive=False
    )

    service_name: str = "analytics"
    """SERVICE_NAME: the name this process logs and reports under."""

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    """LOG_LEVEL: DEBUG, INFO, WARNING, ERROR or CRITICAL."""

    bind_host: str = "127.0.0.1"
    """BIND_HOST: the address every server listens on (loopback by default)."""

    auth_mode: Literal["none", "jwt"] = "none"
    """AUTH_MODE: none (no authentication: every request is tenant default with every scope) or jwt
    (Envoy verifies bearer tokens; a service refuses a call without the tenant header Envoy sets)."""

    auth_jwks: str = ""
    """AUTH_JWKS: the JSON Web Key Set that verifies tokens with AUTH_MODE=jwt, a file path or an
    http(s) URL; empty means the development key pair's DATA_DIR/auth/jwks.json (made by `make up`)."""

    auth_issuer: str = ""
    """AUTH_ISSUER: the `iss` a token must carry; empty accepts any issuer."""

    auth_audiences: str = ""
    """AUTH_AUDIENCES: comma-separated audiences, one of which a token's `aud` must name; empty
    accepts any audience."""

    auth_tenant_claim: str = Field(default="tenant", min_length=1)
    """AUTH_TENANT_CLAIM: the token claim (a string; nested as a.b) that names the caller's tenant."""

    auth_scopes_claim: str = Field(default="scope", min_length=1)
    """AUTH_SCOPES_CLAIM: the token claim that holds the caller's scopes, space-separated as OAuth
    writes them (read, write, admin)."""

    auth_allow_insecure: bool = False
    """AUTH_ALLOW_INSECURE: let AUTH_MODE=none serve on a BIND_HOST that is not loopback (refused
    otherwise: anyone who reaches the port could read and write every tenant's data)."""

    tls_cert: Path | None = None
    """TLS_CERT: a PEM certificate chain; with TLS_KEY, Envoy's port serves TLS only (HTTP/2 and
    HTTP/1.1 by ALPN: REST, gRPC and WebSocket)."""

    tls_key: Path | None = None
    """TLS_KEY: the PEM private key of TLS_CERT."""

    grpc_port: int | None = Field(default=None, ge=0, le=65535)
    """GRPC_PORT: the gRPC port; defaults to 50051 for `serve all`, or the service's own port."""

    gateway_port: int = Field(default=8080, ge=0, le=65535)
    """GATEWAY_PORT: the Envoy port serving REST, gRPC and WebSocket."""

    envoy_admin_port: int = Field(default=9901, ge=0, le=65535)
    """ENVOY_ADMIN_PORT: Envoy's admin port (loopback only)."""

    ws_bridge_port: int = Field(default=8081, ge=0, le=65535)
    """WS_BRIDGE_PORT: the WebSocket bridge and /health port behind Envoy."""

    ws_heartbeat_seconds: float = Field(default=15.0, gt=0)
    """WS_HEARTBEAT_SECONDS: period of heartbeat frames on WebSocket streams."""

    ws_client_queue_frames: int = Field(default=256, gt=0)
    """WS_CLIENT_QUEUE_FRAMES: frames waiting for one stream client before newer ones are dropped."""

    ws_client_max_dropped: int = Field(default=1000, gt=0)
    """WS_CLIENT_MAX_DROPPED: frames dropped in a row for one slow client before it is closed."""

    ws_client_max_lag_seconds: float = Field(default=30.0, gt=0)
    """WS_CLIENT_MAX_LAG_SECONDS: how far behind (age of its oldest waiting frame) a client may fall
    before it is closed."""

    stream_replay_seconds: float = Field(default=300.0, ge=0)
    """STREAM_REPLAY_SECONDS: how long a stream keeps its frames for clients resuming with ?since=."""

    stream_replay_frames: int = Field(default=1000, ge=0)
    """STREAM_REPLAY_FRAMES: the most frames a stream keeps for clients resuming with ?since=."""

    query_router_address: str = ""
    """QUERY_ROUTER_ADDRESS: host:port of the query-router; empty means this host's GRPC_PORT."""

    realtime_address: str = ""
    """REALTIME_ADDRESS: host:port of realtime (comma-separated for replicas)."""

    ml_address: str = ""
    """ML_ADDRESS: host:port of the ml service."""

    monitoring_address: str = ""
    """MONITORING_ADDRESS: host:port of the monitoring service."""

    data_dir: Path = Path("data")
    """DATA_DIR: where WAL, segments, dashboards and models are stored."""

    max_request_bytes: int = Field(default=16 * 1024 * 1024, gt=0)
    """MAX_REQUEST_BYTES: the largest REST body the gateway accepts (413 above); gRPC messages may be 4x."""

    ingest_json_workers: int = Field(default_factory=lambda: 1 if (os.cpu_count() or 1) > 1 else 0, ge=0)
    """INGEST_JSON_WORKERS: worker processes that parse REST ingest bodies of 64 KiB and more that
    the compiled fast path leaves to the Python parsers (a point to refuse, an unusual spelling), so
    the serving process keeps its core for the WAL, the hot tier and gRPC (default 1 on a machine
    with more than one core, else 0: such bodies are parsed in a thread of the serving process)."""

    request_timeout_seconds: float = Field(default=60.0, gt=0)
    """REQUEST_TIMEOUT_SECONDS: the gateway's timeout for a unary call."""

    tenant_rate_limit: float = Field(default=0.0, ge=0)
    """TENANT_RATE_LIMIT: API calls per second one tenant may make to one service process (a token
    bucket per tenant; 0: no limit); over it: 429 with Retry-After, other tenants unaffected."""

    tenant_rate_burst: int = Field(default=100, gt=0)
    """TENANT_RATE_BURST: calls a tenant may make at once above TENANT_RATE_LIMIT's pace."""

    tenant_max_concurrent_queries: int = Field(default=0, ge=0)
    """TENANT_MAX_CONCURRENT_QUERIES: metrics, SQL and timeseries queries one tenant may run at once
    in one query-router (0: no limit); one more is a 429 with Retry-After."""

    tenant_max_streams: int = Field(default=0, ge=0)
    """TENANT_MAX_STREAMS: live streams (WebSocket and Subscribe) one tenant may hold open on one
    process (0: no limit); one more is refused with 429 before the upgrade."""

    gateway_headers_timeout_seconds: float = Field(default=10.0, gt=0)
    """GATEWAY_HEADERS_TIMEOUT_SECONDS: how long the gateway waits for a request's headers (a
    slowloris-style client, or a WebSocket upgrade sent a byte at a time, is cut off after it)."""

    gateway_max_connections: int = Field(default=10_000, gt=0)
    """GATEWAY_MAX_CONNECTIONS: client connections the gateway holds open at once; one more is closed
    as soon as it is accepted (Envoy's global downstream connection limit), so idle connections
    cannot use up the gateway's file descriptors."""

    train_timeout_seconds: float = Field(default=1800.0, gt=0)
    """TRAIN_TIMEOUT_SECONDS: the gateway's timeout for a model training call (TrainMaintenance)."""

    shutdown_grace_seconds: float = Field(default=5.0, ge=0)
    """SHUTDOWN_GRACE_SECONDS: how long in-flight calls may finish after SIGTERM."""

    hot_max_points: int = Field(default=20_000_000, gt=0)
    """HOT_MAX_POINTS: the hot tier's memory bound in points (24 bytes each); ingest waits above it."""

    hot_flush_points: int = Field(default=2_000_000, gt=0)
    """HOT_FLUSH_POINTS: hot points that trigger a flush into Parquet segments, and the most one
    flush round writes (a backlog goes in several rounds: a write's memory stays bounded)."""

    hot_flush_seconds: float = Field(default=30.0, gt=0)
    """HOT_FLUSH_SECONDS: the longest a point stays only in the hot tier (and the WAL)."""

    retention_days: float = Field(default=30.0, gt=0)
    """RETENTION_DAYS: how long segments are kept, unless RETENTION_OVERRIDES says otherwise."""

    retention_overrides: str = ""
    """RETENTION_OVERRIDES: per-datasource retention in days, e.g. "tsbs=3650,platform_metrics=7"."""

    rollup_retention_days: float = Field(default=0.0, ge=0)
    """ROLLUP_RETENTION_DAYS: how long 1-minute and 1-hour rollups are kept; longer than the raw
    retention downsamples (raw points go, rollups stay); 0 keeps them as long as the raw points."""

    rollup_retention_overrides: str = ""
    """ROLLUP_RETENTION_OVERRIDES: per-datasource rollup retention in days, e.g. "platform_metrics=365"."""

    query_cache_ttl_seconds: float = Field(default=60.0, ge=0)
    """QUERY_CACHE_TTL_SECONDS: how long a query result is cached (0 turns the cache off)."""

    self_metrics_interval_seconds: float = Field(default=10.0, ge=0)
    """SELF_METRICS_INTERVAL_SECONDS: how often each process writes its own metrics into datasource
    analytics_self (0 turns the writing off; the Prometheus export still works)."""

    dashboard_cache_ttl_seconds: float = Field(default=30.0, ge=0)
    """DASHBOARD_CACHE_TTL_SECONDS: how long dashboard panel data is cached."""

    dashboard_min_refresh_seconds: float = Field(default=5.0, gt=0)
    """DASHBOARD_MIN_REFRESH_SECONDS: live refresh never runs a dashboard more often than this
    (a shorter refresh_interval is stored as given and refreshed at this period, like Grafana's
    min_refresh_interval)."""

    dashboard_refresh_concurrency: int = Field(default=2, gt=0)
    """DASHBOARD_REFRESH_CONCURRENCY: dashboards the live refresh computes at once."""

    monitor_error_rate_degraded: float = Field(default=0.05, ge=0)
    """MONITOR_ERROR_RATE_DEGRADED: an error_rate at or above this makes a service "degraded"."""

    monitor_error_rate_down: float = Field(default=0.5, ge=0)
    """MONITOR_ERROR_RATE_DOWN: an error_rate at or above this makes a service "down"."""

    monitor_latency_degraded_ms: float = Field(default=2000.0, gt=0)
    """MONITOR_LATENCY_DEGRADED_MS: a latency_p95 (ms) at or above this makes a service "degraded"."""

    monitor_stale_seconds: float = Field(default=120.0, gt=0)
    """MONITOR_STALE_SECONDS: an entity whose newest point is older than this is "down"."""

    monitor_saturation_percent: float = Field(default=90.0, gt=0)
    """MONITOR_SATURATION_PERCENT: cpu_usage or memory_usage (%) at or above this is "degraded"."""

    ml_cache_ttl_seconds: float = Field(default=300.0, ge=0)
    """ML_CACHE_TTL_SECONDS: how long ML predictions are cached."""

    forecast_max_horizon: int = Field(default=2000, gt=0)
    """FORECAST_MAX_HORIZON: the most steps ahead a forecast may ask for."""

    forecast_workers: int = Field(default=2, gt=0)
    """FORECAST_WORKERS: worker processes that fit forecasts (series of one request run in parallel)."""

    forecast_max_series: int = Field(default=100, gt=0)
    """FORECAST_MAX_SERIES: the most series one forecast may fit (a selection matching more is refused)."""

    cache_max_entries: int = Field(default=10_000, gt=0)
    """CACHE_MAX_ENTRIES: entries the in-process cache keeps before evicting the oldest."""

    query_max_points_per_series: int = Field(default=11_000, gt=0)
    """QUERY_MAX_POINTS_PER_SERIES: a step giving more points per series is refused."""

    query_max_series: int = Field(default=10_000, gt=0)
    """QUERY_MAX_SERIES: the most series one answer may hold."""

    query_max_raw_points: int = Field(default=2_000_000, gt=0)
    """QUERY_MAX_RAW_POINTS: the most points a raw query (aggregation "raw") returns."""

    sql_max_rows: int = Field(default=100_000, gt=0)
    """SQL_MAX_ROWS: the most rows a SQL query returns."""

    query_timeout_seconds: float = Field(default=30.0, gt=0)
    """QUERY_TIMEOUT_SECONDS: the deadline of a SQL query whose request carries none (a REST call); past
    it, or the request's own deadline, the query is stopped in DuckDB (504 / DEADLINE_EXCEEDED). Keep it
    below REQUEST_TIMEOUT_SECONDS, so the answer names the limit before Envoy gives up."""

    query_memory_limit: str = Field(
        default="50%", pattern=r"(?i)^\s*\d+(\.\d+)?\s*(%|[kmgt]i?b)\s*$", examples=["2GB", "512MiB", "50%"]
    )
    """QUERY_MEMORY_LIMIT: DuckDB's memory for SQL queries, per tenant (e.g. 2GB, 512MiB, or 50% of the
    machine's memory); a query needing more fails with 429 / RESOURCE_EXHAUSTED, nothing spills to disk."""

    query_threads: int = Field(default=0, ge=0)
    """QUERY_THREADS: DuckDB threads for one SQL query; 0 uses one per core."""

    anomaly_retention_days: float = Field(default=0.0, ge=0)
    """ANOMALY_RETENTION_DAYS: how long found anomalies are kept; 0 keeps them forever."""

    anomaly_stream: bool = True
    """ANOMALY_STREAM: the ml service scores every ingested point live (ANOMALY_STREAM=0 turns it off)."""

    ml_state_max_bytes: int = Field(default=256 * 1024 * 1024, gt=0)
    """ML_STATE_MAX_BYTES: memory for the live anomaly scorer's per-series state; the least recently
    seen series are evicted above it (and re-warmed from stored history when they come back)."""

    ml_state_idle_seconds: float = Field(default=3600.0, gt=0)
    """ML_STATE_IDLE_SECONDS: a series silent this long loses its live scorer state."""

    ml_stream_max_backlog_bytes: int = Field(default=256 * 1024 * 1024, gt=0)
    """ML_STREAM_MAX_BACKLOG_BYTES: in mode all, ingested batches waiting for the live scorer; above
    it the oldest are skipped (counted, logged), so a slow scorer never holds ingest's memory."""

    ml_checkpoint_seconds: float = Field(default=60.0, gt=0)
    """ML_CHECKPOINT_SECONDS: how often the live scorer's state is checkpointed in DATA_DIR."""

    alert_eval_seconds: float = Field(default=15.0, gt=0)
    """ALERT_EVAL_SECONDS: how often the monitoring service evaluates the alert rules."""

    alert_window_seconds: float = Field(default=300.0, gt=0)
    """ALERT_WINDOW_SECONDS: the window the alert rules look back over (increase, p99, hit rate)."""

    alert_for_seconds: float = Field(default=60.0, ge=0)
    """ALERT_FOR_SECONDS: how long a rule's condition holds (pending) before the alert fires."""

    alert_batch_query_seconds: float = Field(default=5.0, gt=0)
    """ALERT_BATCH_QUERY_SECONDS: SlowBatchQuery fires above this p99 batch query time."""

    alert_realtime_query_seconds: float = Field(default=0.5, gt=0)
    """ALERT_REALTIME_QUERY_SECONDS: SlowRealtimeQuery fires above this p99 real-time query time."""

    alert_cache_hit_rate: float = Field(default=0.7, ge=0, le=1)
    """ALERT_CACHE_HIT_RATE: LowCacheHitRate fires below this hit ratio over the window."""

    alert_cache_min_lookups: int = Field(default=50, ge=1)
    """ALERT_CACHE_MIN_LOOKUPS: LowCacheHitRate needs at least this many lookups in the window."""

    alert_anomaly_rate_factor: float = Field(default=3.0, gt=0)
    """ALERT_ANOMALY_RATE_FACTOR: AnomalyRateSpike fires above this multiple of the baseline rate."""

    alert_anomaly_min_count: int = Field(default=5, ge=1)
    """ALERT_ANOMALY_MIN_COUNT: AnomalyRateSpike needs at least this many anomalies in the window."""

    alert_anomaly_baseline_seconds: float = Field(default=3600.0, gt=0)
    """ALERT_ANOMALY_BASELINE_SECONDS: the period before the window AnomalyRateSpike compares with."""

    alert_stream_backlog_bytes: int = Field(default=64 * 1024 * 1024, gt=0)
    """ALERT_STREAM_BACKLOG_BYTES: StreamBacklog fires above this bus subscription backlog."""

    alert_stream_lag_seconds: float = Field(default=30.0, gt=0)
    """ALERT_STREAM_LAG_SECONDS: StreamBacklog fires above this stream consumer lag."""

    demo: bool = True
    """DEMO: `make up` feeds a simulated platform through the ingest API (DEMO=0 turns it off)."""

    pulsar_url: str = ""
    """PULSAR_URL: pulsar://host:port of the broker; empty means the in-process bus (mode all)."""

    pulsar_tenant: str = "public"
    """PULSAR_TENANT: the Pulsar tenant of every topic."""

    pulsar_namespace: str = "default"
    """PULSAR_NAMESPACE: the Pulsar namespace of every topic."""

    pulsar_auth_token: SecretStr = SecretStr("")
    """PULSAR_AUTH_TOKEN: a token the Pulsar client presents (Pulsar's token authentication); empty:
    none. Never logged or printed (shown as **********)."""

    bus_max_redeliveries: int = Field(default=3, ge=0)
    """BUS_MAX_REDELIVERIES: failed deliveries of a message before it goes to `<topic>.dlq`."""

    druid_broker_url: str = ""
    """DRUID_BROKER_URL: Druid broker, for the Druid engine."""

    druid_coordinator_url: str = ""
    """DRUID_COORDINATOR_URL: Druid coordinator."""

    druid_overlord_url: str = ""
    """DRUID_OVERLORD_URL: Druid overlord, for ingestion tasks."""

    ignite_host: str = ""
    """IGNITE_HOST: Apache Ignite host for the distributed cache; empty means in-process."""

    ignite_port: int = Field(default=10800, ge=1, le=65535)
    """IGNITE_PORT: Apache Ignite thin-client port."""

    ignite_timeout_seconds: float = Field(default=0.5, gt=0, le=60)
    """IGNITE_TIMEOUT_SECONDS: bound on every call to Ignite (connect included); past it the
    cache counts the call failed and the answer is computed instead."""

    elasticsearch_host: str = ""
    """ELASTICSEARCH_HOST: Elasticsearch host for log search."""

    trino_host: str = ""
    """TRINO_HOST: Trino coordinator host, for the Trino engine."""

    trino_port: int = Field(default=8080, ge=1, le=65535)
    """TRINO_PORT: Trino coordinator port."""

    online_bindings: str = ""
    """ONLINE_BINDINGS: online models that learn from the metrics stream, a JSON list of
    {"model", "features", "target", "kind", "task", "entity_label", "datasource"}; empty: none."""

    online_max_samples: int = Field(default=10_000, gt=0)
    """ONLINE_MAX_SAMPLES: the most samples one TrainOnline or PredictOnline request may carry."""

    online_max_models: int = Field(default=100, gt=0)
    """ONLINE_MAX_MODELS: online models kept in memory; the least recently used beyond are dropped
    (their checkpoint is on disk) and reloaded on their next use."""

    online_track_samples: int = Field(default=1000, gt=0)
    """ONLINE_TRACK_SAMPLES: an online model is logged to MLflow after this many new samples."""

    online_track_seconds: float = Field(default=300.0, gt=0)
    """ONLINE_TRACK_SECONDS: or after this long with new samples, whichever comes first."""

    mlflow_tracking_uri: str = ""
    """MLFLOW_TRACKING_URI: MLflow tracking server; empty means a local store under DATA_DIR."""

    mlflow_tracking_username: str = ""
    """MLFLOW_TRACKING_USERNAME: the user for a tracking server with basic authentication (MLflow's
    own variable, read by its client)."""

    mlflow_tracking_password: SecretStr = SecretStr("")
    """MLFLOW_TRACKING_PASSWORD: that user's password (MLflow's own variable, read by its client);
    never logged or printed."""

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_log_level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @cached_property
    def retention_by_datasource(self) -> dict[str, float]:
        """RETENTION_OVERRIDES parsed into {datasource: days}."""
        return _days_by_datasource(self.retention_overrides, "RETENTION_OVERRIDES")

    @cached_property
    def rollup_retention_by_datasource(self) -> dict[str, float]:
        """ROLLUP_RETENTION_OVERRIDES parsed into {datasource: days}."""
        return _days_by_datasource(self.rollup_retention_overrides, "ROLLUP_RETENTION_OVERRIDES")

    @cached_property
    def grpc_bind_port(self) -> int:
        """The gRPC port for `serve all` (the first service's, 50051, unless GRPC_PORT says otherwise)."""
        return SERVICES[0].default_port if self.grpc_port is None else self.grpc_port

    def port_for(self, service: str) -> int:
        """The gRPC port of one service run alone."""
        return service_info(service).default_port if self.grpc_port is None else self.grpc_port

    def address_of(self, service: str) -> str:
        """Where the gateway finds a service: its *_ADDRESS, else this host's gRPC port."""
        explicit = getattr(self, f"{service_info(service).ident}_address")
        return explicit or f"127.0.0.1:{self.grpc_bind_port}"


def load_settings(**overrides: object) -> Settings:
    """Read settings from the environment; a bad value raises ConfigError naming the variable."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']).upper()}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"invalid configuration: {problems}") from None


def refuse_open_exposure(settings: Settings) -> None:
    """Refuse to serve without authentication on an address others can reach: AUTH_MODE=none on a
    BIND_HOST that is not loopback needs AUTH_ALLOW_INSECURE=1 (docs/security.md)."""
    if settings.auth_mode != "none" or settings.auth_allow_insecure or _is_loopback(settings.bind_host):
        return
    raise ConfigError(
        f"BIND_HOST={settings.bind_host} is not loopback and AUTH_MODE=none: anyone who reaches it could "
        "read and write every tenant's data. Set AUTH_MODE=jwt (with AUTH_JWKS), bind loopback, or set "
        "AUTH_ALLOW_INSECURE=1 to accept that"
    )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name other than localhost may resolve anywhere


def _days_by_datasource(text: str, setting: str) -> dict[str, float]:
    """A "datasource=days,..." setting parsed into {datasource: days}."""
    out: dict[str, float] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, days = item.partition("=")
        try:
            out[name.strip()] = float(days)
        except ValueError:
            raise ConfigError(f"{setting}: {item!r} is not datasource=days") from None
        if not sep or out[name.strip()] <= 0:
            raise ConfigError(f"{setting}: {item!r} is not datasource=days (days > 0)")
    return out
