"""The realtime core: durable ingest into the store and publication on the bus. No gRPC here."""

from __future__ import annotations

import logging

from libs.bus import Bus
from libs.cache import TtlCache
from libs.errors import NotBuilt
from libs.storage.store import DEFAULT_TENANT, MetricStore, build_event
from platformq.analytics.v1 import realtime_service_pb2 as pb
from services.realtime.ingest import validate

log = logging.getLogger(__name__)


class RealtimeCore:
    """Accepts metric batches durably, makes them queryable and publishes them."""

    def __init__(self, store: MetricStore | None, bus: Bus, cache: TtlCache | None = None) -> None:
        self.store = store
        self.bus = bus
        self.cache = cache

    async def ingest(
        self, request: pb.IngestMetricsRequest, tenant: str = DEFAULT_TENANT
    ) -> pb.IngestMetricsResponse:
        """Validate, store durably, invalidate cached answers over the new data, publish."""
        batch = validate(request)
        if self.store is None:
            # Distributed: acknowledged once Pulsar has persisted the batch; the store's consumer
            # writes it (idempotently by batch id) and it answers queries from then on.
            if batch.series:  # validate() never keeps an empty series
                event = build_event(tenant, batch.datasource, batch.series)
                await self.bus.publish(f"simulation.metrics.{event.source}", event, key=batch.datasource)
            return pb.IngestMetricsResponse(
                accepted=batch.accepted, rejected=batch.rejected, errors=batch.errors
            )
        event = await self.store.ingest(tenant, batch.datasource, batch.series)
        if event is not None:
            if self.cache is not None:
                lo = min(int(s.ts.min()) for s in batch.series)
                hi = max(int(s.ts.max()) for s in batch.series)
                self.cache.invalidate(tenant, batch.datasource, lo, hi)
            await self.bus.publish(f"simulation.metrics.{event.source}", event, key=batch.datasource)
        return pb.IngestMetricsResponse(accepted=batch.accepted, rejected=batch.rejected, errors=batch.errors)

    async def subscribe(self, stream_type: str, stream_id: str) -> object:
        """Follow one live stream."""
        raise NotBuilt("live subscriptions are not built yet: they arrive with the streaming issue")
