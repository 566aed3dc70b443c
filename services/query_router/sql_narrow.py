"""What user SQL over the `metrics` view says, in its WHERE, about the series and time it can keep.

A query such as TSBS' high-cpu-1 (`... FROM metrics WHERE labels['hostname'] = ? AND metric IN (...)
AND ts >= ? AND ts < ? ...`) keeps the points of a few series over a window; DuckDB, given the
segments' Parquet files, decodes every row group those series touch, and a day's file sorted by
(hour, series, ts) spreads one host's series over nearly all of them. `narrowing` reads the parsed
statement (the tree sql_guard checked) and, when it can tell, returns which datasources, metrics,
label values and [start, end) the rows must have; sql_views then gives the view only the points of
those series in that window, read from the segments' points maps by their series index (the rows of
a series are one run there) and from the hot tier, and DuckDB runs the query as written over them.

Only what is certain narrows: conjuncts at the top of the outermost WHERE (a row failing one of them
is dropped by the WHERE whatever else the query does), each an equality or IN list of `datasource`,
`metric` or a label (`labels['k']`, `labels.k`) against string constants or string parameters, or
a comparison of `ts` with an integer constant or an integral parameter (optionally CAST). Anything
else (OR, NOT, functions, other columns, casts of the column) narrows nothing and is left to DuckDB
with the rest. The narrowed view holds a superset of the rows the WHERE keeps, so the answer is the
same. No narrowing at all (None) unless `metrics` is read exactly once, as the FROM of the outermost
SELECT (no CTE, join, sample, PIVOT or column aliases), and something narrows the series.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from services.query_router.sql_guard import CheckedSql

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
_INTEGER_LITERALS = frozenset({"INTEGER", "BIGINT", "HUGEINT", "SMALLINT", "TINYINT", "UBIGINT", "UINTEGER"})
_NUMERIC_CASTS = frozenset(
    {"BIGINT", "INT8", "LONG", "INTEGER", "INT", "INT4", "HUGEINT", "DOUBLE", "FLOAT8", "DECIMAL", "NUMERIC"}
)
# ts <op> value as the bound it gives: (lower inclusive?, value offset)
_TS_BOUNDS = {
    "COMPARE_GREATERTHANOREQUALTO": ("start", 0),
    "COMPARE_GREATERTHAN": ("start", 1),
    "COMPARE_LESSTHAN": ("end", 0),
    "COMPARE_LESSTHANOREQUALTO": ("end", 1),
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

    @property
    def empty(self) -> bool:
        """True when no row can satisfy the conjuncts (an empty set of values, or of time)."""
        sets = [self.datasources, self.metrics, *(values for _, values in self.labels)]
        return self.start >= self.end or any(s is not None and not s for s in sets)


def narrowing(checked: CheckedSql, params: Sequence[object]) -> Narrowing | None:
    """The narrowing the outermost SELECT of `checked` says of `metrics`, or None when it says
    nothing of the series or cannot be trusted (see the module docstring)."""
    node = checked.node
    source = node.get("from_table") or {}
    if (
        node.get("type") != "SELECT_NODE"
        or source.get("type") != "BASE_TABLE"
        or str(source.get("table_name", "")).lower() != "metrics"
        or source.get("schema_name")
        or source.get("catalog_name")
        or source.get("sample")
        or source.get("at_clause")
        or source.get("column_name_alias")
        or node.get("sample")
        or checked.reads.count("metrics") != 1
        or checked.defines_cte
    ):
        return None
    alias = str(source.get("alias") or "metrics").lower()
    if alias == "labels":
        return None  # `labels.x` would then name a column, not a label
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
    )


class _Found:
    """What the conjuncts read so far say (each set the intersection of what each conjunct allows)."""

    def __init__(self) -> None:
        self.datasources: frozenset[str] | None = None
        self.metrics: frozenset[str] | None = None
        self.labels: dict[str, frozenset[str]] = {}
        self.start = INT64_MIN
        self.end = INT64_MAX

    def add(self, conjunct: dict[str, Any], alias: str, params: Sequence[object]) -> None:
        kind = conjunct.get("type")
        if conjunct.get("class") == "COMPARISON" and kind in _FLIPPED:
            left, right = conjunct.get("left"), conjunct.get("right")
            column = _column(left, alias)
            if column is None:
                column, right, kind = _column(right, alias), left, _FLIPPED[kind]
            if column is None:
                return
            if column == ("ts",):
                self._time(kind, right, params)
            elif kind == "COMPARE_EQUAL":
                value = _string(right, params)
                if value is not None:
                    self._values(column, frozenset({value}))
        elif kind == "COMPARE_IN" and conjunct.get("class") == "OPERATOR":
            children = conjunct.get("children") or []
            column = _column(children[0], alias) if children else None
            values = [_string(c, params) for c in children[1:]]
            if column is not None and column != ("ts",) and values and None not in values:
                self._values(column, frozenset(v for v in values if v is not None))

    def _values(self, column: tuple[str, ...], values: frozenset[str]) -> None:
        if column == ("datasource",):
            self.datasources = values if self.datasources is None else self.datasources & values
        elif column == ("metric",):
            self.metrics = values if self.metrics is None else self.metrics & values
        elif column[0] == "labels":
            key = column[1]
            self.labels[key] = self.labels[key] & values if key in self.labels else values

    def _time(self, kind: str, value: dict[str, Any] | None, params: Sequence[object]) -> None:
        at = _integer(value, params)
        if at is None:
            return
        if kind == "COMPARE_EQUAL":
            self.start, self.end = max(self.start, at), min(self.end, at + 1)
            return
        bound, offset = _TS_BOUNDS[kind]
        if bound == "start":
            self.start = max(self.start, at + offset)
        else:
            self.end = min(self.end, at + offset)


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
        if len(names) == 1 and names[0].lower() in ("ts", "metric", "datasource"):
            return (names[0].lower(),)
        if len(names) == 2 and names[0].lower() == "labels":
            return ("labels", names[1])
        return None
    if expression.get("class") == "OPERATOR" and expression.get("type") == "ARRAY_EXTRACT":
        children = expression.get("children") or []
        if len(children) == 2 and _column(children[0], alias) is None:
            base = children[0]
            names = (
                [str(n).lower() for n in base.get("column_names") or []]
                if base.get("class") == "COLUMN_REF"
                else []
            )
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
    if expression.get("class") != "PARAMETER":
        return None
    identifier = str(expression.get("identifier", ""))
    if not identifier.isdigit() or not 1 <= int(identifier) <= len(params):
        return None
    return params[int(identifier) - 1]


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
