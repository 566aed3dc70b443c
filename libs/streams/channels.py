"""Channels: the subscribers of one stream key, the frames built for them (once per channel, the
same bytes for all of them) and the replay window that lets a client resume with `since`."""

from __future__ import annotations

import time
from collections import deque
from typing import Any

from libs.streams.buckets import Bucketer, Labels
from libs.streams.frames import Cursor, Frame, now_ms, series_dict
from libs.streams.spec import StreamSpec
from libs.streams.subscriber import Subscriber
from platformq.analytics.v1 import common_pb2


class FrameSequence:
    """The hub's numbering of data frames, shared by its channels; `epoch` names the hub instance."""

    def __init__(self, epoch: str) -> None:
        self.epoch = epoch
        self.last = 0

    def next(self) -> int:
        """The next sequence number."""
        self.last += 1
        return self.last

    def cursor(self, seq: int | None = None) -> str:
        """The cursor of `seq` (default: the latest frame of the hub)."""
        return str(Cursor(self.epoch, self.last if seq is None else seq))


class Channel:
    """Subscribers sharing one stream key. `publish` numbers a data frame from the hub's sequence,
    keeps it in the replay window and offers it to every subscriber."""

    def __init__(
        self, spec: StreamSpec, sequence: FrameSequence, replay_frames: int, replay_seconds: float
    ) -> None:
        self.spec = spec
        self.key = spec.key
        self.subscribers: dict[Subscriber, None] = {}
        self.sequence = sequence
        self._replay_frames = replay_frames
        self._replay_seconds = replay_seconds
        self.window: deque[Frame] = deque()
        self.horizon = sequence.last
        """Every frame of this channel with a higher seq is still in the window."""
        self.idle_since: float | None = time.monotonic()

    def data(self, **fields: Any) -> dict[str, Any]:
        """The body of a data frame of this channel with `fields` (already in JSON form)."""
        body: dict[str, Any] = {
            "stream_type": self.spec.stream_type,
            "stream_id": self.spec.stream_id,
            "timestamp_ms": str(now_ms()),
            "type": "data",
        }
        body.update(fields)
        return body

    def publish(self, body: dict[str, Any], now: float) -> Frame:
        """Number the frame, keep it for replay and offer it to every subscriber."""
        seq = self.sequence.next()
        body["cursor"] = self.sequence.cursor(seq)
        frame = Frame(body, seq)
        frame.seal()
        if self._replay_frames:
            self.window.append(frame)
            if len(self.window) > self._replay_frames:
                self.horizon = self.window.popleft().seq
        else:
            self.horizon = seq
        for subscriber in self.subscribers:
            subscriber.offer(frame, now)
        return frame

    def replay_after(self, seq: int) -> tuple[bool, list[Frame]]:
        """The window's frames after `seq`, and whether that is everything after it."""
        return seq >= self.horizon, [f for f in self.window if f.seq > seq]

    def snapshot(self) -> dict[str, Any] | None:
        """The current state as one data body for a new subscriber, for streams that have one."""
        return None

    def tick(self, now: float) -> None:
        """Periodic work: drop frames older than the replay window."""
        limit = now - self._replay_seconds
        while self.window and self.window[0].created < limit:
            self.horizon = self.window.popleft().seq

    async def close(self) -> None:
        """Stop the channel's own background work, if any."""


def labels_match(labels: Any, filters: Labels) -> bool:
    """True when every filter label equals the series' (or event's) label."""
    return all(labels.get(key) == value for key, value in filters)


