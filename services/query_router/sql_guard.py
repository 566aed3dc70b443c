"""Guards the Query API's user SQL: one read-only SELECT over the calling tenant's views, nothing else.

DuckDB's own sandbox (allowed_directories, enable_external_access=false, lock_configuration) is not
enough on its own: it still lets COPY write and ATTACH open a database file inside an allowed directory,
and it hides nothing that lives in the same database (other tenants' schemas, information_schema,
duckdb_*() catalog functions). So every statement is parsed by DuckDB's own parser first and its syntax
tree checked against an allow-list; only then does it run, with bound parameters, on a connection that
harden() has locked down as the second line of defence.

Server paths stay on the server: current_setting() reads only the settings in READABLE_SETTINGS
(allowed_directories and secret_directory hold paths), the catalog and settings functions
(duckdb_settings(), duckdb_extensions(), pragma_database_list, ...) are table functions or tables and
refused as such, EXPLAIN is refused as a statement, and every error message passed on to the caller goes
through redact_paths() first (a damaged or missing segment file is named in DuckDB's own message).
"""

from __future__ import annotations

import json
import os
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from libs.errors import InvalidArgument

if TYPE_CHECKING:
    import duckdb

# Scalar functions and macros a tenant must not call, even though they are not table functions:
# - getenv reads the server's environment (DuckDB builds with the shell extension have it);
# - getvariable reads session variables the service may have set;
# - sequences are shared state, and nextval/setval write it; setseed changes the shared RNG;
# - sleeps only tie up a worker;
# - pg_get_viewdef, pg_get_constraintdef, format_type and get_block_size are system macros whose bodies
#   query duckdb_views()/duckdb_constraints()/pragma_database_size() when bound, which the user's syntax
#   tree never shows: pg_get_viewdef(<oid>) returns the SQL of any view in the database, another tenant's
#   included. tests/unit/test_sql_guard.py fails if a DuckDB upgrade adds another such macro.
FORBIDDEN_FUNCTIONS = frozenset(
    {
        "getenv",
        "getvariable",
        "nextval",
        "currval",
        "setval",
        "setseed",
        "sleep_ms",
        "pg_sleep",
        "pg_get_viewdef",
        "pg_get_constraintdef",
        "format_type",
        "get_block_size",
    }
)

# The settings current_setting() may read: the ones a query author has a use for, none of which holds a
# path. An allow-list, because DuckDB adds settings in every release and some hold paths
# (allowed_directories, secret_directory, temp_directory, extension_directory, home_directory, ...).
READABLE_SETTINGS = frozenset(
    {
        "threads",
        "worker_threads",
        "memory_limit",
        "max_memory",
        "timezone",
        "calendar",
        "default_order",
        "default_null_order",
        "default_collation",
        "integer_division",
        "preserve_insertion_order",
        "max_expression_depth",
    }
)

# What a hidden path becomes in a message, and any other absolute path of two or more components
# (a file DuckDB names that lies outside the roots the caller passed).
PATH_PLACEHOLDER = "<server path>"
_PATH_TAIL = r"[^\s'\"();,]*"
_ABSOLUTE_PATH = re.compile(r"(?<![\w.:/>])/(?:[^\s'\"();,/]+/)+" + _PATH_TAIL)

# Query nodes that only read. Anything else (DELETE_QUERY_NODE and friends) is a data-modifying
# statement nested in a WITH clause, which DuckDB reports as a SELECT statement but runs for real.
_READ_ONLY_QUERY_NODES = frozenset({"SELECT_NODE", "SET_OPERATION_NODE", "RECURSIVE_CTE_NODE"})

# FROM-clause items that cannot reach outside the allowed views by themselves. BASE_TABLE is checked by
# name; TABLE_FUNCTION and SHOW_REF (DESCRIBE/SHOW/SUMMARIZE) are refused with their own reason; any
# other kind, including ones a later DuckDB adds, is refused.
_HARMLESS_TABLE_REFS = frozenset({"BASE_TABLE", "JOIN", "SUBQUERY", "EMPTY", "EXPRESSION_LIST", "PIVOT"})

