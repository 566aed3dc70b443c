"""Monitor scopes over a stand-in query-router and ml service: `StandInReader` is a real
PeerReader whose calls answer from points held in memory, with the query-router's semantics for
what the scopes use (label filters, group_by, avg per step, raw, GetMetadata's catalog, the
entities' SQL)."""

from __future__ import annotations

import re
import time
from collections import Counter

import pytest

from libs.config import load_settings
from libs.errors import InvalidArgument, NotFound
from libs.timeparse import parse_duration_ms
from platformq.analytics.v1 import common_pb2, ml_service_pb2, query_service_pb2
from platformq.analytics.v1 import monitoring_service_pb2 as pb
from services.context import ServiceContext
from services.monitoring.health import HealthRules, combine_hosts, compare, increase, status_of, worst
from services.monitoring.reader import PeerReader
from services.monitoring.scopes import Scopes, _self_figures

STEP = 10_000
Series = tuple[str, dict[str, str], list[tuple[int, float]]]


def now_ms() -> int:
    return int(time.time() * 1000)


def flat(metric: str, labels: dict[str, str], value: float, minutes: int = 10, age_s: int = 0) -> Series:
    """A constant series of one point every 10 s for `minutes`, its newest point `age_s` old."""
    end = now_ms() - age_s * 1000
    return metric, labels, [(end - i * STEP, float(value)) for i in range(minutes * 6)][::-1]


