"""The result cache in a real Apache Ignite node: shared by replicas (entries, invalidations and
marks seen across them), expiry per cache and per entry, protobuf round trips, the query-router on
it end to end, and the faults: a stopped node (answers computed, marked and counted, then shared
again once it is back) and a frozen one (calls bounded, writes replayed)."""

from __future__ import annotations

import time

import numpy as np
import pytest
from pyignite import Client
from pyignite.datatypes.prop_codes import PROP_EXPIRY_POLICY

from libs.cache import ALL_DATASOURCES
from libs.cache_ignite import CACHE_PREFIX, IgniteCache
from libs.config import load_settings
from libs.selfmetrics import SELF_DATASOURCE
from libs.storage import AcceptedSeries
from libs.storage.keys import SeriesKey
from platformq.analytics.v1 import common_pb2, ml_service_pb2, monitoring_service_pb2
from platformq.analytics.v1 import query_service_pb2 as pb
from services.context import ServiceContext
from services.query_router.core import Limits, QueryRouter
from services.query_router.spec import query_from_proto
from tests.helpers import opened_store, wait_until
from tests.integration.ignite_server import IgniteNode

pytestmark = pytest.mark.integration

TTLS = {"query": 60.0, "dashboard": 30.0, "ml": 300.0}
HOUR = 3_600_000


def replica(node: IgniteNode, **knobs) -> IgniteCache:
    return IgniteCache("127.0.0.1", node.port, 2.0, TTLS, unwatched_datasources={SELF_DATASOURCE}, **knobs)


def answer(value: float) -> pb.QueryResponse:
    return pb.QueryResponse(
        series=[
            common_pb2.SeriesResult(metric="cpu", points=[common_pb2.DataPoint(timestamp_ms=1, value=value)])
        ]
    )


def test_replicas_share_entries_and_invalidations(ignite_node):
    a, b = replica(ignite_node), replica(ignite_node)
    scope = ("t-share", "ds", 0, 10 * HOUR)
    a.put("query", ("t-share", "q1"), answer(1.5), 60, scope=scope, mark=a.mark())
    assert b.get("query", ("t-share", "q1")) == answer(1.5)
    # Writes outside the span, to another datasource or tenant, or the self datasource keep it.
    b.invalidate("t-share", "ds", 20 * HOUR, 21 * HOUR)
    b.invalidate("t-share", "other", 0, HOUR)
    b.invalidate("t-other", "ds", 0, HOUR)
    b.invalidate("t-share", SELF_DATASOURCE, 0, HOUR)
    assert a.get("query", ("t-share", "q1")) == answer(1.5)
    # A write inside the span, on the other replica, drops it for both.
    b.invalidate("t-share", "ds", 5 * HOUR, 5 * HOUR)
    assert a.get("query", ("t-share", "q1")) is None
    assert b.get("query", ("t-share", "q1")) is None
    assert (a.hits["query"], a.misses["query"], b.hits["query"], b.misses["query"]) == (1, 1, 1, 1)
    assert a.hit_rate("query") == 0.5


def test_sql_answers_die_with_any_write_of_the_tenant_but_not_the_self_metrics(ignite_node):
    a, b = replica(ignite_node), replica(ignite_node)
    everything = ("t-sql", ALL_DATASOURCES, -(2**63), 2**63)
    a.put("query", ("t-sql", "sql", "SELECT 1"), answer(2), 60, scope=everything, mark=a.mark())
    b.invalidate("t-sql", SELF_DATASOURCE, 0, HOUR)
    assert b.get("query", ("t-sql", "sql", "SELECT 1")) == answer(2)
    b.invalidate("t-sql", "anything", 0, 1)
    assert a.get("query", ("t-sql", "sql", "SELECT 1")) is None


def test_an_answer_a_write_on_another_replica_overtook_is_not_cached(ignite_node):
    a, b = replica(ignite_node), replica(ignite_node)
    scope = ("t-mark", "ds", 0, HOUR)
    mark = a.mark()
    b.invalidate("t-mark", "ds", 10, 20)  # lands while `a` computes
    a.put("query", "late", answer(3), 60, scope=scope, mark=mark)
    assert b.get("query", "late") is None
    mark = a.mark()
    b.invalidate("t-mark", "ds", 2 * HOUR, 3 * HOUR)  # outside the answer's span
    a.put("query", "late", answer(3), 60, scope=scope, mark=mark)
    assert b.get("query", "late") == answer(3)


def test_a_hit_after_many_unrelated_writes_stays_a_hit(ignite_node):
    a, b = replica(ignite_node), replica(ignite_node)
    a.put("query", "busy", answer(4), 60, scope=("t-busy", "ds", 0, HOUR), mark=a.mark())
    for n in range(40):
        b.invalidate("t-busy", "ds", 2 * HOUR + n, 2 * HOUR + n)
    assert a.get("query", "busy") == answer(4)
    assert b.get("query", "busy") == answer(4)


def test_each_namespace_has_its_expiry_policy_and_each_entry_its_ttl(ignite_node):
    a = replica(ignite_node)
    a.put("dashboard", "d", monitoring_service_pb2.GetDashboardResponse(computed_at_ms=7), 0.3)
    a.put("ml", "m", ml_service_pb2.ForecastResponse(cached=True), 60)
    client = Client(timeout=5)
    client.connect("127.0.0.1", ignite_node.port)
    try:
        for namespace, seconds in TTLS.items():
            policy = client.get_cache(CACHE_PREFIX + namespace).settings[PROP_EXPIRY_POLICY]
            assert policy.create == seconds * 1000, namespace
    finally:
        client.close()
    assert a.get("ml", "m") == ml_service_pb2.ForecastResponse(cached=True)
    wait_until(lambda: a.get("dashboard", "d") is None, 10, "the 0.3 s dashboard entry to expire")


