"""PulsarBus through a real Pulsar standalone: wildcard topics, per-key order across consumers,
acknowledgement after processing, redelivery, the dead-letter topic and publish-after-persist."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable

import pytest

from libs.bus.pulsar import PulsarBus
from platformq.analytics.v1 import events_pb2


def _event(n: int) -> events_pb2.AlertEvent:
    return events_pb2.AlertEvent(name=f"a{n}", timestamp_ms=n)


def _n(envelope) -> int:
    return envelope.decode(events_pb2.AlertEvent).timestamp_ms


async def eventually(predicate: Callable[[], bool], what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.05)


@pytest.fixture
def prefix() -> str:
    """A topic prefix no other test uses."""
    return f"it-{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def bus(pulsar_broker):
    bus = PulsarBus(pulsar_broker.service_url)
    yield bus
    await bus.close()


async def test_a_wildcard_subscription_receives_both_topics_in_key_order(bus, prefix):
    got = []

    async def handler(envelope):
        got.append(envelope)

    await bus.subscribe(f"{prefix}.metrics.*", "ml", handler)
    for n in range(6):
        await bus.publish(f"{prefix}.metrics.sim-{n % 2}", _event(n), key=f"sim-{n % 2}")
    await bus.publish(f"{prefix}.anomalies.sim-1", _event(99), key="sim-1")
    await eventually(lambda: len(got) >= 6, "six messages")
    await asyncio.sleep(1.5)  # the pattern is re-evaluated every second: the anomaly stays out

    assert len(got) == 6
    assert {e.topic for e in got} == {f"{prefix}.metrics.sim-0", f"{prefix}.metrics.sim-1"}
    for key, expected in (("sim-0", [0, 2, 4]), ("sim-1", [1, 3, 5])):
        assert [_n(e) for e in got if e.key == key] == expected
    assert {e.message_type for e in got} == {"platformq.analytics.v1.AlertEvent"}
    assert all(e.redelivery_count == 0 and e.publish_time_ms > 0 for e in got)


async def test_two_consumers_of_a_shared_subscription_split_the_keys_and_keep_their_order(
    pulsar_broker, bus, prefix
):
    topic = f"{prefix}.alerts.x"
    pulsar_broker.create_topic(topic)  # both consumers attach before the first message
    other = PulsarBus(pulsar_broker.service_url)
    got: list[tuple[str, str, int]] = []

    def handler_for(consumer: str):
        async def handler(envelope):
            await asyncio.sleep(0.002)
            got.append((consumer, envelope.key, _n(envelope)))

        return handler

    try:
        await bus.subscribe(f"{prefix}.alerts.*", "workers", handler_for("a"))
        await other.subscribe(f"{prefix}.alerts.*", "workers", handler_for("b"))
        keys = [f"k{i}" for i in range(32)]

        async def publish_in_order(key: str) -> None:
            for n in range(5):
                await bus.publish(topic, _event(n), key=key)

        await asyncio.gather(*(publish_in_order(key) for key in keys))
        await eventually(lambda: len(got) >= 160, "160 messages")
    finally:
        await other.close()

    assert len(got) == 160
    for key in keys:
        assert [n for _, k, n in got if k == key] == [0, 1, 2, 3, 4], key
        assert len({c for c, k, _ in got if k == key}) == 1, f"{key} went to both consumers"
    assert {c for c, _, _ in got} == {"a", "b"}, "one consumer got no work"


async def test_a_message_is_acknowledged_after_processing_and_redelivered_when_the_handler_fails(
    pulsar_broker, bus, prefix
):
    topic = f"{prefix}.alerts.x"
    seen: list[tuple[int, int]] = []

    async def handler(envelope):
        n = _n(envelope)
        seen.append((n, envelope.redelivery_count))
        if (n, envelope.redelivery_count) == (1, 0):
            raise ValueError("fails once")

    await bus.subscribe(f"{prefix}.alerts.*", "worker", handler, max_redeliveries=3)
    for n in range(3):
        await bus.publish(topic, _event(n), key="k")
    await eventually(lambda: (1, 1) in seen and len(seen) >= 4, "the redelivery")
    # Every message is acknowledged once handled: the subscription's backlog drains to zero.
    await eventually(lambda: pulsar_broker.backlog(topic, "worker") == 0, "an empty backlog")

    assert sorted(seen) == [(0, 0), (1, 0), (1, 1), (2, 0)]
    assert bus.stats == {"published": 3, "delivered": 3, "redelivered": 1, "dead_lettered": 0}


async def test_a_poison_message_is_dead_lettered_and_the_stream_keeps_flowing(bus, prefix, caplog):
    topic = f"{prefix}.alerts.x"
    attempts: list[int] = []
    handled: list[int] = []
    dead = []

    async def handler(envelope):
        n = _n(envelope)
        if n == 1:
            attempts.append(envelope.redelivery_count)
            raise ValueError("poison")
        handled.append(n)

    async def dlq_reader(envelope):
        dead.append(envelope)

    await bus.subscribe(f"{prefix}.alerts.*", "worker", handler, max_redeliveries=2)
    await bus.subscribe(f"{prefix}.alerts.*.dlq", "dlq-reader", dlq_reader)
    with caplog.at_level(logging.ERROR, logger="libs.bus.pulsar"):
        for n in range(3):
            await bus.publish(topic, _event(n), key="k")
        await eventually(lambda: len(dead) == 1, "the dead letter")
        await bus.publish(topic, _event(3), key="k")
        await eventually(lambda: 3 in handled, "a message after the poison one")

    assert attempts == [0, 1, 2]
    assert sorted(handled) == [0, 2, 3]
    assert bus.stats["dead_lettered"] == 1
    [letter] = dead
    assert (letter.topic, letter.key, _n(letter)) == (f"{topic}.dlq", "k", 1)
    assert letter.message_type == "platformq.analytics.v1.AlertEvent"
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and topic in errors[0].getMessage()
    assert errors[0].topic == topic and errors[0].dlq == f"{topic}.dlq"


async def test_publish_returns_once_the_message_is_persisted(pulsar_broker, prefix):
    topic = f"{prefix}.persisted"
    publisher = PulsarBus(pulsar_broker.service_url)
    for n in range(5):
        await publisher.publish(topic, _event(n), key="k")
    await publisher.close()  # nothing left in a client buffer: the broker has every message

    reader = PulsarBus(pulsar_broker.service_url)
    got = []

    async def handler(envelope):
        got.append(_n(envelope))

    try:
        # A subscription created afterwards starts at the topic's earliest message.
        await reader.subscribe(topic, "late", handler)
        await eventually(lambda: len(got) >= 5, "the five persisted messages")
    finally:
        await reader.close()
    assert got == [0, 1, 2, 3, 4]


async def test_a_failover_subscription_counts_redeliveries_itself_and_dead_letters(bus, prefix):
    # The broker reports redelivery_count 0 on failover subscriptions: the bus counts the attempts.
    topic = f"{prefix}.alerts.x"
    seen: list[tuple[int, int]] = []
    dead: list[int] = []

    async def handler(envelope):
        seen.append((_n(envelope), envelope.redelivery_count))
        if _n(envelope) == 1:
            raise ValueError("poison")

    async def dlq_reader(envelope):
        dead.append(_n(envelope))

    await bus.subscribe(f"{prefix}.alerts.*", "ordered", handler, mode="failover", max_redeliveries=2)
    await bus.subscribe(f"{prefix}.alerts.*.dlq", "dlq-reader", dlq_reader)
    for n in range(3):
        await bus.publish(topic, _event(n), key="k")
    await eventually(lambda: dead == [1] and len(seen) >= 5, "the dead letter")

    assert sorted(seen) == [(0, 0), (1, 0), (1, 1), (1, 2), (2, 0)]
    assert bus.stats["dead_lettered"] == 1