_LEADING_KEYWORD = re.compile(r"\s*([A-Za-z]+)")

# One private connection parses for every caller. It never runs user SQL: json_serialize_sql only
# receives it as a bound string. DuckDB connections are not safe to share between threads, hence the lock.
_PARSER_LOCK = threading.Lock()


@lru_cache(maxsize=1)
def _parser() -> duckdb.DuckDBPyConnection:
    import duckdb

    return duckdb.connect(":memory:")


@dataclass(frozen=True)
class CheckedSql:
    """User SQL that passed check_user_sql: the text, its parsed statement, the allowed tables
    it reads (lower-case), so a caller can provide only those; then, for a caller that reads the
    query's shape (sql_narrow): each reference to an allowed table in the order met, each SELECT
    that reads one directly in its FROM (the table and the SELECT's node of json_serialize_sql's
    tree, shared by every caller of the same text: read it, never change it), the names of the
    CTEs it defines, and the names its FROMs give their tables and subqueries (aliases, else table
    names; lower-case)."""

    sql: str
    statement: duckdb.Statement
    tables: frozenset[str]
    reads: tuple[str, ...]
    selecting: tuple[tuple[str, dict[str, Any]], ...]
    cte_names: frozenset[str]
    from_names: frozenset[str]


def check_user_sql(sql: str, allowed_tables: frozenset[str]) -> CheckedSql:
    """Raise InvalidArgument(reason, "sql") unless `sql` is one read-only SELECT over allowed_tables;
    else the checked statement and the tables it reads."""
    return _checked_statement(sql, allowed_tables)


def harden(connection: duckdb.DuckDBPyConnection, allowed_directories: list[Path]) -> None:
    """Apply allowed_directories, then enable_external_access=false, then lock_configuration=true.

    The service's own views may then read files under allowed_directories only, and nothing run on the
    connection (or on its cursors) can change those settings back. Call it once, after creating the
    views' sources that need other settings; a second call fails because the configuration is locked.
    """
    # A trailing separator makes DuckDB treat each entry as a directory prefix, so '/data/t1' does not
    # also admit '/data/t10'.
    directories = [os.path.join(path.absolute(), "") for path in allowed_directories]
    # The order matters: allowed_directories must be in place before external access is switched off,
    # and the lock must come last or it would block the other two.
    connection.execute("SET allowed_directories = ?", [directories])
    connection.execute("SET enable_external_access = false")
    connection.execute("SET lock_configuration = true")


def redact_paths(text: str, hidden: Sequence[Path] = ()) -> str:
    """`text` with each of the `hidden` directories (as given, absolute and resolved), and any other
    absolute path, replaced by PATH_PLACEHOLDER."""
    spellings = {form for path in hidden for form in (str(path), str(path.absolute()), str(path.resolve()))}
    # Longest first, so a root inside another root's spelling cannot leave a tail behind; the file
    # names below a root go with it. A one-word relative spelling ("data") would also hit plain words:
    # its absolute spelling covers it.
    for spelling in sorted(spellings, key=len, reverse=True):
        if os.sep in spelling.strip(os.sep):
            text = re.sub(re.escape(spelling) + _PATH_TAIL, PATH_PLACEHOLDER, text)
    return _ABSOLUTE_PATH.sub(PATH_PLACEHOLDER, text)


