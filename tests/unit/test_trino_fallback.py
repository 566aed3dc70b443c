"""A configured Trino that nobody answers on (a closed loopback port, a real refused connection):
SQL and batch metrics answer from the embedded engines, say so in metadata.fallbacks, count an
engine connection failure, and are not cached. After a failure Trino is not tried for a pause that
doubles with each failure in a row (remote.py), then tried again."""

from __future__ import annotations

import numpy as np
import pytest

from libs.cache import TtlCache
from libs.errors import InvalidArgument
from libs.selfmetrics import SelfMetrics
from libs.storage import AcceptedSeries
from libs.storage.keys import SeriesKey
from libs.timeparse import format_time_ms
from platformq.analytics.v1 import query_service_pb2 as pb
from services.query_router.core import Limits, QueryRouter
from services.query_router.remote import RemoteEngines
from services.query_router.spec import query_from_proto
from services.query_router.trino import TrinoEngine, TrinoSettings
from tests.helpers import ManualClock, free_port, opened_store

T0 = 1_767_225_600_000


@pytest.fixture
async def store(tmp_path):
    store = opened_store(tmp_path)
    ts = np.arange(T0, T0 + 7_200_000, 60_000, dtype=np.int64)
    await store.ingest(
        "default", "ds", [AcceptedSeries(SeriesKey.of("cpu", {"h": "a"}), ts, np.arange(len(ts)) * 1.0)]
    )
    await store.flush()
    yield store
    await store.close()


def failures(metrics: SelfMetrics) -> float:
    return (
        metrics.registry.get_sample_value("analytics_engine_connection_failures_total", {"engine": "trino"})
        or 0.0
    )


async def test_sql_and_batch_answer_from_duckdb_while_trino_is_down(store):
    metrics = SelfMetrics()
    port = free_port()
    down = TrinoEngine(TrinoSettings("127.0.0.1", port), store.segments_root)
    router = QueryRouter(store, TtlCache(), Limits(), metrics, trino=down)
    clock = ManualClock(100.0)
    router.remote = RemoteEngines(down, None, router.telemetry, 30.0, clock=clock)
    embedded = QueryRouter(store, TtlCache(), Limits())
    sql = pb.QueryRequest(sql="SELECT count(*) AS n, sum(value) AS s FROM metrics")
    want = (await embedded.query(query_from_proto(sql))).rows

    async def fallback_of(request: pb.QueryRequest) -> str:
        answered = await router.query(query_from_proto(request))
        assert list(answered.metadata.engines) == ["duckdb"]
        return answered.metadata.fallbacks["trino"]

    reason = await fallback_of(sql)
    assert reason == "unreachable: connection refused"
    assert str(port) not in reason  # the client is told the kind of failure, not the address
    assert failures(metrics) == 1
    # Within the pause (1 s after a first failure) Trino is not tried: not counted again.
    assert (await fallback_of(sql)).startswith("not tried for 1.0 s more")
    assert failures(metrics) == 1
    clock.now += 1.0  # the pause is over: tried (and failed) again, the next pause is 2 s
    assert await fallback_of(sql) == "unreachable: connection refused"
    assert failures(metrics) == 2
    answered = await router.query(query_from_proto(sql))
    assert answered.rows == want and not answered.metadata.cache_hit  # not cached
    clock.now += 2.0
    batch = pb.QueryRequest(
        datasource="ds",
        metrics=["cpu"],
        mode="batch",
        aggregation="sum",
        step="10m",
        start=format_time_ms(T0),
        end=format_time_ms(T0 + 7_200_000),
    )
    answered = await router.query(query_from_proto(batch))
    assert list(answered.metadata.engines) == ["duckdb"] and "trino" in answered.metadata.fallbacks
    assert answered.series == (await embedded.query(query_from_proto(batch))).series
    assert failures(metrics) == 3


async def test_a_refused_query_never_reaches_trino(store):
    metrics = SelfMetrics()
    down = TrinoEngine(TrinoSettings("127.0.0.1", free_port()), store.segments_root)
    router = QueryRouter(store, TtlCache(), Limits(), metrics, trino=down)
    with pytest.raises(InvalidArgument) as refused:
        await router.query(query_from_proto(pb.QueryRequest(sql="DROP TABLE series")))
    assert refused.value.field == "sql"
    assert failures(metrics) == 0  # refused by the guard before any connection was tried
