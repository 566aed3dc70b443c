"""One subscriber's bounded queue. The hub only calls `offer` (never blocks, never awaits); the
subscriber's own writer task (WebSocket or gRPC) drains it with `next`. When the queue is full new
frames are dropped and counted; the client then gets a `lagged` frame where the hole is, and past
a bound (dropped in a row, or how far behind it is) it is closed with a closing frame."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass

from prometheus_client import Counter, Histogram

from libs.streams.frames import Frame, closing_frame, lagged_frame
from libs.streams.spec import StreamSpec

# WebSocket close codes (RFC 6455 and the 4000-4999 range left to applications).
CLOSE_GOING_AWAY = 1001
CLOSE_UNSUPPORTED = 1003
CLOSE_TOO_SLOW = 4008
CLOSE_BAD_REQUEST = 4400
CLOSE_NOT_FOUND = 4404
CLOSE_UNAVAILABLE = 4503


@dataclass(frozen=True)
class Limits:
    """How much slowness a subscriber is allowed (WS_CLIENT_* settings)."""

    queue_frames: int = 256
    max_dropped: int = 1000
    max_lag_seconds: float = 30.0


class SubscriptionClosed(Exception):
    """The subscription has ended: its closing frame (if any) was already handed out."""


class Subscriber:
    """A bounded queue of frames for one client of one channel."""

    def __init__(
        self,
        spec: StreamSpec,
        limits: Limits,
        dropped_counter: Counter,
        sent_counter: Counter,
        closed_counter: Counter,
        send_delay: Histogram,
    ) -> None:
        self.spec = spec
        self.limits = limits
        # Entries are (enqueued at, frame): the age of the oldest says how far behind the client is.
        self._queue: deque[tuple[float, Frame]] = deque()
        self._control: deque[Frame] = deque()
        self.dropped = 0
        """Frames dropped since the last one delivered (the current hole)."""
        self.dropped_total = 0
        self._closing: Frame | None = None
        self._ended = False
        self._waiter: asyncio.Future[None] | None = None
        self._dropped_counter = dropped_counter.labels(spec.stream_type)
        self._sent_counter = sent_counter.labels(spec.stream_type)
        self._send_delay = send_delay.labels(spec.stream_type)
        self._taken_queued_at: float | None = None
        self._closed_counter = closed_counter
        self.close_reason = ""
        self.last_sent = time.monotonic()
        """When the writer last took a frame: the hub sends a heartbeat after a quiet period."""

    @property
    def closed(self) -> bool:
        """True once the subscription is closing or has ended."""
        return self._ended or self._closing is not None

    def preload(self, frames: list[Frame]) -> None:
        """Queue the frames a new subscriber starts with (hello, gap, replay, snapshot), unbounded:
        they are bounded by the replay window."""
        now = time.monotonic()
        self._queue.extend((now, frame) for frame in frames)

    def offer(self, frame: Frame, now: float) -> None:
        """Queue a live frame, or drop it (counted) when the queue is full; close when too slow."""
        if self.closed:
            return
        queue = self._queue
        if len(queue) >= self.limits.queue_frames:
            self.dropped += 1
            self.dropped_total += 1
            self._dropped_counter.inc()
            behind = now - queue[0][0]
            if self.dropped >= self.limits.max_dropped:
                self.close(CLOSE_TOO_SLOW, f"too slow: {self.dropped} frames dropped in a row", "lagged")
            elif behind > self.limits.max_lag_seconds:
                self.close(CLOSE_TOO_SLOW, f"too slow: {behind:.0f} s behind the stream", "lagged")
            return
        if self.dropped:
            # The client lost frames here: say so at the hole, before the next frame it gets.
            queue.append((now, lagged_frame(self.spec.stream_type, self.spec.stream_id, self.dropped)))
            self.dropped = 0
        queue.append((now, frame))
        self._wake()

    def push_control(self, frame: Frame) -> None:
        """Send a control frame (a heartbeat answering a ping) ahead of queued data."""
        if not self.closed:
            self._control.append(frame)
            self._wake()

    def close(self, code: int, reason: str, kind: str) -> None:
        """Close with a closing frame saying why (sent after the frame being written, if any);
        `kind` labels analytics_stream_clients_closed."""
        if self.closed:
            return
        self._closing = closing_frame(self.spec.stream_type, self.spec.stream_id, code, reason)
        self.close_reason = reason
        self._closed_counter.labels(kind).inc()
        self._queue.clear()
        self._wake()

    def end(self) -> None:
        """End without a closing frame (the client went away)."""
        self._ended = True
        self._queue.clear()
        self._wake()

    def count_sent(self) -> None:
        """The writer sent the frame it took last (analytics_stream_frames_sent, and for a queued
        frame the time it waited from queue to socket: analytics_stream_send_delay_seconds)."""
        self._sent_counter.inc()
        if self._taken_queued_at is not None:
            self._send_delay.observe(time.monotonic() - self._taken_queued_at)
            self._taken_queued_at = None

    @property
    def idle(self) -> bool:
        """Nothing waits to be sent."""
        return not (self._queue or self._control or self.dropped)

    async def next(self) -> Frame:
        """The next frame to send (the hub adds heartbeats while the stream is quiet). After the
        closing frame has been handed out, raises SubscriptionClosed."""
        # No timer per wait: one per frame would cost more than the rest of the fan-out.
        while True:
            if self._ended:
                raise SubscriptionClosed(self.close_reason)
            if self._closing is not None:
                self._ended = True
                return self._closing
            frame = self._take()
            if frame is not None:
                self.last_sent = time.monotonic()
                return frame
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    def _take(self) -> Frame | None:
        if self._control:
            return self._control.popleft()
        if self._queue:
            self._taken_queued_at, frame = self._queue.popleft()
            return frame
        if self.dropped:
            # Caught up after losing frames and nothing newer came: tell it now.
            dropped, self.dropped = self.dropped, 0
            return lagged_frame(self.spec.stream_type, self.spec.stream_id, dropped)
        return None

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
