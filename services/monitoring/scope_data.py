"""What the monitor scopes read through the query-router and the ml service: which services,
hosts, simulations and resources exist and when each was last seen, their metrics over a time
range, and recent anomalies. No gRPC servicer code; peers are reached through PeerReader."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from libs.errors import AnalyticsError
from libs.identity import current_identity
from platformq.analytics.v1 import common_pb2, events_pb2, ml_service_pb2, query_service_pb2
from services.monitoring.health import Points
from services.monitoring.panels import LAYOUT_LABELS, Known, format_step
from services.monitoring.reader import PeerReader

# The newest anomalies read per scope: per-entity counts cover at most these.
ANOMALY_SCAN_LIMIT = 1000


def _entity_sql(key: str, where_key: str = "", sub_key: str = "") -> str:
    """Every value of label `key` in a datasource (with the value of `sub_key` when given), per
    metric, with the newest point since a time (NULL when none): the series catalog left-joined
    with the newest point of each series. Label keys come from LAYOUT_LABELS only; values are
    bound parameters."""
    if any(k and k not in LAYOUT_LABELS for k in (key, where_key, sub_key)) or not key:
        raise ValueError(f"not layout labels: {key!r} {where_key!r} {sub_key!r}")
    where = f" AND s.labels['{where_key}'] = ?" if where_key else ""
    sub = f"coalesce(s.labels['{sub_key}'], '')" if sub_key else "''"
    return (
        f"SELECT s.labels['{key}'] AS entity, {sub} AS sub, s.metric AS metric, max(p.last_ts) AS last_ts "
        "FROM series s LEFT JOIN ("
        "SELECT datasource, series_id, max(ts) AS last_ts FROM points WHERE datasource = ? AND ts >= ? GROUP BY ALL"
        ") p ON p.datasource = s.datasource AND p.series_id = s.series_id "
        f"WHERE s.datasource = ? AND coalesce(s.labels['{key}'], '') <> ''{where} GROUP BY ALL"
    )


@dataclass
class Catalog:
    """The values of one label (services, hosts, ...): per value, its metrics and newest point."""

    entities: dict[str, dict[str, int | None]] = field(default_factory=dict)

    def __contains__(self, name: str) -> bool:
        return name in self.entities

    def names(self) -> list[str]:
        """Every value, sorted."""
        return sorted(self.entities)

    def metrics(self, name: str) -> list[str]:
        """The metrics an entity has series of."""
        return sorted(self.entities.get(name, {}))

    def last_seen(self, name: str) -> int | None:
        """The entity's newest point in the range, None when it has none."""
        seen = [ts for ts in self.entities.get(name, {}).values() if ts is not None]
        return max(seen) if seen else None


# entity -> metric -> [(sub-label value, points)]: one entry per host (or resource) of the entity.
Figures = dict[str, dict[str, list[tuple[str, Points]]]]


class ScopeData:
    """Reads for the monitor scopes over one datasource."""

    def __init__(self, reader: PeerReader, timeout: float | None) -> None:
        self.reader = reader
        self.timeout = timeout

    async def known(self, datasource: str) -> Known | None:
        """The datasource's metrics and layout labels; None when it holds no series."""
        return await self.reader.known(datasource, self.timeout)

    async def catalog(
        self,
        datasource: str,
        key: str,
        since_ms: int,
        where: tuple[str, str] | None = None,
        sub_key: str = "",
    ) -> Catalog:
        """Every value of label `key` (optionally among series whose label where[0] is where[1]).
        With `sub_key`, an entity is "<sub_key value>/<key value>" where the series has both (a
        simulation's resource: "sim-001/gpu")."""
        params: list[object] = [datasource, since_ms, datasource]
        if where:
            params.append(where[1])
        sql = _entity_sql(key, where[0] if where else "", sub_key)
        rows = await self.reader.sql(sql, params, self.timeout)
        out = Catalog()
        for row in rows:
            last = row.get("last_ts")
            name = f"{row['sub']}/{row['entity']}" if row.get("sub") else str(row["entity"])
            metrics = out.entities.setdefault(name, {})
            metrics[str(row["metric"])] = None if last is None else int(float(last))  # type: ignore[arg-type]
        return out

    async def figures(
        self,
        datasource: str,
        key: str,
        sub_key: str,
        metrics: Sequence[str],
        time_range: str,
        step_ms: int,
        equal: dict[str, str] | None = None,
    ) -> Figures:
        """Each entity's metrics over the time range, `avg` per step, one series per value of
        `sub_key` (empty: one series per entity)."""
        if not metrics:
            return {}
        filters = [common_pb2.LabelFilter(label=key, op="!=", value="")]
        filters += [common_pb2.LabelFilter(label=k, op="=", value=v) for k, v in (equal or {}).items()]
        request = query_service_pb2.QueryRequest(
            datasource=datasource,
            metrics=list(metrics),
            time_range=time_range,
            step=format_step(step_ms),
            aggregation="avg",
            group_by=[key, sub_key] if sub_key else [key],
            filters=filters,
            mode="batch",  # fresh figures: no query-cache read (see panels.query_for)
        )
        reply = await self.reader.query(request, self.timeout)
        out: Figures = {}
        for series in reply.series:
            points = [(p.timestamp_ms, p.value) for p in series.points]
            entity = out.setdefault(series.group.get(key, ""), {})
            entity.setdefault(series.metric, []).append((series.group.get(sub_key, ""), points))
        return out

    async def raw(
        self, datasource: str, metrics: Sequence[str], time_range: str
    ) -> list[common_pb2.SeriesResult]:
        """Every stored point of the metrics over the time range, one series per stored series."""
        request = query_service_pb2.QueryRequest(
            datasource=datasource,
            metrics=list(metrics),
            time_range=time_range,
            aggregation="raw",
            mode="batch",
        )
        return list((await self.reader.query(request, self.timeout)).series)

    async def anomalies(
        self, datasource: str, time_range: str, labels: dict[str, str] | None = None
    ) -> tuple[list[events_pb2.AnomalyEvent], bool]:
        """The newest anomalies (at most ANOMALY_SCAN_LIMIT) and whether there were more."""
        request = ml_service_pb2.ListAnomaliesRequest(
            datasource=datasource,
            time_range=time_range,
            labels=[f"{k}={v}" for k, v in (labels or {}).items()],
            limit=ANOMALY_SCAN_LIMIT,
        )
        reply = await self.reader.anomalies(request, self.timeout)
        return [anomaly_event(a) for a in reply.anomalies], bool(reply.next_cursor)


def anomaly_event(anomaly: ml_service_pb2.Anomaly) -> events_pb2.AnomalyEvent:
    """A stored anomaly in the shape the anomaly stream and the monitor answers use."""
    labels = dict(anomaly.labels)
    return events_pb2.AnomalyEvent(
        tenant=current_identity().tenant,
        source=labels.get("simulation_id") or labels.get("service_name") or labels.get("host", ""),
        metric=anomaly.metric,
        labels=labels,
        timestamp_ms=anomaly.timestamp_ms,
        value=anomaly.value,
        score=anomaly.score,
        method=anomaly.method,
        datasource=anomaly.datasource,
        expected=anomaly.expected,
        lower=anomaly.lower,
        upper=anomaly.upper,
        deviation=anomaly.deviation,
        threshold=anomaly.threshold,
        model_version=anomaly.model_version,
        id=anomaly.id,
        detected_at_ms=anomaly.detected_at_ms,
        reason=anomaly.reason,
    )


def soft_error(exc: AnalyticsError, what: str) -> str:
    """The warning for a part of an answer that could not be read."""
    return f"{what} could not be read: {exc.message}"