def run_user_sql(
    connection: duckdb.DuckDBPyConnection,
    sql: str | CheckedSql,
    params: Sequence[object],
    allowed_tables: frozenset[str],
    max_rows: int,
    hidden_paths: Sequence[Path] = (),
) -> tuple[list[str], list[tuple[Any, ...]]]:
    """check_user_sql (unless `sql` is already checked), then execute with bound params on the
    (hardened) connection.

    Returns the column names and at most max_rows rows. DuckDB's errors about the query (parser, binder,
    catalog, conversion, invalid input) become InvalidArgument with the first line of DuckDB's message,
    paths redacted (redact_paths with `hidden_paths`), field "params" when they are about the parameters
    and "sql" otherwise. Errors that are not the caller's doing (I/O, permission, out of memory,
    interrupts, internal errors) propagate unchanged.
    """
    import duckdb

    if max_rows < 0:
        raise ValueError(f"max_rows must not be negative, got {max_rows}")
    checked = sql if isinstance(sql, CheckedSql) else _checked_statement(sql, allowed_tables)
    sql, statement = checked.sql, checked.statement
    expected = len(statement.named_parameters)
    if len(params) != expected:
        raise InvalidArgument(
            f"the statement has {_count(expected, 'parameter')} but {_count(len(params), 'value')} "
            f"{'was' if len(params) == 1 else 'were'} given",
            "params",
        )
    try:
        # The very text that was checked is what runs; parameters are bound, never spliced into it.
        connection.execute(sql, list(params))
        columns = [column[0] for column in connection.description or ()]
        rows = connection.fetchmany(max_rows) if max_rows else []
    except (duckdb.ProgrammingError, duckdb.DataError, duckdb.NotSupportedError) as exc:
        message = redact_paths(_first_line(exc), hidden_paths)
        about_params = isinstance(exc, duckdb.InvalidInputException) and "parameter" in message.lower()
        raise InvalidArgument(message, "params" if about_params else "sql") from None
    finally:
        # execute() streams its result, and a result read only in part keeps the connection busy;
        # abort() releases it (and is a no-op when nothing is pending).
        connection.abort()
    return columns, rows


@lru_cache(maxsize=256)  # dashboards and benchmarks repeat the same text with other parameters
def _checked_statement(sql: str, allowed_tables: frozenset[str]) -> CheckedSql:
    import duckdb

    if not sql.strip():
        raise InvalidArgument("must not be empty", "sql")
    with _PARSER_LOCK:
        parser = _parser()
        try:
            statements = parser.extract_statements(sql)
        except duckdb.ParserException as exc:
            raise InvalidArgument(_first_line(exc), "sql") from None
        if not statements:
            raise InvalidArgument("contains no SQL statement (only comments or semicolons)", "sql")
        if len(statements) > 1:
            raise InvalidArgument("multiple statements are not allowed", "sql")
        statement = statements[0]
        try:
            kind = statement.type
        except ValueError:
            # The client's StatementType enum lags the engine: reading the type of a kind it has no
            # name for (such as UPDATE EXTENSIONS) raises ValueError, and it is not a SELECT either way.
            raise InvalidArgument(
                f"only a single SELECT statement is allowed; got {_keyword(statement)}", "sql"
            ) from None
        if kind != duckdb.StatementType.SELECT:
            raise InvalidArgument(
                f"only a single SELECT statement is allowed; got {_keyword(statement)}", "sql"
            )
        rows = parser.execute("SELECT json_serialize_sql(?)", [sql]).fetchall()
    named = sorted(name for name in statement.named_parameters if not name.isdigit())
    if named:
        raise InvalidArgument(
            f"named parameters such as ${named[0]} are not supported; use ? or $1, $2, ...", "sql"
        )
    try:
        tree = json.loads(rows[0][0])
        if tree.get("error"):
            raise InvalidArgument(str(tree.get("error_message", "the query could not be parsed")), "sql")
        if len(tree["statements"]) != 1:
            raise InvalidArgument("multiple statements are not allowed", "sql")
        check = _TreeCheck(allowed_tables)
        check.query_node(tree["statements"][0]["node"], frozenset())
    except RecursionError:
        # Python's json and the walk below recurse once per level; a few hundred chained operators
        # (1+1+1+...) are enough to exhaust the interpreter's limit.
        raise InvalidArgument(
            "the query is nested too deeply to check; split long expressions, e.g. with a CTE", "sql"
        ) from None
    return CheckedSql(
        sql,
        statement,
        frozenset(check.reads),
        tuple(check.reads),
        tuple(check.selecting),
        frozenset(check.cte_names),
        frozenset(check.from_names),
    )


