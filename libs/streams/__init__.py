"""Live streams: one hub per process fans bus events out to WebSocket and gRPC subscribers.

`hub.StreamHub` (channels, bus subscriptions), `spec` (what a subscriber asks for), `subscriber`
(bounded per-client queues), `channels` and `analytics` (what each stream type sends), `buckets`
(live step aggregation), `frames` (JSON frames and cursors), `peers` (checks and queries over gRPC).
"""

from libs.streams.frames import Cursor, Frame
from libs.streams.hub import StreamHub
from libs.streams.spec import STREAM_TYPES, StreamSpec, parse_subscription, request_from_params
from libs.streams.subscriber import Subscriber, SubscriptionClosed

__all__ = [
    "STREAM_TYPES",
    "Cursor",
    "Frame",
    "StreamHub",
    "StreamSpec",
    "Subscriber",
    "SubscriptionClosed",
    "parse_subscription",
    "request_from_params",
]
