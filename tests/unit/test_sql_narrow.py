"""SQL whose WHERE narrows `metrics` to some series and a window reads only those points (from the
points maps and the hot tier), and answers exactly as the whole view does."""

import dataclasses
from datetime import UTC, datetime

import duckdb
import numpy as np
import pytest

from libs.errors import Unavailable
from libs.storage import AcceptedSeries, MappedReader, MetricStore, StoreConfig
from libs.storage.keys import SeriesKey
from services.query_router import sql_views
from services.query_router.sql_guard import check_user_sql
from services.query_router.sql_narrow import (
    INT64_MAX,
    INT64_MIN,
    TIME_MARGIN_MS,
    Narrowing,
    narrowing,
    settle,
)
from services.query_router.sql_views import VIEWS, TenantDatabases, run_tenant_sql

HOUR = 3_600_000


def _narrowing(sql: str, params=()) -> Narrowing | None:
    return narrowing(check_user_sql(sql, VIEWS), list(params))


# ---- what a WHERE says -------------------------------------------------------------------------


def test_the_tsbs_high_cpu_shape_narrows_series_and_time():
    sql = """SELECT ts, max(value) FILTER (WHERE metric = 'cpu_usage_user') AS u FROM metrics
    WHERE datasource = ? AND labels['hostname'] = ? AND metric IN ('cpu_usage_user', 'cpu_usage_idle')
      AND ts >= CAST(? AS BIGINT) AND ts < CAST(? AS BIGINT)
    GROUP BY ts HAVING max(value) FILTER (WHERE metric = 'cpu_usage_user') > 90 ORDER BY ts"""
    assert _narrowing(sql, ["tsbs", "host_1", 1000.0, 5000.0]) == Narrowing(
        frozenset({"tsbs"}),
        frozenset({"cpu_usage_user", "cpu_usage_idle"}),
        (("hostname", frozenset({"host_1"})),),
        1000,
        5000,
    )


@pytest.mark.parametrize(
    ("where", "params", "start", "end"),
    [
        ("ts > 10 AND ts <= 20", [], 11, 21),
        ("10 < ts AND 20 >= ts", [], 11, 21),
        ("ts = $1", [7], 7, 8),
        ("ts >= ? AND ts >= ?", [5, 9], 9, INT64_MAX),
        ("ts >= ?", [1.5], INT64_MIN, INT64_MAX),  # DuckDB may round it either way: no bound
        ("ts >= ?", [True], INT64_MIN, INT64_MAX),
        ("ts >= '2020-01-01'", [], INT64_MIN, INT64_MAX),
        ("ts::DOUBLE > 5", [], INT64_MIN, INT64_MAX),  # a function of the column: left to DuckDB
        ("ts >= TRY_CAST(? AS BIGINT)", [5], INT64_MIN, INT64_MAX),
        ("(ts > 5 OR ts < 2)", [], INT64_MIN, INT64_MAX),
    ],
)
def test_time_bounds(where, params, start, end):
    n = _narrowing(f"SELECT * FROM metrics WHERE metric = 'm' AND {where}", params)
    assert n is not None
    assert (n.start, n.end) == (start, end)