class MetricsChannel(Channel):
    """`metrics/{metric}`: new points of the metric (or closed buckets with a step), filtered by
    datasource and label equality."""

    def __init__(self, spec: StreamSpec, *args: Any) -> None:
        super().__init__(spec, *args)
        self.bucketer = Bucketer(spec.step_ms, spec.aggregation) if spec.step_ms else None
        self._pending: list[dict[str, Any]] = []

    def take(self, series: common_pb2.Series, labels: dict[str, str]) -> bool:
        """Collect a series of a batch (its labels as a dict) for the next frame; False when the
        filters reject it."""
        filters = self.spec.labels
        if filters and not labels_match(labels, filters):
            return False
        if self.bucketer is None:
            points = zip(series.timestamps_ms, series.values, strict=True)
            self._pending.append(series_dict(series.name, labels, "", points))
            return True
        key = tuple(sorted(labels.items()))
        closed = self.bucketer.add(key, series.timestamps_ms, series.values)
        if closed:
            self._pending.append(series_dict(series.name, labels, self.spec.aggregation, closed))
        return bool(closed)

    def flush(self, now: float) -> None:
        """One frame for everything taken from a batch."""
        if self._pending:
            pending, self._pending = self._pending, []
            self.publish(self.data(series=pending), now)

    def tick(self, now: float) -> None:
        super().tick(now)
        if self.bucketer is None:
            return
        expired = self.bucketer.expire(now_ms())
        if expired:
            metric, aggregation = self.spec.stream_id, self.spec.aggregation
            series = [series_dict(metric, dict(key), aggregation, closed) for key, closed in expired.items()]
            self.publish(self.data(series=series), now)


class MetricRoutes:
    """The metrics channels of one (datasource, metric), indexed by their first label filter, so a
    series is offered only to the channels that can want it: the cost per series grows with the
    number of distinct filter keys, not with the number of channels (a thousand clients each
    following one service would otherwise cost a thousand label checks per series)."""

    def __init__(self) -> None:
        self.unfiltered: dict[MetricsChannel, None] = {}
        self.by_label: dict[str, dict[str, dict[MetricsChannel, None]]] = {}

    def add(self, channel: MetricsChannel) -> None:
        """Route series to `channel`."""
        if not channel.spec.labels:
            self.unfiltered[channel] = None
            return
        key, value = channel.spec.labels[0]
        self.by_label.setdefault(key, {}).setdefault(value, {})[channel] = None

    def remove(self, channel: MetricsChannel) -> None:
        """Stop routing to `channel`."""
        self.unfiltered.pop(channel, None)
        if channel.spec.labels:
            key, value = channel.spec.labels[0]
            by_value = self.by_label.get(key, {})
            by_value.get(value, {}).pop(channel, None)
            if not by_value.get(value, True):
                del by_value[value]
            if not by_value:
                self.by_label.pop(key, None)

    def __bool__(self) -> bool:
        return bool(self.unfiltered or self.by_label)

    def candidates(self, labels: dict[str, str]) -> list[MetricsChannel]:
        """The channels whose first filter this series' labels satisfy (they check the rest)."""
        found = list(self.unfiltered)
        for key, by_value in self.by_label.items():
            value = labels.get(key)
            if value is not None and value in by_value:
                found.extend(by_value[value])
        return found


class AnomalyChannel(Channel):
    """`anomalies/{id}`: anomaly events of a simulation id, a datasource, or `all`."""

    def matches(self, labels: Any, datasource: str) -> bool:
        """Whether an anomaly of this series belongs to the stream."""
        stream_id = self.spec.stream_id
        if stream_id != "all" and datasource != stream_id and labels.get("simulation_id") != stream_id:
            return False
        return labels_match(labels, self.spec.labels)


class AlertChannel(Channel):
    """`alerts/{name|all}`: alert state changes."""

    def matches(self, name: str, labels: Any) -> bool:
        """Whether an alert transition belongs to the stream."""
        if self.spec.stream_id not in ("all", name):
            return False
        return labels_match(labels, self.spec.labels)


class DashboardChannel(Channel):
    """`dashboard/{id or type}`: panel updates of the dashboard. A new subscriber first gets the
    latest panels known (from GetDashboard when the channel opened, or the latest update)."""

    def __init__(self, spec: StreamSpec, *args: Any) -> None:
        super().__init__(spec, *args)
        self.dashboard_id = ""
        self.panels: list[dict[str, Any]] | None = None

    def matches(self, dashboard_id: str, dashboard_type: str) -> bool:
        """Whether an update of this dashboard belongs to the stream."""
        stream_id = self.spec.stream_id
        return stream_id in (dashboard_id, dashboard_type) or (
            bool(self.dashboard_id) and dashboard_id == self.dashboard_id
        )

    def update(self, panels: list[dict[str, Any]], now: float) -> None:
        """Publish new panel data."""
        self.panels = panels
        self.publish(self.data(panels=panels), now)

    def snapshot(self) -> dict[str, Any] | None:
        return self.data(panels=self.panels) if self.panels else None
