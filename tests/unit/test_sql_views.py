"""User SQL sees the calling tenant's views only, hot and flushed points alike."""

import numpy as np
import pytest

from libs.errors import InvalidArgument
from libs.storage import AcceptedSeries, MetricStore, StoreConfig
from libs.storage.keys import SeriesKey
from services.query_router.sql_views import TenantDatabases, run_tenant_sql


def _series(host: str, values: list[float]) -> AcceptedSeries:
    return AcceptedSeries(
        SeriesKey.of("cpu", {"host": host}), np.arange(len(values), dtype=np.int64) * 1000, np.array(values)
    )


@pytest.fixture
async def store(tmp_path):
    store = MetricStore(StoreConfig(tmp_path))
    store.open()
    await store.ingest("acme", "ds", [_series("a", [1, 2, 3])])
    await store.flush()
    await store.ingest("acme", "ds", [_series("b", [10])])  # stays hot
    await store.ingest("other", "ds", [_series("secret", [99])])
    yield store
    await store.close()


def _sql(store: MetricStore, tenant: str, sql: str, params=()):
    snapshots = {ds: store.snapshot(tenant, ds) for ds in store.datasources(tenant)}
    columns, rows, _, _ = run_tenant_sql(
        TenantDatabases(store.segments_root), tenant, snapshots, sql, list(params), 1000
    )
    return columns, rows


async def test_hot_and_flushed_points_with_struct_labels(store):
    columns, rows = _sql(
        store,
        "acme",
        "SELECT labels.host AS host, labels['host'] AS h2, sum(value) AS total FROM metrics "
        "WHERE metric = ? GROUP BY ALL ORDER BY host",
        ["cpu"],
    )
    assert columns == ["host", "h2", "total"]
    assert rows == [("a", "a", 6.0), ("b", "b", 10.0)]
    assert _sql(store, "acme", "SELECT count(*) FROM series")[1] == [(2,)]


async def test_another_tenants_data_is_out_of_reach(store):
    assert _sql(store, "acme", "SELECT count(*) FROM metrics WHERE labels.host = 'secret'")[1] == [(0,)]
    other = store.segments_root / "tenant=other"
    await store.flush()
    with pytest.raises(InvalidArgument):
        _sql(store, "acme", f"SELECT * FROM read_parquet('{other}/**/*.parquet')")
    assert _sql(store, "other", "SELECT max(value) FROM metrics")[1] == [(99.0,)]


async def test_datasources_with_different_label_keys_share_one_view(store):
    await store.ingest(
        "acme", "ds2", [AcceptedSeries(SeriesKey.of("mem", {"pod": "p1"}), np.array([5]), np.array([4.0]))]
    )
    _, rows = _sql(
        store,
        "acme",
        "SELECT datasource, metric, labels.host, labels.pod, value FROM metrics ORDER BY value DESC LIMIT 2",
    )
    assert rows == [("ds", "cpu", "b", None, 10.0), ("ds2", "mem", None, "p1", 4.0)]


async def test_a_label_key_no_series_has_yet_reads_as_null(store):
    _, rows = _sql(store, "acme", "SELECT count(*) FROM metrics WHERE labels['pod'] IS NULL")
    assert rows == [(4,)]


async def test_the_points_view_aggregates_by_series_before_any_join(store):
    _, rows = _sql(
        store,
        "acme",
        "WITH last AS (SELECT series_id, arg_max(value, ts) AS value FROM points WHERE datasource = ? "
        "GROUP BY series_id) SELECT s.labels.host, last.value FROM last JOIN series s USING (series_id) "
        "ORDER BY 1",
        ["ds"],
    )
    assert rows == [("a", 3.0), ("b", 10.0)]


async def test_the_series_view_is_reused_while_unchanged_and_rebuilt_when_series_arrive(store):
    databases = TenantDatabases(store.segments_root)

    def series_rows():
        snapshots = {ds: store.snapshot("acme", ds) for ds in store.datasources("acme")}
        sql = "SELECT datasource, metric, labels::VARCHAR FROM series ORDER BY ALL"
        return run_tenant_sql(databases, "acme", snapshots, sql, [], 1000)[1]

    catalog = store.snapshot("acme", "ds").catalog
    first = databases.series_of("acme", "ds", catalog, ["host"])
    assert databases.series_of("acme", "ds", catalog, ["host"]) is first  # unchanged: not rebuilt
    assert series_rows() == [("ds", "cpu", "{'host': a}"), ("ds", "cpu", "{'host': b}")]
    await store.ingest("acme", "ds", [_series("c", [7])])
    await store.ingest(
        "acme", "ds2", [AcceptedSeries(SeriesKey.of("mem", {"pod": "p1"}), np.array([5]), np.array([4.0]))]
    )
    assert databases.series_of("acme", "ds", catalog, ["host"]) is not first
    assert series_rows() == [
        ("ds", "cpu", "{'host': a, 'pod': NULL}"),
        ("ds", "cpu", "{'host': b, 'pod': NULL}"),
        ("ds", "cpu", "{'host': c, 'pod': NULL}"),
        ("ds2", "mem", "{'host': NULL, 'pod': p1}"),
    ]


async def test_a_kept_cursor_answers_only_while_its_data_is_unchanged(store):
    databases = TenantDatabases(store.segments_root)

    def count(sql: str = "SELECT count(*), sum(value) FROM metrics") -> tuple:
        snapshots = {ds: store.snapshot("acme", ds) for ds in store.datasources("acme")}
        return run_tenant_sql(databases, "acme", snapshots, sql, [], 10)[1][0]

    assert count() == (4, 16.0)
    live = {ds: store.snapshot("acme", ds) for ds in store.datasources("acme")}
    kept = databases.views("acme", live, True)
    assert databases.views("acme", live, True) is not kept, "a cursor serves one query at a time"
    databases.release("acme", kept, reusable=True)
    assert databases.views("acme", live, True) is kept, "the same data reuses the kept cursor"
    databases.release("acme", kept, reusable=True)

    # New hot points, a flush, a new series: each changes what the views must show.
    await store.ingest("acme", "ds", [_series("b", [10, 5])])  # (b, 0) again (last write wins), (b, 1000) new
    assert count() == (5, 21.0)
    await store.flush()
    assert count() == (5, 21.0)
    await store.ingest("acme", "ds", [_series("c", [1])])
    assert count() == (6, 22.0)
    assert count("SELECT count(*) FROM series") == (3,)
    assert count("SELECT count(*) FROM points") == (6,)