class _TreeCheck:
    """Walks json_serialize_sql output, refusing anything outside the allow-list.

    The walk visits every dict and list in the tree, so a table reference or function call is found
    wherever it hides (subqueries, lambdas, window clauses, PIVOT sources, CTE bodies). `ctes` holds the
    CTE names visible at a point, lower-cased because DuckDB matches them case-insensitively.
    """

    def __init__(self, allowed_tables: frozenset[str]) -> None:
        self.allowed = frozenset(name.lower() for name in allowed_tables)
        self.reads: list[str] = []  # each reference to an allowed table the query reads
        self.selecting: list[tuple[str, dict[str, Any]]] = []  # SELECTs reading one directly
        self.cte_names: set[str] = set()
        self.from_names: set[str] = set()
        names = ", ".join(sorted(self.allowed))
        self.choices = f"use one of: {names}" if names else "no tables are available"

    def walk(self, node: object, ctes: frozenset[str]) -> None:
        if isinstance(node, list):
            for item in node:
                self.walk(item, ctes)
            return
        if not isinstance(node, dict):
            return
        kind = node.get("type")
        if "class" in node:
            self._expression(node)
        elif isinstance(kind, str) and kind.endswith("_NODE"):
            self.query_node(node, ctes)
            return
        elif isinstance(kind, str) and "alias" in node and "query_location" in node:
            self._table_ref(node, ctes)
        for value in node.values():
            self.walk(value, ctes)

    def query_node(self, node: dict[str, Any], ctes: frozenset[str], recursive_name: str = "") -> None:
        """Check a query node; `recursive_name` is set when it is the body of that recursive CTE."""
        kind = node.get("type")
        if kind not in _READ_ONLY_QUERY_NODES:
            verb = str(kind).removesuffix("_NODE").removesuffix("_QUERY").replace("_", " ")
            raise InvalidArgument(
                f"only a single SELECT statement is allowed; got {verb} inside the query", "sql"
            )
        visible = ctes
        # DuckDB binds a CTE body with only the CTEs defined before it in view: a forward reference or a
        # non-recursive self-reference reaches the real table of that name, never the CTE (measured on
        # 2.0.1). So each body is checked with the earlier names only.
        for entry in (node.get("cte_map") or {}).get("map", []):
            name = str(entry["key"]).lower()
            self._cte(entry["value"], visible, name)
            visible = visible | {name}
            self.cte_names.add(name)
        source = node.get("from_table") or {}
        if kind == "SELECT_NODE" and source.get("type") == "BASE_TABLE":
            table = str(source.get("table_name", "")).lower()
            if table in self.allowed and table not in visible:
                self.selecting.append((table, node))
        for key, value in node.items():
            if key == "cte_map":
                continue
            # Only the recursive half of WITH RECURSIVE ... UNION sees the CTE itself; in the anchor
            # (left) the name still means the real table, or even a Python variable via a replacement scan.
            if key == "right" and kind == "RECURSIVE_CTE_NODE" and recursive_name:
                self.walk(value, visible | {recursive_name})
            else:
                self.walk(value, visible)

    def _cte(self, definition: dict[str, Any], visible: frozenset[str], name: str) -> None:
        body = definition.get("query_node")
        recursive = (
            isinstance(body, dict)
            and body.get("type") == "RECURSIVE_CTE_NODE"
            and str(body.get("cte_name", "")).lower() == name
        )
        for key, value in definition.items():
            if key == "query_node" and isinstance(value, dict):
                self.query_node(value, visible, name if recursive else "")
            else:
                self.walk(value, visible)

    def _table_ref(self, node: dict[str, Any], ctes: frozenset[str]) -> None:
        kind = node["type"]
        name = node.get("alias") or node.get("table_name")
        if name:
            self.from_names.add(str(name).lower())
        if kind == "BASE_TABLE":
            self._base_table(node, ctes)
        elif kind == "TABLE_FUNCTION":
            function = node.get("function") or {}
            name = function.get("function_name", "?")
            raise InvalidArgument(f"table functions such as {name} are not allowed; {self.choices}", "sql")
        elif kind == "SHOW_REF":
            raise InvalidArgument("DESCRIBE, SHOW and SUMMARIZE are not allowed", "sql")
        elif kind not in _HARMLESS_TABLE_REFS:
            raise InvalidArgument(f"{kind} is not allowed in FROM", "sql")

    def _base_table(self, node: dict[str, Any], ctes: frozenset[str]) -> None:
        table = str(node.get("table_name", ""))
        qualifier = _qualifier(node.get("catalog_name"), node.get("schema_name"))
        if qualifier:
            # A schema or catalog can only lead away from the tenant's views (other_tenant.metrics,
            # information_schema.tables, pg_catalog.*), so qualified names are refused outright.
            raise InvalidArgument(
                f"table '{qualifier}.{table}' is not available; name tables without a schema or catalog, "
                f"{self.choices}",
                "sql",
            )
        if table.lower() in ctes:
            return
        if table.lower() not in self.allowed:
            raise InvalidArgument(f"table {table!r} is not available; {self.choices}", "sql")
        self.reads.append(table.lower())

    def _expression(self, node: dict[str, Any]) -> None:
        name = node.get("function_name")
        if isinstance(name, str):
            qualifier = _qualifier(node.get("catalog"), node.get("schema"))
            if qualifier:
                # Another schema's macros could read that schema's tables when bound.
                raise InvalidArgument(
                    f"function {qualifier}.{name} is not allowed; call functions without a schema or catalog",
                    "sql",
                )
            if name.lower() in FORBIDDEN_FUNCTIONS:
                raise InvalidArgument(f"function {name.lower()} is not allowed", "sql")
            if name.lower() == "current_setting":
                self._setting(node)
        elif node.get("class") == "TYPE":
            qualifier = _qualifier(node.get("catalog"), node.get("schema"))
            if qualifier:
                # enum_range(NULL::other_tenant.some_enum) would list another tenant's enum values.
                raise InvalidArgument(
                    f"type {qualifier}.{node.get('type_name', '?')} is not available; "
                    "use types without a schema or catalog",
                    "sql",
                )

    @staticmethod
    def _setting(node: dict[str, Any]) -> None:
        # Only a plain string literal names the setting: a parameter or an expression
        # ('allowed_' || 'directories') would be folded to a name only when DuckDB binds it.
        arguments = node.get("arguments") or node.get("children") or []
        names = [_string_literal(arg.get("expression", arg)) for arg in arguments if isinstance(arg, dict)]
        if len(names) == 1 and names[0] is not None and names[0].lower() in READABLE_SETTINGS:
            return
        readable = ", ".join(sorted(READABLE_SETTINGS))
        shown = f"setting {names[0]!r} is" if len(names) == 1 and names[0] is not None else "that setting is"
        raise InvalidArgument(
            f"{shown} not readable; current_setting takes one quoted name of: {readable}", "sql"
        )


def _string_literal(expression: object) -> str | None:
    if not isinstance(expression, dict) or expression.get("class") != "CONSTANT":
        return None
    literal = expression.get("literal") or expression.get("value") or {}
    if isinstance(literal, dict) and literal.get("kind", "STRING") == "STRING" and "text" in literal:
        return str(literal["text"])
    return None


def _qualifier(catalog: object, schema: object) -> str:
    return ".".join(str(part) for part in (catalog, schema) if part)


def _keyword(statement: duckdb.Statement) -> str:
    # The statement type alone can mislead (IMPORT DATABASE parses as PRAGMA, INSTALL as LOAD, RESET as
    # SET), so name the keyword the user wrote, unless it is WITH or hidden behind a leading comment.
    match = _LEADING_KEYWORD.match(statement.query)
    word = match.group(1).upper() if match else ""
    if word and word != "WITH":
        return word
    try:
        return statement.type.name
    except ValueError:
        return "a statement of another kind"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"
