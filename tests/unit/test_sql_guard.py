from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest

from libs.errors import InvalidArgument
from services.query_router.sql_guard import FORBIDDEN_FUNCTIONS, check_user_sql, harden, run_user_sql

ALLOWED = frozenset({"metrics", "series"})


@pytest.fixture(scope="module")
def allowed_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("allowed")


# One hardened connection serves the whole module: building one costs more than a hundred guard checks,
# refused statements never reach it, and allowed ones only read. A guard regression that let a write
# through would fail its own test first.
@pytest.fixture(scope="module")
def connection(allowed_dir: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    """The calling tenant's two views, another tenant's data beside them, then hardened."""
    con = duckdb.connect(":memory:")
    con.execute(
        "CREATE VIEW metrics AS SELECT ts::INTEGER AS ts, host, value::DOUBLE AS value "
        "FROM (VALUES (1, 'a', 1), (2, 'a', 3), (3, 'b', 5), (4, 'b', 7), (5, 'c', 9)) AS t(ts, host, value)"
    )
    con.execute("CREATE VIEW series AS SELECT * FROM (VALUES ('a', 'eu'), ('b', 'us')) AS t(host, region)")
    con.execute("CREATE TABLE other_tenant_metrics AS SELECT 'SECRET' AS s")
    con.execute("CREATE SCHEMA other_tenant")
    con.execute("CREATE TABLE other_tenant.metrics AS SELECT 'SECRET' AS s")
    con.execute("CREATE TYPE mood AS ENUM ('sad', 'happy')")
    harden(con, [allowed_dir])
    yield con
    con.close()


def _run(con: duckdb.DuckDBPyConnection, sql: str, params: list[object] | None = None, max_rows: int = 100):
    return run_user_sql(con, sql, params or [], ALLOWED, max_rows)


def _refusal(con: duckdb.DuckDBPyConnection, sql: str, params: list[object] | None = None) -> InvalidArgument:
    with pytest.raises(InvalidArgument) as caught:
        _run(con, sql, params)
    return caught.value


# --- allowed -------------------------------------------------------------------------------------------


def test_plain_select_returns_columns_and_rows(connection):
    columns, rows = _run(connection, "SELECT ts, host, value FROM metrics ORDER BY ts")
    assert columns == ["ts", "host", "value"]
    assert rows == [(1, "a", 1.0), (2, "a", 3.0), (3, "b", 5.0), (4, "b", 7.0), (5, "c", 9.0)]


def test_aggregates_with_group_by(connection):
    columns, rows = _run(
        connection,
        "SELECT host, sum(value) AS total, count(*) AS n FROM metrics GROUP BY host ORDER BY host",
    )
    assert columns == ["host", "total", "n"]
    assert rows == [("a", 4.0, 2), ("b", 12.0, 2), ("c", 9.0, 1)]


def test_cte(connection):
    _, rows = _run(connection, "WITH hot AS (SELECT * FROM metrics WHERE value > 4) SELECT count(*) FROM hot")
    assert rows == [(3,)]


def test_nested_ctes_see_earlier_and_outer_ctes(connection):
    sql = (
        "WITH a AS (SELECT * FROM metrics), b AS (SELECT host FROM a WHERE value > 4) "
        "SELECT * FROM (WITH c AS (SELECT * FROM b) SELECT count(*) FROM c)"
    )
    assert _run(connection, sql)[1] == [(3,)]


def test_cte_names_match_case_insensitively_like_duckdb(connection):
    assert _run(connection, "WITH Hot AS (SELECT * FROM metrics) SELECT count(*) FROM HOT")[1] == [(5,)]


def test_cte_named_like_an_allowed_view_over_that_view(connection):
    # The body's `metrics` is the real view (a non-recursive CTE cannot see itself), which is allowed.
    sql = "WITH metrics AS (SELECT * FROM metrics WHERE host = 'a') SELECT count(*) FROM metrics"
    assert _run(connection, sql)[1] == [(2,)]


def test_materialized_cte(connection):
    sql = "WITH m AS MATERIALIZED (SELECT value FROM metrics) SELECT max(value) FROM m"
    assert _run(connection, sql)[1] == [(9.0,)]


def test_recursive_cte(connection):
    sql = "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 3) SELECT i FROM n ORDER BY i"
    assert _run(connection, sql)[1] == [(1,), (2,), (3,)]


def test_nested_subqueries(connection):
    sql = (
        "SELECT host FROM metrics WHERE value = (SELECT max(value) FROM "
        "(SELECT value FROM metrics WHERE host IN (SELECT host FROM series)))"
    )
    assert _run(connection, sql)[1] == [("b",)]


def test_join_between_allowed_views(connection):
    sql = (
        "SELECT s.region, sum(m.value) FROM metrics AS m JOIN series AS s USING (host) "
        "GROUP BY s.region ORDER BY s.region"
    )
    assert _run(connection, sql)[1] == [("eu", 4.0), ("us", 12.0)]


def test_union(connection):
    sql = "SELECT host FROM metrics UNION SELECT host FROM series ORDER BY host"
    assert _run(connection, sql)[1] == [("a",), ("b",), ("c",)]


def test_window_function(connection):
    sql = "SELECT ts, sum(value) OVER (PARTITION BY host ORDER BY ts) AS running FROM metrics ORDER BY ts"
    assert _run(connection, sql)[1] == [(1, 1.0), (2, 4.0), (3, 5.0), (4, 12.0), (5, 9.0)]


def test_question_mark_params_are_bound(connection):
    sql = "SELECT count(*), sum(value) FROM metrics WHERE host = ? AND value > ?"
    assert _run(connection, sql, ["b", 5.0])[1] == [(1, 7.0)]


def test_dollar_params_are_bound_and_reusable(connection):
    sql = "SELECT sum(value), $1 + $2 FROM metrics WHERE value BETWEEN $1 AND $2"
    assert _run(connection, sql, [3, 7])[1] == [(15.0, 10)]


def test_params_are_values_never_sql(connection):
    _, rows = _run(connection, "SELECT count(*) FROM metrics WHERE host = ?", ["a' OR '1'='1"])
    assert rows == [(0,)]


def test_max_rows_truncates_and_leaves_the_connection_usable(connection):
    columns, rows = _run(connection, "SELECT ts FROM metrics ORDER BY ts", max_rows=2)
    assert columns == ["ts"]
    assert rows == [(1,), (2,)]
    # The unread rest of the streamed result must not block the next query.
    assert _run(connection, "SELECT count(*) FROM series")[1] == [(2,)]


def test_max_rows_zero_returns_columns_only(connection):
    assert _run(connection, "SELECT ts, host FROM metrics", max_rows=0) == (["ts", "host"], [])


def test_harmless_scalar_functions_and_settings_are_allowed(connection):
    sql = "SELECT upper(host), current_setting('threads') > 0, enum_range(NULL::mood) FROM metrics LIMIT 1"
    assert _run(connection, sql)[1] == [("A", True, ["sad", "happy"])]


@pytest.mark.parametrize(
    ("sql", "tables"),
    [
        ("SELECT * FROM metrics;", {"metrics"}),
        ("SELECT 1", set()),
        # In a subquery, a join and a CTE body; a CTE of the same name shadows the table.
        ("SELECT * FROM (SELECT * FROM Metrics) m JOIN series USING (metric)", {"metrics", "series"}),
        ("WITH metrics AS (SELECT 1 AS x) SELECT * FROM metrics", set()),
        ("WITH x AS (SELECT * FROM metrics) SELECT * FROM x, (SELECT 1) y", {"metrics"}),
    ],
)
def test_check_user_sql_names_the_allowed_tables_a_query_reads(sql, tables):
    checked = check_user_sql(sql, ALLOWED)
    assert checked.sql == sql and checked.tables == tables


# --- refused -------------------------------------------------------------------------------------------

REFUSED = [
    # Statement kinds other than SELECT.
    ("INSERT INTO metrics VALUES (6, 'd', 1)", "only a single SELECT statement is allowed; got INSERT"),
    ("UPDATE other_tenant_metrics SET s = 'x'", "got UPDATE"),
    ("DELETE FROM other_tenant_metrics", "got DELETE"),
    ("CREATE TABLE t AS SELECT 1", "got CREATE"),
    ("CREATE VIEW v AS SELECT * FROM other_tenant_metrics", "got CREATE"),
    ("CREATE MACRO m(x) AS x", "got CREATE"),
    ("DROP TABLE other_tenant_metrics", "got DROP"),
    ("ALTER TABLE other_tenant_metrics RENAME TO x", "got ALTER"),
    ("WITH x AS (SELECT 1) INSERT INTO other_tenant_metrics SELECT * FROM x", "got INSERT"),
    ("COPY (SELECT 1) TO '{tmp}/x.csv'", "got COPY"),
    ("COPY other_tenant_metrics FROM '/etc/passwd'", "got COPY"),
    ("ATTACH '{tmp}/x.db' AS x", "got ATTACH"),
    ("DETACH x", "got DETACH"),
    ("INSTALL httpfs", "got INSTALL"),
    ("LOAD httpfs", "got LOAD"),
    ("PRAGMA database_list", "got PRAGMA"),
    ("SET threads = 1", "got SET"),
    ("SET VARIABLE x = 1", "got SET"),
    ("RESET threads", "got RESET"),
    ("CALL duckdb_settings()", "got CALL"),
    ("EXPORT DATABASE '{tmp}/dump'", "got EXPORT"),
    ("IMPORT DATABASE '{tmp}/dump'", "got IMPORT"),
    ("EXPLAIN SELECT 1", "got EXPLAIN"),
    ("BEGIN TRANSACTION", "got BEGIN"),
    ("UPDATE EXTENSIONS", "got UPDATE"),
    # A data-modifying statement that DuckDB reports as a SELECT, and would run.
    (
        "WITH d AS (DELETE FROM other_tenant_metrics RETURNING *) SELECT * FROM d",
        "got DELETE inside the query",
    ),
    # More than one statement.
    ("SELECT 1; DROP TABLE x", "multiple statements are not allowed"),
    ("SELECT 1; SELECT 2", "multiple statements are not allowed"),
    # File and URL readers, and every other table function.
    ("SELECT * FROM read_csv('/etc/passwd')", "table functions such as read_csv are not allowed"),
    ("SELECT * FROM read_csv_auto('/etc/passwd')", "table functions such as read_csv_auto are not allowed"),
    ("SELECT * FROM read_parquet('{tmp}/x.parquet')", "table functions such as read_parquet are not allowed"),
    (
        "SELECT * FROM read_json('https://example.com/x.json')",
        "table functions such as read_json are not allowed",
    ),
    ("SELECT * FROM read_text('/etc/hostname')", "table functions such as read_text are not allowed"),
    ("SELECT * FROM read_blob('/etc/hostname')", "table functions such as read_blob are not allowed"),
    ("SELECT * FROM parquet_scan('{tmp}/x.parquet')", "table functions such as parquet_scan are not allowed"),
    ("SELECT * FROM parquet_metadata('{tmp}/x.parquet')", "table functions such as parquet_metadata"),
    ("SELECT * FROM glob('/*')", "table functions such as glob are not allowed"),
    ("SELECT * FROM query('SELECT 1')", "table functions such as query are not allowed"),
    (
        "SELECT * FROM query_table('other_tenant_metrics')",
        "table functions such as query_table are not allowed",
    ),
    ("SELECT * FROM duckdb_settings()", "table functions such as duckdb_settings are not allowed"),
    ("SELECT * FROM metrics, range(3)", "table functions such as range are not allowed"),
    ("SELECT (SELECT count(*) FROM glob('/*'))", "table functions such as glob are not allowed"),
    # A bare string in FROM is a file path to DuckDB (replacement scan): not an allowed table either.
    ("SELECT * FROM '/etc/passwd'", "table '/etc/passwd' is not available"),
    # Functions that reveal the environment, the catalog or shared state.
    ("SELECT getenv('HOME')", "function getenv is not allowed"),
    ("SELECT GETENV('HOME')", "function getenv is not allowed"),
    ("SELECT 'HOME'.getenv()", "function getenv is not allowed"),
    ("SELECT list_transform(['HOME'], k -> getenv(k))", "function getenv is not allowed"),
    ("SELECT getvariable('x')", "function getvariable is not allowed"),
    ("SELECT pg_get_viewdef(1)", "function pg_get_viewdef is not allowed"),
    ("SELECT nextval('s')", "function nextval is not allowed"),
    ("SELECT main.lower('x')", "function main.lower is not allowed"),
    ("SELECT enum_range(NULL::other_tenant.mood)", "type other_tenant.mood is not available"),
    # Tables and views other than the allowed ones.
    (
        "SELECT * FROM other_tenant_metrics",
        "table 'other_tenant_metrics' is not available; use one of: metrics, series",
    ),
    ("SELECT * FROM main.other_tenant_metrics", "table 'main.other_tenant_metrics' is not available"),
    ("SELECT * FROM other_tenant.metrics", "table 'other_tenant.metrics' is not available"),
    ("SELECT * FROM main.metrics", "table 'main.metrics' is not available"),
    ("SELECT * FROM memory.main.metrics", "table 'memory.main.metrics' is not available"),
    ("SELECT * FROM information_schema.tables", "table 'information_schema.tables' is not available"),
    ("SELECT * FROM pg_catalog.pg_tables", "table 'pg_catalog.pg_tables' is not available"),
    ("SELECT * FROM duckdb_tables", "table 'duckdb_tables' is not available"),
    (
        "SELECT * FROM metrics JOIN other_tenant_metrics ON true",
        "table 'other_tenant_metrics' is not available",
    ),
    ("SELECT (SELECT s FROM other_tenant_metrics)", "table 'other_tenant_metrics' is not available"),
    ("SELECT * FROM metrics WHERE EXISTS (SELECT 1 FROM other_tenant_metrics)", "'other_tenant_metrics'"),
    ("SELECT host FROM metrics UNION SELECT s FROM other_tenant_metrics", "'other_tenant_metrics'"),
    ("SHOW TABLES", "DESCRIBE, SHOW and SUMMARIZE are not allowed"),
    ("DESCRIBE metrics", "DESCRIBE, SHOW and SUMMARIZE are not allowed"),
    ("SUMMARIZE metrics", "DESCRIBE, SHOW and SUMMARIZE are not allowed"),
    # CTE names that would shadow a forbidden table if scoping were done wrong. DuckDB binds each of
    # these `other_tenant_metrics` to the real table, not to the CTE of that name.
    ("WITH metrics AS (SELECT * FROM other_tenant_metrics) SELECT * FROM metrics", "'other_tenant_metrics'"),
    (
        "WITH other_tenant_metrics AS (SELECT * FROM other_tenant_metrics) SELECT * FROM other_tenant_metrics",
        "table 'other_tenant_metrics' is not available",
    ),
    (
        "WITH RECURSIVE other_tenant_metrics AS (SELECT * FROM other_tenant_metrics) "
        "SELECT * FROM other_tenant_metrics",
        "table 'other_tenant_metrics' is not available",
    ),
    (
        "WITH RECURSIVE other_tenant_metrics AS (SELECT * FROM other_tenant_metrics "
        "UNION ALL SELECT * FROM other_tenant_metrics WHERE false) SELECT * FROM other_tenant_metrics",
        "table 'other_tenant_metrics' is not available",
    ),
    (
        "WITH RECURSIVE other_tenant_metrics AS (SELECT 'x' AS s INTERSECT SELECT s FROM other_tenant_metrics) "
        "SELECT * FROM other_tenant_metrics",
        "table 'other_tenant_metrics' is not available",
    ),
    (
        "WITH a AS (SELECT * FROM other_tenant_metrics), other_tenant_metrics AS (SELECT 1 AS s) SELECT * FROM a",
        "table 'other_tenant_metrics' is not available",
    ),
    (
        "SELECT * FROM (WITH other_tenant_metrics AS (SELECT 1 AS s) SELECT * FROM other_tenant_metrics) AS x, "
        "other_tenant_metrics",
        "table 'other_tenant_metrics' is not available",
    ),
    # Malformed or empty input.
    ("", "must not be empty"),
    ("   \n ", "must not be empty"),
    ("-- only a comment", "contains no SQL statement"),
    (";", "contains no SQL statement"),
    ("SELEC 1", 'syntax error at or near "SELEC"'),
    ("SELECT $name", "named parameters such as $name are not supported"),
    ("SELECT " + " + ".join(["1"] * 600), "nested too deeply"),
]


@pytest.mark.parametrize(("sql", "reason"), REFUSED, ids=[sql[:60] or "empty" for sql, _ in REFUSED])
def test_refused(connection, allowed_dir, sql, reason):
    error = _refusal(connection, sql.format(tmp=allowed_dir))
    assert error.field == "sql"
    assert reason in error.reason


def test_check_user_sql_refuses_without_a_connection():
    with pytest.raises(InvalidArgument) as caught:
        check_user_sql("SELECT * FROM secrets", ALLOWED)
    assert caught.value.field == "sql"
    assert caught.value.reason == "table 'secrets' is not available; use one of: metrics, series"


def test_refused_statements_have_no_side_effects(connection):
    _refusal(connection, "WITH d AS (DELETE FROM other_tenant_metrics RETURNING *) SELECT * FROM d")
    _refusal(connection, "SELECT 1; DROP TABLE other_tenant_metrics")
    assert connection.execute("SELECT s FROM other_tenant_metrics").fetchall() == [("SECRET",)]


def test_no_allowed_tables_says_so():
    with pytest.raises(InvalidArgument) as caught:
        check_user_sql("SELECT * FROM metrics", frozenset())
    assert caught.value.reason == "table 'metrics' is not available; no tables are available"


def test_every_system_macro_that_runs_a_query_is_forbidden():
    # Such a macro reads the catalog when bound, out of sight of the syntax-tree check; a DuckDB upgrade
    # that adds one must add it to FORBIDDEN_FUNCTIONS too.
    rows = duckdb.connect().execute(
        "SELECT DISTINCT function_name FROM duckdb_functions() "
        "WHERE function_type = 'macro' AND macro_definition ILIKE '%FROM%'"
    )
    reading = {name for (name,) in rows.fetchall()}
    assert reading, "expected pg_get_viewdef and friends"
    assert reading <= FORBIDDEN_FUNCTIONS


# --- hardening (defence in depth) ----------------------------------------------------------------------


def test_hardened_connection_refuses_files_outside_allowed_directories(connection):
    with pytest.raises(duckdb.PermissionException):
        connection.execute("SELECT * FROM read_csv('/etc/passwd')")
    with pytest.raises(duckdb.PermissionException):
        connection.cursor().execute("SELECT * FROM read_csv('/etc/passwd')")


def test_hardened_connection_configuration_is_locked(connection):
    with pytest.raises(duckdb.InvalidInputException, match="locked"):
        connection.execute("SET enable_external_access = true")
    with pytest.raises(duckdb.InvalidInputException, match="locked"):
        connection.execute("SET allowed_directories = ['/']")


def test_allowed_directory_is_reachable_directly_but_not_through_user_sql(connection, allowed_dir):
    # The engine's sandbox lets the service (and COPY!) use the allowed directory, which is why user
    # SQL must be parsed first rather than trusted to the sandbox.
    connection.execute(f"COPY (SELECT 42 AS x) TO '{allowed_dir}/x.parquet'")
    assert connection.execute(f"SELECT x FROM read_parquet('{allowed_dir}/x.parquet')").fetchall() == [(42,)]
    error = _refusal(connection, f"SELECT x FROM read_parquet('{allowed_dir}/x.parquet')")
    assert "table functions such as read_parquet" in error.reason


# --- DuckDB errors -------------------------------------------------------------------------------------


def test_binder_error_becomes_invalid_argument_on_sql(connection):
    error = _refusal(connection, "SELECT nope FROM metrics")
    assert error.field == "sql"
    assert error.reason.startswith("Binder Error:")
    assert "nope" in error.reason
    assert "\n" not in error.reason


def test_type_error_becomes_invalid_argument_on_sql(connection):
    error = _refusal(connection, "SELECT 'abc'::INTEGER")
    assert error.field == "sql"
    assert "Conversion Error" in error.reason


def test_error_while_fetching_becomes_invalid_argument_and_connection_stays_usable(connection):
    error = _refusal(connection, "SELECT 1 // (ts - ts) FROM metrics")
    assert error.field == "sql"
    assert "Division by zero" in error.reason
    assert _run(connection, "SELECT count(*) FROM metrics")[1] == [(5,)]


@pytest.mark.parametrize(
    ("sql", "params", "reason"),
    [
        (
            "SELECT count(*) FROM metrics WHERE host = ?",
            [],
            "the statement has 1 parameter but 0 values were given",
        ),
        ("SELECT ? + ?", [1], "the statement has 2 parameters but 1 value was given"),
        ("SELECT 1", [1], "the statement has 0 parameters but 1 value was given"),
        ("SELECT $2", [1], "Parameter argument/count mismatch"),
    ],
)
def test_wrong_parameter_count_is_about_params(connection, sql, params, reason):
    error = _refusal(connection, sql, params)
    assert error.field == "params"
    assert reason in error.reason


def test_negative_max_rows_is_a_programming_error(connection):
    with pytest.raises(ValueError):
        _run(connection, "SELECT 1", max_rows=-1)
