"""The Prometheus export and the self-metrics over real gRPC, all four services in one server on a
temporary DATA_DIR: what the registry counts after real queries and ingests, what `match[]`
returns from the store, how bad selectors are refused, and the self-metrics written into datasource
analytics_self and queried back like any other metrics."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest
from grpc import aio
from prometheus_client.parser import text_string_to_metric_families

from libs.config import SERVICE_NAMES, load_settings
from libs.selfmetrics import SelfMetrics, exposition
from libs.selfmetrics_writer import SelfMetricsWriter
from platformq.analytics.v1 import (
    ml_service_pb2,
    ml_service_pb2_grpc,
    monitoring_service_pb2,
    monitoring_service_pb2_grpc,
    query_service_pb2,
    query_service_pb2_grpc,
    realtime_service_pb2,
    realtime_service_pb2_grpc,
)
from services.runner import start_services
from tests.helpers import free_port

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _now() -> int:
    return int(time.time() * 1000)


async def _server(data_dir, **overrides):
    settings = load_settings(data_dir=data_dir, anomaly_stream=False, **overrides)
    return await start_services(list(SERVICE_NAMES), settings, 0)


class Client:
    """Stubs of one server."""

    def __init__(self, channel: aio.Channel) -> None:
        self.ml = ml_service_pb2_grpc.MLServiceStub(channel)
        self.monitoring = monitoring_service_pb2_grpc.MonitoringServiceStub(channel)
        self.query = query_service_pb2_grpc.QueryServiceStub(channel)
        self.realtime = realtime_service_pb2_grpc.RealtimeServiceStub(channel)

    async def export(self, *match: str) -> str:
        body = await self.monitoring.ExportPrometheus(
            monitoring_service_pb2.ExportPrometheusRequest(match=match)
        )
        assert body.content_type == CONTENT_TYPE
        return body.data.decode()

    async def ingest(self, datasource: str, *points: tuple[str, dict, int, float]) -> None:
        request = realtime_service_pb2.IngestMetricsRequest(datasource=datasource)
        for name, labels, ts, value in points:
            request.points.add(name=name, labels=labels, timestamp_ms=ts, value=value)
        reply = await self.realtime.IngestMetrics(request)
        assert reply.rejected == 0, reply.errors


def value_of(text: str, name: str, **labels: str) -> float | None:
    """The value of the one sample called `name` whose labels include `labels`."""
    found = [
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name and labels.items() <= s.labels.items()
    ]
    assert len(found) <= 1, found
    return found[0] if found else None


@pytest.fixture
async def client(tmp_path):
    server = await _server(tmp_path, self_metrics_interval_seconds=0.2)
    async with aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        yield Client(channel)
    await server.stop(0)


async def test_the_export_counts_queries_ingests_failures_and_the_cache(client):
    # Its own datasource: the monitoring service's background dashboard refreshes read
    # platform_metrics (segments only while it is empty), never this one's hot tier.
    now = _now()
    await client.ingest(
        "exportcase", *[("cpu_usage", {"service_name": "auth"}, now - i * 1000, i) for i in range(5)]
    )
    query = query_service_pb2.QueryRequest(metrics=["cpu_usage"], time_range="5m", datasource="exportcase")
    await client.query.Query(query)
    await client.query.Query(query)  # the same answer again: a cache hit
    with pytest.raises(aio.AioRpcError) as err:
        await client.query.Query(query_service_pb2.QueryRequest(metrics=["x"], datasource="nowhere"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND

    text = await client.export()
    own = {"instance": "all"}
    assert value_of(text, "analytics_query_duration_seconds_count", engine="hot", mode="realtime", **own) == 1
    assert (
        value_of(text, "analytics_query_duration_seconds_bucket", engine="hot", mode="realtime", le="+Inf")
        == 1
    )
    # Background refreshes may add cache hits and misses of their own, never take ours away.
    assert value_of(text, "analytics_query_duration_seconds_count", engine="cache", mode="cache", **own) >= 1
    assert value_of(text, "analytics_cache_requests_total", namespace="query", result="hit", **own) >= 1
    assert value_of(text, "analytics_cache_requests_total", namespace="query", result="miss", **own) >= 1
    assert value_of(text, "analytics_query_failures_total", engine="none", code="NOT_FOUND", **own) >= 1
    assert value_of(text, "analytics_ingest_points_total", datasource="exportcase", result="accepted") == 5
    assert value_of(text, "analytics_ingest_points_total", datasource="exportcase", result="rejected") == 0
    assert value_of(text, "analytics_ingest_batches_total", datasource="exportcase") == 1
    assert value_of(text, "process_resident_memory_bytes", **own) > 0
    assert "_created" not in text


def _query_cache_lookups(text: str) -> float:
    return sum(
        value_of(text, "analytics_cache_requests_total", namespace="query", result=result) or 0
        for result in ("hit", "miss")
    )


async def test_the_ml_service_s_reads_of_stored_history_are_not_query_cache_lookups(client):
    # Windows ending about now never repeat: counted, each read was a miss, and the live scorer's
    # warm-up set off LowCacheHitRate on a fresh demo. The service's other background reads
    # (dashboard panels, exports, alert rules) skip the query cache too.
    now = _now()
    await client.ingest(
        "historycase", *[("temp", {"host": "h1"}, now - i * 10_000, 20.0 + i % 3) for i in range(200)]
    )
    before = _query_cache_lookups(await client.export())
    for minutes in (20, 25, 30):  # three windows: three reads (the ml service answers repeats itself)
        reply = await client.ml.DetectAnomalies(
            ml_service_pb2.DetectAnomaliesRequest(
                selection={"datasource": "historycase", "metrics": ["temp"], "time_range": f"{minutes}m"},
                config={"method": "mad"},
            )
        )
        assert len(reply.series) == 1 and not reply.cached
    assert _query_cache_lookups(await client.export()) == before


async def test_match_returns_the_newest_stored_value_of_each_selected_series(client):
    now = _now()
    await client.ingest(
        "sensors",
        ("temp_c", {"room": "a"}, now - 2000, 20.0),
        ("temp_c", {"room": "a"}, now - 1000, 21.5),
        ("temp_c", {"room": "b"}, now - 1000, 19.0),
        # Older than the 5-minute lookback: not exported, as Prometheus would not show it.
        ("temp_c", {"room": "c"}, now - 6 * 60_000, 18.0),
        ("humidity", {"room": "a"}, now - 1000, 40.0),
    )
    await client.ingest("platform_metrics", ("temp_c", {"room": "a"}, now - 500, 99.0))
    text = await client.export('temp_c{room=~"a|c", datasource="sensors"}', "humidity")
    lines = [line for line in text.splitlines() if not line.startswith("#")]
    assert sorted(lines) == sorted(
        [
            f'temp_c{{datasource="sensors",room="a"}} 21.5 {now - 1000}',
            f'humidity{{datasource="sensors",room="a"}} 40.0 {now - 1000}',
        ]
    )
    # Without a datasource matcher, every datasource is searched.
    everywhere = await client.export('temp_c{room="a"}')
    assert value_of(everywhere, "temp_c", datasource="platform_metrics") == 99.0
    assert value_of(everywhere, "temp_c", datasource="sensors") == 21.5


async def test_a_bad_selector_is_invalid_argument_naming_match(client):
    for bad, reason in [
        ("cpu{", "unterminated label matchers"),
        ('{a=""}', "does not match the empty string"),
    ]:
        with pytest.raises(aio.AioRpcError) as err:
            await client.export("cpu_usage", bad)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.value.details().startswith("match[]: ") and reason in err.value.details()


async def test_self_metrics_are_stored_in_analytics_self_and_answer_queries(client):
    await client.query.Query(query_service_pb2.QueryRequest(metrics=["cpu_usage"], time_range="1h"))
    request = query_service_pb2.QueryRequest(
        datasource="analytics_self",
        metrics=["analytics_query_duration_seconds_count"],
        time_range="5m",
        aggregation="max",
        group_by=["engine", "mode", "instance"],
        mode="batch",
    )

    async def counted() -> dict[tuple[str, ...], float]:
        try:
            reply = await client.query.Query(request)
        except aio.AioRpcError as exc:
            assert exc.code() == grpc.StatusCode.NOT_FOUND  # analytics_self is not written yet
            return {}
        return {
            tuple(s.group[k] for k in ("engine", "mode", "instance")): s.points[-1].value
            for s in reply.series
        }

    deadline = time.monotonic() + 20
    while ("duckdb", "batch", "all") not in (found := await counted()):
        assert time.monotonic() < deadline, f"analytics_self never answered: {found}"
        await asyncio.sleep(0.1)
    # The query over platform_metrics (empty: segments only) is there with its engine and mode.
    assert found[("duckdb", "batch", "all")] >= 1
    # The writer's own batches are counted apart, under datasource analytics_self.
    text = await client.export()
    assert value_of(text, "analytics_ingest_points_total", datasource="analytics_self", result="accepted") > 0
    assert value_of(text, "analytics_self_metrics_writes_total", result="ok") >= 1


async def test_an_engine_that_cannot_read_its_data_is_counted(tmp_path):
    old = _now() - 3_600_000
    server = await _server(tmp_path, self_metrics_interval_seconds=0)
    async with aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        await Client(channel).ingest("gone", *[("load", {}, old + i * 1000, i) for i in range(10)])
    await server.stop(0)  # stopping flushes the hot tier into segments
    # Every file of the segments: Parquet points (DuckDB), points maps and rollups (memory-mapped).
    segments = [
        p
        for p in tmp_path.glob("segments/tenant=*/datasource=gone/**/*")
        if p.suffix in (".parquet", ".arrow")
    ]
    assert segments, "nothing was flushed"
    server = await _server(tmp_path, self_metrics_interval_seconds=0)
    try:
        for path in segments:
            if "/series/" not in str(path):
                path.unlink()
        async with aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            client = Client(channel)
            # The router opened the points maps and rollups at its start, and an open memory map
            # still reads a deleted file; a rate is computed by DuckDB from the Parquet points.
            with pytest.raises(aio.AioRpcError):
                await client.query.Query(
                    query_service_pb2.QueryRequest(
                        metrics=["load"], datasource="gone", time_range="2h", mode="batch", aggregation="rate"
                    )
                )
            text = await client.export()
    finally:
        await server.stop(0)
    # The monitoring service's own background queries may have failed on the same files too.
    assert value_of(text, "analytics_engine_connection_failures_total", engine="duckdb") >= 1
    assert value_of(text, "analytics_query_failures_total", engine="duckdb", code="INTERNAL") >= 1


async def test_label_filters_reach_the_store_through_the_selector_not_the_query(client):
    # A selector label that no stored series has matches only with "" (Prometheus semantics).
    now = _now()
    await client.ingest("sensors", ("temp_c", {"room": "a"}, now, 1.0))
    assert value_of(await client.export('temp_c{floor=""}'), "temp_c", room="a") == 1.0
    assert value_of(await client.export('temp_c{floor="1"}'), "temp_c", room="a") is None


async def test_a_match_over_more_series_than_sql_max_rows_says_it_is_truncated(tmp_path):
    server = await _server(tmp_path, self_metrics_interval_seconds=0, sql_max_rows=3)
    try:
        async with aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            client = Client(channel)
            now = _now()
            await client.ingest("many", *[("gauge", {"i": str(i)}, now, i) for i in range(5)])
            text = await client.export('gauge{datasource="many"}')
    finally:
        await server.stop(0)
    assert text.startswith("# truncated: ")
    assert len([line for line in text.splitlines() if line.startswith("gauge{")]) == 3


async def test_the_writer_tries_each_realtime_replica_and_counts_failures(tmp_path):
    server = await _server(tmp_path, self_metrics_interval_seconds=0)
    dead = f"127.0.0.1:{free_port()}"
    metrics = SelfMetrics()
    labels = {"instance": "test", "replica": "here:0"}
    try:
        writer = SelfMetricsWriter(metrics, lambda: f"{dead}, 127.0.0.1:{server.port}", lambda: labels, 1.0)
        assert await writer.write_once()
        await writer.stop()
        writer = SelfMetricsWriter(metrics, lambda: dead, lambda: labels, 1.0)
        assert not await writer.write_once()
        await writer.stop()
        async with aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stored = await Client(channel).export('process_open_fds{instance="test"}')
    finally:
        await server.stop(0)
    text = exposition(metrics.families()).decode()
    assert value_of(text, "analytics_self_metrics_writes_total", result="ok") == 1
    assert value_of(text, "analytics_self_metrics_writes_total", result="failed") == 1
    assert value_of(text, "analytics_engine_connection_failures_total", engine="realtime") == 2
    assert (
        value_of(stored, "process_open_fds", instance="test", replica="here:0", datasource="analytics_self")
        > 0
    )
