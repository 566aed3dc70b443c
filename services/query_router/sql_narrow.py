"""What user SQL over the `metrics` view says, in its WHERE, about the series and time it can keep.

A query such as TSBS' high-cpu-1 (`... FROM metrics WHERE labels['hostname'] = ? AND metric IN (...)
AND ts >= ? AND ts < ? ...`) keeps the points of a few series over a window; DuckDB, given the
segments' Parquet files, decodes every row group those series touch, and a day's file sorted by
(hour, series, ts) spreads one host's series over nearly all of them. `narrowing` reads the parsed
statement (the tree sql_guard checked) and, when it can tell, returns which datasources, metrics,
label values and [start, end) the rows must have; sql_views then gives the view only the points of
those series in that window, read from the segments' points maps by their series index (the rows of
a series are one run there) and from the hot tier, and DuckDB runs the query as written over them.

Only what is certain narrows: conjuncts at the top of that SELECT's WHERE (a row failing one of
them is dropped by the WHERE whatever else the query does), each an equality or IN list of `datasource`,
`metric` or a label (`labels['k']`, `labels.k`) against string constants or string parameters, or
a comparison of `ts` with an integer constant or an integral parameter (optionally CAST), or a
BETWEEN (its two comparisons). A comparison of `ts` or `time` with any other expression without columns (`now() - INTERVAL 1
HOUR`, `epoch_ms(?::TIMESTAMP)`) is kept pending and evaluated by `settle` in the transaction the
query then runs in, so that now() is one instant for both; a `time` bound is widened by
TIME_MARGIN_MS. Anything else (OR, NOT, functions of columns, other columns) narrows nothing and
is left to DuckDB with the rest. The narrowed view holds a superset of the rows the WHERE keeps, so the answer is the
same. No narrowing at all (None) unless `metrics` is read exactly once, directly as the FROM of
a SELECT (the outermost one, or one in a CTE, a subquery or a UNION: only that SELECT sees the
view's rows, and its WHERE drops those outside the narrowing; not through a join, a sample, PIVOT
or column aliases, nor when a CTE is named `metrics`), and something narrows the series.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from services.query_router.sql_guard import CheckedSql

if TYPE_CHECKING:
    import duckdb

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
TIME_MARGIN_MS = 86_400_000
"""How far a window bound read from a `time` comparison is widened each way: DuckDB compares
`time` (a TIMESTAMP) with a TIMESTAMPTZ such as now() in the session's time zone, whose offsets,
daylight saving folds and microseconds stay well within a day."""
_INTEGER_LITERALS = frozenset({"INTEGER", "BIGINT", "HUGEINT", "SMALLINT", "TINYINT", "UBIGINT", "UINTEGER"})
_NUMERIC_CASTS = frozenset(
    {"BIGINT", "INT8", "LONG", "INTEGER", "INT", "INT4", "HUGEINT", "DOUBLE", "FLOAT8", "DECIMAL", "NUMERIC"}
)
# Which ends of the window `column <op> value` bounds: (start, end).
_SIDES = {
    "COMPARE_GREATERTHANOREQUALTO": (True, False),
    "COMPARE_GREATERTHAN": (True, False),
    "COMPARE_LESSTHAN": (False, True),
    "COMPARE_LESSTHANOREQUALTO": (False, True),
    "COMPARE_EQUAL": (True, True),
}
# The same comparison with its sides swapped (value <op> ts).
_FLIPPED = {
    "COMPARE_GREATERTHANOREQUALTO": "COMPARE_LESSTHANOREQUALTO",
    "COMPARE_GREATERTHAN": "COMPARE_LESSTHAN",
    "COMPARE_LESSTHAN": "COMPARE_GREATERTHAN",
    "COMPARE_LESSTHANOREQUALTO": "COMPARE_GREATERTHANOREQUALTO",
    "COMPARE_EQUAL": "COMPARE_EQUAL",
}


@dataclass(frozen=True)
class Narrowing:
    """The rows a query over `metrics` can keep: of these datasources and metrics (None: any), with
    each label in `labels` equal to one of its values, and ts in [start, end)."""

    datasources: frozenset[str] | None = None
    metrics: frozenset[str] | None = None
    labels: tuple[tuple[str, frozenset[str]], ...] = ()
    start: int = INT64_MIN
    end: int = INT64_MAX
    pending: tuple[tuple[str, str, str], ...] = ()
    """Bounds still to evaluate (`settle`): (column "ts" or "time", the comparison with the column
    on its left, such as COMPARE_GREATERTHAN, and the JSON of the expression without columns it
    is compared with, such as `now() - INTERVAL 1 HOUR`)."""

    @property
    def empty(self) -> bool:
        """True when no row can satisfy the conjuncts (an empty set of values, or of time)."""
        sets = [self.datasources, self.metrics, *(values for _, values in self.labels)]
        return self.start >= self.end or any(s is not None and not s for s in sets)


def narrowing(checked: CheckedSql, params: Sequence[object]) -> Narrowing | None:
    """The narrowing the one SELECT of `checked` that reads `metrics` says of it, or None when it
    says nothing of the series or cannot be trusted (see the module docstring)."""
    selects = [node for table, node in checked.selecting if table == "metrics"]
    if checked.reads.count("metrics") != 1 or "metrics" in checked.cte_names or len(selects) != 1:
        return None
    if "labels" in checked.from_names:
        return None  # `labels.x` might then name a column of that table, not a label
    node = selects[0]
    source = node["from_table"]
    if (
        source.get("schema_name")
        or source.get("catalog_name")
        or source.get("sample")
        or source.get("at_clause")
        or source.get("column_name_alias")
        or node.get("sample")
    ):
        return None
    alias = str(source.get("alias") or "metrics").lower()
    found = _Found()
    for conjunct in _conjuncts(node.get("where_clause")):
        found.add(conjunct, alias, params)
    if found.metrics is None and not found.labels:
        return None  # nothing narrows the series: DuckDB's own pruning does as well
    return Narrowing(
        found.datasources,
        found.metrics,
        tuple(sorted(found.labels.items())),
        found.start,
        found.end,
        tuple(found.pending),
    )


class _Found:
    """What the conjuncts read so far say (each set the intersection of what each conjunct allows)."""

    def __init__(self) -> None:
        self.datasources: frozenset[str] | None = None
        self.metrics: frozenset[str] | None = None
        self.labels: dict[str, frozenset[str]] = {}
        self.start = INT64_MIN
        self.end = INT64_MAX
        self.pending: list[tuple[str, str, str]] = []

    def add(self, conjunct: dict[str, Any], alias: str, params: Sequence[object]) -> None:
        kind = conjunct.get("type")
        if conjunct.get("class") == "COMPARISON" and kind in _FLIPPED:
            left, right = conjunct.get("left"), conjunct.get("right")
            column = _column(left, alias)
            if column is None:
                column, right, kind = _column(right, alias), left, _FLIPPED[kind]
            if column is None:
                return
            if column in (("ts",), ("time",)):
                self._bound(column[0], kind, right, params)
            elif kind == "COMPARE_EQUAL":
                value = _string(right, params)
                if value is not None:
                    self._values(column, frozenset({value}))
        elif kind == "COMPARE_BETWEEN" and conjunct.get("class") == "BETWEEN":
            # x BETWEEN a AND b is x >= a AND x <= b (Grafana's $__timeFilter writes it).
            column = _column(conjunct.get("input"), alias)
            if column in (("ts",), ("time",)):
                self._bound(column[0], "COMPARE_GREATERTHANOREQUALTO", conjunct.get("lower"), params)
                self._bound(column[0], "COMPARE_LESSTHANOREQUALTO", conjunct.get("upper"), params)
        elif kind == "COMPARE_IN" and conjunct.get("class") == "OPERATOR":
            children = conjunct.get("children") or []
            column = _column(children[0], alias) if children else None
            values = [_string(c, params) for c in children[1:]]
            if column not in (None, ("ts",), ("time",)) and values and None not in values:
                self._values(column, frozenset(v for v in values if v is not None))

    def _values(self, column: tuple[str, ...], values: frozenset[str]) -> None:
        if column == ("datasource",):
            self.datasources = values if self.datasources is None else self.datasources & values
        elif column == ("metric",):
            self.metrics = values if self.metrics is None else self.metrics & values
        elif column[0] == "labels":
            key = column[1]
            self.labels[key] = self.labels[key] & values if key in self.labels else values

    def _bound(self, column: str, kind: str, value: dict[str, Any] | None, params: Sequence[object]) -> None:
        """`column` ("ts" or "time") <kind> `value`: an integer bounds ts at once (exactly: the
        first and the past-the-last ts it keeps), any other expression without columns is kept
        for `settle`."""
        at = _integer(value, params) if column == "ts" else None
        if at is not None:
            first = at + (kind == "COMPARE_GREATERTHAN")
            past = at + (kind in ("COMPARE_LESSTHANOREQUALTO", "COMPARE_EQUAL"))
            self.start, self.end = _clip((self.start, self.end), kind, first, past)
        elif value is not None and _constant(value):
            self.pending.append((column, kind, json.dumps(value)))


def _clip(window: tuple[int, int], kind: str, first: int, past: int) -> tuple[int, int]:
    """`window` [start, end) cut to [first, past) on the ends the comparison `kind` bounds."""
    lower, upper = _SIDES[kind]
    start, end = window
    return (max(start, first) if lower else start), (min(end, past) if upper else end)


def _conjuncts(where: dict[str, Any] | None) -> list[dict[str, Any]]:
    if not where:
        return []
    if where.get("class") == "CONJUNCTION" and where.get("type") == "CONJUNCTION_AND":
        return [c for child in where.get("children") or [] for c in _conjuncts(child)]
    return [where]


def _column(expression: dict[str, Any] | None, alias: str) -> tuple[str, ...] | None:
    """("ts",), ("metric",), ("datasource",) or ("labels", key) for a reference to one of those
    columns of the narrowed table (label keys as written: the caller matches them to the catalog's)."""
    if not expression:
        return None
    if expression.get("class") == "COLUMN_REF":
        names = [str(n) for n in expression.get("column_names") or []]
        if len(names) > 1 and names[0].lower() == alias:
            names = names[1:]
        if len(names) == 1 and names[0].lower() in ("ts", "time", "metric", "datasource"):
            return (names[0].lower(),)
        if len(names) == 2 and names[0].lower() == "labels":
            return ("labels", names[1])
        return None
    if expression.get("class") == "OPERATOR" and expression.get("type") == "ARRAY_EXTRACT":
        children = expression.get("children") or []  # labels['k']: the column, then the key
        if len(children) == 2 and children[0].get("class") == "COLUMN_REF":
            names = [str(n).lower() for n in children[0].get("column_names") or []]
            key = _literal(children[1], "STRING")
            if key is not None and names in (["labels"], [alias, "labels"]):
                return ("labels", key)
    return None


def _literal(expression: dict[str, Any], kind: str) -> str | None:
    if expression.get("class") != "CONSTANT":
        return None
    literal = expression.get("literal") or {}
    if literal.get("kind") != kind and not (kind == "INTEGER" and literal.get("kind") in _INTEGER_LITERALS):
        return None
    return str(literal.get("text"))


def _parameter(expression: dict[str, Any], params: Sequence[object]) -> object:
    """The bound value of a parameter expression (`?` or `$n`), or None."""
    index = _parameter_index(expression, params)
    return None if index is None else params[index]


def _parameter_index(expression: dict[str, Any], params: Sequence[object]) -> int | None:
    """The index in `params` of a parameter expression's value; None for another expression or a
    number past the parameters given."""
    identifier = str(expression.get("identifier", ""))
    if expression.get("class") != "PARAMETER" or not identifier.isdigit():
        return None
    return int(identifier) - 1 if 1 <= int(identifier) <= len(params) else None


def _string(expression: dict[str, Any] | None, params: Sequence[object]) -> str | None:
    if not expression:
        return None
    text = _literal(expression, "STRING")
    if text is not None:
        return text
    value = _parameter(expression, params)
    return value if isinstance(value, str) else None


def _integer(expression: dict[str, Any] | None, params: Sequence[object]) -> int | None:
    """An integer constant, or an integral number parameter, optionally CAST to a numeric type."""
    if not expression:
        return None
    if expression.get("class") == "CAST":
        type_name = str((expression.get("type_expr") or {}).get("type_name", "")).upper()
        if type_name not in _NUMERIC_CASTS or expression.get("try_cast"):
            return None
        return _integer(expression.get("child"), params)
    text = _literal(expression, "INTEGER")
    value: object = int(text) if text is not None else _parameter(expression, params)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, float) and not value.is_integer():
        return None  # DuckDB may round it either way: narrow nothing
    number = int(value)
    return number if INT64_MIN < number < INT64_MAX else None