@pytest.mark.parametrize(
    ("sql", "params", "metrics", "labels"),
    [
        ("SELECT * FROM metrics m WHERE m.labels.host = 'a' AND m.metric = 'x'", [], {"x"}, {"host": {"a"}}),
        ("SELECT * FROM metrics WHERE metrics.labels['host'] IN ('a', ?)", ["b"], None, {"host": {"a", "b"}}),
        ("SELECT * FROM metrics WHERE labels.Host = 'a'", [], None, {"Host": {"a"}}),
        ("SELECT * FROM metrics WHERE metric = 'x' AND metric IN ('x', 'y')", [], {"x"}, {}),
        ("SELECT * FROM metrics WHERE metric = 'x' AND metric = 'y'", [], set(), {}),
        (
            "SELECT * FROM metrics WHERE (metric = 'x' AND labels.host = $2) AND ts > $1",
            [1, "h"],
            {"x"},
            {"host": {"h"}},
        ),
        ("SELECT * FROM metrics WHERE 'x' = metric AND labels.host <> 'b'", [], {"x"}, {}),
        ("WITH s AS (SELECT 1) SELECT * FROM metrics WHERE metric = 'x'", [], {"x"}, {}),
        (
            "WITH h AS (SELECT ts, value FROM metrics WHERE labels.host = 'a') SELECT max(value) FROM h",
            [],
            None,
            {"host": {"a"}},
        ),
        (
            "SELECT 1 FROM series WHERE metric IN (SELECT metric FROM metrics WHERE metric = 'y')",
            [],
            {"y"},
            {},
        ),
        (
            "SELECT * FROM metrics WHERE metric = 'x' UNION ALL SELECT * FROM metrics WHERE metric = 'z'",
            [],
            None,
            None,
        ),
    ],
)
def test_series_conditions(sql, params, metrics, labels):
    n = _narrowing(sql, params)
    if labels is None:  # `metrics` read twice: not narrowed
        assert n is None
        return
    assert n is not None
    assert n.metrics == (None if metrics is None else frozenset(metrics))
    assert dict(n.labels) == {k: frozenset(v) for k, v in labels.items()}


@pytest.mark.parametrize(
    ("sql", "params"),
    [
        ("SELECT * FROM metrics", []),
        ("SELECT * FROM metrics WHERE ts > 5 AND datasource = 'd'", []),  # nothing of the series
        ("SELECT * FROM metrics WHERE metric = 'x' OR labels.host = 'a'", []),
        ("SELECT * FROM metrics WHERE NOT metric = 'x'", []),
        ("SELECT * FROM metrics WHERE metric NOT IN ('x')", []),
        ("SELECT * FROM metrics WHERE metric = ?", [5.0]),  # not a string: DuckDB casts it
        ("SELECT * FROM metrics WHERE metric IN ('x', NULL)", []),
        ("SELECT * FROM metrics WHERE metric IN (SELECT metric FROM series)", []),
        ("SELECT * FROM metrics WHERE lower(metric) = 'x'", []),
        ("SELECT * FROM metrics labels WHERE labels.metric = 'x'", []),  # the alias shadows the column
        (
            "SELECT * FROM series labels WHERE EXISTS (SELECT 1 FROM metrics WHERE labels.host = 'a')",
            [],
        ),  # which `labels` is that? not guessed
        ("SELECT a.* FROM metrics a JOIN metrics b USING (ts) WHERE a.metric = 'x'", []),
        ("SELECT * FROM metrics WHERE metric = 'x' AND ts IN (SELECT ts FROM metrics)", []),
        ("WITH metrics AS (SELECT * FROM series) SELECT * FROM metrics WHERE metric = 'x'", []),
        ("WITH m AS (SELECT * FROM metrics) SELECT * FROM m WHERE metric = 'x'", []),
        ("SELECT * FROM metrics WHERE metric = 'x' USING SAMPLE 10%", []),
        ("SELECT * FROM metrics TABLESAMPLE 10% WHERE metric = 'x'", []),
        ("SELECT * FROM metrics AS m(a, b) WHERE metric = 'x'", []),
        ("SELECT * FROM (SELECT * FROM metrics) WHERE metric = 'x'", []),
        ("SELECT * FROM metrics WHERE metric = 'x' UNION ALL SELECT * FROM metrics", []),
    ],
)
def test_what_cannot_be_trusted_narrows_nothing(sql, params):
    assert _narrowing(sql, params) is None


def test_expressions_without_columns_wait_to_be_evaluated():
    n = _narrowing(
        "SELECT * FROM metrics WHERE metric = 'm' AND time > now() - INTERVAL 1 HOUR "
        "AND ts <= epoch_ms(?::TIMESTAMP) AND time < (SELECT TIMESTAMP '2027-01-01') AND ts > value",
        ["2026-01-01"],
    )
    assert n is not None and (n.start, n.end) == (INT64_MIN, INT64_MAX)
    assert [(column, kind) for column, kind, _ in n.pending] == [
        ("time", "COMPARE_GREATERTHAN"),
        ("ts", "COMPARE_LESSTHANOREQUALTO"),
    ]  # not the subquery, not `value`


