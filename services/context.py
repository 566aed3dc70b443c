"""What the services of one process share: the store, the bus, the cache, the process's own
metrics, its per-tenant limits and its stream hub, built once, and where each service is reached
(this process's own port for the services it hosts)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from libs.bus import Bus, Envelope, make_bus
from libs.cache import ResultCache, TtlCache
from libs.config import Settings
from libs.limits import TenantLimits
from libs.selfmetrics import SELF_DATASOURCE, SelfMetrics
from libs.storage import MetricStore, StoreConfig
from libs.streams import StreamHub
from libs.writes import METRICS_TOPICS, AfterWrite
from platformq.analytics.v1 import events_pb2


def store_config(settings: Settings) -> StoreConfig:
    """The store's knobs from the settings."""
    return StoreConfig(
        data_dir=settings.data_dir,
        hot_max_points=settings.hot_max_points,
        hot_flush_points=settings.hot_flush_points,
        hot_flush_seconds=settings.hot_flush_seconds,
        retention_days=settings.retention_by_datasource,
        default_retention_days=settings.retention_days,
        rollup_retention_days=settings.rollup_retention_by_datasource,
        default_rollup_retention_days=settings.rollup_retention_days,
    )


@dataclass
class ServiceContext:
    """Shared resources of a process; the store is opened by `start` when a service needs it."""

    settings: Settings
    bus: Bus = field(init=False)
    store: MetricStore | None = None
    cache: ResultCache = field(init=False)
    consume_metrics: bool = False
    hosted: tuple[str, ...] = ()
    """The services this process hosts (on one gRPC port)."""
    local_port: int | None = None
    """The port this process's gRPC server bound, once started."""
    after_write: AfterWrite = field(init=False)
    """What follows every durable write of metrics, in both run modes (libs/writes.py)."""
    metrics: SelfMetrics = field(init=False)
    """The process's own metrics (exported for Prometheus, written to datasource analytics_self)."""
    limits: TenantLimits = field(init=False)
    """Per-tenant limits (rate, concurrent queries, streams) of this process (libs/limits.py)."""
    streams: StreamHub | None = None
    """The process's live stream hub (ws bridge and Subscribe), built on first use by `stream_hub`."""

    def __post_init__(self) -> None:
        s = self.settings
        self.bus = make_bus(
            s.pulsar_url, s.pulsar_tenant, s.pulsar_namespace, s.pulsar_auth_token.get_secret_value()
        )
        self.cache = self._make_cache()
        self.metrics = SelfMetrics(cache=self.cache, bus=self.bus)
        self.after_write = AfterWrite(self.cache, self.bus)
        refusals = self.metrics.tenant_refusals
        self.limits = TenantLimits.of(
            s.tenant_rate_limit,
            s.tenant_rate_burst,
            s.tenant_max_concurrent_queries,
            s.tenant_max_streams,
            on_refusal=lambda limit: refusals.labels(limit).inc(),
        )

    def _make_cache(self) -> ResultCache:
        """The result cache: in Ignite, shared by every replica, when IGNITE_HOST is set, else in-process.
        The service's own metrics writes (every few seconds) must not drop every cached SQL answer."""
        s = self.settings
        if not s.ignite_host:
            return TtlCache(max_entries=s.cache_max_entries, unwatched_datasources={SELF_DATASOURCE})
        # Imported only when configured: pyignite is not needed on the embedded path.
        from libs.cache_ignite import ENGINE as IGNITE_ENGINE
        from libs.cache_ignite import IgniteCache, namespace_ttls

        return IgniteCache(
            s.ignite_host,
            s.ignite_port,
            s.ignite_timeout_seconds,
            namespace_ttls(s),
            unwatched_datasources={SELF_DATASOURCE},
            on_unreachable=lambda: self.metrics.engine_connection_failures.labels(IGNITE_ENGINE).inc(),
        )

    @property
    def distributed(self) -> bool:
        """True when the bus is Apache Pulsar: ingest then goes through it to the store."""
        return bool(self.settings.pulsar_url)

    def address_of(self, service: str) -> str:
        """Where to call `service`: this process's own port when it hosts it, else its *_ADDRESS."""
        if service in self.hosted and self.local_port is not None:
            return f"127.0.0.1:{self.local_port}"
        return self.settings.address_of(service)

    def ensure_store(self) -> MetricStore:
        """The process's store (created on first use; opened in `start`)."""
        if self.store is None:
            self.store = MetricStore(store_config(self.settings))
        return self.store

    async def start(self) -> None:
        """Open the store (replaying the WAL), start its background work and, in distributed mode,
        its consumer of ingested batches."""
        if self.store is not None:
            self.store.open()
            await self.store.start()
            self.metrics.storage.attach(self.store.state)
            if self.distributed:
                await self.bus.subscribe(
                    METRICS_TOPICS,
                    "storage",
                    self._store_batch,
                    max_redeliveries=self.settings.bus_max_redeliveries,
                )

    async def _store_batch(self, envelope: Envelope) -> None:
        """Bus handler: store a batch once (redeliveries are skipped), then drop cached answers."""
        event = events_pb2.MetricsBatchEvent.FromString(envelope.payload)
        if not event.batch_id or not event.datasource:
            raise ValueError(f"not an ingest batch on {envelope.topic}: batch_id and datasource are required")
        stored = await self.store.ingest_event(event)
        self.metrics.stream_lag.labels("storage").set(max(0.0, time.time() - envelope.publish_time_ms / 1000))
        if stored:
            spans = [(min(s.timestamps_ms), max(s.timestamps_ms)) for s in event.series if s.timestamps_ms]
            if spans:
                # Published already (by the realtime replica that accepted it): not again.
                await self.after_write(
                    event.tenant, event.datasource, min(a for a, _ in spans), max(b for _, b in spans)
                )

    def stream_hub(self) -> StreamHub:
        """The process's one stream hub (it subscribes on the bus when its first client listens)."""
        if self.streams is None:
            self.streams = StreamHub(
                self.settings, self.bus, self.metrics, self.address_of, distributed=self.distributed
            )
        return self.streams

    async def close(self) -> None:
        """Close the stream hub, flush the store into segments, stop the bus and close the cache."""
        if self.streams is not None:
            await self.streams.close()
        if self.store is not None:
            await self.store.close()
        await self.bus.close()
        self.cache.close()