def _constant(node: dict[str, Any]) -> bool:
    """True for an expression of constants, parameters, casts and function calls only (no column,
    subquery, aggregate filter or ordering): its value is the same for every row."""
    kind = node.get("class")
    if kind in ("CONSTANT", "PARAMETER"):
        return True
    if kind == "CAST":
        child = node.get("child")
        return isinstance(child, dict) and _constant(child)
    if kind == "FUNCTION":
        orders = (node.get("order_bys") or {}).get("orders") or []
        children = node.get("children") or []
        return (
            not node.get("filter")
            and not orders
            and not node.get("distinct")
            and all(isinstance(c, dict) and _constant(c) for c in children)
        )
    return False


def settle(con: duckdb.DuckDBPyConnection, narrow: Narrowing, params: Sequence[object]) -> Narrowing:
    """Begin a transaction on `con`, the query's own cursor, and evaluate `narrow`'s pending bounds
    in it: the user's statement then runs in the same transaction, where now() and the other
    transaction-time functions answer the same instant. A bound read from `time` is widened by
    TIME_MARGIN_MS each way, one from `ts` to the whole milliseconds around it; an expression that
    calls a volatile function (random(), uuid(), ...) or cannot be evaluated bounds nothing. The
    narrowing that comes back has no pending bounds."""
    import duckdb

    con.execute("BEGIN TRANSACTION")
    window = (narrow.start, narrow.end)
    try:
        for column, kind, expression in narrow.pending:
            value = _evaluate(con, json.loads(expression), column, params)
            if value is None:
                continue
            margin = TIME_MARGIN_MS if column == "time" else 0
            # Whatever the comparison's strictness: the whole ms around the value, and the margin.
            window = _clip(window, kind, math.floor(value) - margin, math.ceil(value) + 1 + margin)
    except duckdb.Error:
        # The transaction is spoilt by the failed statement: a fresh one, and no bound from these.
        con.execute("ROLLBACK")
        con.execute("BEGIN TRANSACTION")
        return replace(narrow, pending=())
    return replace(narrow, start=window[0], end=window[1], pending=())