def _settled(where: str, params=()) -> tuple[Narrowing, duckdb.DuckDBPyConnection]:
    n = _narrowing(f"SELECT * FROM metrics WHERE metric = 'm' AND {where}", params)
    assert n is not None and n.pending
    con = duckdb.connect()
    return settle(con, n, list(params)), con


def test_settled_bounds_hold_every_row_the_comparison_keeps():
    day = datetime(2026, 9, 22, tzinfo=UTC)
    ms = int(day.timestamp() * 1000)
    n, _ = _settled("time >= TIMESTAMP '2026-09-22 00:00:00'")
    assert (n.start, n.end, n.pending) == (ms - TIME_MARGIN_MS, INT64_MAX, ())
    n, _ = _settled("ts < CAST($1 AS DOUBLE) + 0.5 AND ts >= $1 - 10", [1000.0])
    assert (n.start, n.end) == (990, 1002)  # ts < 1000.5: up to 1000; the bounds are whole ms around
    n, _ = _settled("time BETWEEN ? AND ?", ["2026-09-22", "2026-09-23"])  # as Grafana's $__timeFilter
    assert (n.start, n.end) == (ms - TIME_MARGIN_MS, ms + 2 * TIME_MARGIN_MS + 1)
    n, _ = _settled("ts BETWEEN 5 AND CAST(? AS DOUBLE)", [9.5])
    assert (n.start, n.end) == (5, 11)
    negated = _narrowing("SELECT * FROM metrics WHERE metric = 'm' AND ts NOT BETWEEN 5 AND 9")
    assert negated is not None and (negated.start, negated.end, negated.pending) == (INT64_MIN, INT64_MAX, ())


def test_now_is_the_instant_of_the_transaction_the_statement_runs_in():
    n, con = _settled("ts < epoch_ms(now())")
    # The user's statement runs next, in the same transaction: now() has not moved.
    assert con.execute("SELECT epoch_ms(now())").fetchall() == [(n.end - 1,)]


def test_volatile_or_unreadable_expressions_bound_nothing():
    n, con = _settled("ts < random() * 1000 AND time < now()")
    assert n.start == INT64_MIN and n.end > int(datetime.now(UTC).timestamp() * 1000)  # now() alone bounds
    n, con = _settled("ts < no_such_function(1)")
    assert (n.start, n.end, n.pending) == (INT64_MIN, INT64_MAX, ())
    assert con.execute("SELECT 1").fetchall() == [(1,)], "the cursor is usable, in a fresh transaction"
    n, _ = _settled("time > 'not a time'")
    assert (n.start, n.end) == (INT64_MIN, INT64_MAX)


# ---- the same answers from fewer points ----------------------------------------------------------


def _series(metric: str, host: str, ts: np.ndarray, scale: float) -> AcceptedSeries:
    return AcceptedSeries(SeriesKey.of(metric, {"host": host, "rack": "r1"}), ts, ts / 1000.0 * scale)


@pytest.fixture
async def store(tmp_path):
    store = MetricStore(StoreConfig(tmp_path))
    store.open()
    base = 1_790_000_000_000
    for day in range(2):  # two segments, then hot points on top
        ts = base + day * 24 * HOUR + np.arange(0, 6 * HOUR, 60_000, dtype=np.int64)
        batch = [_series(m, h, ts, k + 1) for k, m in enumerate(("cpu", "mem")) for h in ("a", "b", "c")]
        await store.ingest("acme", "ds", batch)
        await store.flush()
    hot_ts = base + 2 * 24 * HOUR + np.arange(0, HOUR, 60_000, dtype=np.int64)
    await store.ingest("acme", "ds", [_series("cpu", "a", hot_ts, 5.0), _series("cpu", "b", hot_ts, 6.0)])
    await store.ingest("acme", "ds2", [_series("cpu", "a", hot_ts[:5], 7.0)])
    await store.flush()
    await store.ingest("acme", "ds2", [_series("cpu", "a", hot_ts[5:10], 8.0)])
    # A datasource whose series have no `host` label: NULL there, which no condition on it keeps.
    pod = AcceptedSeries(SeriesKey.of("cpu", {"pod": "p1"}), hot_ts, np.ones(len(hot_ts)))
    await store.ingest("acme", "ds3", [pod])
    yield store
    await store.close()


