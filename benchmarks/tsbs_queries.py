"""The TSBS devops query types, random instances of them, and their PromQL and Query API forms.

Definitions follow timescale/tsbs cmd/tsbs_generate_queries (uses/devops and the TimescaleDB and
VictoriaMetrics generators):

| type | TSBS meaning |
|---|---|
| single-groupby-1-1-1 | max of 1 cpu metric per minute, 1 random host, random 1 h window |
| single-groupby-5-8-1 | max of 5 cpu metrics per minute, 8 random hosts, random 1 h window |
| cpu-max-all-8 | max of all 10 cpu metrics per hour, 8 random hosts, random 8 h window |
| double-groupby-1 | avg of 1 cpu metric per host per hour, all hosts, random 24 h window |
| double-groupby-all | avg of all 10 cpu metrics per host per hour, all hosts, random 24 h window |
| high-cpu-1 | all cpu fields of the rows with usage_user > 90, 1 random host, random 24 h window |
| lastpoint | the last row of every host |
| groupby-orderby-limit | max(usage_user) per minute over all hosts before a random end, last 5 minutes |

The single-groupby types aggregate across the chosen hosts (one answer per metric and minute),
as TSBS's SQL does (`GROUP BY minute`) and its PromQL (`max(...) by (__name__)`).

Windows are drawn as TSBS's RandWindow does, over the query interval [data start, data end + 1 s)
(TSBS's documented query setup: one second past the data, so 24 h windows fit a 1-day data set),
at millisecond resolution. Where the data are shorter than a type's window (--quick), the window
shrinks to the data span.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np

from platformq.analytics.v1 import common_pb2, query_service_pb2

HOUR_MS = 3_600_000
MINUTE_MS = 60_000
CPU_FIELDS = (
    "usage_user",
    "usage_system",
    "usage_idle",
    "usage_nice",
    "usage_iowait",
    "usage_irq",
    "usage_softirq",
    "usage_steal",
    "usage_guest",
    "usage_guest_nice",
)
CPU_METRICS = tuple(f"cpu_{f}" for f in CPU_FIELDS)
HIGH_CPU_THRESHOLD = 90.0


@dataclass(frozen=True)
class QueryType:
    """One TSBS query type's parameters."""

    name: str
    kind: str  # "groupby" (metrics API), "high-cpu", "lastpoint", "gobl" (SQL)
    n_metrics: int = 1
    n_hosts: int = 0  # 0: all hosts
    window_ms: int = HOUR_MS
    step_ms: int = MINUTE_MS
    aggregation: str = "max"
    group_by: tuple[str, ...] = ()


QUERY_TYPES: tuple[QueryType, ...] = (
    QueryType("single-groupby-1-1-1", "groupby", 1, 1, HOUR_MS, MINUTE_MS, "max"),
    QueryType("single-groupby-5-8-1", "groupby", 5, 8, HOUR_MS, MINUTE_MS, "max"),
    QueryType("cpu-max-all-8", "groupby", 10, 8, 8 * HOUR_MS, HOUR_MS, "max"),
    QueryType("double-groupby-1", "groupby", 1, 0, 24 * HOUR_MS, HOUR_MS, "avg", ("hostname",)),
    QueryType("double-groupby-all", "groupby", 10, 0, 24 * HOUR_MS, HOUR_MS, "avg", ("hostname",)),
    QueryType("high-cpu-1", "high-cpu", 10, 1, 24 * HOUR_MS),
    QueryType("lastpoint", "lastpoint", 10),
    QueryType("groupby-orderby-limit", "gobl", 1, 0, HOUR_MS, MINUTE_MS, "max"),
)
TYPES_BY_NAME = {t.name: t for t in QUERY_TYPES}
# TSBS's VictoriaMetrics generator panics for these: PromQL cannot express them.
VM_UNSUPPORTED = ("high-cpu-1", "lastpoint", "groupby-orderby-limit")


@dataclass(frozen=True)
class QueryInstance:
    """One concrete query: which metrics and hosts, which time range."""

    qtype: QueryType
    index: int
    metrics: tuple[str, ...]
    hosts: tuple[str, ...]  # empty: all hosts
    start_ms: int | None
    end_ms: int | None
    window_ms: int = 0
    extra: dict[str, int] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """ "<type>#<index>"."""
        return f"{self.qtype.name}#{self.index}"


def _rng(seed: int, qtype: str) -> np.random.Generator:
    """One generator per type, so adding a type does not change another's instances."""
    digest = hashlib.blake2b(qtype.encode(), digest_size=8).digest()
    return np.random.default_rng([seed, int.from_bytes(digest, "little")])


