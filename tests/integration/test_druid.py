"""The Druid engine against a real Druid cluster (scripts/druid-cluster): the loader mirrors the
segments into Druid, then the same queries run on an embedded QueryRouter and on a Druid-configured
one over the same store and must give the same answers, with Druid named in the metadata; tenants
stay apart; a stopped broker gives embedded answers marked in `fallbacks` and counted, and Druid
serves again once the broker is back.

Values are multiples of 1/4, so sums are exact in any order and answers compare with ==.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request

import numpy as np
import pytest
import pytest_asyncio

from libs.cache import TtlCache
from libs.selfmetrics import SelfMetrics
from libs.storage import AcceptedSeries
from libs.storage.keys import SeriesKey
from platformq.analytics.v1 import common_pb2
from platformq.analytics.v1 import query_service_pb2 as pb
from services.query_router.core import Limits, QueryRouter
from services.query_router.druid import DruidEngine, DruidMirror, DruidSettings
from services.query_router.druid_loader import DruidLoader, LoaderSettings
from services.query_router.engine import Bucketing
from services.query_router.planner import Window
from services.query_router.spec import query_from_proto, timeseries_from_proto
from tests.helpers import opened_store

pytestmark = pytest.mark.asyncio(loop_scope="module")

T0 = 1_704_067_200_000  # 2024-01-01T00:00:00Z
HOUR = 3_600_000
FLUSHED_END = T0 + 3 * HOUR
HOT_END = FLUSHED_END + HOUR // 2
DAY = "2024-01-01"
SERIES = [("cpu", "a", "eu"), ("cpu", "b", "eu"), ("cpu", "c", "us"), ("mem", "a", "eu"), ("mem", "b", None)]


def _batch(seed: int, start: int, end: int) -> list[AcceptedSeries]:
    ts = np.arange(start, end, 10_000, dtype=np.int64)
    out = []
    for k, (metric, host, region) in enumerate(SERIES):
        labels = {"host": host} if region is None else {"host": host, "region": region}
        values = ((np.arange(len(ts)) * (seed + k) + 3 * k) % 97) * 0.25
        out.append(AcceptedSeries(SeriesKey.of(metric, labels), ts, values.astype(np.float64)))
    return out


def _ts(metrics=(), interval=f"{DAY}T00:00:00Z/{DAY}T03:00:00Z", granularity="hour", **kw):
    aggregations = [pb.Aggregation(**a) if isinstance(a, dict) else a for a in kw.pop("aggregations", [])]
    filters = [common_pb2.LabelFilter(**f) for f in kw.pop("filters", [])]
    return pb.QueryTimeseriesRequest(
        datasource="ds",
        metrics=list(metrics),
        intervals=[interval],
        granularity=granularity,
        aggregations=aggregations,
        filters=filters,
        **kw,
    )


# (request, whether Druid must answer part of it: for both tenants, or per tenant)
QUERIES = [
    (_ts(["cpu"]), True),
    (
        _ts(
            aggregations=[
                {"type": "sum", "metric": "cpu"},
                {"type": "min", "metric": "cpu"},
                {"type": "max", "metric": "mem"},
                {"type": "count", "metric": "mem"},
            ],
            dimensions=["host"],
            granularity="fifteen_minute",
            interval=f"{DAY}T00:30:00Z/{DAY}T02:45:00Z",
        ),
        True,
    ),
    (
        _ts(
            aggregations=[
                {"type": "avg", "metric": "cpu"},
                {"type": "sum", "metric": "cpu", "name": "total"},
            ],
            filters=[{"label": "region", "op": "=", "value": "eu"}],
            granularity="all",
        ),
        True,
    ),
    (
        _ts(
            ["cpu", "mem"],
            filters=[{"label": "host", "op": "in", "values": ["a", "b"]}],
            dimensions=["region"],
            granularity="PT7M",
            interval=f"{DAY}T00:05:00Z/{DAY}T02:59:00Z",
        ),
        True,
    ),
    (
        _ts(
            aggregations=[{"type": "max", "metric": "cpu"}],
            filters=[
                {"label": "host", "op": "regex", "value": "a|c"},
                {"label": "region", "op": "!=", "value": "us"},
            ],
            granularity="minute",
            interval=f"{DAY}T01:00:00Z/{DAY}T02:00:00Z",
        ),
        True,
    ),
    (_ts(aggregations=[{"type": "sum", "metric": "mem"}], granularity="day"), True),
    # Into the hot tier: Druid before the flush boundary, the hot tier after, concatenated.
    (_ts(["cpu"], dimensions=["host"], interval=f"{DAY}T00:00:00Z/{DAY}T04:00:00Z"), True),
    # Stays embedded: percentiles; calendar buckets are never split, so a month holding hot points
    # (tenant a) runs embedded, one without (tenant b) on Druid.
    (_ts(aggregations=[{"type": "p95", "metric": "cpu"}]), False),
    (_ts(["cpu"], granularity="month", interval="2024-01-01/2024-02-01"), {"a": False, "b": True}),
]


@pytest.fixture(scope="module")
def cluster(druid_cluster):
    return druid_cluster


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def setup(cluster, tmp_path_factory):
    store = opened_store(tmp_path_factory.mktemp("store"))
    await store.ingest("a", "ds", _batch(1, T0, FLUSHED_END))
    # Tenant b: the same series keys (so the same series ids) with other values.
    await store.ingest("b", "ds", _batch(5, T0, FLUSHED_END))
    await store.flush()
    await store.ingest("a", "ds", _batch(2, FLUSHED_END, HOT_END))
    mirror = DruidMirror()
    loader = DruidLoader(store, mirror, LoaderSettings(cluster.coordinator_url, poll_seconds=0.2))
    started = time.monotonic()
    await loader.start()
    try:
        window = Window(T0, FLUSHED_END, Bucketing(HOUR))
        while any(mirror.cut(t, "ds", store.snapshot(t, "ds"), window) != FLUSHED_END for t in ("a", "b")):
            assert time.monotonic() - started < 120, f"Druid did not ingest in 120 s: {loader.stats}"
            await asyncio.sleep(0.1)
        print(
            f"ingested 2 partitions ({loader.stats['rows']} rows, {loader.stats['tasks']} tasks) in "
            f"{time.monotonic() - started:.1f} s"
        )
        metrics = SelfMetrics()
        embedded = QueryRouter(store, TtlCache(), Limits())
        druid = QueryRouter(
            store, TtlCache(), Limits(), metrics, druid=DruidEngine(DruidSettings(cluster.broker_url), mirror)
        )
        yield embedded, druid, metrics, store
    finally:
        await loader.stop()
        await store.close()


def _rows(response: pb.QueryTimeseriesResponse) -> list:
    return [(r.timestamp, dict(r.dimensions), dict(r.result)) for r in response.results]


@pytest.mark.parametrize("request_, on_druid", QUERIES, ids=[f"q{i}" for i in range(len(QUERIES))])
async def test_timeseries_answers_equal_embedded(setup, request_, on_druid):
    embedded, druid, _, _ = setup
    spec = timeseries_from_proto(request_)
    for tenant in ("a", "b"):
        want = await embedded.query_timeseries(spec, tenant)
        got = await druid.query_timeseries(spec, tenant)
        assert want.results, "the comparison needs a non-empty answer"
        assert _rows(got) == _rows(want), f"tenant {tenant}"
        expected = on_druid[tenant] if isinstance(on_druid, dict) else on_druid
        assert ("druid" in got.metadata.engines) == expected, (tenant, list(got.metadata.engines))
        assert any(f.engine == "druid" for f in got.metadata.plan.fragments) == expected
        assert not got.metadata.fallbacks


async def test_tenants_stay_apart(setup):
    embedded, druid, _, _ = setup
    spec = timeseries_from_proto(_ts(aggregations=[{"type": "sum", "metric": "cpu"}], granularity="all"))
    answers = {t: await druid.query_timeseries(spec, t) for t in ("a", "b")}
    assert all("druid" in answers[t].metadata.engines for t in answers)
    a, b = _rows(answers["a"]), _rows(answers["b"])
    assert a != b, "tenant b's values differ: equal sums would mean one tenant read the other's rows"
    assert a == _rows(await embedded.query_timeseries(spec, "a"))


async def test_realtime_query_and_explain_name_druid(setup):
    embedded, druid, _, _ = setup
    request = pb.QueryRequest(
        datasource="ds",
        metrics=["cpu"],
        aggregation="avg",
        group_by=["host"],
        start=f"{DAY}T00:00:00Z",
        end=f"{DAY}T03:30:00Z",
        step="5m",
        mode="realtime",
    )
    spec = query_from_proto(request)
    want = await embedded.query(spec, "a")
    got = await druid.query(spec, "a")
    assert list(got.series) == list(want.series)
    assert set(got.metadata.engines) == {"druid", "hot"}
    plan = (await druid.explain(spec, "a")).plan
    assert plan.fragments[0].engine == "druid" and "druid" in plan.reason
    assert "druid" in (await druid.capabilities()).engines


async def test_stopped_broker_falls_back_then_recovers(setup, cluster):
    embedded, druid, metrics, _ = setup
    spec = timeseries_from_proto(_ts(["cpu"], dimensions=["host"]))
    want = _rows(await embedded.query_timeseries(spec, "a"))

    def failures() -> float:
        return (
            metrics.registry.get_sample_value(
                "analytics_engine_connection_failures_total", {"engine": "druid"}
            )
            or 0.0
        )

    before = failures()
    cluster.stop("broker")
    try:
        down = await druid.query_timeseries(spec, "a")
        assert _rows(down) == want
        assert "druid" in down.metadata.fallbacks and "druid" not in down.metadata.engines
        assert failures() == before + 1
    finally:
        cluster.start("broker")
    # Druid is tried again once the pause after its failure is over (remote.py); meanwhile the
    # answers stay right, embedded and marked.
    give_up = time.monotonic() + 30
    while "druid" not in (up := await druid.query_timeseries(spec, "a")).metadata.engines:
        assert _rows(up) == want and "druid" in up.metadata.fallbacks
        assert time.monotonic() < give_up, (
            f"Druid not used 30 s after the broker came back: {dict(up.metadata.fallbacks)}"
        )
        await asyncio.sleep(0.25)
    assert _rows(up) == want and not up.metadata.fallbacks


async def test_a_new_flush_reaches_druid_and_answers_equal(setup):
    embedded, druid, _, store = setup
    # Tenant b's next half hour: hot first (answered embedded), then flushed and mirrored.
    await store.ingest("b", "ds", _batch(6, FLUSHED_END, HOT_END))
    spec = timeseries_from_proto(
        _ts(["cpu"], interval=f"{DAY}T00:00:00Z/{DAY}T03:30:00Z", granularity="PT10M")
    )
    hot = await druid.query_timeseries(spec, "b")
    assert set(hot.metadata.engines) == {"druid", "hot"}
    await store.flush()
    flushed = time.monotonic()
    window = Window(T0, HOT_END, Bucketing(HOUR // 6))
    while druid.remote.druid.mirror.cut("b", "ds", store.snapshot("b", "ds"), window) != HOT_END:
        assert time.monotonic() - flushed < 60, "the new segment did not reach Druid in 60 s"
        await asyncio.sleep(0.05)
    print(f"\none new segment in Druid {time.monotonic() - flushed:.1f} s after the flush")
    got = await druid.query_timeseries(spec, "b")
    assert list(got.metadata.engines) == ["druid"]
    assert _rows(got) == _rows(hot) == _rows(await embedded.query_timeseries(spec, "b"))


async def test_retention_drops_the_hours_from_druid(setup, cluster):
    # Last: it empties the store's segments (the data is from 2024, past the 30-day retention).
    _, druid, _, store = setup
    assert store.apply_retention() > 0
    assert not store.snapshot("a", "ds").segments

    def rows_in_druid() -> float:
        query = {
            "queryType": "timeseries",
            "dataSource": "platformq~a~ds",
            "granularity": "all",
            "intervals": [f"{DAY}T00:00:00Z/{DAY}T04:00:00Z"],
            "aggregations": [{"type": "count", "name": "n"}],
        }
        request = urllib.request.Request(
            f"{cluster.broker_url}/druid/v2",
            json.dumps(query).encode(),
            {"content-type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as reply:
            result = json.loads(reply.read())
        return result[0]["result"]["n"] if result else 0

    assert rows_in_druid() > 0
    started = time.monotonic()
    while rows_in_druid() > 0:
        assert time.monotonic() - started < 60, "Druid still serves the expired hours after 60 s"
        await asyncio.sleep(0.2)
    mirror = druid.remote.druid.mirror
    assert mirror.loaded(("a", "ds")) and not any(mirror.loaded(("a", "ds")).values())
