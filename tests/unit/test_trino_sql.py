"""The Trino adapter's SQL, without a server: user SQL translated with the views as CTEs over the
tenant's own tables, label access on the MAP, foreign tables refused; batch plans naming Trino."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from libs.errors import InvalidArgument
from libs.storage import SeriesCatalog, Snapshot
from libs.storage.segments import Segment
from services.query_router.engine import Bucketing, Fragment
from services.query_router.planner import Window, plan
from services.query_router.trino import fragment_sql, schema_name, translate_sql, view_sql

VIEWS = {"points": "SELECT 1 AS p", "series": "SELECT 2 AS s", "metrics": "SELECT 3 AS m"}


def _segment(tenant: str, path: str, lo: int, hi: int) -> Segment:
    return Segment(tenant, "ds", Path(path), lo, hi, 10)


def test_the_views_become_ctes_ahead_of_the_users_own():
    sql = translate_sql(
        "WITH a AS (SELECT * FROM points) SELECT labels.host FROM a JOIN series USING (x)", VIEWS
    )
    assert sql.startswith("WITH points AS (SELECT 1 AS p), series AS (SELECT 2 AS s), a AS (")
    assert "metrics AS" not in sql  # only the views the query reads


@pytest.mark.parametrize(
    "user,expected",
    [
        ("SELECT labels['host'] FROM metrics", "ELEMENT_AT(labels, 'host')"),
        ("SELECT labels.host FROM metrics", "ELEMENT_AT(labels, 'host')"),
        ("SELECT m.labels['host'] FROM metrics m", "ELEMENT_AT(m.labels, 'host')"),
        ("SELECT m.labels.host FROM metrics m", "ELEMENT_AT(m.labels, 'host')"),
    ],
)
def test_label_access_reads_the_map_with_element_at(user, expected):
    assert expected in translate_sql(user, VIEWS)


@pytest.mark.parametrize(
    "user",
    [
        "SELECT * FROM hive.t_x.p_y",
        "SELECT * FROM other",
        "SELECT * FROM system.runtime.queries",
        "WITH points AS (SELECT 1) SELECT * FROM points",
    ],
)
def test_anything_but_the_views_is_refused(user):
    with pytest.raises(InvalidArgument) as refused:
        translate_sql(user, VIEWS)
    assert refused.value.field == "sql"


def test_views_read_only_the_live_files_of_the_tenants_own_schema():
    catalog = SeriesCatalog()
    live = _segment("a", "/data/tenant=a/datasource=ds/points/day=x/1.parquet", 0, 10)
    views = view_sql(
        "a", {"ds": Snapshot(catalog, None, None, None, (live,))}, {"ds": [Path("/data/s/1.parquet")]}
    )
    assert f"hive.{schema_name('a')}." in views["points"]
    assert schema_name("b") not in views["metrics"]
    assert "'local:///data/tenant=a/datasource=ds/points/day=x/1.parquet'" in views["points"]
    assert "'local:///data/s/1.parquet'" in views["series"]
    # No data: empty views of the same columns.
    empty = view_sql("a", {}, {})
    assert "WHERE false" in empty["metrics"]


def test_fragment_sql_bounds_time_and_series_and_signs_uint64_ids():
    seg = _segment("a", "/d/1.parquet", 0, 100)
    selection = pa.table(
        {"series_id": pa.array([1, 2**64 - 1], pa.uint64()), "gid": pa.array([0, 1], pa.int32())}
    )
    sql = fragment_sql(Fragment("trino", 10, 90, (seg,), None), selection, "p90", Bucketing(20))
    assert "ts >= 10 AND ts < 90" in sql and "series_id IN (1, -1)" in sql and "(ts / 20) * 20" in sql
    with pytest.raises(ValueError):
        fragment_sql(Fragment("trino", 10, 90, (seg,), None), selection, "rate", Bucketing(20))


def test_batch_plans_send_the_cold_part_to_trino_and_keep_the_hot_part_embedded():
    seg = _segment("a", "/d/1.parquet", 0, 999)
    hot = pa.table({"series_id": pa.array([1], pa.uint64()), "ts": [1500], "value": [1.0]})
    window = Window(0, 2000, Bucketing(100))
    both = plan("batch", window, Snapshot(SeriesCatalog(), hot, 1500, 1500, (seg,)), "avg", 1, "trino")
    assert [(f.engine, f.start, f.end) for f in both.fragments] == [("trino", 0, 1500), ("hot", 1500, 2000)]
    cold = plan("batch", window, Snapshot(SeriesCatalog(), None, None, None, (seg,)), "avg", 1, "trino")
    assert [f.engine for f in cold.fragments] == ["trino"] and cold.fragments[0].rollup is None
    # rate and calendar buckets stay embedded; no Trino configured: embedded as before.
    assert (
        plan("batch", window, Snapshot(SeriesCatalog(), None, None, None, (seg,)), "rate", 1, "trino")
        .fragments[0]
        .engine
        == "duckdb"
    )
    assert (
        plan("batch", window, Snapshot(SeriesCatalog(), None, None, None, (seg,)), "avg", 1)
        .fragments[0]
        .engine
        == "duckdb"
    )