def _rand_window(rng: np.random.Generator, lo_ms: int, hi_ms: int, window_ms: int) -> tuple[int, int, int]:
    """TSBS RandWindow: start uniform in [lo, hi - window).

    A window as long as the data or longer (only with --quick's short data) would leave no room
    to vary, so every instance would be the same query; it shrinks to 3/4 of the span instead.
    """
    span = hi_ms - lo_ms
    window = window_ms if window_ms < span else max(MINUTE_MS, span * 3 // 4 // MINUTE_MS * MINUTE_MS)
    start = lo_ms + int(rng.integers(0, span - window))
    return start, start + window, window


def make_instances(
    qtype: QueryType, n: int, hosts: list[str], data_start_ms: int, data_end_ms: int, seed: int = 123
) -> list[QueryInstance]:
    """n distinct random instances of qtype over the data's hosts and time range.

    A draw equal to an earlier one is drawn again: a repeated query would be a cache hit, and the
    instances are meant to measure uncached answers.
    """
    rng = _rng(seed, qtype.name)
    lo, hi = data_start_ms, data_end_ms + 1000
    out: list[QueryInstance] = []
    seen: set[tuple[object, ...]] = set()
    for _ in range(50 * n):
        if len(out) == n:
            break
        metrics = CPU_METRICS[: qtype.n_metrics]
        chosen: tuple[str, ...] = ()
        if qtype.n_hosts:
            # TSBS: rand.Perm(scale)[:n] -- distinct hosts.
            picks = rng.permutation(len(hosts))[: qtype.n_hosts]
            chosen = tuple(hosts[int(p)] for p in picks)
        extra: dict[str, int] = {}
        if qtype.kind == "lastpoint":
            # TSBS's lastpoint has no parameter, so every instance would be the same query and all
            # but the first would be answered from the cache. A random lower time bound before the
            # data start changes the query (and the cache key) but not the answer.
            start, end, window = None, None, 0
            extra["lower_bound_ms"] = lo - 1 - int(rng.integers(0, 30 * 86_400_000))
        elif qtype.kind == "gobl":
            # Only the random window's end is used: "WHERE time < end ... LIMIT 5".
            _, end, window = _rand_window(rng, lo, hi, qtype.window_ms)
            start = None
        else:
            start, end, window = _rand_window(rng, lo, hi, qtype.window_ms)
        key = (chosen, start, end, tuple(extra.items()))
        if key in seen:
            continue
        seen.add(key)
        out.append(QueryInstance(qtype, len(out), metrics, chosen, start, end, window, extra))
    return out


def rfc3339_ms(ms: int) -> str:
    """Epoch ms as RFC 3339 with milliseconds, e.g. 2026-11-01T03:12:45.123Z."""
    dt = datetime.fromtimestamp(ms / 1000, tz=UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def _step_text(step_ms: int) -> str:
    return f"{step_ms // HOUR_MS}h" if step_ms % HOUR_MS == 0 else f"{step_ms // MINUTE_MS}m"


def _pivot_columns(metric_col: str, value_col: str) -> str:
    """One `max(value) FILTER (WHERE metric = ...) AS <field>` column per cpu field."""
    return ",\n       ".join(
        f"max({value_col}) FILTER (WHERE {metric_col} = '{m}') AS {f}"
        for m, f in zip(CPU_METRICS, CPU_FIELDS, strict=True)
    )


def ours_request(inst: QueryInstance, datasource: str, n_hosts_total: int) -> query_service_pb2.QueryRequest:
    """The Query API request for an instance: metrics API where it can say it, SQL otherwise."""
    qt = inst.qtype
    if qt.kind == "groupby":
        filters = []
        if len(inst.hosts) == 1:
            filters.append(common_pb2.LabelFilter(label="hostname", op="=", value=inst.hosts[0]))
        elif inst.hosts:
            filters.append(common_pb2.LabelFilter(label="hostname", op="in", values=list(inst.hosts)))
        assert inst.start_ms is not None and inst.end_ms is not None
        return query_service_pb2.QueryRequest(
            datasource=datasource,
            metrics=list(inst.metrics),
            aggregation=qt.aggregation,
            step=_step_text(qt.step_ms),
            group_by=list(qt.group_by),
            filters=filters,
            start=rfc3339_ms(inst.start_ms),
            end=rfc3339_ms(inst.end_ms),
            # Every expected series, so a default cap cannot truncate the answer.
            limit=expected_series(inst, n_hosts_total),
        )
    sql, params = ours_sql(inst, datasource)
    request = query_service_pb2.QueryRequest(sql=sql)
    for p in params:
        v = request.params.add()
        if isinstance(p, str):
            v.string_value = p
        else:
            # google.protobuf.Value carries numbers as doubles (exact for epoch ms); the SQL casts
            # them back to BIGINT so the ts comparisons stay integer and prunable.
            v.number_value = float(p)
    return request


def ours_sql(inst: QueryInstance, datasource: str) -> tuple[str, list[object]]:
    """SQL over the tenant views `metrics` and `series` for the types the metrics API cannot say."""
    qt = inst.qtype
    metric_list = ", ".join(f"'{m}'" for m in inst.metrics)
    if qt.kind == "high-cpu":
        sql = f"""SELECT ts,
       {_pivot_columns("metric", "value")}
FROM metrics
WHERE datasource = ? AND labels['hostname'] = ? AND metric IN ({metric_list})
  AND ts >= CAST(? AS BIGINT) AND ts < CAST(? AS BIGINT)
GROUP BY ts
HAVING max(value) FILTER (WHERE metric = 'cpu_usage_user') > {HIGH_CPU_THRESHOLD}
ORDER BY ts"""
        return sql, [datasource, inst.hosts[0], inst.start_ms, inst.end_ms]
    if qt.kind == "lastpoint":
        # The floor's shape: last point per series on the `points` view, then the series' labels.
        sql = f"""WITH latest AS (
  SELECT series_id, max(ts) AS ts, arg_max(value, ts) AS value
  FROM points
  WHERE datasource = ? AND ts >= CAST(? AS BIGINT)
  GROUP BY series_id
)
SELECT s.labels['hostname'] AS hostname, max(latest.ts) AS ts,
       {_pivot_columns("s.metric", "latest.value")}
FROM latest JOIN series s USING (series_id)
WHERE s.datasource = ? AND s.metric IN ({metric_list})
GROUP BY hostname
ORDER BY hostname"""
        return sql, [datasource, inst.extra["lower_bound_ms"], datasource]
    if qt.kind == "gobl":
        sql = """SELECT (ts // 60000) * 60000 AS minute, max(value) AS max_usage_user
FROM metrics
WHERE datasource = ? AND metric = 'cpu_usage_user' AND ts < CAST(? AS BIGINT)
GROUP BY minute
ORDER BY minute DESC
LIMIT 5"""
        return sql, [datasource, inst.end_ms]
    raise ValueError(f"{qt.name} is a metrics-API query")


def expected_series(inst: QueryInstance, n_hosts_total: int) -> int:
    """Series a groupby answer holds: one per metric, times the hosts when grouped by hostname."""
    qt = inst.qtype
    if qt.kind != "groupby":
        return 0
    if "hostname" in qt.group_by:
        return len(inst.metrics) * n_hosts_total
    return len(inst.metrics)


def promql(inst: QueryInstance) -> tuple[str, float, float, int] | None:
    """(query, start s, end s, step s) as TSBS's VictoriaMetrics generator writes it, or None."""
    qt = inst.qtype
    if qt.name in VM_UNSUPPORTED or qt.kind != "groupby":
        return None
    if len(inst.metrics) == 1:
        selector = f"{inst.metrics[0]}{{{_host_clause(inst.hosts)}}}"
    else:
        names = "|".join(m.removeprefix("cpu_") for m in inst.metrics)
        host = _host_clause(inst.hosts)
        selector = f"{{__name__=~'cpu_({names})'{', ' + host if host else ''}}}"
    window = _step_text(qt.step_ms)
    if qt.group_by:
        query = f"avg(avg_over_time({selector}[{window}])) by (__name__, hostname)"
    else:
        query = f"max(max_over_time({selector}[{window}])) by (__name__)"
    assert inst.start_ms is not None and inst.end_ms is not None
    return query, inst.start_ms / 1000, inst.end_ms / 1000, qt.step_ms // 1000


def _host_clause(hosts: tuple[str, ...]) -> str:
    if not hosts:
        return ""
    if len(hosts) == 1:
        return f"hostname='{hosts[0]}'"
    return "hostname=~'" + "|".join(hosts) + "'"


def describe_types() -> list[dict[str, object]]:
    """Each type's parameters, for the report."""
    return [
        {
            "type": t.name,
            "api": "metrics" if t.kind == "groupby" else "sql",
            "metrics": t.n_metrics,
            "hosts": t.n_hosts or "all",
            "window": {"lastpoint": "all data", "gobl": "all data before a random end"}.get(
                t.kind, f"random {t.window_ms // HOUR_MS} h"
            ),
            "step": _step_text(t.step_ms) if t.kind in ("groupby", "gobl") else None,
            "aggregation": t.aggregation if t.kind in ("groupby", "gobl") else None,
            "vm": t.name not in VM_UNSUPPORTED,
        }
        for t in QUERY_TYPES
    ]
