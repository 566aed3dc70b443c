"""Every query path over real gRPC gives the same numbers: the hot tier, segments and both
federated, in modes auto, batch and realtime, checked against numpy over the ingested points;
plus Explain, the cache, SQL, QueryTimeseries, GetMetadata, GetCapabilities and bad input.

Data: points ingested through IngestMetrics, then the server is stopped (stopping flushes the hot
tier into segments) and started again on the same DATA_DIR, and more points are ingested: late
ones inside the flushed range and newer ones after it. Those stay in the hot tier."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import grpc
import numpy as np
import pytest
import pytest_asyncio
from grpc import aio

from libs.config import SERVICE_NAMES, load_settings
from libs.timeparse import format_time_ms
from platformq.analytics.v1 import (
    common_pb2,
    query_service_pb2,
    query_service_pb2_grpc,
    realtime_service_pb2,
    realtime_service_pb2_grpc,
)
from services.query_router.sql_views import NARROWED_VIEWS, WHOLE_VIEWS
from services.runner import start_services

pytestmark = pytest.mark.asyncio(loop_scope="module")

SECOND = 1_000
MINUTE = 60 * SECOND
HOUR = 60 * MINUTE
# Recent, whole hours: the flusher applies the 30-day default retention against the real clock.
BASE = (int(time.time() * 1000) // HOUR - 6) * HOUR
FLUSHED_END = BASE + 2 * HOUR  # phase 1, flushed into segments: [BASE, FLUSHED_END) every 10 s
LATE_START = BASE + 95 * MINUTE  # phase 2, hot: late points [LATE_START, FLUSHED_END) at +5 s
END = BASE + 3 * HOUR  # phase 2, hot: newer points [FLUSHED_END, END) every 10 s
DATASOURCE = "paths"
SERVICES = ("svc-a", "svc-b", "svc-c")
REGIONS = ("eu", "us")
QUOTED = "o'brien"

Labels = tuple[tuple[str, str], ...]


@dataclass
class Raw:
    """Every point of one series ingested so far."""

    metric: str
    labels: dict[str, str]
    ts: np.ndarray
    values: np.ndarray


def _latency(ts: np.ndarray, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed + int(ts[0] // 1000))
    return np.round(rng.gamma(2.0, 40.0, len(ts)) + seed, 3)


def _counter(ts: np.ndarray, per_second: int) -> np.ndarray:
    # A counter that resets to zero every 50,000 counts, a function of time alone.
    return (((ts - BASE) // SECOND) * per_second % 50_000).astype(np.float64)


def _series_of_phase(ts: np.ndarray) -> list[Raw]:
    out = []
    for i, service in enumerate(SERVICES):
        for j, region in enumerate(REGIONS):
            out.append(Raw("latency", {"service": service, "region": region}, ts, _latency(ts, 10 * i + j)))
        out.append(Raw("requests", {"service": service}, ts, _counter(ts, 7 * (i + 1))))
    out.append(Raw("logins", {"service": QUOTED}, ts[::10], np.ones(len(ts[::10]))))
    return out


PHASE_1 = _series_of_phase(np.arange(BASE, FLUSHED_END, 10 * SECOND, dtype=np.int64))
PHASE_2 = _series_of_phase(
    np.concatenate(
        [
            np.arange(LATE_START + 5 * SECOND, FLUSHED_END, 10 * SECOND, dtype=np.int64),
            np.arange(FLUSHED_END, END, 10 * SECOND, dtype=np.int64),
        ]
    )
)


def _key(raw: Raw) -> tuple[str, Labels]:
    return raw.metric, tuple(sorted(raw.labels.items()))


def _all_points() -> dict[tuple[str, Labels], Raw]:
    merged: dict[tuple[str, Labels], Raw] = {}
    for raw in PHASE_1 + PHASE_2:
        if (old := merged.get(_key(raw))) is None:
            merged[_key(raw)] = Raw(raw.metric, raw.labels, raw.ts, raw.values)
        else:
            merged[_key(raw)] = Raw(
                raw.metric,
                raw.labels,
                np.concatenate([old.ts, raw.ts]),
                np.concatenate([old.values, raw.values]),
            )
    return merged


POINTS = _all_points()


async def _ingest(channel: aio.Channel, raws: list[Raw], datasource: str = DATASOURCE) -> None:
    stub = realtime_service_pb2_grpc.RealtimeServiceStub(channel)
    request = realtime_service_pb2.IngestMetricsRequest(datasource=datasource)
    for raw in raws:
        request.series.add(
            name=raw.metric, labels=raw.labels, timestamps_ms=raw.ts.tolist(), values=raw.values.tolist()
        )
    reply = await stub.IngestMetrics(request)
    assert (reply.accepted, reply.rejected) == (sum(len(r.ts) for r in raws), 0), reply.errors


@dataclass
class World:
    query: query_service_pb2_grpc.QueryServiceStub
    channel: aio.Channel
    segment_files: int


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def world(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("query_paths")
    # No result cache here, so that mode auto always plans and runs (the cache has its own test);
    # no timed flush, so that phase 2 stays in the hot tier.
    settings = load_settings(data_dir=data_dir, query_cache_ttl_seconds=0, hot_flush_seconds=3600)
    server = await start_services(list(SERVICE_NAMES), settings, 0)
    try:
        async with aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            await _ingest(channel, PHASE_1)
    finally:
        await server.stop(0)  # stopping flushes the hot tier into segments
    segment_files = len(list((data_dir / "segments").glob("tenant=*/datasource=*/points/*/*.parquet")))

    server = await start_services(list(SERVICE_NAMES), settings, 0)
    channel = aio.insecure_channel(f"127.0.0.1:{server.port}")
    try:
        await _ingest(channel, PHASE_2)
        yield World(query_service_pb2_grpc.QueryServiceStub(channel), channel, segment_files)
    finally:
        await channel.close()
        await server.stop(0)


# ---- an independent computation of each answer ----------------------------------------------


def _aggregate(kind: str, parts: list[tuple[np.ndarray, np.ndarray]], step: int) -> float:
    """One bucket of one group: `parts` holds the (ts, values) of each series in the bucket."""
    ts = np.concatenate([t for t, _ in parts])
    values = np.concatenate([v for _, v in parts])
    if kind == "rate":
        increase = 0.0
        for t, v in parts:
            ordered = v[np.argsort(t, kind="stable")]
            deltas = np.diff(ordered)
            increase += float(np.where(deltas < 0, ordered[1:], deltas).sum())
        return increase / (step / 1000)
    if kind == "last":
        return float(values[np.argmax(ts)])
    if kind in ("p50", "p90", "p95", "p99"):
        return float(np.percentile(values, int(kind[1:])))
    return float({"avg": np.mean, "sum": np.sum, "min": np.min, "max": np.max, "count": len}[kind](values))


def _expected(
    metric: str,
    kind: str,
    start: int,
    end: int,
    step: int,
    group_by: tuple[str, ...] = (),
    keep: Callable[[dict[str, str]], bool] = lambda labels: True,
    limit: int = 0,
) -> list[tuple[dict[str, str], list[tuple[int, float]]]]:
    groups: dict[tuple[str, ...], dict[int, list[tuple[np.ndarray, np.ndarray]]]] = {}
    for raw in POINTS.values():
        if raw.metric != metric or not keep(raw.labels):
            continue
        inside = (raw.ts >= start) & (raw.ts < end)
        ts, values = raw.ts[inside], raw.values[inside]
        buckets = groups.setdefault(tuple(raw.labels.get(k, "") for k in group_by), {})
        for bucket in np.unique(ts // step * step):
            mask = ts // step * step == bucket
            buckets.setdefault(int(bucket), []).append((ts[mask], values[mask]))
    chosen = sorted(g for g, buckets in groups.items() if buckets)
    if limit:
        chosen = chosen[:limit]
    return [
        (
            dict(zip(group_by, g, strict=True)),
            [(b, _aggregate(kind, parts, step)) for b, parts in sorted(groups[g].items())],
        )
        for g in chosen
    ]


def _answer(
    response: query_service_pb2.QueryResponse,
) -> list[tuple[dict[str, str], list[tuple[int, float]]]]:
    return [(dict(s.group), [(p.timestamp_ms, p.value) for p in s.points]) for s in response.series]


def _assert_same(got, want, what: str) -> None:
    assert [g for g, _ in got] == [g for g, _ in want], f"{what}: other groups"
    for (group, got_points), (_, want_points) in zip(got, want, strict=True):
        assert [t for t, _ in got_points] == [t for t, _ in want_points], f"{what} {group}: other buckets"
        assert [v for _, v in got_points] == pytest.approx([v for _, v in want_points], rel=1e-9, abs=1e-9), (
            f"{what} {group}: other values"
        )


# ---- the same query in every mode -----------------------------------------------------------

F = common_pb2.LabelFilter


@dataclass(frozen=True)
class Case:
    """A query, and the same selection for the independent computation."""

    id: str
    metric: str
    aggregation: str
    step_ms: int
    group_by: tuple[str, ...] = ()
    filters: tuple[common_pb2.LabelFilter, ...] = ()
    keep: Callable[[dict[str, str]], bool] = lambda labels: True
    limit: int = 0
    start: int = BASE
    end: int = END

    def request(self, mode: str) -> query_service_pb2.QueryRequest:
        return query_service_pb2.QueryRequest(
            datasource=DATASOURCE,
            metrics=[self.metric],
            aggregation=self.aggregation,
            group_by=self.group_by,
            filters=self.filters,
            limit=self.limit,
            start=format_time_ms(self.start),
            end=format_time_ms(self.end),
            step=f"{self.step_ms // SECOND}s",
            mode=mode,
        )

    def expected(self):
        return _expected(
            self.metric,
            self.aggregation,
            self.start,
            self.end,
            self.step_ms,
            self.group_by,
            self.keep,
            self.limit,
        )


CASES = [
    Case("avg-by-service", "latency", "avg", 15 * MINUTE, ("service",)),
    Case(
        "sum-eq-filter",
        "latency",
        "sum",
        15 * MINUTE,
        ("service",),
        (F(label="region", op="=", value="eu"),),
        lambda labels: labels["region"] == "eu",
    ),
    Case(
        "min-neq-filter",
        "latency",
        "min",
        10 * MINUTE,
        (),
        (F(label="service", op="!=", value="svc-b"),),
        lambda labels: labels["service"] != "svc-b",
    ),
    Case(
        "max-in-filter",
        "latency",
        "max",
        20 * MINUTE,
        ("region",),
        (F(label="service", op="in", values=["svc-a", "svc-c"]),),
        lambda labels: labels["service"] in ("svc-a", "svc-c"),
    ),
    Case("count-all", "latency", "count", 30 * MINUTE),
    Case(
        "p50-regex-filter",
        "latency",
        "p50",
        15 * MINUTE,
        ("service",),
        (F(label="service", op="regex", value="svc-(a|b)"),),
        lambda labels: labels["service"] in ("svc-a", "svc-b"),
    ),
    Case("p95-by-service", "latency", "p95", 15 * MINUTE, ("service",)),
    Case("p99-by-region", "latency", "p99", 1 * HOUR, ("region",)),
    Case("rate-by-service", "requests", "rate", 5 * MINUTE, ("service",)),
    Case("last-per-series", "latency", "last", 15 * MINUTE, ("service", "region")),
    Case("avg-limit-2", "latency", "avg", 15 * MINUTE, ("service", "region"), limit=2),
    Case("count-odd-window", "latency", "count", 7 * MINUTE, start=BASE + 13 * MINUTE, end=END - 11 * MINUTE),
]


async def _in_every_mode(world: World, case: Case) -> dict[str, query_service_pb2.QueryResponse]:
    return {mode: await world.query.Query(case.request(mode)) for mode in ("auto", "batch", "realtime")}


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
async def test_every_mode_gives_the_same_answer_from_the_engines_it_names(world, case):
    answers = await _in_every_mode(world, case)
    reference = _answer(answers["batch"])
    assert reference and all(points for _, points in reference), "the case selects nothing"
    for mode, response in answers.items():
        _assert_same(_answer(response), reference, f"{case.id}: {mode} against batch")
        assert {s.metric for s in response.series} == {case.metric}
        assert {s.aggregation for s in response.series} == {case.aggregation}
        assert not response.metadata.cache_hit
        assert response.metadata.points_scanned > 0

    assert list(answers["batch"].metadata.engines) == ["duckdb"]
    assert answers["batch"].metadata.plan.mode == "batch"
    assert len(answers["batch"].metadata.plan.fragments) == 1
    # The window holds flushed points and, from LATE_START on, hot ones: federated.
    boundary = (LATE_START + 5 * SECOND) // case.step_ms * case.step_ms  # the oldest hot point
    for mode in ("auto", "realtime"):
        plan = answers[mode].metadata.plan
        assert plan.mode == mode
        assert plan.reason.startswith("federated")
        assert [(f.engine, f.start_ms, f.end_ms) for f in plan.fragments] == [
            ("duckdb", case.start, boundary),
            ("hot", boundary, case.end),
        ]
        assert list(answers[mode].metadata.engines) == ["duckdb", "hot"]


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in CASES])
async def test_every_mode_gives_the_numpy_answer(world, case):
    want = case.expected()
    assert want and all(points for _, points in want), "the case selects nothing"
    for mode, response in (await _in_every_mode(world, case)).items():
        _assert_same(_answer(response), want, f"{case.id} in mode {mode}")


async def test_the_plan_follows_where_the_points_are(world):
    flushed_only = Case("flushed-only", "latency", "avg", 15 * MINUTE, end=LATE_START - 5 * MINUTE)
    hot_only = Case("hot-only", "latency", "avg", 15 * MINUTE, start=FLUSHED_END, end=END)
    for case, engines, reason in [
        (flushed_only, ["duckdb"], "no hot points in range"),
        (hot_only, ["hot"], "every point in range is in the hot tier"),
    ]:
        for mode in ("auto", "realtime", "batch"):
            response = await world.query.Query(case.request(mode))
            _assert_same(_answer(response), case.expected(), f"{case.id} in mode {mode}")
            assert list(response.metadata.engines) == (["duckdb"] if mode == "batch" else engines)
            if mode != "batch":
                assert response.metadata.plan.reason.startswith(reason)
                assert len(response.metadata.plan.fragments) == 1


async def test_explain_returns_the_plan_without_running_it(world):
    case = CASES[0]
    ran = await world.query.Query(case.request("auto"))
    explained = await world.query.Explain(query_service_pb2.ExplainRequest(query=case.request("auto")))
    assert explained.plan == ran.metadata.plan
    assert [field.name for field, _ in explained.ListFields()] == ["plan"]
    batch = await world.query.Explain(query_service_pb2.ExplainRequest(query=case.request("batch")))
    assert [f.engine for f in batch.plan.fragments] == ["duckdb"]


async def test_query_with_explain_true_returns_the_plan(world):
    case = CASES[0]
    explained = await world.query.Explain(query_service_pb2.ExplainRequest(query=case.request("auto")))
    request = case.request("auto")
    request.explain = True
    response = await world.query.Query(request)
    assert response is not None
    assert response.metadata.plan == explained.plan
    assert not response.series and response.metadata.points_scanned == 0


# ---- bad input ------------------------------------------------------------------------------


def _window(**fields) -> query_service_pb2.QueryRequest:
    defaults = {
        "datasource": DATASOURCE,
        "metrics": ["latency"],
        "start": format_time_ms(BASE),
        "end": format_time_ms(END),
    }
    return query_service_pb2.QueryRequest(**{**defaults, **fields})


@pytest.mark.parametrize(
    ("request_", "code", "field"),
    [
        pytest.param(
            _window(datasource="nope"), grpc.StatusCode.NOT_FOUND, "datasource", id="unknown-datasource"
        ),
        pytest.param(
            _window(group_by=["zone"]), grpc.StatusCode.INVALID_ARGUMENT, "group_by[0]", id="unknown-label"
        ),
        pytest.param(_window(step="500ms"), grpc.StatusCode.INVALID_ARGUMENT, "step", id="too-many-points"),
        pytest.param(
            _window(start=format_time_ms(END), end=format_time_ms(BASE)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "end",
            id="end-before-start",
        ),
        pytest.param(
            query_service_pb2.QueryRequest(sql="CREATE TABLE t (a INTEGER)"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "sql",
            id="sql-ddl",
        ),
        pytest.param(
            query_service_pb2.QueryRequest(sql="ATTACH 'other.db' AS other"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "sql",
            id="sql-attach",
        ),
        pytest.param(
            query_service_pb2.QueryRequest(sql="SELECT 1; SELECT 2"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "sql",
            id="sql-two-statements",
        ),
        pytest.param(
            query_service_pb2.QueryRequest(sql="SELECT count(*) FROM metrics; DROP VIEW metrics"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "sql",
            id="sql-select-then-drop",
        ),
    ],
)
async def test_bad_input_is_refused_naming_the_field(world, request_, code, field):
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await world.query.Query(request_)
    assert err.value.code() == code
    assert err.value.details().startswith(f"{field}: "), err.value.details()


async def test_sql_reads_hot_and_flushed_points_and_binds_params_as_values(world):
    def sql(text: str, *params: str) -> query_service_pb2.QueryRequest:
        request = query_service_pb2.QueryRequest(sql=text)
        for p in params:
            request.params.add(string_value=p)
        return request

    counted = await world.query.Query(
        sql(
            "SELECT metric, count(*) AS n FROM metrics WHERE datasource = ? GROUP BY metric ORDER BY metric",
            DATASOURCE,
        )
    )
    assert list(counted.columns) == ["metric", "n"]
    by_metric: dict[str, int] = {}
    for raw in POINTS.values():
        by_metric[raw.metric] = by_metric.get(raw.metric, 0) + len(raw.ts)
    assert [(r.values[0].string_value, r.values[1].number_value) for r in counted.rows] == sorted(
        by_metric.items()
    )
    assert list(counted.metadata.engines) == ["duckdb"]

    by_service = "SELECT count(*) AS n FROM metrics WHERE datasource = ? AND labels['service'] = ?"
    quoted = await world.query.Query(sql(by_service, DATASOURCE, QUOTED))
    assert quoted.rows[0].values[0].number_value == len(POINTS[("logins", (("service", QUOTED),))].ts)
    # A WHERE naming a label gives `metrics` only that label's series (sql_narrow); the answer and
    # Explain say so, and a WHERE naming only the datasource reads the whole view.
    assert quoted.metadata.plan.reason == NARROWED_VIEWS
    explained = await world.query.Explain(
        query_service_pb2.ExplainRequest(query=sql(by_service, DATASOURCE, QUOTED))
    )
    assert explained.plan.reason.startswith(NARROWED_VIEWS)
    assert counted.metadata.plan.reason == WHOLE_VIEWS
    # Explain checks the statement as Query does: a refused one is refused naming `sql`.
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await world.query.Explain(query_service_pb2.ExplainRequest(query=sql("DROP VIEW metrics")))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith("sql: "), err.value.details()
    # Spliced into the text, this value would match every row; bound, it matches none.
    injected = await world.query.Query(sql(by_service, DATASOURCE, "x' OR '1'='1"))
    assert injected.rows[0].values[0].number_value == 0


# ---- QueryTimeseries, GetMetadata, GetCapabilities ------------------------------------------


@pytest.mark.parametrize(("granularity", "step"), [("hour", HOUR), ("PT5M", 5 * MINUTE)])
async def test_timeseries_buckets_equal_the_unified_query(world, granularity, step):
    start, end = BASE + HOUR, END
    reply = await world.query.QueryTimeseries(
        query_service_pb2.QueryTimeseriesRequest(
            datasource=DATASOURCE,
            metrics=["latency"],
            intervals=[f"{format_time_ms(start)}/{format_time_ms(end)}"],
            granularity=granularity,
            dimensions=["service"],
        )
    )
    unified = await world.query.Query(
        _window(
            start=format_time_ms(start),
            end=format_time_ms(end),
            step=f"{step // 1000}s",
            group_by=["service"],
        )
    )
    buckets = {(b.timestamp, b.dimensions["service"]): b.result["latency"] for b in reply.results}
    assert all(set(b.result) == {"latency"} and set(b.dimensions) == {"service"} for b in reply.results)
    want = {
        (format_time_ms(p.timestamp_ms), s.group["service"]): p.value
        for s in unified.series
        for p in s.points
    }
    assert len(want) == len(SERVICES) * (end - start) // step
    assert buckets.keys() == want.keys()
    assert [buckets[k] for k in want] == pytest.approx(list(want.values()), rel=1e-9)
    assert [b.timestamp for b in reply.results] == sorted(b.timestamp for b in reply.results)


async def test_metadata_counts_what_was_ingested(world):
    reply = await world.query.GetMetadata(query_service_pb2.GetMetadataRequest(datasource=DATASOURCE))
    metrics: dict[str, tuple[int, int]] = {}
    for raw in POINTS.values():
        series, points = metrics.get(raw.metric, (0, 0))
        metrics[raw.metric] = (series + 1, points + len(raw.ts))
    assert reply.datasource == DATASOURCE
    assert {m.name: (m.series_count, m.point_count) for m in reply.metrics} == metrics
    assert [m.name for m in reply.metrics] == sorted(metrics)
    assert {k.key: k.cardinality for k in reply.label_keys} == {"region": 2, "service": 4}
    assert reply.point_count == sum(points for _, points in metrics.values())
    assert (reply.start, reply.end) == (format_time_ms(BASE), format_time_ms(END - 10 * SECOND))
    assert world.segment_files >= 1, "phase 1 never reached the segments"


async def test_capabilities_list_the_engines_and_modes(world):
    reply = await world.query.GetCapabilities(query_service_pb2.GetCapabilitiesRequest())
    assert list(reply.engines) == ["hot", "duckdb", "cache"]
    assert list(reply.modes) == ["auto", "batch", "realtime", "cache"]
    assert {"avg", "sum", "min", "max", "count", "p50", "p95", "p99", "rate", "last"} <= set(
        reply.aggregations
    )
    assert {"hour", "minute", "day", "all"} <= set(reply.granularities)
    assert reply.limits.max_points_per_series == 11_000


# ---- the result cache -----------------------------------------------------------------------


async def test_a_repeated_query_comes_from_the_cache_until_new_data_touches_its_window(tmp_path):
    now = int(time.time() * 1000) // (10 * MINUTE) * (10 * MINUTE)
    start, end = now - HOUR, now
    settings = load_settings(data_dir=tmp_path, query_cache_ttl_seconds=600)
    server = await start_services(list(SERVICE_NAMES), settings, 0)
    try:
        async with aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            ts = np.arange(start, end, MINUTE, dtype=np.int64)
            await _ingest(
                channel, [Raw("cpu", {"host": "a"}, ts, np.arange(len(ts), dtype=np.float64))], "cached"
            )
            stub = query_service_pb2_grpc.QueryServiceStub(channel)
            request = query_service_pb2.QueryRequest(
                datasource="cached",
                metrics=["cpu"],
                aggregation="count",
                start=format_time_ms(start),
                end=format_time_ms(end),
                step="10m",
            )

            first = await stub.Query(request)
            assert not first.metadata.cache_hit and list(first.metadata.engines) == ["hot"]
            assert [p.value for p in first.series[0].points] == [10.0] * 6

            second = await stub.Query(request)
            assert second.metadata.cache_hit and list(second.metadata.engines) == ["cache"]
            assert list(second.series) == list(first.series)

            # A point outside the cached window leaves the entry alone.
            await _ingest(
                channel, [Raw("cpu", {"host": "a"}, np.array([end + 1]), np.array([1.0]))], "cached"
            )
            assert (await stub.Query(request)).metadata.cache_hit

            # A point inside it drops the entry: the next answer is computed and includes the point.
            inside = start + 25 * MINUTE + 30 * SECOND
            await _ingest(channel, [Raw("cpu", {"host": "b"}, np.array([inside]), np.array([1.0]))], "cached")
            third = await stub.Query(request)
            assert not third.metadata.cache_hit and list(third.metadata.engines) == ["hot"]
            assert [p.value for p in third.series[0].points] == [10.0, 10.0, 11.0, 10.0, 10.0, 10.0]
    finally:
        await server.stop(0)


# ---- raw points -----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["auto", "batch", "realtime"])
async def test_raw_returns_every_point_of_every_series_from_hot_and_segments(world, mode):
    reply = await world.query.Query(_window(aggregation="raw", mode=mode, metrics=["latency", "requests"]))
    got = {
        (s.metric, tuple(sorted(s.group.items()))): [(p.timestamp_ms, p.value) for p in s.points]
        for s in reply.series
    }
    want = {
        (raw.metric, tuple(sorted(raw.labels.items()))): sorted(
            zip(raw.ts.tolist(), raw.values.tolist(), strict=True)
        )
        for raw in POINTS.values()
        if raw.metric in ("latency", "requests")
    }
    assert set(got) == set(want)
    for key, points in want.items():
        inside = [(t, v) for t, v in points if BASE <= t < END]
        assert got[key] == inside, key
    assert {s.aggregation for s in reply.series} == {"raw"}
    # Few series: their raw points come from the points maps and the hot tier, without DuckDB.
    assert "points maps" in reply.metadata.plan.reason


@pytest.mark.parametrize("field", ["step", "group_by"])
async def test_raw_takes_no_step_or_group_by(world, field):
    change = {"step": "1m"} if field == "step" else {"group_by": ["service"]}
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await world.query.Query(_window(aggregation="raw", **change))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith(f"{field}: ")
