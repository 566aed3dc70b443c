"""The bus of distributed mode on Apache Pulsar, with the semantics of `InProcessBus`.

Topic `alerts.x` is `persistent://<tenant>/<namespace>/alerts.x`; a pattern is a regex subscription
(`*` becomes `.*`) that matches dead-letter topics only if the pattern ends in `.dlq`.

- publish: a cached producer per topic, batching by key (a batch holds one key); the key is the
  partition key, the protobuf type name the `message_type` property. It returns once the broker
  acknowledged the message, which it does after BookKeeper persisted it.
- subscribe: "shared" is a Key_Shared subscription (each key pinned to one consumer at a time:
  consumers share the work, per-key order holds), "failover" a Failover one. Each consumer is an
  asyncio task handling one message at a time: acknowledged when the handler returns, negatively
  acknowledged when it raises (redelivered after `nack_delay_ms`; later messages of its key may
  overtake it meanwhile, as always with Pulsar).
- dead letters: a message still failing after `max_redeliveries` redeliveries is published to
  `<topic>.dlq`, then acknowledged, logged as an ERROR and counted in `stats["dead_lettered"]`.
  Pulsar's DeadLetterPolicy cannot do this: its topic is one fixed name for all topics of a pattern
  or `<topic>-<subscription>-DLQ`, and it never fires on Failover subscriptions, whose broker-side
  redelivery count stays 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import _pulsar
import pulsar
from google.protobuf.message import Message
from pulsar.exceptions import PulsarException
from pulsar.schema import ProtobufNativeSchema

from libs.bus.base import Envelope, Handler, Serialized, SubscriptionMode
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


@dataclass
class _Consumer:
    native: _pulsar.Consumer
    handler: Handler
    max_redeliveries: int
    # Failed attempts by message id, on failover subscriptions: the broker counts only Key_Shared ones.
    attempts: dict[bytes, int] | None
    ephemeral: bool = False
    """Unsubscribed (the subscription deleted from the broker) on close rather than closed."""
    task: asyncio.Task[None] | None = None


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
        auth_token: str = "",
    ) -> None:
        self._namespace = f"{tenant}/{namespace}/"
        self._prefix = f"persistent://{self._namespace}"
        # The client's own (C++) logger, warnings and errors on stdout: with a Python logger the
        # interpreter may abort at exit (apache/pulsar-client-python#256).
        self._client = pulsar.Client(
            url,
            operation_timeout_seconds=operation_timeout_s,
            logger=client_logger or DEFAULT_CLIENT_LOGGER,
            # Token authentication when the broker wants it (PULSAR_AUTH_TOKEN); the token is
            # handed to the client only, never logged.
            authentication=pulsar.AuthenticationToken(auth_token) if auth_token else None,
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
        self._consumers: list[_Consumer] = []
        self.stats = {"published": 0, "delivered": 0, "redelivered": 0, "dead_lettered": 0}

    async def publish(self, topic: str, message: Message | Serialized, key: str = "") -> None:
        if isinstance(message, Serialized):
            message = message.message()  # the topic's schema producer takes the message
        properties = {TYPE_PROPERTY: message.DESCRIPTOR.full_name}
        await self._send(topic, message, key, properties)
        self.stats["published"] += 1

    async def _send(self, topic: str, content: bytes | Message, key: str, properties: dict[str, str]) -> None:
        """Send and wait for the broker's acknowledgement, which follows persistence. A protobuf
        message goes through a producer whose schema is that message (registered in the broker);
        raw bytes (dead letters) through a schemaless one."""
        producer = await self._producer(topic, type(content) if isinstance(content, Message) else None)
        async with self._in_flight:
            sent = asyncio.get_running_loop().create_future()
            producer.send_async(
                content,
                _bridge(sent, f"publish on {topic}"),
                properties=properties,
                partition_key=key or None,
            )
            await sent

    async def _producer(self, topic: str, kind: type[Message] | None = None) -> pulsar.Producer:
        task = self._producers.get(topic)
        if task is None:
            create = self._client.create_producer
            # The events.proto message becomes the topic's schema in the broker's registry; the
            # payload stays the message's own bytes, which ProtobufNativeSchema also writes.
            options = {**self._producer_options, **({"schema": ProtobufNativeSchema(kind)} if kind else {})}
            task = asyncio.ensure_future(asyncio.to_thread(create, self._prefix + topic, **options))
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
        max_backlog_bytes: int = 0,  # the broker keeps the backlog on disk, not in this process
        ephemeral: bool = False,
    ) -> None:
        conf = _pulsar.ConsumerConfiguration()
        conf.consumer_type(_CONSUMER_TYPES[mode])
        # New subscriptions, and topics the pattern discovers later, start at their first message;
        # an ephemeral one (live fan-out) only wants what is published from now on.
        conf.subscription_initial_position(
            pulsar.InitialPosition.Latest if ephemeral else pulsar.InitialPosition.Earliest
        )
        conf.negative_ack_redelivery_delay_ms(self._nack_delay_ms)
        conf.batch_index_ack_enabled(True)  # a nack redelivers one message, not its whole batch
        conf.pattern_auto_discovery_period(self._discovery_period_s)
        # pulsar.Client.subscribe ignores pattern_auto_discovery_period (apache/pulsar-client-python#171,
        # new topics would wait 60 s), so the consumer comes from the native client it wraps.
        regex = topic_regex(self._namespace, pattern)
        native = await asyncio.to_thread(self._client._client.subscribe_pattern, regex, subscription, conf)
        consumer = _Consumer(native, handler, max_redeliveries, {} if mode == "failover" else None, ephemeral)
        consumer.task = asyncio.create_task(self._consume(consumer), name=f"bus:{subscription}")
        self._consumers.append(consumer)

    async def _consume(self, consumer: _Consumer) -> None:
        while True:
            received = asyncio.get_running_loop().create_future()
            consumer.native.receive_async(_bridge(received, "receive"))
            try:
                message = await received
            except PulsarException:
                log.exception("receive failed; retrying")
                await asyncio.sleep(1)
                continue
            await self._deliver(consumer, message)

    async def _deliver(self, consumer: _Consumer, message: _pulsar.Message) -> None:
        message_id = message.message_id().serialize()
        attempts = consumer.attempts
        attempt = message.redelivery_count() if attempts is None else attempts.get(message_id, 0)
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
            await consumer.handler(envelope)
            self.stats["delivered"] += 1
        except Exception:
            if attempt < consumer.max_redeliveries:
                if attempts is not None:
                    attempts[message_id] = attempt + 1
                self.stats["redelivered"] += 1
                log.warning(
                    "handler failed on %s; redelivering",
                    envelope.topic,
                    exc_info=True,
                    extra={"topic": envelope.topic, "attempt": attempt + 1},
                )
                consumer.native.negative_acknowledge(message)
                return
            try:
                await self._dead_letter(envelope, properties, attempt + 1)
            except PulsarException:
                log.exception("dead-lettering failed; redelivering", extra={"topic": envelope.topic})
                consumer.native.negative_acknowledge(message)
                return
        if attempts is not None:
            attempts.pop(message_id, None)
        consumer.native.acknowledge_async(message, _log_failed_ack)

    async def _dead_letter(self, envelope: Envelope, properties: dict[str, str], attempts: int) -> None:
        if envelope.topic.endswith(DLQ_SUFFIX):
            self.stats["dead_lettered"] += 1
            log.error(
                "message dropped from %s: its dead-letter consumer failed too",
                envelope.topic,
                extra={"topic": envelope.topic},
            )
            return
        dlq = envelope.topic + DLQ_SUFFIX
        await self._send(dlq, envelope.payload, envelope.key, properties)
        self.stats["dead_lettered"] += 1
        log.error(
            "message dead-lettered from %s to %s after %d attempts",
            envelope.topic,
            dlq,
            attempts,
            extra={"topic": envelope.topic, "dlq": dlq, "attempts": attempts},
        )

    def backlog_bytes(self) -> dict[str, int]:
        """Nothing waits in this process: the broker keeps the backlog (see Pulsar's own
        `pulsar_subscription_back_log` metrics)."""
        return {}

    async def close(self) -> None:
        tasks = [c.task for c in self._consumers if c.task]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        producers = [
            t.result()
            for t in self._producers.values()
            if t.done() and not t.cancelled() and not t.exception()
        ]
        ephemeral = [c.native for c in self._consumers if c.ephemeral]
        handles = [*(c.native for c in self._consumers if not c.ephemeral), *producers, self._client]
        self._consumers, self._producers = [], {}
        await asyncio.to_thread(_close_all, handles, ephemeral)


def _log_failed_ack(result: _pulsar.Result) -> None:
    if result != pulsar.Result.Ok:
        log.warning("acknowledgement failed: %s; the message will be redelivered", result)


def _close_all(handles: list[Any], unsubscribe: list[Any]) -> None:
    for consumer in unsubscribe:
        try:
            consumer.unsubscribe()  # an ephemeral subscription must not keep a backlog after us
        except PulsarException as error:
            log.warning("unsubscribe failed: %s; the subscription stays on the broker", error)
    for handle in handles:
        try:
            handle.close()
        except PulsarException as error:  # already closed, or the broker is gone
            log.debug("close failed: %s", error)
