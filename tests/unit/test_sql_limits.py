"""User SQL shows no server path (settings, catalog functions, error messages) and stays within its
memory limit."""

from pathlib import Path

import numpy as np
import pytest

from libs.config import load_settings
from libs.errors import ConfigError, InvalidArgument, ResourceExhausted, Unavailable
from libs.storage import AcceptedSeries, MetricStore, StoreConfig
from libs.storage.keys import SeriesKey
from services.query_router.sql_guard import PATH_PLACEHOLDER, READABLE_SETTINGS, check_user_sql, redact_paths
from services.query_router.sql_views import VIEWS, TenantDatabases, run_tenant_sql


@pytest.fixture
async def store(tmp_path):
    store = MetricStore(StoreConfig(tmp_path))
    store.open()
    series = AcceptedSeries(
        SeriesKey.of("cpu", {"host": "a"}), np.arange(3, dtype=np.int64) * 1000, np.ones(3)
    )
    await store.ingest("acme", "ds", [series])
    await store.flush()
    yield store
    await store.close()


def _sql(store: MetricStore, sql: str, databases: TenantDatabases | None = None):
    snapshots = {ds: store.snapshot("acme", ds) for ds in store.datasources("acme")}
    databases = databases or TenantDatabases(store.segments_root)
    return run_tenant_sql(databases, "acme", snapshots, sql, [], 1000)[:2]


def _segment(store: MetricStore) -> Path:
    return store.snapshot("acme", "ds").segments[0].path


async def test_every_setting_that_holds_a_path_is_unreadable(store, tmp_path):
    # The settings of a real tenant database, read around the guard: those naming a path (the tenant's
    # directory, secret_directory, ...) must be refused, the readable ones must answer without one.
    database = TenantDatabases(store.segments_root).of("acme")
    settings = dict(database.execute("SELECT name, value FROM duckdb_settings()").fetchall())
    with_paths = {name for name, value in settings.items() if value and ("/" + str(value)).count("/") > 2}
    assert {"allowed_directories", "secret_directory"} <= with_paths
    for name in with_paths:
        with pytest.raises(InvalidArgument, match=f"setting '{name}' is not readable"):
            check_user_sql(f"SELECT current_setting('{name}')", VIEWS)
    for name in READABLE_SETTINGS:
        _, rows = _sql(store, f"SELECT current_setting('{name}')::VARCHAR")
        assert str(tmp_path) not in rows[0][0] and not rows[0][0].startswith("/"), name


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT current_setting(?)",
        "SELECT current_setting('allowed_' || 'directories')",
        "SELECT 'allowed_directories'.current_setting()",
        "SELECT list_transform(['allowed_directories'], k -> current_setting(k))",
    ],
)
def test_current_setting_takes_only_a_quoted_readable_name(sql):
    with pytest.raises(InvalidArgument, match="not readable"):
        check_user_sql(sql, VIEWS)


async def test_a_missing_segment_is_unavailable_without_its_path(store, tmp_path):
    _segment(store).unlink()
    with pytest.raises(Unavailable) as caught:
        _sql(store, "SELECT sum(value) FROM points")
    assert caught.value.reason.startswith("a data file could not be read: IO Error: No files found")
    assert str(tmp_path) not in caught.value.reason and PATH_PLACEHOLDER in caught.value.reason


async def test_a_damaged_segment_is_unavailable_without_its_path(store, tmp_path):
    _segment(store).write_bytes(b"not parquet")
    with pytest.raises(Unavailable) as caught:
        _sql(store, "SELECT sum(value) FROM points")
    assert "too small to be a Parquet file" in caught.value.reason
    assert str(tmp_path) not in caught.value.reason and PATH_PLACEHOLDER in caught.value.reason


async def test_a_query_over_the_memory_limit_is_resource_exhausted(store):
    databases = TenantDatabases(store.segments_root, memory_limit="64MB")
    with pytest.raises(ResourceExhausted) as caught:
        _sql(
            store,
            "SELECT length(string_agg(repeat('x', 1000000), ',')) FROM (SELECT unnest(range(200)))",
            databases,
        )
    assert "more memory than QUERY_MEMORY_LIMIT (64MB) allows" in caught.value.reason
    # The database goes on answering.
    assert _sql(store, "SELECT count(*) FROM points", databases)[1] == [(3,)]


async def test_the_limits_are_set_on_the_tenant_database(store):
    database = TenantDatabases(store.segments_root, memory_limit="100MiB", threads=1).of("acme")
    settings = "SELECT current_setting('memory_limit'), current_setting('threads'), current_setting('temp_directory')"
    assert database.execute(settings).fetchall() == [("100.0 MiB", 1, "")]


def test_redaction_hides_the_roots_in_every_spelling_and_any_absolute_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data" / "segments").mkdir(parents=True)
    relative = Path("data/segments")
    message = (
        f'No data files match "{tmp_path}/data/segments/tenant=a/x.parquet", "data/segments/tenant=a/y.parquet", '
        "'/etc/duckdb/conf' or /root/.duckdb/stored_secrets; 10/2/3 and Etc/UTC and https://example.com/a/b stay"
    )
    redacted = redact_paths(message, [relative])
    assert redacted == (
        f'No data files match "{PATH_PLACEHOLDER}", "{PATH_PLACEHOLDER}", '
        f"'{PATH_PLACEHOLDER}' or {PATH_PLACEHOLDER}; 10/2/3 and Etc/UTC and https://example.com/a/b stay"
    )


@pytest.mark.parametrize("value", ["2", "lots", "-1GB", "2 PB"])
def test_a_bad_memory_limit_stops_start_up_naming_the_setting(monkeypatch, value):
    monkeypatch.setenv("QUERY_MEMORY_LIMIT", value)
    with pytest.raises(ConfigError, match="QUERY_MEMORY_LIMIT"):
        load_settings()
