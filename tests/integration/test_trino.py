"""Trino as the batch SQL engine, against a real Trino server (scripts/trino-server) over the same
segment files: equal answers with the embedded path (a list of metrics and SQL queries run on an
embedded QueryRouter and a Trino-configured one over one DATA_DIR), Explain and metadata naming
Trino, the read-only guard and tenant scoping, the request deadline, and the fall back to DuckDB
while the server is down (then back to Trino once it is up again)."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
import pytest_asyncio
import trino

from libs.cache import TtlCache
from libs.errors import DeadlineExceeded, InvalidArgument
from libs.selfmetrics import SelfMetrics
from libs.storage import AcceptedSeries
from libs.storage.keys import SeriesKey
from libs.timeparse import format_time_ms
from platformq.analytics.v1 import query_service_pb2 as pb
from services.query_router.core import Limits, QueryRouter
from services.query_router.spec import query_from_proto
from services.query_router.trino import TrinoEngine, TrinoSettings
from tests.helpers import opened_store

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
HOUR = 3_600_000
FLUSHED_END = T0 + 3 * HOUR  # points before this are in segments; after it, in the hot tier only
HOT_END = FLUSHED_END + HOUR // 2

pytestmark = pytest.mark.asyncio(loop_scope="module")


def _values(seed: int, n: int) -> np.ndarray:
    return np.round(np.random.default_rng(seed).normal(50, 10, n), 3)


def _batch(tenant_seed: int, start: int, end: int) -> list[AcceptedSeries]:
    ts = np.arange(start, end, 10_000, dtype=np.int64)
    out = []
    for k, (metric, host, region) in enumerate(
        [("cpu", "a", "eu"), ("cpu", "b", "eu"), ("cpu", "c", "us"), ("mem", "a", "eu"), ("mem", "b", "us")]
    ):
        labels = {"host": host, "region": region}
        out.append(AcceptedSeries(SeriesKey.of(metric, labels), ts, _values(tenant_seed * 10 + k, len(ts))))
    return out


@pytest.fixture(scope="module")
def server(trino_server):
    return trino_server


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def store(tmp_path_factory):
    store = opened_store(tmp_path_factory.mktemp("store"))
    # Tenant a: two datasources; tenant b: one, with other values. Flushed, then hot-only points.
    await store.ingest("a", "ds", _batch(1, T0, FLUSHED_END))
    await store.ingest("a", "ds2", _batch(2, T0, FLUSHED_END))
    await store.ingest("b", "ds", _batch(3, T0, FLUSHED_END))
    await store.flush()
    await store.ingest("a", "ds", _batch(4, FLUSHED_END, HOT_END))
    yield store
    await store.close()


@pytest.fixture(scope="module")
def routers(server, store):
    metrics = SelfMetrics()
    trino = TrinoEngine(TrinoSettings("127.0.0.1", server.port), store.segments_root)
    embedded = QueryRouter(store, TtlCache(), Limits())
    on_trino = QueryRouter(store, TtlCache(), Limits(), metrics, trino=trino)
    return embedded, on_trino, metrics


def metrics_request(aggregation: str, **extra) -> pb.QueryRequest:
    return pb.QueryRequest(
        datasource="ds",
        metrics=["cpu"],
        mode="batch",
        aggregation=aggregation,
        group_by=["host"],
        start=format_time_ms(T0),
        end=format_time_ms(HOT_END),
        step="10m",
        **extra,
    )


# The equal-answer suite: metrics queries (batch: the cold part on Trino, the hot part embedded).
METRICS_QUERIES = [
    metrics_request(a) for a in ("avg", "sum", "min", "max", "count", "last", "p50", "p99")
] + [
    pb.QueryRequest(
        datasource="ds",
        metrics=["cpu", "mem"],
        mode="batch",
        aggregation="max",
        group_by=["region"],
        start=format_time_ms(T0 + 1234),
        end=format_time_ms(FLUSHED_END - 5678),
        step="7m",
    ),
]
# SQL over the flushed range (Trino reads segments; the hot tier is DuckDB's alone).
SQL_QUERIES = [
    (
        "SELECT labels['host'] AS host, count(*) AS n, sum(value) AS s FROM metrics "
        "WHERE metric = 'cpu' AND ts < ? GROUP BY 1 ORDER BY 1",
        (FLUSHED_END,),
    ),
    (
        "SELECT labels.region AS region, max(value) AS hi, min(value) AS lo FROM metrics "
        "WHERE ts < ? GROUP BY 1 ORDER BY 1",
        (FLUSHED_END,),
    ),
    ("SELECT metric, count(*) AS series FROM series GROUP BY metric ORDER BY metric", ()),
    (
        "SELECT datasource, count(*) AS n, min(ts) AS first, max(ts) AS last FROM points "
        "WHERE ts < ? GROUP BY datasource ORDER BY datasource",
        (FLUSHED_END,),
    ),
    (
        "SELECT date_trunc('hour', time) AS h, round(avg(value), 9) AS v FROM metrics "
        "WHERE ts < ? AND datasource = 'ds2' GROUP BY 1 ORDER BY 1",
        (FLUSHED_END,),
    ),
    (
        "SELECT s.metric, s.labels['host'] AS host, count(*) AS n FROM points p JOIN series s "
        "ON p.datasource = s.datasource AND p.series_id = s.series_id WHERE p.ts < ? "
        "GROUP BY 1, 2 ORDER BY 1, 2",
        (FLUSHED_END,),
    ),
    ("SELECT series_id FROM series WHERE datasource = 'ds' ORDER BY series_id", ()),
    ("SELECT labels['nope'] AS missing, count(*) AS n FROM metrics WHERE ts < ? GROUP BY 1", (FLUSHED_END,)),
]


def sql_request(sql: str, params=()) -> pb.QueryRequest:
    request = pb.QueryRequest(sql=sql, mode="batch")
    for p in params:
        request.params.add(number_value=p)
    return request


def _series(response: pb.QueryResponse) -> list:
    """(metric, group, timestamps, values) per series; values compared with a relative tolerance
    (engines add floating-point numbers in different orders)."""
    return [
        (s.metric, sorted(s.group.items()), [p.timestamp_ms for p in s.points], [p.value for p in s.points])
        for s in response.series
    ]


def assert_same_series(answered: pb.QueryResponse, expected: pb.QueryResponse) -> None:
    got, want = _series(answered), _series(expected)
    assert [g[:3] for g in got] == [w[:3] for w in want]
    for g, w in zip(got, want, strict=True):
        assert g[3] == pytest.approx(w[3], rel=1e-9)


def _rows(response: pb.QueryResponse) -> list:
    def cell(v):
        kind = v.WhichOneof("kind")
        return round(v.number_value, 6) if kind == "number_value" else getattr(v, kind) if kind else None

    return [[cell(v) for v in row.values] for row in response.rows]


@pytest.mark.parametrize("request_", METRICS_QUERIES, ids=lambda r: f"{r.aggregation}-{'-'.join(r.group_by)}")
async def test_metrics_answers_equal_the_embedded_path(routers, request_):
    embedded, on_trino, _ = routers
    expected = await embedded.query(query_from_proto(request_), "a")
    answered = await on_trino.query(query_from_proto(request_), "a")
    assert "trino" in answered.metadata.engines, answered.metadata
    assert answered.metadata.engine_time_ms["trino"] > 0
    assert not answered.metadata.fallbacks
    assert any(f.engine == "trino" for f in answered.metadata.plan.fragments)
    assert_same_series(answered, expected)
    assert answered.series, "an empty answer proves nothing"


@pytest.mark.parametrize("sql,params", SQL_QUERIES, ids=[f"sql{i}" for i in range(len(SQL_QUERIES))])
async def test_sql_answers_equal_the_embedded_path(routers, sql, params):
    embedded, on_trino, _ = routers
    expected = await embedded.query(query_from_proto(sql_request(sql, params)), "a")
    answered = await on_trino.query(query_from_proto(sql_request(sql, params)), "a")
    assert list(answered.metadata.engines) == ["trino"]
    assert [f.engine for f in answered.metadata.plan.fragments] == ["trino"]
    assert list(answered.columns) == list(expected.columns)
    assert _rows(answered) == _rows(expected)
    assert answered.rows


async def test_explain_and_capabilities_name_trino(routers):
    _, on_trino, _ = routers
    explained = await on_trino.explain(query_from_proto(sql_request("SELECT count(*) FROM points")), "a")
    assert [f.engine for f in explained.plan.fragments] == ["trino"]
    explained = await on_trino.explain(query_from_proto(metrics_request("avg")), "a")
    assert [f.engine for f in explained.plan.fragments] == ["trino", "hot"]
    assert "on trino" in explained.plan.reason
    assert "trino" in (await on_trino.capabilities()).engines


async def test_sql_on_trino_says_hot_points_are_not_in_the_answer(routers):
    embedded, on_trino, _ = routers
    request = sql_request("SELECT count(*) AS n FROM points WHERE datasource = 'ds'")
    answered = await on_trino.query(query_from_proto(request), "a")
    everything = await embedded.query(query_from_proto(request), "a")
    hot = 5 * (HOT_END - FLUSHED_END) // 10_000
    assert _rows(answered)[0][0] == _rows(everything)[0][0] - hot
    assert f"{hot} points not yet flushed" in answered.metadata.plan.reason


@pytest.mark.parametrize(
    "sql",
    [
        "DROP TABLE series",
        "CREATE TABLE x AS SELECT * FROM points",
        "SELECT * FROM information_schema.tables",
        "SELECT * FROM hive.information_schema.tables",
        "SELECT * FROM system.runtime.queries",
        "COPY (SELECT * FROM points) TO '/tmp/out.csv'",
        "SELECT 1; SELECT 2",
        "INSERT INTO points VALUES ('x', 1, 1, 1.0)",
    ],
)
async def test_an_attack_refused_on_duckdb_is_refused_on_trino(routers, sql):
    embedded, on_trino, _ = routers
    with pytest.raises(InvalidArgument) as on_duckdb:
        await embedded.query(query_from_proto(sql_request(sql)), "a")
    with pytest.raises(InvalidArgument) as refused:
        await on_trino.query(query_from_proto(sql_request(sql)), "a")
    assert refused.value.field == "sql"
    assert refused.value.reason == on_duckdb.value.reason  # the same guard refused it, before Trino


async def test_tenant_b_cannot_read_tenant_a(routers, store):
    embedded, on_trino, _ = routers
    request = sql_request(
        "SELECT datasource, count(*) AS n, round(sum(value), 6) AS s FROM points GROUP BY 1 ORDER BY 1"
    )
    of_b = await on_trino.query(query_from_proto(request), "b")
    assert _rows(of_b) == _rows(await embedded.query(query_from_proto(request), "b"))
    assert [r[0] for r in _rows(of_b)] == ["ds"]  # not tenant a's ds2
    of_a = await on_trino.query(query_from_proto(request), "a")
    assert _rows(of_a)[0][2] != _rows(of_b)[0][2]  # tenant a's ds holds other values
    # A tenant with no data sees nothing at all.
    nobody = await on_trino.query(query_from_proto(sql_request("SELECT count(*) FROM metrics")), "c")
    assert _rows(nobody) == [[0]]


async def test_the_request_deadline_cancels_the_trino_query(routers, server):
    _, on_trino, _ = routers
    marker = f"deadline-{time.time_ns()}"
    request = sql_request(
        # About 10^12 row triples: no engine finishes it in time (two tables, 10^8 pairs, took a
        # warmed Trino under the deadline).
        f"SELECT '{marker}' AS m, count(*) FROM metrics a JOIN metrics b ON a.value < b.value "
        "JOIN metrics c ON b.value < c.value"
    )
    with pytest.raises(DeadlineExceeded):
        await on_trino.query(query_from_proto(request), "a", time_remaining=1.5)
    # The query is cancelled on the server, not left running.
    cursor = trino.dbapi.connect(host="127.0.0.1", port=server.port, user="test").cursor()
    deadline = time.monotonic() + 30
    states = []
    while time.monotonic() < deadline:
        states = cursor.execute(
            "SELECT state FROM system.runtime.queries WHERE strpos(query, ?) > 0 AND strpos(query, 'system.runtime') = 0",
            [marker],
        ).fetchall()
        if states and all(s[0] in ("FAILED", "FINISHED") for s in states):
            break
        time.sleep(0.2)
    assert states and all(s[0] == "FAILED" for s in states), states


async def test_trino_down_answers_from_duckdb_then_trino_again(routers, server):
    embedded, on_trino, metrics = routers
    sql, params = SQL_QUERIES[0]
    request = sql_request(sql, params)
    batch = metrics_request("avg")

    def failures():
        return (
            metrics.registry.get_sample_value(
                "analytics_engine_connection_failures_total", {"engine": "trino"}
            )
            or 0.0
        )

    before = failures()
    server.stop()
    try:
        answered = await on_trino.query(query_from_proto(request), "a")
        assert list(answered.metadata.engines) == ["duckdb"]
        assert "trino" in answered.metadata.fallbacks
        assert _rows(answered) == _rows(await embedded.query(query_from_proto(request), "a"))
        summed = await on_trino.query(query_from_proto(batch), "a")
        assert "trino" in summed.metadata.fallbacks and "trino" not in summed.metadata.engines
        assert_same_series(summed, await embedded.query(query_from_proto(batch), "a"))
        # The batch query came within the pause after the SQL query's failure: not tried, not counted.
        assert summed.metadata.fallbacks["trino"].startswith("not tried")
        assert failures() == before + 1
    finally:
        server.start()
    # Back: queries go to Trino again. Right after a start Trino may still refuse table scans
    # (NO_NODES_AVAILABLE while its node announces its catalogs): meanwhile answers stay right,
    # from DuckDB and marked.
    expected = _rows(await embedded.query(query_from_proto(request), "a"))
    give_up = time.monotonic() + 60
    while True:
        again = await on_trino.query(query_from_proto(request), "a")
        assert _rows(again) == expected
        if list(again.metadata.engines) == ["trino"]:
            break
        assert "trino" in again.metadata.fallbacks
        assert time.monotonic() < give_up, (
            f"Trino not used 60 s after its restart: {dict(again.metadata.fallbacks)}"
        )
        await asyncio.sleep(0.5)
    assert not again.metadata.fallbacks
    again = await on_trino.query(query_from_proto(batch), "a")
    assert "trino" in again.metadata.engines and not again.metadata.fallbacks
