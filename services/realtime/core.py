"""The realtime core: durable ingest into the store, publication on the bus, and live
subscriptions from the process's stream hub. No gRPC here."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable

from libs.bus import Bus, Serialized
from libs.errors import InvalidArgument, NotBuilt, ResourceExhausted, Unavailable
from libs.selfmetrics import SelfMetrics
from libs.storage import DEFAULT_TENANT, EncodedBatch, MetricStore, SeriesMemo
from libs.streams import StreamHub, StreamSpec, SubscriptionClosed
from libs.streams.subscriber import CLOSE_TOO_SLOW
from libs.writes import AfterWrite, metrics_topic
from platformq.analytics.v1 import events_pb2
from platformq.analytics.v1 import realtime_service_pb2 as pb
from services.realtime import native
from services.realtime.ingest import KnownGoodSeries, ValidatedBatch, validate
from services.realtime.json_body import JsonBodies
from services.realtime.native import ParsedBatch

log = logging.getLogger(__name__)


class RealtimeCore:
    """Accepts metric batches durably, makes them queryable and publishes them."""

    def __init__(
        self,
        store: MetricStore | None,
        bus: Bus,
        after_write: AfterWrite | None = None,
        metrics: SelfMetrics | None = None,
        hub: StreamHub | None = None,
        json_workers: int = 0,
    ) -> None:
        self.store = store
        self.bus = bus
        self.after_write = after_write if after_write is not None else AfterWrite(None, bus)
        self.known_series = KnownGoodSeries()
        # Series ids and record headers of recently written series (this process's; each REST body
        # worker process keeps its own).
        self.series_memo = SeriesMemo()
        self.json_bodies = JsonBodies(json_workers, self.known_series, self.series_memo)
        self.metrics = metrics
        self.hub = hub

    async def ingest(
        self, request: pb.IngestMetricsRequest, tenant: str = DEFAULT_TENANT
    ) -> pb.IngestMetricsResponse:
        """`ingest_serialized` of a request already parsed (IngestMetricsStream's batches)."""
        return await self.ingest_serialized(request.SerializeToString(), lambda: request, tenant)

    async def ingest_serialized(
        self,
        data: bytes,
        message: Callable[[], pb.IngestMetricsRequest],
        tenant: str = DEFAULT_TENANT,
    ) -> pb.IngestMetricsResponse:
        """Validate, encode (the WAL record, series ids), store durably, invalidate cached answers
        over the new data, publish. `data` is the serialised request: the compiled fast path
        (services/realtime/native.py) reads its columnar series, rows or REST body (`json_body`, the
        JSON the gateway passed through) when the batch is in its usual shape, every point
        acceptable; any other request is parsed (`message`) and takes the Python path, which words
        what is wrong with it."""
        now_ms = int(time.time() * 1000)
        parsed = await native.off_the_loop_when_large(native.encode_usual_request, data, now_ms, tenant)
        if self.metrics is not None:
            self.metrics.ingest_parsers.labels("python" if parsed is None else "compiled").inc()
        batch, encoded = parsed if parsed is not None else await self._validate(message(), tenant, now_ms)
        if encoded is None:  # no point accepted
            return self._acknowledged(batch)
        # The WAL record is the bus event: published as its bytes (parsed only where the bus needs
        # the message: Pulsar's schema producers).
        event = Serialized(events_pb2.MetricsBatchEvent, encoded.payload)
        if self.store is None:
            # Distributed: acknowledged once Pulsar has persisted the batch; the store's consumer
            # writes it (idempotently by batch id) and it answers queries from then on.
            await self.bus.publish(metrics_topic(batch.datasource), event, key=batch.datasource)
            return self._acknowledged(batch)
        await self.store.ingest_encoded(encoded)
        ts = encoded.columns.ts
        await self.after_write(tenant, batch.datasource, int(ts.min()), int(ts.max()), publish=event)
        return self._acknowledged(batch)

    async def _validate(self, request: pb.IngestMetricsRequest, tenant: str, now_ms: int) -> ParsedBatch:
        """The Python path: a REST body (`json_body`) by JsonBodies, a gRPC batch by `validate`."""
        if request.HasField("json_body"):
            if request.datasource or request.points or request.series:
                raise InvalidArgument(
                    "give the batch either in json_body or in its fields, not both", "json_body"
                )
            return await self.json_bodies.validate(request.json_body.data, tenant)
        batch = validate(request, now_ms, known=self.known_series)
        return batch, EncodedBatch.encode(tenant, batch.datasource, batch.series, self.series_memo)

    def close(self) -> None:
        """Stop the JSON body workers."""
        self.json_bodies.close()

    def _acknowledged(self, batch: ValidatedBatch) -> pb.IngestMetricsResponse:
        """The answer to an acknowledged batch, counted by datasource (the service's own metrics
        are counted under datasource analytics_self, apart from users' points)."""
        if self.metrics is not None:
            self.metrics.ingest_points.labels(batch.datasource, "accepted").inc(batch.accepted)
            self.metrics.ingest_points.labels(batch.datasource, "rejected").inc(batch.rejected)
            self.metrics.ingest_batches.labels(batch.datasource).inc()
        return pb.IngestMetricsResponse(accepted=batch.accepted, rejected=batch.rejected, errors=batch.errors)

    async def subscribe(self, spec: StreamSpec) -> AsyncIterator[pb.SubscribeResponse]:
        """Follow one live stream from the process's hub: the hello frame, then frames (heartbeats
        when idle) until the caller stops iterating. A close by the server (client too slow, server
        shutting down) ends with its closing frame, then the error saying why."""
        if self.hub is None:
            raise NotBuilt("this process has no stream hub")
        subscriber = await self.hub.subscribe(spec)
        try:
            while True:
                frame = await subscriber.next()
                yield frame.message()
                subscriber.count_sent()
                if frame.close_code == CLOSE_TOO_SLOW:
                    raise ResourceExhausted(subscriber.close_reason)
                if frame.close_code:
                    raise Unavailable(subscriber.close_reason)
        except SubscriptionClosed:
            return
        finally:
            self.hub.unsubscribe(subscriber)