def test_only_protobuf_messages_are_kept(ignite_node):
    a = replica(ignite_node)
    with pytest.raises(TypeError, match="protobuf messages only; namespace 'query' was given a dict"):
        a.put("query", "k", {"not": "a message"}, 60)
    with pytest.raises(TypeError, match=r"cache key part .* of type object"):
        a.get("query", ("k", object()))


async def test_two_query_routers_share_answers_and_invalidations(ignite_node, tmp_path):
    now = int(time.time() * 1000)
    ts = now - 60_000 * np.arange(30, 0, -1, dtype=np.int64)
    series = [AcceptedSeries(SeriesKey.of("cpu", {"host": "a"}), ts, np.arange(30, dtype=np.float64))]
    routers, contexts, stores = [], [], []
    for name in ("a", "b"):
        settings = load_settings(
            data_dir=tmp_path / name, ignite_host="127.0.0.1", ignite_port=ignite_node.port
        )
        context = ServiceContext(settings)
        store = opened_store(tmp_path / name)
        await store.ingest("default", "ds", series)
        routers.append(QueryRouter(store, context.cache, Limits(), context.metrics))
        contexts.append(context)
        stores.append(store)
    try:
        request = pb.QueryRequest(datasource="ds", metrics=["cpu"], aggregation="sum", time_range="1h")
        first = await routers[0].query(query_from_proto(request))
        assert not first.metadata.cache_hit and not first.metadata.fallbacks
        second = await routers[1].query(query_from_proto(request))
        assert second.metadata.cache_hit and list(second.metadata.engines) == ["cache"]
        assert second.series == first.series
        # A write stored by router a's process drops the answer for router b.
        await stores[0].ingest(
            "default", "ds", [AcceptedSeries(series[0].key, ts[-1:] + 1, np.array([100.0]))]
        )
        await contexts[0].after_write("default", "ds", int(ts[-1]) + 1, int(ts[-1]) + 1)
        third = await routers[1].query(query_from_proto(request))
        assert not third.metadata.cache_hit
    finally:
        for context, store in zip(contexts, stores, strict=True):
            await store.close()
            await context.close()


def _failures(context: ServiceContext) -> float:
    return (
        context.metrics.registry.get_sample_value(
            "analytics_engine_connection_failures_total", {"engine": "ignite"}
        )
        or 0.0
    )


async def test_a_stopped_node_leaves_answers_computed_marked_and_counted_until_it_is_back(
    ignite_node, tmp_path
):
    settings = load_settings(
        data_dir=tmp_path, ignite_host="127.0.0.1", ignite_port=ignite_node.port, ignite_timeout_seconds=1.0
    )
    context = ServiceContext(settings)
    context.cache.retry_seconds = context.cache.max_retry_seconds = 0.2
    store = opened_store(tmp_path / "store")
    now = int(time.time() * 1000)
    ts = now - 60_000 * np.arange(10, 0, -1, dtype=np.int64)
    await store.ingest("default", "ds", [AcceptedSeries(SeriesKey.of("cpu", {}), ts, np.ones(10))])
    router = QueryRouter(store, context.cache, Limits(), context.metrics)
    request = pb.QueryRequest(datasource="ds", metrics=["cpu"], aggregation="count", time_range="1h")
    try:
        await router.query(query_from_proto(request))
        assert (await router.query(query_from_proto(request))).metadata.cache_hit
        ignite_node.stop()
        down = await router.query(query_from_proto(request))
        assert [p.value for s in down.series for p in s.points] and not down.metadata.cache_hit
        assert "unreachable" in down.metadata.fallbacks["ignite"]
        assert _failures(context) >= 1
        ignite_node.start()
        wait_until(lambda: context.cache.mark() >= 0, 30, "the cache to reconnect")
        again = await router.query(query_from_proto(request))
        assert not again.metadata.cache_hit and not again.metadata.fallbacks  # a new node: empty
        assert (await router.query(query_from_proto(request))).metadata.cache_hit
    finally:
        await store.close()
        await context.close()


def test_a_frozen_node_bounds_every_call_and_writes_are_replayed_when_it_answers(ignite_node):
    failures = []
    a = replica(
        ignite_node, on_unreachable=lambda: failures.append(1), retry_seconds=0.2, max_retry_seconds=0.2
    )
    a.timeout = 0.5
    b = replica(ignite_node)
    b.put("query", "frozen", answer(5), 60, scope=("t-frozen", "ds", 0, HOUR), mark=b.mark())
    assert a.get("query", "frozen") == answer(5)
    ignite_node.pause()
    try:
        a.close()  # the next call connects to the frozen node: its handshake must time out
        a.invalidate("t-frozen", "ds", 10, 10)
        assert failures and "unreachable" in a.unavailable()["ignite"]
        assert a.get("query", "frozen") is None
    finally:
        ignite_node.resume()
    wait_until(lambda: a.mark() >= 0, 30, "the cache to reconnect")
    assert not a.unavailable()
    # The write made while the node was frozen reached it: the other replica's entry is stale.
    assert b.get("query", "frozen") is None