QUERIES = [
    (
        "SELECT datasource, labels.host, count(*), sum(value), min(ts), max(ts) FROM metrics "
        "WHERE metric = 'cpu' AND labels['host'] = ? GROUP BY ALL ORDER BY ALL",
        ["a"],
    ),
    (
        "SELECT ts, max(value) FILTER (WHERE metric = 'cpu') AS c, max(value) FILTER (WHERE metric = 'mem') AS m "
        "FROM metrics WHERE datasource = ? AND labels.host = ? AND metric IN ('cpu', 'mem') "
        "AND ts >= CAST(? AS BIGINT) AND ts < CAST(? AS BIGINT) GROUP BY ts HAVING max(value) > 1 ORDER BY ts",
        ["ds", "b", 1_790_000_000_000 + 2 * HOUR + 1.0, 1_790_000_000_000 + 26 * HOUR + 0.0],
    ),
    ("SELECT count(*), sum(value) FROM metrics WHERE labels.host IN ('a', 'c') AND ts > 1790086400000", []),
    ("SELECT metric, count(*) FROM metrics WHERE metric = 'mem' AND ts <= 1790003600000 GROUP BY 1", []),
    ("SELECT count(*) FROM metrics WHERE metric = 'cpu' AND metric = 'mem'", []),
    ("SELECT count(*) FROM metrics WHERE metric = 'nope'", []),
    ("SELECT count(*) FROM metrics WHERE labels.host = 'a' AND datasource = 'nope'", []),
    ("SELECT count(*) FROM metrics WHERE labels.HOST = 'a'", []),  # any case, as DuckDB's STRUCT
    ("SELECT count(*) FROM metrics WHERE labels['zone'] = 'z'", []),  # no such label: NULL
    ("SELECT datasource, count(*) FROM metrics WHERE labels.pod = 'p1' GROUP BY 1", []),
    (
        "SELECT datasource, count(*), min(time) FROM metrics WHERE metric = 'cpu' "
        "AND time >= TIMESTAMP '2026-09-22 08:00:00' AND time < now() GROUP BY 1 ORDER BY 1",
        [],
    ),
    (
        "SELECT count(*) FROM metrics WHERE labels.host = 'b' AND ts >= epoch_ms(?::TIMESTAMP) "
        "AND time > now() - INTERVAL 36500 DAY",
        ["2026-09-23 12:00:00"],
    ),
    (
        "SELECT labels.host, count(*), min(ts), max(ts) FROM metrics WHERE metric = 'cpu' "
        "AND ts BETWEEN 1790000000000 + 60000 AND 1790090000000 GROUP BY 1 ORDER BY 1",
        [],
    ),
    (
        "SELECT datasource, count(*) FROM metrics WHERE labels.pod IS NULL AND metric = 'cpu' GROUP BY 1 ORDER BY 1",
        [],
    ),
    (
        "WITH b AS (SELECT ts, value FROM metrics WHERE labels.host = 'b' AND metric = 'mem') "
        "SELECT count(*), max(value), (SELECT count(*) FROM series) FROM b",
        [],
    ),
    (
        "SELECT s.labels.host, x.n FROM series s JOIN (SELECT metric, count(*) AS n FROM metrics "
        "WHERE metric = 'mem' AND labels.host IN ('a', 'c') GROUP BY metric) x USING (metric) ORDER BY ALL",
        [],
    ),
    (
        "SELECT m.labels.host, count(*), max(m.value) FROM metrics m JOIN series s ON s.metric = m.metric "
        "WHERE m.metric = 'cpu' AND m.ts >= 1790172000000 GROUP BY 1 ORDER BY 1",
        [],
    ),
]


def _answers(store: MetricStore, databases: TenantDatabases, snapshots=None) -> list:
    snapshots = snapshots or {ds: store.snapshot("acme", ds) for ds in store.datasources("acme")}
    return [run_tenant_sql(databases, "acme", snapshots, sql, params, 10_000)[:2] for sql, params in QUERIES]


