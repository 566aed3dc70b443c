"""The stream hub: one per process. It follows the bus (`simulation.metrics.*`, `anomalies.*`,
`dashboard.updates.*`, `alerts.*`) on subscriptions of its own, groups subscribers into channels
by stream key, builds each frame once per channel and offers it to every subscriber's bounded
queue without ever waiting on one. Transports (the ws bridge, the Subscribe RPC) drain the queues."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import secrets
import time
from collections.abc import Callable, Iterator
from typing import Any

from libs.bus import Bus, Envelope
from libs.config import Settings
from libs.errors import NotFound, Unavailable
from libs.selfmetrics import SelfMetrics
from libs.storage import DEFAULT_TENANT
from libs.streams.analytics import AnalyticsChannel
from libs.streams.channels import (
    AlertChannel,
    AnomalyChannel,
    Channel,
    DashboardChannel,
    FrameSequence,
    MetricRoutes,
    MetricsChannel,
)
from libs.streams.frames import Cursor, Frame, control, heartbeat_frame, message_dict
from libs.streams.peers import StreamPeers
from libs.streams.spec import StreamSpec
from libs.streams.subscriber import CLOSE_GOING_AWAY, Limits, Subscriber
from libs.writes import METRICS_TOPICS
from platformq.analytics.v1 import events_pb2

log = logging.getLogger(__name__)

TICK_SECONDS = 0.5
ANALYTICS_INTERVAL_SECONDS = 1.0
# What a stalled hub may hold in the in-process bus before the oldest batches are skipped.
MAX_BACKLOG_BYTES = 64 * 1024 * 1024
TOPICS = {
    "metrics": METRICS_TOPICS,
    "anomalies": "anomalies.*",
    "dashboards": "dashboard.updates.*",
    "alerts": "alerts.*",
}


def _tenant_of(event: Any) -> str:
    # An event without a tenant was published before tenants existed: the default tenant's.
    return event.tenant or DEFAULT_TENANT


class StreamHub:
    """Live streams of one process for any number of subscribers."""

    def __init__(
        self,
        settings: Settings,
        bus: Bus,
        metrics: SelfMetrics,
        address_of: Callable[[str], str],
        *,
        distributed: bool = False,
    ) -> None:
        self.settings = settings
        self.bus = bus
        self.metrics = metrics
        self.epoch = secrets.token_hex(6)
        """This hub instance: cursors of another instance (or of this process before a restart) differ."""
        self.sequence = FrameSequence(self.epoch)
        self.limits = Limits(
            settings.ws_client_queue_frames,
            settings.ws_client_max_dropped,
            settings.ws_client_max_lag_seconds,
        )
        self.peers = StreamPeers(address_of, settings.request_timeout_seconds)
        self._distributed = distributed
        self.channels: dict[tuple, Channel] = {}
        self._opening: dict[tuple, asyncio.Task[Channel]] = {}
        # Indexes the bus handlers use: only channels that can want an event are looked at. Keyed
        # by (tenant, datasource, metric): a channel sees its own tenant's batches only.
        self._by_metric: dict[tuple[str, str, str], MetricRoutes] = {}
        self._analytics: dict[tuple[str, str, str], dict[AnalyticsChannel, None]] = {}
        self._anomalies: dict[AnomalyChannel, None] = {}
        self._dashboards: dict[DashboardChannel, None] = {}
        self._alerts: dict[AlertChannel, None] = {}
        self._started: asyncio.Task[None] | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._closed = False

    # Subscribing

    async def subscribe(self, spec: StreamSpec) -> Subscriber:
        """A subscriber of `spec`'s channel whose queue starts with the hello frame, then (with
        `since`) a gap notice if needed and the frames it missed, then (for dashboard and analytics
        streams without a complete replay) the current state. NotFound for an unknown stream id,
        InvalidArgument for a query the query-router refuses."""
        await self._start()
        channel = await self._channel_for(spec)
        while self.channels.get(spec.key) is not channel:  # dropped as idle before we got to it
            channel = await self._channel_for(spec)
        # From here to the end nothing awaits: no frame can slip between the replay and live ones.
        subscriber = Subscriber(
            spec,
            self.limits,
            self.metrics.stream_frames_dropped,
            self.metrics.stream_frames_sent,
            self.metrics.stream_clients_closed,
            self.metrics.stream_send_delay,
        )
        frames = [self._hello(spec)]
        complete = False
        if spec.since is not None:
            complete, replay = self._replay(channel, spec, spec.since)
            frames.extend(replay)
        if not complete:
            snapshot = channel.snapshot()
            if snapshot is not None:
                snapshot["cursor"] = self.sequence.cursor()
                frames.append(Frame(snapshot))
        subscriber.preload(frames)
        channel.subscribers[subscriber] = None
        channel.idle_since = None
        self.metrics.stream_subscribers.labels(spec.stream_type).inc()
        return subscriber

    def unsubscribe(self, subscriber: Subscriber) -> None:
        """Remove a subscriber; its channel stays for the replay window so the client can resume."""
        subscriber.end()
        channel = self.channels.get(subscriber.spec.key)
        if channel is None or channel.subscribers.pop(subscriber, False) is False:
            return
        self.metrics.stream_subscribers.labels(subscriber.spec.stream_type).dec()
        if not channel.subscribers:
            channel.idle_since = time.monotonic()

    def _hello(self, spec: StreamSpec) -> Frame:
        return Frame(
            control(
                "hello",
                spec.stream_type,
                spec.stream_id,
                cursor=self.sequence.cursor(),
                request=message_dict(spec.request()),
                heartbeat_seconds=self.settings.ws_heartbeat_seconds,
            )
        )

    def _replay(self, channel: Channel, spec: StreamSpec, since: Cursor) -> tuple[bool, list[Frame]]:
        """The frames after `since` and a gap frame first when some may be missing."""
        if since.epoch != self.epoch or since.seq > self.sequence.last:
            reason = "the cursor comes from another server instance or from before a restart"
            complete, frames = False, list(channel.window)
        else:
            complete, frames = channel.replay_after(since.seq)
            reason = "the cursor is older than the replay window"
        if complete:
            return True, frames
        gap = Frame(control("gap", spec.stream_type, spec.stream_id, reason=reason))
        return False, [gap, *frames]

    async def _channel_for(self, spec: StreamSpec) -> Channel:
        key = spec.key
        channel = self.channels.get(key)
        if channel is not None:
            return channel
        # One opening per key, however many clients ask for it at once.
        task = self._opening.get(key)
        if task is None:
            task = asyncio.ensure_future(self._open(spec))
            self._opening[key] = task
            task.add_done_callback(lambda _: self._opening.pop(key, None))
        return await asyncio.shield(task)

    async def _open(self, spec: StreamSpec) -> Channel:
        """Check that the stream exists, build its channel and index it."""
        args = (spec, self.sequence, self.settings.stream_replay_frames, self.settings.stream_replay_seconds)
        channel: Channel
        if spec.stream_type == "metrics":
            if await self.peers.metric_exists(spec.datasource, spec.stream_id, spec.tenant) is False:
                raise NotFound(
                    f"metric {spec.stream_id!r} is not in datasource {spec.datasource!r} (nothing ingested yet)",
                    "stream_id",
                )
            channel = MetricsChannel(*args)
            self._by_metric.setdefault((spec.tenant, spec.datasource, spec.stream_id), MetricRoutes()).add(
                channel
            )
        elif spec.stream_type == "analytics":
            channel = AnalyticsChannel(
                *args, peers=self.peers, interval=ANALYTICS_INTERVAL_SECONDS, confirm=self._distributed
            )
            await channel.open()
            for metric in channel.metrics:
                self._analytics.setdefault((spec.tenant, channel.datasource, metric), {})[channel] = None
            channel.mark_dirty()  # a batch may have arrived while the first answer was computed
        elif spec.stream_type == "dashboard":
            channel = DashboardChannel(*args)
            found = await self.peers.dashboard(spec.stream_id, spec.tenant)
            if found is not None:
                channel.dashboard_id = found.dashboard.id
                channel.panels = [message_dict(p) for p in found.panels] or None
            self._dashboards[channel] = None
        elif spec.stream_type == "anomalies":
            channel = AnomalyChannel(*args)
            self._anomalies[channel] = None
        else:
            channel = AlertChannel(*args)
            self._alerts[channel] = None
        self.channels[spec.key] = channel
        return channel

    async def _drop(self, channel: Channel) -> None:
        self.channels.pop(channel.key, None)
        indexes: list[dict[Any, None]] = [self._anomalies, self._dashboards, self._alerts]
        indexes.extend(self._analytics.values())
        for index in indexes:
            index.pop(channel, None)
        if isinstance(channel, MetricsChannel):
            for routes in self._by_metric.values():
                routes.remove(channel)
        for by_metric in (self._by_metric, self._analytics):
            for key in [k for k, v in by_metric.items() if not v]:
                del by_metric[key]
        await channel.close()

    # Following the bus

    async def _start(self) -> None:
        """Subscribe on the bus when the first client listens (once)."""
        if self._closed:
            raise Unavailable("the server is shutting down; reconnect")
        if self._started is None:
            # Started by the first subscriber's call but outliving it: in a context of its own, so
            # that caller's identity (libs/identity.py) is not what the bus consumers run as.
            self._started = asyncio.get_running_loop().create_task(
                self._subscribe_bus(), context=contextvars.Context()
            )
        await asyncio.shield(self._started)

    async def _subscribe_bus(self) -> None:
        # Every hub must see every message: subscriptions named for this instance alone,
        # ephemeral (Pulsar: from the newest message on, deleted from the broker on close).
        handlers = {
            "metrics": self._on_metrics,
            "anomalies": self._on_anomaly,
            "dashboards": self._on_dashboard,
            "alerts": self._on_alert,
        }
        for name, pattern in TOPICS.items():
            await self.bus.subscribe(
                pattern,
                f"streams-{self.epoch}-{name}",
                handlers[name],
                mode="failover",
                max_redeliveries=0,
                max_backlog_bytes=MAX_BACKLOG_BYTES,
                ephemeral=True,
            )
        self._ticker = asyncio.create_task(self._tick(), name="streams-ticker")

    async def _on_metrics(self, envelope: Envelope) -> None:
        if self._closed or not (self._by_metric or self._analytics):
            return
        with self._guard(envelope):
            event = events_pb2.MetricsBatchEvent.FromString(envelope.payload)
            now = time.monotonic()
            touched: dict[MetricsChannel, None] = {}
            tenant = _tenant_of(event)
            for series in event.series:
                key = (tenant, event.datasource, series.name)
                for analytics in self._analytics.get(key, ()):
                    analytics.mark_dirty()
                routes = self._by_metric.get(key)
                if routes:
                    labels = dict(series.labels)
                    for channel in routes.candidates(labels):
                        if channel.take(series, labels):
                            touched[channel] = None
            for channel in touched:
                channel.flush(now)

    async def _on_anomaly(self, envelope: Envelope) -> None:
        if self._closed or not self._anomalies:
            return
        with self._guard(envelope):
            event = events_pb2.AnomalyEvent.FromString(envelope.payload)
            body: dict[str, Any] | None = None
            now = time.monotonic()
            for channel in list(self._anomalies):
                if channel.spec.tenant == _tenant_of(event) and channel.matches(
                    event.labels, event.datasource
                ):
                    body = body or message_dict(event)
                    channel.publish(channel.data(anomaly=body), now)

    async def _on_dashboard(self, envelope: Envelope) -> None:
        if self._closed or not self._dashboards:
            return
        with self._guard(envelope):
            event = events_pb2.DashboardUpdateEvent.FromString(envelope.payload)
            panels: list[dict[str, Any]] | None = None
            now = time.monotonic()
            for channel in list(self._dashboards):
                if channel.spec.tenant == _tenant_of(event) and channel.matches(
                    event.dashboard_id, event.dashboard_type
                ):
                    panels = panels or [message_dict(p) for p in event.panels]
                    channel.update(panels, now)

    async def _on_alert(self, envelope: Envelope) -> None:
        if self._closed or not self._alerts:
            return
        with self._guard(envelope):
            event = events_pb2.AlertEvent.FromString(envelope.payload)
            body: dict[str, Any] | None = None
            now = time.monotonic()
            for channel in list(self._alerts):
                if channel.spec.tenant == _tenant_of(event) and channel.matches(event.name, event.labels):
                    body = body or message_dict(event)
                    channel.publish(channel.data(alert=body), now)

    @contextlib.contextmanager
    def _guard(self, envelope: Envelope) -> Iterator[None]:
        # A message the hub cannot turn into frames is logged and skipped: redelivering it would
        # fail the same way, and a live stream must keep flowing.
        try:
            yield
        except Exception:
            log.exception("stream hub skipped a message", extra={"topic": envelope.topic})

    async def _tick(self) -> None:
        """Close buckets by wall time, trim replay windows, send heartbeats to quiet subscribers,
        drop channels idle past the replay window."""
        heartbeat = self.settings.ws_heartbeat_seconds
        period = min(TICK_SECONDS, heartbeat / 2)
        while True:
            await asyncio.sleep(period)  # a period, not a synchronisation
            now = time.monotonic()
            for channel in list(self.channels.values()):
                try:
                    channel.tick(now)
                except Exception:
                    log.exception("stream channel tick failed", extra={"stream_id": channel.spec.stream_id})
                beat = None
                for subscriber in channel.subscribers:
                    if subscriber.idle and now - subscriber.last_sent >= heartbeat:
                        beat = beat or heartbeat_frame(channel.spec.stream_type, channel.spec.stream_id)
                        subscriber.push_control(beat)
                idle = channel.idle_since
                if idle is not None and now - idle >= self.settings.stream_replay_seconds:
                    await self._drop(channel)

    async def close(self) -> None:
        """Close every subscriber (a closing frame: the server is going away) and stop."""
        self._closed = True
        for channel in list(self.channels.values()):
            for subscriber in list(channel.subscribers):
                subscriber.close(
                    CLOSE_GOING_AWAY, "the server is shutting down; reconnect with since", "shutdown"
                )
        if self._ticker is not None:
            self._ticker.cancel()
            await asyncio.gather(self._ticker, return_exceptions=True)
        for channel in list(self.channels.values()):
            await channel.close()
        await self.peers.close()
