"""The in-process bus: wildcard topics, keyed order, redelivery, dead-letter topic; ingest publishes."""

import asyncio

import pytest

from libs.bus import InProcessBus, Serialized
from libs.cache import TtlCache
from libs.storage.store import MetricStore, StoreConfig
from libs.writes import AfterWrite
from platformq.analytics.v1 import common_pb2, events_pb2, realtime_service_pb2
from services.realtime.core import RealtimeCore


def _event(n: int) -> events_pb2.AlertEvent:
    return events_pb2.AlertEvent(name=f"a{n}", timestamp_ms=n)


async def _drain(bus: InProcessBus, got: list, count: int) -> None:
    for _ in range(200):
        if len(got) >= count:
            return
        await asyncio.sleep(0)
    raise AssertionError(f"got {len(got)} of {count} messages")


async def test_wildcard_subscription_keeps_order_per_key():
    bus = InProcessBus()
    got = []

    async def handler(envelope):
        got.append((envelope.topic, envelope.decode(events_pb2.AlertEvent).timestamp_ms))

    await bus.subscribe("simulation.metrics.*", "ml", handler)
    for n in range(5):
        await bus.publish(f"simulation.metrics.sim-{n % 2}", _event(n), key=f"sim-{n % 2}")
    await bus.publish("anomalies.sim-1", _event(99))
    await _drain(bus, got, 5)
    assert [n for _, n in got] == [0, 1, 2, 3, 4]
    assert {t for t, _ in got} == {"simulation.metrics.sim-0", "simulation.metrics.sim-1"}
    await bus.close()


async def test_failed_message_is_redelivered_then_dead_lettered_and_the_stream_flows():
    bus = InProcessBus()
    seen, dead = [], []

    async def handler(envelope):
        n = envelope.decode(events_pb2.AlertEvent).timestamp_ms
        seen.append((n, envelope.redelivery_count))
        if n == 1:
            raise ValueError("poison")

    async def dlq(envelope):
        dead.append(envelope.decode(events_pb2.AlertEvent).timestamp_ms)

    await bus.subscribe("alerts.*", "worker", handler, max_redeliveries=2)
    await bus.subscribe("alerts.*.dlq", "dlq-reader", dlq)
    for n in range(3):
        await bus.publish("alerts.x", _event(n), key="k")
    await _drain(bus, seen, 5)
    await _drain(bus, dead, 1)
    assert seen == [(0, 0), (1, 0), (1, 1), (1, 2), (2, 0)]
    assert dead == [1]
    assert bus.stats["dead_lettered"] == 1
    await bus.close()


@pytest.fixture
async def core(tmp_path):
    store = MetricStore(StoreConfig(tmp_path))
    store.open()
    bus = InProcessBus()
    yield RealtimeCore(store, bus, AfterWrite(TtlCache(), bus))
    await store.close()
    await bus.close()


async def test_an_accepted_batch_is_published_on_simulation_metrics(core):
    got = []

    async def handler(envelope):
        got.append(envelope.decode(events_pb2.MetricsBatchEvent))

    await core.bus.subscribe("simulation.metrics.*", "test", handler)
    request = realtime_service_pb2.IngestMetricsRequest(
        datasource="sims",
        series=[
            common_pb2.Series(
                name="cpu", labels={"simulation_id": "sim-1"}, timestamps_ms=[1, 2], values=[1, 2]
            )
        ],
        points=[common_pb2.Point(name="cpu", value=float("nan"), timestamp_ms=3)],
    )
    reply = await core.ingest(request)
    assert (reply.accepted, reply.rejected) == (2, 1)
    await _drain(core.bus, got, 1)
    assert got[0].datasource == "sims" and got[0].tenant == "default"
    assert list(got[0].series[0].values) == [1.0, 2.0]


async def test_a_slow_consumer_over_its_backlog_bound_loses_the_oldest_and_others_lose_nothing():
    bus = InProcessBus()
    slow, fast = [], []
    release = asyncio.Event()

    async def slow_handler(envelope):
        await release.wait()
        slow.append(envelope.decode(events_pb2.AlertEvent).timestamp_ms)

    async def fast_handler(envelope):
        fast.append(envelope.decode(events_pb2.AlertEvent).timestamp_ms)

    size = len(_event(5).SerializeToString())  # every message below is this size
    await bus.subscribe("alerts.*", "slow", slow_handler, max_backlog_bytes=3 * size)
    await bus.subscribe("alerts.*", "fast", fast_handler)
    for n in range(10):
        await bus.publish("alerts.x", _event(n), key="k")
    await _drain(bus, fast, 10)
    release.set()
    await _drain(bus, slow, 3)
    for _ in range(50):
        await asyncio.sleep(0)
    # Its backlog holds three messages' bytes: the newest three are delivered, the rest evicted.
    assert slow == [7, 8, 9] and fast == list(range(10))
    assert bus.stats["evicted"] == 7
    await bus.close()


async def test_a_message_published_as_its_bytes_is_delivered_as_those_bytes():
    bus = InProcessBus()
    got = []

    async def handler(envelope):
        got.append(envelope)

    await bus.subscribe("alerts.*", "reader", handler)
    payload = _event(7).SerializeToString()
    await bus.publish("alerts.x", Serialized(events_pb2.AlertEvent, payload), key="k")
    await _drain(bus, got, 1)
    (envelope,) = got
    assert envelope.payload is payload  # not parsed and written again
    assert envelope.message_type == "platformq.analytics.v1.AlertEvent"
    assert envelope.decode(events_pb2.AlertEvent) == _event(7)
    await bus.close()
