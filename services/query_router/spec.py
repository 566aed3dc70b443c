"""Turns query requests into validated domain specs; every rejection names its field."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from libs.errors import InvalidArgument
from libs.timeparse import parse_duration_ms, parse_interval_ms, parse_iso_duration_ms, parse_time_ms
from platformq.analytics.v1 import common_pb2, query_service_pb2

MODES = ("auto", "batch", "realtime", "cache")
BUCKET_AGGREGATIONS = ("avg", "sum", "min", "max", "count", "p50", "p90", "p95", "p99", "rate", "last")
# "raw" returns every stored point of every matching series, one answer series per stored series.
RAW = "raw"
AGGREGATIONS = (*BUCKET_AGGREGATIONS, RAW)
FILTER_OPS = ("=", "!=", "in", "regex")
DEFAULT_DATASOURCE = "platform_metrics"
LABEL_KEY = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")

# Druid's granularity names and their fixed widths in ms; month, quarter and year are calendar
# buckets and "all" is a single bucket (width None).
GRANULARITIES: dict[str, int | None] = {
    "all": None,
    "none": 1,
    "second": 1_000,
    "minute": 60_000,
    "five_minute": 300_000,
    "ten_minute": 600_000,
    "fifteen_minute": 900_000,
    "thirty_minute": 1_800_000,
    "hour": 3_600_000,
    "six_hour": 21_600_000,
    "eight_hour": 28_800_000,
    "day": 86_400_000,
    "week": 604_800_000,
    "month": None,
    "quarter": None,
    "year": None,
}


@dataclass(frozen=True)
class LabelMatch:
    """One label filter: label, operator and operands."""

    label: str
    op: str
    values: tuple[str, ...]


@dataclass(frozen=True)
class QuerySpec:
    """A validated unified query."""

    datasource: str
    metrics: tuple[str, ...]
    mode: str
    aggregation: str
    group_by: tuple[str, ...]
    filters: tuple[LabelMatch, ...]
    lookback_ms: int | None
    start_ms: int | None
    end_ms: int | None
    step_ms: int | None
    limit: int
    sql: str
    params: tuple[object, ...] = field(default=())
    explain: bool = False


@dataclass(frozen=True)
class TimeseriesSpec:
    """A validated Druid-style timeseries query."""

    datasource: str
    metrics: tuple[str, ...]
    intervals: tuple[tuple[int, int], ...]
    granularity: str
    granularity_ms: int | None
    filters: tuple[LabelMatch, ...]
    aggregations: tuple[tuple[str, str, str], ...]
    dimensions: tuple[str, ...]
    mode: str


def _choice(value: str, allowed: tuple[str, ...], field_name: str, default: str) -> str:
    if not value:
        return default
    if value not in allowed:
        raise InvalidArgument(f"{value!r} is not allowed; use one of {', '.join(allowed)}", field_name)
    return value


def _names(values: list[str], field_name: str, pattern: re.Pattern[str] | None = None) -> tuple[str, ...]:
    for i, value in enumerate(values):
        if not value.strip():
            raise InvalidArgument("must not be empty", f"{field_name}[{i}]")
        if pattern is not None and not pattern.fullmatch(value):
            raise InvalidArgument(f"{value!r} must match {pattern.pattern}", f"{field_name}[{i}]")
    return tuple(values)


def filters_from_proto(
    filters: list[common_pb2.LabelFilter], field_name: str = "filters"
) -> tuple[LabelMatch, ...]:
    """Validate label filters: a valid key, a known operator, the operands it needs."""
    out = []
    for i, f in enumerate(filters):
        where = f"{field_name}[{i}]"
        if not LABEL_KEY.fullmatch(f.label):
            raise InvalidArgument(
                f"{f.label!r} is not a label key ([a-zA-Z_][a-zA-Z0-9_]*)", f"{where}.label"
            )
        op = _choice(f.op, FILTER_OPS, f"{where}.op", "=")
        if op == "in":
            if not f.values:
                raise InvalidArgument("'in' needs at least one value in values", f"{where}.values")
            operands = tuple(f.values)
        else:
            operands = (f.value,)
        if op == "regex":
            try:
                re.compile(f.value)
            except re.error as exc:
                raise InvalidArgument(f"not a valid regular expression: {exc}", f"{where}.value") from None
        out.append(LabelMatch(f.label, op, operands))
    return tuple(out)


def query_from_proto(request: query_service_pb2.QueryRequest) -> QuerySpec:
    """Validate a QueryRequest into a QuerySpec."""
    mode = _choice(request.mode, MODES, "mode", "auto")
    aggregation = _choice(request.aggregation, AGGREGATIONS, "aggregation", "avg")
    if not request.sql and not request.metrics:
        raise InvalidArgument("give at least one metric (or a sql statement)", "metrics")
    if request.sql and request.metrics:
        raise InvalidArgument("give either sql or metrics, not both", "sql")
    if request.limit < 0:
        raise InvalidArgument("must not be negative", "limit")
    if aggregation == RAW and (request.step or request.group_by):
        field_name = "step" if request.step else "group_by"
        raise InvalidArgument(
            "raw returns every point of every series: it takes no step or group_by", field_name
        )
    lookback = parse_duration_ms(request.time_range, "time_range") if request.time_range else None
    start = parse_time_ms(request.start, "start") if request.start else None
    end = parse_time_ms(request.end, "end") if request.end else None
    if lookback is not None and start is not None:
        raise InvalidArgument("give either time_range or start (and end), not both", "time_range")
    if start is not None and end is not None and end <= start:
        raise InvalidArgument("end must be after start", "end")
    return QuerySpec(
        datasource=request.datasource or DEFAULT_DATASOURCE,
        metrics=_names(list(request.metrics), "metrics"),
        mode=mode,
        aggregation=aggregation,
        group_by=_names(list(request.group_by), "group_by", LABEL_KEY),
        filters=filters_from_proto(list(request.filters)),
        lookback_ms=lookback,
        start_ms=start,
        end_ms=end,
        step_ms=parse_duration_ms(request.step, "step") if request.step else None,
        limit=request.limit,
        sql=request.sql,
        params=tuple(_value_to_python(v) for v in request.params),
        explain=request.explain,
    )


def _value_to_python(value: object) -> object:
    kind = value.WhichOneof("kind")  # type: ignore[attr-defined]
    if kind in (None, "null_value"):
        return None
    if kind in ("struct_value", "list_value"):
        raise InvalidArgument("only strings, numbers, booleans and null can be bound", "params")
    number = getattr(value, kind)
    # JSON has one number type: a whole number binds as an integer, so `ts >= ?` stays an integer
    # comparison that DuckDB can push into the Parquet scan.
    if kind == "number_value" and number.is_integer() and abs(number) < 2**53:
        return int(number)
    return number


def timeseries_from_proto(request: query_service_pb2.QueryTimeseriesRequest) -> TimeseriesSpec:
    """Validate a QueryTimeseriesRequest into a TimeseriesSpec."""
    if not request.metrics and not request.aggregations:
        raise InvalidArgument("give at least one metric (or aggregations)", "metrics")
    if not request.intervals:
        raise InvalidArgument("give at least one interval 'start/end'", "intervals")
    granularity = request.granularity or "all"
    if granularity.startswith("P"):
        width: int | None = parse_iso_duration_ms(granularity, "granularity")
    elif granularity in GRANULARITIES:
        width = GRANULARITIES[granularity]
    else:
        raise InvalidArgument(
            f"{granularity!r} is not a granularity; use one of {', '.join(GRANULARITIES)} "
            "or an ISO-8601 duration such as 'PT5M'",
            "granularity",
        )
    aggregations = []
    for i, agg in enumerate(request.aggregations):
        kind = _choice(agg.type, BUCKET_AGGREGATIONS, f"aggregations[{i}].type", "avg")
        if not agg.metric:
            raise InvalidArgument("must not be empty", f"aggregations[{i}].metric")
        aggregations.append((kind, agg.metric, agg.name or f"{kind}_{agg.metric}"))
    return TimeseriesSpec(
        datasource=request.datasource or DEFAULT_DATASOURCE,
        metrics=_names(list(request.metrics), "metrics"),
        intervals=tuple(parse_interval_ms(v, f"intervals[{i}]") for i, v in enumerate(request.intervals)),
        granularity=granularity,
        granularity_ms=width,
        filters=filters_from_proto(list(request.filters)),
        aggregations=tuple(aggregations),
        dimensions=_names(list(request.dimensions), "dimensions", LABEL_KEY),
        mode=_choice(request.mode, MODES, "mode", "auto"),
    )