async def test_narrowed_views_answer_as_the_whole_view(store):
    whole = _answers(store, TenantDatabases(store.segments_root))
    # Two flushed days and an hour of hot points for (ds, a); five flushed and five hot in ds2.
    assert [row[:3] for row in whole[0][1]] == [("ds", "a", 2 * 360 + 60), ("ds2", "a", 10)]
    maps = MappedReader()
    assert _answers(store, TenantDatabases(store.segments_root, maps=maps)) == whole
    narrowed = [
        run_tenant_sql(
            TenantDatabases(store.segments_root, maps=maps),
            "acme",
            {"ds": store.snapshot("acme", "ds")},
            sql,
            params,
            10,
        ).narrowed
        for sql, params in QUERIES
    ]
    assert narrowed == [True] * 16 + [False]  # the last reads `metrics` through a join
    # Segments without a points map (written by an earlier release) are read from their Parquet files.
    snapshots = {}
    for ds in store.datasources("acme"):
        snap = store.snapshot("acme", ds)
        snapshots[ds] = dataclasses.replace(
            snap, segments=tuple(dataclasses.replace(s, mapped=False) for s in snap.segments)
        )
    assert _answers(store, TenantDatabases(store.segments_root, maps=maps), snapshots) == whole


async def test_a_narrowed_query_reads_the_points_maps_not_the_parquet_files(store):
    databases = TenantDatabases(store.segments_root, maps=MappedReader())
    sql, params = QUERIES[0]
    before = run_tenant_sql(databases, "acme", {"ds": store.snapshot("acme", "ds")}, sql, params, 100)[1]
    for segment in store.snapshot("acme", "ds").segments:
        segment.path.write_bytes(b"not parquet")
    snapshots = {"ds": store.snapshot("acme", "ds")}
    assert run_tenant_sql(databases, "acme", snapshots, sql, params, 100)[1] == before
    with pytest.raises(Unavailable):  # the whole view reads them
        run_tenant_sql(databases, "acme", snapshots, "SELECT count(*) FROM metrics", [], 100)


async def test_a_narrowing_that_selects_too_many_points_reads_the_whole_view(store, monkeypatch):
    databases = TenantDatabases(store.segments_root, maps=MappedReader())
    sql, params = QUERIES[0]
    snapshots = {"ds": store.snapshot("acme", "ds")}
    before = run_tenant_sql(databases, "acme", snapshots, sql, params, 100)[1]
    monkeypatch.setattr(sql_views, "NARROW_MAX_POINTS", 100)
    for segment in store.snapshot("acme", "ds").segments:
        segment.path.write_bytes(b"not parquet")
    with pytest.raises(Unavailable):
        run_tenant_sql(databases, "acme", snapshots, sql, params, 100)
    monkeypatch.setattr(sql_views, "NARROW_MAX_POINTS", 10_000)
    assert run_tenant_sql(databases, "acme", snapshots, sql, params, 100)[1] == before


async def test_a_time_condition_narrows_the_window_read(store, monkeypatch):
    # Two flushed days of 2,160 points for host a's two metrics; a bound past the first day's
    # (with its margin of a day) reads only the second day and the hot hour.
    databases = TenantDatabases(store.segments_root, maps=MappedReader())
    snapshots = {"ds": store.snapshot("acme", "ds")}
    since = "SELECT count(*) FROM metrics WHERE labels.host = 'a' AND time >= ?"
    day2 = datetime.fromtimestamp((1_790_000_000_000 + 40 * HOUR) / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")
    whole = run_tenant_sql(TenantDatabases(store.segments_root), "acme", snapshots, since, [day2], 10).rows
    monkeypatch.setattr(sql_views, "NARROW_MAX_POINTS", 1_000)
    for segment in store.snapshot("acme", "ds").segments:
        segment.path.write_bytes(b"not parquet")
    assert run_tenant_sql(databases, "acme", snapshots, since, [day2], 10).rows == whole
    with pytest.raises(Unavailable):  # no window: both days, over the cap, from the Parquet files
        run_tenant_sql(databases, "acme", snapshots, since.replace("time >= ?", "time IS NOT NULL"), [], 10)
