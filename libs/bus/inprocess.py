"""The in-process bus of mode all: asyncio queues with the semantics of the Bus interface; a
subscription may bound what waits for it in bytes (the oldest waiting messages are evicted)."""

from __future__ import annotations

import asyncio
import fnmatch
import logging
import time
import zlib
from dataclasses import dataclass, field

from google.protobuf.message import Message

from libs.bus.base import Envelope, Handler, Serialized, SubscriptionMode

log = logging.getLogger(__name__)


@dataclass
class _Consumer:
    handler: Handler
    queue: asyncio.Queue[Envelope] = field(default_factory=asyncio.Queue)
    task: asyncio.Task[None] | None = None
    backlog_bytes: int = 0


@dataclass
class _Subscription:
    pattern: str
    mode: SubscriptionMode
    max_redeliveries: int
    max_backlog_bytes: int = 0
    consumers: list[_Consumer] = field(default_factory=list)

    def consumer_for(self, key: str) -> _Consumer:
        # Shared: a key always goes to the same consumer, so order holds per key.
        # Failover: the first consumer takes everything while it lives.
        if self.mode == "failover":
            return self.consumers[0]
        return self.consumers[zlib.crc32(key.encode()) % len(self.consumers)]


DLQ_SUFFIX = ".dlq"


def topic_matches(topic: str, pattern: str) -> bool:
    """fnmatch-style `*`, except that dead-letter topics match only patterns naming them, so a
    wildcard consumer never receives the messages it gave up on."""
    if topic.endswith(DLQ_SUFFIX) and not pattern.endswith(DLQ_SUFFIX):
        return False
    return fnmatch.fnmatchcase(topic, pattern)


class InProcessBus:
    """Topics and subscriptions inside one process; at-least-once with redelivery and a DLQ."""

    def __init__(self) -> None:
        self._subscriptions: dict[str, _Subscription] = {}
        self.stats = {"published": 0, "delivered": 0, "redelivered": 0, "dead_lettered": 0, "evicted": 0}

    async def publish(self, topic: str, message: Message | Serialized, key: str = "") -> None:
        matching = [s for s in self._subscriptions.values() if topic_matches(topic, s.pattern)]
        self.stats["published"] += 1
        if not matching:
            return
        if isinstance(message, Serialized):
            payload, kind = message.payload, message.kind.DESCRIPTOR.full_name
        else:
            payload, kind = message.SerializeToString(), message.DESCRIPTOR.full_name
        envelope = Envelope(topic, key, payload, kind, int(time.time() * 1000))
        for subscription in matching:
            self._enqueue(subscription, subscription.consumer_for(key), envelope)

    def _enqueue(self, sub: _Subscription, consumer: _Consumer, envelope: Envelope) -> None:
        """Queue for a consumer; above the subscription's byte bound the oldest waiting go first."""
        consumer.queue.put_nowait(envelope)
        consumer.backlog_bytes += len(envelope.payload)
        while (
            sub.max_backlog_bytes
            and consumer.backlog_bytes > sub.max_backlog_bytes
            and consumer.queue.qsize() > 1
        ):
            oldest = consumer.queue.get_nowait()
            consumer.backlog_bytes -= len(oldest.payload)
            self.stats["evicted"] += 1
            log.warning(
                "slow consumer: oldest message evicted from its backlog",
                extra={"topic": oldest.topic, "backlog_bytes": consumer.backlog_bytes},
            )

    async def subscribe(
        self,
        pattern: str,
        subscription: str,
        handler: Handler,
        *,
        mode: SubscriptionMode = "shared",
        max_redeliveries: int = 3,
        max_backlog_bytes: int = 0,
        ephemeral: bool = False,  # in process every subscription starts now and ends with the bus
    ) -> None:
        sub = self._subscriptions.setdefault(
            subscription, _Subscription(pattern, mode, max_redeliveries, max_backlog_bytes)
        )
        consumer = _Consumer(handler)
        consumer.task = asyncio.create_task(self._consume(sub, consumer), name=f"bus:{subscription}")
        sub.consumers.append(consumer)

    async def _consume(self, sub: _Subscription, consumer: _Consumer) -> None:
        while True:
            envelope = await consumer.queue.get()
            consumer.backlog_bytes -= len(envelope.payload)
            for attempt in range(sub.max_redeliveries + 1):
                delivery = Envelope(**{**envelope.__dict__, "redelivery_count": attempt})
                try:
                    await consumer.handler(delivery)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    self.stats["redelivered"] += 1
                    log.warning(
                        "handler failed; redelivering",
                        exc_info=True,
                        extra={"topic": envelope.topic, "attempt": attempt + 1},
                    )
                    continue
                self.stats["delivered"] += 1
                break
            else:
                self.stats["dead_lettered"] += 1
                if envelope.topic.endswith(DLQ_SUFFIX):
                    log.error(
                        "message dropped: its dead-letter consumer failed too",
                        extra={"topic": envelope.topic},
                    )
                    continue
                dlq = envelope.topic + DLQ_SUFFIX
                log.error("message dead-lettered", extra={"topic": envelope.topic, "dlq": dlq})
                for other in self._subscriptions.values():
                    if topic_matches(dlq, other.pattern):
                        self._enqueue(
                            other,
                            other.consumer_for(envelope.key),
                            Envelope(**{**envelope.__dict__, "topic": dlq}),
                        )

    def backlog_bytes(self) -> dict[str, int]:
        """Payload bytes waiting for each subscription's consumers now."""
        return {
            name: sum(c.backlog_bytes for c in sub.consumers)
            for name, sub in list(self._subscriptions.items())
        }

    async def close(self) -> None:
        tasks = [c.task for s in self._subscriptions.values() for c in s.consumers if c.task]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._subscriptions.clear()