class StandInReader(PeerReader):
    """Stand-in for the peers: answers from `data` ({datasource: [series]}) in memory."""

    def __init__(
        self,
        data: dict[str, list[Series]],
        anomalies: list[ml_service_pb2.Anomaly] = (),
        health: dict[str, dict[str, str]] | None = None,
    ) -> None:
        super().__init__(lambda service: "127.0.0.1:9", 1 << 20)
        self.data = data
        self.stored_anomalies = list(anomalies)
        self.health_of = health or {}
        self.queries: list[query_service_pb2.QueryRequest] = []

    async def metadata(self, datasource, timeout=None):
        if datasource not in self.data:
            raise NotFound(f"{datasource!r} does not exist", "datasource")
        reply = query_service_pb2.GetMetadataResponse(datasource=datasource)
        per_metric = Counter(metric for metric, _, _ in self.data[datasource])
        for metric, count in sorted(per_metric.items()):
            reply.metrics.add(name=metric, series_count=count)
        values: dict[str, set[str]] = {}
        for _, labels, _ in self.data[datasource]:
            for k, v in labels.items():
                values.setdefault(k, set()).add(v)
        for k in sorted(values):
            reply.label_keys.add(key=k, cardinality=len(values[k]))
        return reply

    async def sql(self, sql, params, timeout=None):
        series = self.data.get(params[0], [])
        key = re.search(r"labels\['(\w+)'\] AS entity", sql).group(1)
        where = re.search(r"AND s.labels\['(\w+)'\] = \?", sql)
        sub = re.search(r"coalesce\(s.labels\['(\w+)'\], ''\) AS sub", sql)
        since = params[1]
        out: dict[tuple[str, str, str], int | None] = {}
        for metric, labels, points in series:
            if not labels.get(key) or (where and labels.get(where.group(1)) != params[3]):
                continue
            newest = max((ts for ts, _ in points if ts >= since), default=None)
            row = (labels[key], labels.get(sub.group(1), "") if sub else "", metric)
            old = out.get(row)
            out[row] = newest if old is None else max(old, newest or old)
        return [{"entity": e, "sub": b, "metric": m, "last_ts": ts} for (e, b, m), ts in out.items()]

    async def query(self, request, timeout=None):
        self.queries.append(request)
        series = self.data.get(request.datasource or "platform_metrics")
        if series is None:
            raise NotFound(f"{request.datasource!r} does not exist", "datasource")
        keys = {k for _, labels, _ in series for k in labels}
        for i, label in enumerate(request.group_by):
            if label not in keys:
                raise InvalidArgument(f"label {label!r} does not exist in this datasource", f"group_by[{i}]")
        since = now_ms() - parse_duration_ms(request.time_range or "1h", "time_range")
        chosen = [
            (m, labels, [(t, v) for t, v in points if t >= since])
            for m, labels, points in series
            if m in request.metrics and all(_matches(labels, f) for f in request.filters)
        ]
        reply = query_service_pb2.QueryResponse()
        if request.aggregation == "raw":
            for metric, labels, points in chosen:
                out = reply.series.add(metric=metric, group=labels, aggregation="raw")
                for t, v in points:
                    out.points.add(timestamp_ms=t, value=v)
            return reply
        step = parse_duration_ms(request.step, "step")
        groups: dict[tuple, dict[int, list[float]]] = {}
        for metric, labels, points in chosen:
            key = (metric, tuple(labels.get(k, "") for k in request.group_by))
            for t, v in points:
                groups.setdefault(key, {}).setdefault(t // step * step, []).append(v)
        for (metric, values), buckets in sorted(groups.items()):
            out = reply.series.add(metric=metric, group=dict(zip(request.group_by, values, strict=True)))
            out.aggregation = request.aggregation or "avg"
            for bucket, vs in sorted(buckets.items()):
                out.points.add(timestamp_ms=bucket, value=sum(vs) / len(vs))
        return reply

    async def anomalies(self, request, timeout=None):
        wanted = dict(item.split("=", 1) for item in request.labels)
        found = [a for a in self.stored_anomalies if all(a.labels.get(k) == v for k, v in wanted.items())]
        return ml_service_pb2.ListAnomaliesResponse(anomalies=found)

    async def health(self, service, timeout=2.0):
        return self.health_of.get(service, {"127.0.0.1:9": "SERVING"})


def _matches(labels: dict[str, str], f: common_pb2.LabelFilter) -> bool:
    value = labels.get(f.label, "")
    return {"=": value == f.value, "!=": value != f.value, "in": value in f.values}[f.op or "="]


class StandInAlerts:
    """Stand-in for the AlertEngine: `active()` answers a fixed list."""

    def __init__(self, alerts: list[pb.Alert]) -> None:
        self.alerts = alerts

    def active(self) -> list[pb.Alert]:
        return self.alerts


def platform_data() -> list[Series]:
    """Three services of two hosts; api-gateway erring, billing silent for 5 minutes; two
    simulations whose gpu is saturated."""
    series: list[Series] = []
    for service, errors, age in (
        ("auth-service", 0.01, 0),
        ("api-gateway", 0.2, 0),
        ("billing-service", 0.001, 300),
    ):
        for h in (1, 2):
            labels = {"service_name": service, "host": f"{service}-{h}"}
            for metric, value in (
                ("request_rate", 100 * h),
                ("error_rate", errors),
                ("latency_p95", 50 * h),
                ("cpu_usage", 40 + h),
                ("memory_usage", 60),
                ("disk_io", 10),
            ):
                series.append(flat(metric, labels, value, age_s=age))
    for sim in ("sim-001", "sim-002"):
        for metric, resource, value in (
            ("cpu_usage", "cpu", 50),
            ("cpu_usage", "gpu", 95),
            ("memory_usage", "memory", 70),
            ("disk_io", "disk", 300),
        ):
            series.append(flat(metric, {"simulation_id": sim, "resource": resource}, value))
    return series


def anomaly(labels: dict[str, str], metric: str = "latency_p95") -> ml_service_pb2.Anomaly:
    return ml_service_pb2.Anomaly(
        metric=metric, labels=labels, timestamp_ms=now_ms(), value=9.0, score=0.97, id="a1", method="mad"
    )


@pytest.fixture
def context(tmp_path):
    return ServiceContext(load_settings(data_dir=tmp_path))


def scopes(context, reader: StandInReader, alerts=None) -> Scopes:
    return Scopes(context, alerts or StandInAlerts([]), reader)


async def test_platform_scope_rates_every_service_and_combines_hosts(context):
    reader = StandInReader(
        {"platform_metrics": platform_data()},
        anomalies=[anomaly({"service_name": "api-gateway", "host": "api-gateway-1"})],
    )
    reply = await scopes(context, reader).monitor(pb.MonitorRequest(scope="platform"))
    entities = {e.name: e for e in reply.entities}
    assert list(entities) == ["api-gateway", "auth-service", "billing-service"]
    auth = entities["auth-service"]
    assert (auth.kind, auth.status, list(auth.reasons)) == ("service", "healthy", [])
    # request rates of the two hosts add up, the worst host's latency counts, the rest is averaged
    assert auth.metrics["request_rate"] == pytest.approx(300)
    assert auth.metrics["latency_p95"] == pytest.approx(100)
    assert auth.metrics["cpu_usage"] == pytest.approx(41.5)
    gateway = entities["api-gateway"]
    assert gateway.status == "degraded" and gateway.reasons == ["error_rate 0.2 >= 0.05"]
    assert gateway.recent_anomalies == 1 and len(reply.recent_anomalies) == 1
    billing = entities["billing-service"]
    assert billing.status == "down" and billing.reasons[0].startswith("no data for 30")
    assert reply.status == "down"
    aggregations = {(s.metric, s.group["service_name"]): s.aggregation for s in reply.series}
    assert aggregations[("request_rate", "auth-service")] == "sum_of_avg"
    assert aggregations[("latency_p95", "auth-service")] == "max_of_avg"
    assert aggregations[("cpu_usage", "auth-service")] == "avg"
    assert {s.metric for s in reply.series} == {
        "request_rate",
        "error_rate",
        "latency_p95",
        "cpu_usage",
        "memory_usage",
    }
    assert reply.analytics.name == "analytics" and reply.analytics.status == "healthy"
    assert reply.analytics.metrics["peers_serving"] == 4
    assert any("self-metrics could not be read" in w for w in reply.warnings)
    assert reply.time_range == "1h"


async def test_a_service_without_data_in_the_range_is_unknown_and_does_not_hide_the_others(context):
    data = [
        flat("error_rate", {"service_name": "old"}, 0.0, age_s=7200),
        flat("error_rate", {"service_name": "new"}, 0.0),
    ]
    reply = await scopes(context, StandInReader({"platform_metrics": data})).monitor(
        pb.MonitorRequest(scope="platform", time_range="30m")
    )
    statuses = {e.name: e.status for e in reply.entities}
    assert statuses == {"new": "healthy", "old": "unknown"}
    assert reply.status == "healthy"


async def test_open_alerts_count_for_their_entity_and_firing_ones_degrade_it(context):
    alerts = [
        pb.Alert(name="X", state="firing", labels={"service_name": "auth-service"}),
        pb.Alert(name="SlowBatchQuery", state="pending", labels={"engine": "duckdb"}),
        pb.Alert(name="EngineConnectionFailure", state="firing", labels={"engine": "trino"}),
    ]
    reply = await scopes(
        context, StandInReader({"platform_metrics": platform_data()}), StandInAlerts(alerts)
    ).monitor(pb.MonitorRequest(scope="platform"))
    auth = next(e for e in reply.entities if e.name == "auth-service")
    assert (auth.open_alerts, auth.status, list(auth.reasons)) == (1, "degraded", ["1 alert(s) firing"])
    # alerts about no service belong to the analytics service itself
    assert reply.analytics.open_alerts == 2 and reply.analytics.status == "degraded"
    assert len(reply.active_alerts) == 3


async def test_a_peer_that_is_down_makes_the_analytics_service_down(context):
    reader = StandInReader(
        {"platform_metrics": platform_data()}, health={"ml": {"127.0.0.1:7": "UNREACHABLE (UNAVAILABLE)"}}
    )
    reply = await scopes(context, reader).monitor(pb.MonitorRequest(scope="platform"))
    assert reply.analytics.status == "down"
    assert reply.analytics.reasons == ["ml is not serving (UNREACHABLE (UNAVAILABLE))"]
    assert reply.analytics.metrics["peers_serving"] == 3 and reply.status == "down"


async def test_service_scope_compares_with_its_peers_and_lists_its_hosts(context):
    reply = await scopes(context, StandInReader({"platform_metrics": platform_data()})).monitor(
        pb.MonitorRequest(scope="service", id="api-gateway", time_range="15m")
    )
    assert reply.status == "degraded"
    assert [(e.name, e.kind) for e in reply.entities] == [
        ("api-gateway", "service"),
        ("api-gateway-1", "host"),
        ("api-gateway-2", "host"),
    ]
    assert reply.entities[1].metrics["request_rate"] == pytest.approx(100)
    errors = next(c for c in reply.comparison if c.metric == "error_rate")
    assert (errors.value, errors.rank, errors.peers) == (pytest.approx(0.2), 1, 3)
    assert errors.peer_median == pytest.approx(0.0055) and errors.peer_min == pytest.approx(0.001)
    assert errors.peer_max == pytest.approx(0.01)
    assert {s.group["service_name"] for s in reply.series} == {"api-gateway"}
    assert {c.metric for c in reply.comparison} == {
        "request_rate",
        "error_rate",
        "latency_p95",
        "cpu_usage",
        "memory_usage",
        "disk_io",
    }


async def test_unknown_service_or_simulation_is_not_found_naming_the_id(context):
    s = scopes(context, StandInReader({"platform_metrics": platform_data()}))
    with pytest.raises(NotFound) as err:
        await s.monitor(pb.MonitorRequest(scope="service", id="nope"))
    assert err.value.field == "id" and "known: api-gateway, auth-service, billing-service" in err.value.reason
    with pytest.raises(NotFound) as err:
        await s.monitor(pb.MonitorRequest(scope="simulation", id="sim-404"))
    assert err.value.field == "id"
    with pytest.raises(NotFound):
        await s.monitor(pb.MonitorRequest(scope="resource", id="nothing"))


async def test_simulation_scope_shows_its_resources_and_anomalies(context):
    reader = StandInReader(
        {"platform_metrics": platform_data()},
        anomalies=[
            anomaly({"simulation_id": "sim-001", "resource": "gpu"}, "cpu_usage"),
            anomaly({"simulation_id": "sim-002"}),
        ],
    )
    reply = await scopes(context, reader).monitor(pb.MonitorRequest(scope="simulation", id="sim-001"))
    simulation, *resources = reply.entities
    assert (simulation.name, simulation.kind, simulation.status) == ("sim-001", "simulation", "degraded")
    assert simulation.reasons == ["gpu: cpu_usage 95% >= 90%"]
    assert dict(simulation.metrics) == pytest.approx(
        {'cpu_usage{resource="cpu"}': 50, 'cpu_usage{resource="gpu"}': 95, "memory_usage": 70, "disk_io": 300}
    )
    assert [(r.name, r.kind, r.status) for r in resources] == [
        ("sim-001/cpu", "resource", "healthy"),
        ("sim-001/disk", "resource", "healthy"),
        ("sim-001/gpu", "resource", "degraded"),
        ("sim-001/memory", "resource", "healthy"),
    ]
    assert simulation.recent_anomalies == 1 and [a.id for a in reply.recent_anomalies] == ["a1"]
    assert [r.recent_anomalies for r in resources] == [0, 0, 1, 0]
    assert reply.recent_anomalies[0].source == "sim-001"
    assert {(s.metric, s.group["resource"]) for s in reply.series} == {
        ("cpu_usage", "cpu"),
        ("cpu_usage", "gpu"),
        ("memory_usage", "memory"),
        ("disk_io", "disk"),
    }


async def test_resource_scope_lists_hosts_and_each_simulations_resources_and_filters(context):
    data = [*platform_data(), flat("cpu_usage", {"simulation_id": "sim-003", "resource": "gpu"}, 20)]
    reader = StandInReader(
        {"platform_metrics": data},
        anomalies=[anomaly({"simulation_id": "sim-001", "resource": "gpu"}, "cpu_usage")],
    )
    s = scopes(context, reader)
    reply = await s.monitor(pb.MonitorRequest(scope="resource"))
    names = [(e.kind, e.name) for e in reply.entities]
    services = ("api-gateway", "auth-service", "billing-service")
    assert names[:6] == [("host", f"{svc}-{h}") for svc in services for h in (1, 2)]
    resources = [f"sim-00{i}/{r}" for i in (1, 2) for r in ("cpu", "disk", "gpu", "memory")]
    assert names[6:] == [("resource", r) for r in [*resources, "sim-003/gpu"]]
    assert next(e for e in reply.entities if e.name == "billing-service-2").status == "down"
    assert reply.status == "down" and len(reply.recent_anomalies) == 1
    one = await s.monitor(pb.MonitorRequest(scope="resource", id="auth-service-2"))
    assert [(e.kind, e.name) for e in one.entities] == [("host", "auth-service-2")]
    assert dict(one.entities[0].metrics) == pytest.approx(
        {"cpu_usage": 42, "memory_usage": 60, "disk_io": 10}
    )
    assert {s.metric for s in one.series} == {"cpu_usage", "memory_usage", "disk_io"}
    # a resource name picks that resource of every simulation; each keeps its own health
    gpu = await s.monitor(pb.MonitorRequest(scope="resource", id="gpu"))
    assert [(e.name, e.status) for e in gpu.entities] == [
        ("sim-001/gpu", "degraded"),
        ("sim-002/gpu", "degraded"),
        ("sim-003/gpu", "healthy"),
    ]
    assert [e.recent_anomalies for e in gpu.entities] == [1, 0, 0]
    assert dict(gpu.entities[2].metrics) == pytest.approx({"cpu_usage": 20})
    assert dict(gpu.series[2].group) == {"resource": "gpu", "simulation_id": "sim-003"}
    exact = await s.monitor(pb.MonitorRequest(scope="resource", id="sim-003/gpu"))
    assert [(e.name, e.status) for e in exact.entities] == [("sim-003/gpu", "healthy")]


async def test_an_empty_datasource_answers_unknown_with_a_warning(context):
    reply = await scopes(context, StandInReader({"platform_metrics": []})).monitor(
        pb.MonitorRequest(scope="platform")
    )
    assert reply.status in ("unknown", "healthy") and not reply.entities
    assert "datasource platform_metrics holds no series yet" in reply.warnings


async def test_self_metrics_figures_and_the_analytics_health(context):
    # One clock reading: points exactly STEP apart (a reading per point drifted by the time the
    # loop took, which moved the rates off their exact values on a loaded machine).
    now = now_ms()

    def counter(name, labels, start, per_step, reset_at=None):
        points = []
        value = start
        for i in range(30):
            value = 0.0 if i == reset_at else value + per_step
            points.append((now - (29 - i) * STEP, value))
        return name, {"instance": "all", **labels}, points

    self_series = [
        counter(
            "analytics_query_duration_seconds_count",
            {"engine": "hot", "mode": "realtime"},
            100,
            20,
            reset_at=10,
        ),
        counter(
            "analytics_ingest_points_total", {"datasource": "platform_metrics", "result": "accepted"}, 0, 1000
        ),
        counter(
            "analytics_ingest_points_total", {"datasource": "analytics_self", "result": "accepted"}, 0, 50
        ),
        counter("analytics_cache_requests_total", {"namespace": "query", "result": "hit"}, 0, 3),
        counter("analytics_cache_requests_total", {"namespace": "query", "result": "miss"}, 0, 1),
        ("analytics_ws_connections", {"instance": "all", "stream_type": "metrics"}, [(now_ms(), 4.0)]),
        ("analytics_ws_connections", {"instance": "all", "stream_type": "dashboard"}, [(now_ms(), 2.0)]),
    ]
    reader = StandInReader({"platform_metrics": platform_data(), "analytics_self": self_series})
    reply = await scopes(context, reader).monitor(pb.MonitorRequest(scope="platform"))
    figures = dict(reply.analytics.metrics)
    # 20 per 10 s, a reset counted as a restart from zero: 2 per second
    assert figures["queries_per_second"] == pytest.approx(2.0, rel=0.05)
    assert figures["ingest_points_per_second"] == pytest.approx(100.0)  # analytics_self's own ingest left out
    assert figures["cache_hit_ratio"] == pytest.approx(0.75)
    assert figures["ws_connections"] == 6 and figures["instances"] == 1
    assert reply.analytics.last_seen_ms > 0
    assert not any("self-metrics" in w for w in reply.warnings)


def test_health_rules():
    rules = HealthRules()
    now = now_ms()
    assert status_of({}, None, now, rules) == ("unknown", ["no data in the time range"])
    assert status_of({"error_rate": 0.0}, now - 200_000, now, rules)[0] == "down"
    assert status_of({"error_rate": 0.6}, now, now, rules) == ("down", ["error_rate 0.6 >= 0.5"])
    assert status_of({"latency_p95": 2500.0}, now, now, rules) == (
        "degraded",
        ["latency_p95 2500 ms >= 2000 ms"],
    )
    assert status_of({"memory_usage": 91.0, "disk_io": 1e6}, now, now, rules)[0] == "degraded"
    assert status_of({"error_rate": 0.01, "cpu_usage": 50.0}, now, now, rules) == ("healthy", [])
    assert worst(["healthy", "unknown", "degraded"]) == "degraded"
    assert worst(["unknown"]) == "unknown" and worst([]) == "unknown"


def test_hosts_combine_by_metric_and_counters_reset_to_zero():
    a, b = [(0, 10.0), (10, 20.0)], [(0, 1.0)]
    assert combine_hosts("request_rate", [a, b]) == ([(0, 11.0), (10, 20.0)], "sum_of_avg")
    assert combine_hosts("latency_p95", [a, b]) == ([(0, 10.0), (10, 20.0)], "max_of_avg")
    assert combine_hosts("cpu_usage", [a, b]) == ([(0, 5.5), (10, 20.0)], "avg")
    assert increase([(0, 5.0), (1, 8.0), (2, 2.0), (3, 4.0)]) == 3 + 2 + 2


def test_compare_ranks_highest_first_and_needs_the_service():
    got = compare("cpu_usage", "b", {"a": 10.0, "b": 30.0, "c": 20.0})
    assert (got.rank, got.peers, got.peer_median, got.peer_min, got.peer_max) == (1, 3, 15.0, 10.0, 20.0)
    assert compare("cpu_usage", "z", {"a": 1.0}) is None
    alone = compare("cpu_usage", "a", {"a": 1.0})
    assert (alone.rank, alone.peers, alone.peer_median) == (1, 1, 0.0)


def test_self_figures_without_series_are_empty():
    assert _self_figures([]) == {}