def _evaluate(
    con: duckdb.DuckDBPyConnection, node: dict[str, Any], column: str, params: Sequence[object]
) -> float | None:
    """The value of the constant expression `node` as the comparison with `column` reads it: epoch
    ms of it as a TIMESTAMP for `time`, a number for `ts`; None when it calls a volatile function or
    is NULL (an unreadable value too: `try`)."""
    if _function_names(node) & _volatile_functions():
        return None
    # Its parameters renumbered $1, $2, ... in order of appearance, bound to their values.
    node = copy.deepcopy(node)
    values: list[object] = []
    numbers: dict[int, str] = {}
    for parameter in _parameters(node):
        index = _parameter_index(parameter, params)
        if index is None:
            return None
        if index not in numbers:
            numbers[index] = str(len(numbers) + 1)
            values.append(params[index])
        parameter["identifier"] = numbers[index]
    statement = _select_template()
    statement["statements"][0]["node"]["select_list"] = [node]
    # fetchall: a result left unread keeps the cursor busy for the statements after it.
    text = con.execute("SELECT json_deserialize_sql(?)", [json.dumps(statement)]).fetchall()[0][0]
    expression = text.removeprefix("SELECT ")
    if column == "time":
        sql = f"SELECT try(epoch_ms(CAST(({expression}) AS TIMESTAMP)))"
    else:
        sql = f"SELECT try(CAST(({expression}) AS DOUBLE))"
    ((found,),) = con.execute(sql, values).fetchall()
    if found is None:
        return None
    value = float(found)
    return value if INT64_MIN < value < INT64_MAX else None


