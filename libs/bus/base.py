"""The bus interface, shaped after Apache Pulsar: named topics, keyed ordering, shared or failover
subscriptions, at-least-once delivery with acknowledgement, redelivery and a dead-letter topic."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal, Protocol

from google.protobuf.message import Message

SubscriptionMode = Literal["shared", "failover"]


@dataclass(frozen=True)
class Envelope:
    """One delivered message: its topic, ordering key, protobuf payload bytes and delivery count."""

    topic: str
    key: str
    payload: bytes
    message_type: str
    publish_time_ms: int
    redelivery_count: int = 0

    def decode(self, message_class: type[Message]) -> Message:
        """Parse the payload as `message_class`."""
        return message_class.FromString(self.payload)


@dataclass(frozen=True)
class Serialized:
    """A protobuf message of type `kind` given as its bytes (a WAL record that is also the bus
    event): a bus that carries bytes (in process) publishes them as they are, one that needs the
    message (Pulsar's schema producers) parses them once."""

    kind: type[Message]
    payload: bytes

    def message(self) -> Message:
        """The parsed message."""
        return self.kind.FromString(self.payload)


# A handler that returns normally acknowledges the message; one that raises asks for redelivery.
Handler = Callable[[Envelope], Awaitable[None]]


class Bus(Protocol):
    """What services need of a bus; `InProcessBus` and the Pulsar bus both provide it."""

    async def publish(self, topic: str, message: Message | Serialized, key: str = "") -> None:
        """Publish a protobuf message (or its bytes) on `topic`; messages with the same key keep
        their order."""

    async def subscribe(
        self,
        pattern: str,
        subscription: str,
        handler: Handler,
        *,
        mode: SubscriptionMode = "shared",
        max_redeliveries: int = 3,
        max_backlog_bytes: int = 0,
        ephemeral: bool = False,
    ) -> None:
        """Deliver messages of every topic matching `pattern` (`*` matches one topic segment or
        the rest) to `handler`; after `max_redeliveries` failures a message goes to
        `<topic>.dlq`, which only patterns ending in `.dlq` receive. `max_backlog_bytes` (0: no
        bound) caps what waits in memory for a slow consumer: above it the oldest waiting messages
        are evicted and counted, like Pulsar's consumer_backlog_eviction quota (Pulsar itself keeps
        its backlog on disk and ignores it). An `ephemeral` subscription (one process's live
        fan-out, under a name unique to the process) starts at the newest message rather than the
        oldest retained one and is deleted from the broker on close."""

    stats: dict[str, int]
    """Counts of bus events in this process: published, delivered, redelivered, dead_lettered
    (and evicted, in-process only)."""

    def backlog_bytes(self) -> dict[str, int]:
        """Bytes waiting in this process for each subscription (empty where the broker keeps them)."""

    async def close(self) -> None:
        """Stop delivering and release resources."""
