"""Stored samples for Prometheus: the SQL that reads the newest point of every series, the names
and labels they are exported under, which of them `match[]` selects, and their metric families
(plain untyped ones, or merged into this process's self-metric families). Pure functions: the
export runs them in a worker thread.

Names and label names are escaped to Prometheus' character set as prometheus-client writes them;
each sample carries a `datasource` label (a stored label of that name becomes `exported_datasource`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from google.protobuf import struct_pb2
from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics.exposition import UNDERSCORES, escape_label_name, escape_metric_name

from libs.selfmetrics import sample_families
from platformq.analytics.v1 import query_service_pb2
from services.monitoring.selectors import NAME_LABEL, Selector

LOOKBACK_MS = 5 * 60_000
"""How old the newest stored sample of a series may be and still be exported (Prometheus' default)."""
DATASOURCE_LABEL = "datasource"

# The newest point of every series of the chosen datasources in (since, until]. The points are
# reduced per series before the join, as the query-router's SQL views advise.
_LATEST_SQL = (
    "SELECT s.datasource, s.metric, s.labels, p.ts, p.value FROM ("
    "SELECT datasource, series_id, max(ts) AS ts, arg_max(value, ts) AS value FROM points "
    "WHERE ts > ? AND ts <= ?{where} GROUP BY datasource, series_id) p "
    "JOIN series s ON s.datasource = p.datasource AND s.series_id = p.series_id"
)


@dataclass(frozen=True)
class StoredSample:
    """The newest stored point of one series."""

    datasource: str
    metric: str
    labels: dict[str, str]
    timestamp_ms: int
    value: float


def latest_sql(datasources: Sequence[str] | None) -> str:
    """The SQL for the newest points; `datasources` (bound as parameters) restricts the scan."""
    if datasources is None:
        return _LATEST_SQL.format(where="")
    return _LATEST_SQL.format(where=f" AND datasource IN ({', '.join('?' * len(datasources))})")


def exported_name(metric: str) -> str:
    """A stored metric name in Prometheus' character set (what prometheus-client writes)."""
    return escape_metric_name(metric, UNDERSCORES)


def exported_labels(sample: StoredSample) -> dict[str, str]:
    """A stored series' labels as exported: escaped names, plus its datasource."""
    labels = {}
    for key, value in sample.labels.items():
        name = escape_label_name(key, UNDERSCORES)
        labels[f"exported_{name}" if name == DATASOURCE_LABEL else name] = value
    labels[DATASOURCE_LABEL] = sample.datasource
    return labels


def select(
    samples: Iterable[StoredSample], selectors: Sequence[Selector]
) -> list[tuple[str, dict[str, str], StoredSample]]:
    """(exported name, exported labels, sample) of every sample some selector matches, once each.

    A metric name is matched as stored and as exported, so `cpu_usage` finds a stored `cpu.usage`."""
    chosen: dict[tuple[str, tuple[tuple[str, str], ...]], tuple[str, dict[str, str], StoredSample]] = {}
    for sample in samples:
        name = exported_name(sample.metric)
        labels = exported_labels(sample)
        names = {name, sample.metric}
        if not any(sel.matches({**labels, NAME_LABEL: n}) for sel in selectors for n in names):
            continue
        key = (name, tuple(sorted(labels.items())))
        # Two stored names can escape to one exported name: the newer sample wins.
        if key not in chosen or chosen[key][2].timestamp_ms < sample.timestamp_ms:
            chosen[key] = (name, labels, sample)
    return [chosen[k] for k in sorted(chosen)]


def stored_families(selected: Iterable[tuple[str, dict[str, str], StoredSample]]) -> list[Metric]:
    """Untyped families (as Prometheus' /federate writes them) of the selected samples."""
    families: dict[str, Metric] = {}
    for name, labels, sample in selected:
        if name not in families:
            families[name] = Metric(
                name, f"Latest stored value (lookback {LOOKBACK_MS // 60_000}m).", "unknown"
            )
        families[name].add_sample(name, labels, sample.value, sample.timestamp_ms / 1000)
    return list(families.values())


def merge_self_samples(families: list[Metric], samples: Iterable[StoredSample]) -> list[Metric]:
    """Add other processes' stored self-metrics to this process's families (by sample name), with
    their timestamps; a name this process does not know becomes an untyped family of its own."""
    by_sample = sample_families(families)
    extra: dict[str, Metric] = {}
    for s in sorted(samples, key=_sample_order):
        family = by_sample.get(s.metric)
        if family is None:
            if s.metric not in extra:
                extra[s.metric] = Metric(s.metric, "Reported by another instance of the service.", "unknown")
            family = extra[s.metric]
        family.add_sample(s.metric, dict(s.labels), s.value, s.timestamp_ms / 1000)
    return [*families, *extra.values()]


def _sample_order(sample: StoredSample) -> tuple:
    """Series by name and labels, a histogram's buckets by their bound (not as text)."""
    labels = tuple(sorted((k, v) for k, v in sample.labels.items() if k != "le"))
    le = sample.labels.get("le")
    try:
        bound = float(le) if le is not None else 0.0
    except ValueError:
        bound = 0.0
    return (sample.metric, labels, bound)


def stored_samples(response: query_service_pb2.QueryResponse) -> list[StoredSample]:
    """The rows of a `latest_sql` answer as samples."""
    out = []
    for row in response.rows:
        datasource, metric, labels, ts, value = row.values
        out.append(
            StoredSample(
                datasource=datasource.string_value,
                metric=metric.string_value,
                labels=_label_map(labels),
                timestamp_ms=int(ts.number_value),
                value=value.number_value,
            )
        )
    return out


def _label_map(cell: struct_pb2.Value) -> dict[str, str]:
    # A STRUCT of every label key of the tenant: the keys this series lacks are null.
    fields = cell.struct_value.fields
    return {k: v.string_value for k, v in fields.items() if v.WhichOneof("kind") == "string_value"}