def _parameters(node: object) -> list[dict[str, Any]]:
    if isinstance(node, dict):
        own = [node] if node.get("class") == "PARAMETER" else []
        return own + [p for v in node.values() for p in _parameters(v)]
    if isinstance(node, list):
        return [p for v in node for p in _parameters(v)]
    return []


def _function_names(node: object) -> set[str]:
    if isinstance(node, dict):
        own = {str(node["function_name"]).lower()} if node.get("class") == "FUNCTION" else set()
        return own.union(*(_function_names(v) for v in node.values()))
    if isinstance(node, list):
        return set().union(*(_function_names(v) for v in node))
    return set()


@lru_cache(maxsize=1)
def _volatile_functions() -> frozenset[str]:
    """DuckDB's functions whose value may differ between two calls in one transaction."""
    import duckdb

    rows = duckdb.connect().execute(
        "SELECT DISTINCT function_name FROM duckdb_functions() WHERE stability = 'VOLATILE'"
    )
    return frozenset(str(r[0]).lower() for r in rows.fetchall())


def _select_template() -> dict[str, Any]:
    """json_serialize_sql's tree of `SELECT 1`, a fresh copy each call (its select list is replaced)."""
    return copy.deepcopy(_select_one())


@lru_cache(maxsize=1)
def _select_one() -> dict[str, Any]:
    import duckdb

    return json.loads(duckdb.connect().execute("SELECT json_serialize_sql('SELECT 1')").fetchone()[0])
