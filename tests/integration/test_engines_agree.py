"""One suite, every engine: the same queries on the embedded engines and on each real server
(Trino, Druid, Ignite), over the same stored data, must give the same answers, and each query a
server should serve must really reach it.

The data: one tenant, five series over three flushed hours (segments) and half an hour still in
the hot tier. Values are multiples of 1/4, so sums are exact in any order; values of other
aggregations are compared to 1e-9 relative (engines add in different orders). Each server is
started once per session (tests/integration/conftest.py):

- Trino serves batch-mode metrics (the flushed part) and user SQL. SQL on Trino reads flushed
  segments only (docs/engines.md), so the SQL queries here end before the hot tier.
- Druid serves QueryTimeseries and realtime-mode metrics over the hours its loader has ingested.
- Ignite holds the cache: an auto-mode query answered twice is a hit the second time, from Ignite.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import numpy as np
import pytest
import pytest_asyncio

from libs.cache import TtlCache
from libs.cache_ignite import IgniteCache
from libs.storage import AcceptedSeries, SeriesKey
from libs.timeparse import format_time_ms
from platformq.analytics.v1 import query_service_pb2 as pb
from services.query_router.core import Limits, QueryRouter
from services.query_router.druid import DruidEngine, DruidMirror, DruidSettings
from services.query_router.druid_loader import DruidLoader, LoaderSettings
from services.query_router.engine import Bucketing
from services.query_router.planner import Window
from services.query_router.spec import query_from_proto, timeseries_from_proto
from services.query_router.trino import TrinoEngine, TrinoSettings
from tests.helpers import opened_store

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

TENANT, DATASOURCE = "acme", "ds"
T0 = 1_704_067_200_000  # 2024-01-01T00:00:00Z
HOUR = 3_600_000
FLUSHED_END = T0 + 3 * HOUR
HOT_END = FLUSHED_END + HOUR // 2
SERIES = [("cpu", "a", "eu"), ("cpu", "b", "eu"), ("cpu", "c", "us"), ("mem", "a", "eu"), ("mem", "b", "us")]


def _batch(seed: int, start: int, end: int) -> list[AcceptedSeries]:
    ts = np.arange(start, end, 10_000, dtype=np.int64)
    out = []
    for k, (metric, host, region) in enumerate(SERIES):
        values = ((np.arange(len(ts)) * (seed + k) + 3 * k) % 97) * 0.25
        out.append(AcceptedSeries(SeriesKey.of(metric, {"host": host, "region": region}), ts, values))
    return out


@dataclass(frozen=True)
class Case:
    """One query and the server that must answer (part of) it."""

    name: str
    request: pb.QueryRequest | pb.QueryTimeseriesRequest
    reaches: str  # "trino", "druid" or "ignite"


def _metrics(mode: str, aggregation: str, group_by=("host",), step="10m", end=HOT_END) -> pb.QueryRequest:
    return pb.QueryRequest(
        datasource=DATASOURCE,
        metrics=["cpu", "mem"],
        mode=mode,
        aggregation=aggregation,
        group_by=list(group_by),
        start=format_time_ms(T0),
        end=format_time_ms(end),
        step=step,
    )


def _sql(sql: str, mode: str = "batch") -> pb.QueryRequest:
    request = pb.QueryRequest(sql=sql, mode=mode)
    request.params.add(number_value=FLUSHED_END)
    return request


def _timeseries(aggregations, granularity="hour", dimensions=("host",)) -> pb.QueryTimeseriesRequest:
    request = pb.QueryTimeseriesRequest(
        datasource=DATASOURCE,
        intervals=["2024-01-01T00:00:00Z/2024-01-01T03:00:00Z"],
        granularity=granularity,
        dimensions=list(dimensions),
    )
    for kind, metric in aggregations:
        request.aggregations.add(type=kind, metric=metric)
    return request


SQL_BY_HOST = (
    "SELECT labels['host'] AS host, count(*) AS n, sum(value) AS s, max(value) AS hi FROM metrics "
    "WHERE ts < ? GROUP BY 1 ORDER BY 1"
)
SQL_BY_HOUR = (
    "SELECT metric, date_trunc('hour', time) AS h, round(avg(value), 9) AS v FROM metrics "
    "WHERE ts < ? GROUP BY 1, 2 ORDER BY 1, 2"
)
CASES = [
    *(
        Case(f"batch-{a}", _metrics("batch", a), "trino")
        for a in ("avg", "sum", "min", "max", "count", "last")
    ),
    Case("batch-p95-by-region", _metrics("batch", "p95", ("region",), "15m"), "trino"),
    Case("sql-by-host", _sql(SQL_BY_HOST), "trino"),
    Case("sql-by-hour", _sql(SQL_BY_HOUR), "trino"),
    *(
        Case(f"realtime-{a}", _metrics("realtime", a, step="5m", end=FLUSHED_END), "druid")
        for a in ("avg", "sum", "min", "max", "count")
    ),
    Case("timeseries-hourly", _timeseries([("sum", "cpu"), ("min", "cpu"), ("max", "mem")]), "druid"),
    Case("timeseries-all", _timeseries([("avg", "cpu"), ("count", "mem")], "all", ("region",)), "druid"),
    Case("auto-avg", _metrics("auto", "avg", ("region",), "15m"), "ignite"),
    Case("auto-sum", _metrics("auto", "sum", ("host",), "1h"), "ignite"),
    Case("sql-auto", _sql(SQL_BY_HOST, mode="auto"), "ignite"),
]
ENGINES = ["trino", "druid", "ignite"]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def store(tmp_path_factory):
    store = opened_store(tmp_path_factory.mktemp("engines-agree"))
    await store.ingest(TENANT, DATASOURCE, _batch(1, T0, FLUSHED_END))
    await store.flush()
    await store.ingest(TENANT, DATASOURCE, _batch(2, FLUSHED_END, HOT_END))
    yield store
    await store.close()


@pytest.fixture(scope="module")
def embedded(store) -> QueryRouter:
    return QueryRouter(store, TtlCache(), Limits())


@pytest.fixture(scope="module")
def on_trino(store, trino_server) -> QueryRouter:
    return QueryRouter(
        store,
        TtlCache(),
        Limits(),
        trino=TrinoEngine(TrinoSettings("127.0.0.1", trino_server.port), store.segments_root),
    )


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def on_druid(store, druid_cluster):
    mirror = DruidMirror()
    loader = DruidLoader(store, mirror, LoaderSettings(druid_cluster.coordinator_url, poll_seconds=0.2))
    await loader.start()
    try:
        window = Window(T0, FLUSHED_END, Bucketing(HOUR))
        give_up = time.monotonic() + 120
        while mirror.cut(TENANT, DATASOURCE, store.snapshot(TENANT, DATASOURCE), window) != FLUSHED_END:
            assert time.monotonic() < give_up, (
                f"Druid did not ingest the flushed hours in 120 s: {loader.stats}"
            )
            await asyncio.sleep(0.1)
        yield QueryRouter(
            store, TtlCache(), Limits(), druid=DruidEngine(DruidSettings(druid_cluster.broker_url), mirror)
        )
    finally:
        await loader.stop()


@pytest.fixture(scope="module")
def on_ignite(store, ignite_node):
    cache = IgniteCache("127.0.0.1", ignite_node.port, 5.0, {"query": 60.0})
    yield QueryRouter(store, cache, Limits())
    cache.close()


async def _answer(router: QueryRouter, request) -> pb.QueryResponse | pb.QueryTimeseriesResponse:
    if isinstance(request, pb.QueryTimeseriesRequest):
        return await router.query_timeseries(timeseries_from_proto(request), TENANT)
    return await router.query(query_from_proto(request), TENANT)


def _comparable(response) -> tuple[list, list]:
    """(keys, values) of an answer: exact keys, values compared with a relative tolerance."""
    if isinstance(response, pb.QueryTimeseriesResponse):
        rows = [
            (r.timestamp, sorted(r.dimensions.items()), sorted(r.result.items())) for r in response.results
        ]
        return [(t, d, [k for k, _ in res]) for t, d, res in rows], [v for *_, res in rows for _, v in res]
    if response.columns:
        keys, values = [], []
        for row in response.rows:
            cells = [v.WhichOneof("kind") and getattr(v, v.WhichOneof("kind")) for v in row.values]
            keys.append([c for c in cells if not isinstance(c, float)])
            values += [c for c in cells if isinstance(c, float)]
        return [list(response.columns), *keys], values
    keys = [(s.metric, sorted(s.group.items()), [p.timestamp_ms for p in s.points]) for s in response.series]
    return keys, [p.value for s in response.series for p in s.points]


@pytest.fixture(scope="module", params=ENGINES)
def engine(request) -> tuple[str, QueryRouter]:
    """Each engine in turn with its router (its server started once, when first needed)."""
    return request.param, request.getfixturevalue(f"on_{request.param}")


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
async def test_every_engine_gives_the_embedded_answer(engine, embedded, case):
    engine, router = engine
    want = await _answer(embedded, case.request)
    got = await _answer(router, case.request)
    if engine == "ignite":
        got = await _answer(router, case.request)  # the second time, from the cache
    want_keys, want_values = _comparable(want)
    got_keys, got_values = _comparable(got)
    assert want_values, "an empty answer proves nothing"
    assert got_keys == want_keys
    assert got_values == pytest.approx(want_values, rel=1e-9)
    assert not got.metadata.fallbacks, dict(got.metadata.fallbacks)
    if case.reaches != engine:
        return
    if engine == "ignite":
        assert got.metadata.cache_hit and list(got.metadata.engines) == ["cache"]
    else:
        assert engine in got.metadata.engines, list(got.metadata.engines)
        assert any(f.engine == engine for f in got.metadata.plan.fragments)
