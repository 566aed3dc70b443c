"""The bus of distributed mode on Apache Pulsar, with the semantics of `InProcessBus`.

Our topic `alerts.x` is `persistent://<tenant>/<namespace>/alerts.x`. A subscription pattern is a
regex subscription: `*` becomes `.*`, and dead-letter topics match only patterns ending in `.dlq`.

- publish: one cached producer per topic with key-based batching (a batch holds one key, so a
  Key_Shared dispatch keeps per-key order); the key is the partition key and the protobuf type name
  the `message_type` property. It returns once the broker acknowledged the message, that is after
  BookKeeper persisted it.
- subscribe: mode "shared" is a Key_Shared subscription (each key is pinned to one consumer at a
  time, so consumers share the work and per-key order holds), "failover" a Failover one. Each
  consumer is an asyncio task taking one message at a time: it runs the handler, acknowledges the
  message when it returns and negatively acknowledges it when it raises (redelivered after
  `nack_delay_ms`; meanwhile later messages of the key may go first, as in Pulsar).
- dead letters: a message whose handler still fails after `max_redeliveries` redeliveries is
  published to `<topic>.dlq` (awaited), then acknowledged; an ERROR is logged and
  `stats["dead_lettered"]` counted. The bus does this itself rather than through Pulsar's
  DeadLetterPolicy, which names one dead-letter topic per consumer (not per topic) and never fires
  on Failover subscriptions, where the broker does not count redeliveries.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Callable
from typing import Any

import _pulsar
import pulsar
from google.protobuf.message import Message
from pulsar.exceptions import PulsarException

from libs.bus.base import Envelope, Handler, SubscriptionMode
from libs.bus.inprocess import DLQ_SUFFIX

log = logging.getLogger(__name__)

TYPE_PROPERTY = "message_type"
MAX_IN_FLIGHT = 1000  # the producers' pending-message queue size
DEFAULT_CLIENT_LOGGER = pulsar.ConsoleLogger(pulsar.LoggerLevel.Warn)
_CONSUMER_TYPES = {"shared": pulsar.ConsumerType.KeyShared, "failover": pulsar.ConsumerType.Failover}


def topic_regex(namespace: str, pattern: str) -> str:
    """The regex over `<tenant>/<namespace>/<topic>` names that our glob `pattern` stands for (the
    client matches persistent topics' names without their `persistent://` scheme)."""
    body = ".*".join(re.escape(part) for part in pattern.split("*"))
    no_dlq = "" if pattern.endswith(DLQ_SUFFIX) else f"(?!.*{re.escape(DLQ_SUFFIX)}$)"
    return f"{namespace}{no_dlq}{body}"


def _settle(future: asyncio.Future[Any], result: _pulsar.Result, value: Any, what: str) -> None:
    if future.done():  # the waiter was cancelled
        return
    if result == pulsar.Result.Ok:
        future.set_result(value)
    else:
        future.set_exception(PulsarException(f"{what}: {result}"))


def _bridge(future: asyncio.Future[Any], what: str) -> Callable[..., None]:
    """A client callback (run on a client thread) that settles `future` on its event loop."""
    loop = future.get_loop()

    def callback(result: _pulsar.Result, value: Any = None) -> None:
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits any more
            loop.call_soon_threadsafe(_settle, future, result, value, what)

    return callback


class PulsarBus:
    """The Bus on a Pulsar cluster: at-least-once, ordered per key, with redelivery and `<topic>.dlq`."""

    def __init__(
        self,
        url: str,
        tenant: str = "public",
        namespace: str = "default",
        *,
        batching: bool = True,
        batching_max_publish_delay_ms: int = 5,
        nack_delay_ms: int = 200,
        discovery_period_s: int = 1,
        operation_timeout_s: int = 30,
        client_logger: pulsar.ConsoleLogger | pulsar.FileLogger | None = None,
    ) -> None:
        self._namespace = f"{tenant}/{namespace}/"
        self._prefix = f"persistent://{self._namespace}"
        # The client's own (C++) logger, warnings and errors on stdout: with a Python logger the
        # interpreter may abort at exit (apache/pulsar-client-python#256).
        self._client = pulsar.Client(
            url, operation_timeout_seconds=operation_timeout_s, logger=client_logger or DEFAULT_CLIENT_LOGGER
        )
        self._producer_options: dict[str, Any] = {
            "batching_enabled": batching,
            "batching_type": pulsar.BatchingType.KeyBased,
            "batching_max_publish_delay_ms": batching_max_publish_delay_ms,
            "max_pending_messages": MAX_IN_FLIGHT,
        }
        self._nack_delay_ms = nack_delay_ms
        self._discovery_period_s = discovery_period_s
        self._producers: dict[str, asyncio.Task[pulsar.Producer]] = {}
        self._in_flight = asyncio.Semaphore(MAX_IN_FLIGHT)
        self._consumers: list[_pulsar.Consumer] = []
        self._tasks: list[asyncio.Task[None]] = []
        # Failed attempts by message id: the broker counts redeliveries on Key_Shared, not on Failover.
        self._attempts: dict[bytes, int] = {}
        self.stats = {"published": 0, "delivered": 0, "redelivered": 0, "dead_lettered": 0}

    async def publish(self, topic: str, message: Message, key: str = "") -> None:
        properties = {TYPE_PROPERTY: message.DESCRIPTOR.full_name}
        await self._send(topic, message.SerializeToString(), key, properties)
        self.stats["published"] += 1

    async def _send(self, topic: str, payload: bytes, key: str, properties: dict[str, str]) -> None:
        """Send and wait for the broker's acknowledgement, which follows persistence."""
        producer = await self._producer(topic)
        async with self._in_flight:
            sent = asyncio.get_running_loop().create_future()
            producer.send_async(
                payload,
                _bridge(sent, f"publish on {topic}"),
                properties=properties,
                partition_key=key or None,
            )
            await sent

    async def _producer(self, topic: str) -> pulsar.Producer:
        task = self._producers.get(topic)
        if task is None:
            create = self._client.create_producer
            task = asyncio.ensure_future(
                asyncio.to_thread(create, self._prefix + topic, **self._producer_options)
            )
            self._producers[topic] = task
        try:
            return await asyncio.shield(task)
        except PulsarException:
            if self._producers.get(topic) is task:
                del self._producers[topic]  # the next publish tries again
            raise

    async def subscribe(
        self,
        pattern: str,
        subscription: str,
        handler: Handler,
        *,
        mode: SubscriptionMode = "shared",
        max_redeliveries: int = 3,
    ) -> None:
        conf = _pulsar.ConsumerConfiguration()
        conf.consumer_type(_CONSUMER_TYPES[mode])
        # New subscriptions, and topics the pattern discovers later, start at their first message.
        conf.subscription_initial_position(pulsar.InitialPosition.Earliest)
        conf.negative_ack_redelivery_delay_ms(self._nack_delay_ms)
        conf.batch_index_ack_enabled(True)  # a nack redelivers one message, not its whole batch
        conf.pattern_auto_discovery_period(self._discovery_period_s)
        # pulsar.Client.subscribe ignores pattern_auto_discovery_period (apache/pulsar-client-python#171,
        # new topics would wait 60 s), so the consumer comes from the native client it wraps.
        regex = topic_regex(self._namespace, pattern)
        consumer = await asyncio.to_thread(self._client._client.subscribe_pattern, regex, subscription, conf)
        self._consumers.append(consumer)
        task = asyncio.create_task(
            self._consume(consumer, handler, max_redeliveries), name=f"bus:{subscription}"
        )
        self._tasks.append(task)

    async def _consume(self, consumer: _pulsar.Consumer, handler: Handler, max_redeliveries: int) -> None:
        while True:
            received = asyncio.get_running_loop().create_future()
            consumer.receive_async(_bridge(received, f"receive on {consumer.subscription_name()}"))
            try:
                message = await received
            except PulsarException:
                log.exception("receive failed; retrying")
                await asyncio.sleep(1)
                continue
            await self._deliver(consumer, message, handler, max_redeliveries)

    async def _deliver(
        self, consumer: _pulsar.Consumer, message: _pulsar.Message, handler: Handler, max_redeliveries: int
    ) -> None:
        message_id = message.message_id().serialize()
        attempt = max(message.redelivery_count(), self._attempts.get(message_id, 0))
        properties = message.properties()
        envelope = Envelope(
            topic=message.topic_name().removeprefix(self._prefix),
            key=message.partition_key(),
            payload=message.data(),
            message_type=properties.get(TYPE_PROPERTY, ""),
            publish_time_ms=message.publish_timestamp(),
            redelivery_count=attempt,
        )
        try:
            await handler(envelope)
            self.stats["delivered"] += 1
        except Exception:
            if attempt < max_redeliveries:
                self._attempts[message_id] = attempt + 1
                self.stats["redelivered"] += 1
                log.warning(
                    "handler failed on %s; redelivering",
                    envelope.topic,
                    exc_info=True,
                    extra={"topic": envelope.topic, "attempt": attempt + 1},
                )
                consumer.negative_acknowledge(message)
                return
            try:
                await self._dead_letter(envelope, properties, attempt + 1)
            except PulsarException:
                log.exception("dead-lettering failed; redelivering", extra={"topic": envelope.topic})
                consumer.negative_acknowledge(message)
                return
        self._attempts.pop(message_id, None)
        consumer.acknowledge_async(message, _log_failed_ack)

    async def _dead_letter(self, envelope: Envelope, properties: dict[str, str], attempts: int) -> None:
        self.stats["dead_lettered"] += 1
        if envelope.topic.endswith(DLQ_SUFFIX):
            log.error(
                "message dropped from %s: its dead-letter consumer failed too",
                envelope.topic,
                extra={"topic": envelope.topic},
            )
            return
        dlq = envelope.topic + DLQ_SUFFIX
        await self._send(dlq, envelope.payload, envelope.key, properties)
        log.error(
            "message dead-lettered from %s to %s after %d attempts",
            envelope.topic,
            dlq,
            attempts,
            extra={"topic": envelope.topic, "dlq": dlq, "attempts": attempts},
        )

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        producers = [
            t.result()
            for t in self._producers.values()
            if t.done() and not t.cancelled() and not t.exception()
        ]
        handles = [*self._consumers, *producers, self._client]
        self._tasks, self._consumers, self._producers = [], [], {}
        await asyncio.to_thread(_close_all, handles)


def _log_failed_ack(result: _pulsar.Result) -> None:
    if result != pulsar.Result.Ok:
        log.warning("acknowledgement failed: %s; the message will be redelivered", result)


def _close_all(handles: list[Any]) -> None:
    for handle in handles:
        try:
            handle.close()
        except PulsarException as error:  # already closed, or the broker is gone
            log.debug("close failed: %s", error)
