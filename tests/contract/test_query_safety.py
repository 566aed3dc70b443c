"""SQL queries stop in DuckDB at their deadline or when their client leaves, stay within their memory, and
never show a server path; other queries keep answering meanwhile."""

import asyncio
import time

import grpc
import pytest
import pytest_asyncio
from google.protobuf import struct_pb2
from grpc import aio

from libs.config import load_settings
from platformq.analytics.v1 import common_pb2
from platformq.analytics.v1 import query_service_pb2 as pb
from platformq.analytics.v1 import query_service_pb2_grpc as qgrpc
from platformq.analytics.v1 import realtime_service_pb2 as rpb
from platformq.analytics.v1 import realtime_service_pb2_grpc as rgrpc
from services.runner import start_services

# About 25 CPU-seconds of DuckDB work uninterrupted: a query left running would show in every CPU check.
# A stopped one uses a small part of that (STOPPED_CPU_SECONDS allows for a slow, shared machine).
HEAVY = (
    "SELECT count(*) FROM (SELECT unnest(range(100000)) AS a) x, (SELECT unnest(range(30000)) AS b) y "
    "WHERE (a * b) % 7 = 3"
)
LIGHT = pb.QueryRequest(
    sql="SELECT count(*), sum(value) FROM metrics WHERE metric = ?",
    params=[struct_pb2.Value(string_value="cpu")],
    mode="batch",  # never from the cache: the query must run while the heavy one does
)
STOPPED_CPU_SECONDS = 10.0
BUSY = 0.5  # cores: a running DuckDB query uses one or two
IDLE = 0.2  # cores: an idle server uses almost none


@pytest_asyncio.fixture
async def stub(tmp_path, monkeypatch, request):
    """A query-router and realtime with the test's settings (parametrized indirectly with a dict of
    environment variables), and two points of "cpu" stored a minute ago."""
    monkeypatch.setenv("DATA_DIR", str(tmp_path))
    monkeypatch.setenv("SELF_METRICS_INTERVAL_SECONDS", "0")
    for name, value in getattr(request, "param", {}).items():
        monkeypatch.setenv(name, value)
    running = await start_services(["query-router", "realtime"], load_settings(), 0)
    async with aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        ts = int(time.time() * 1000) - 60_000
        series = common_pb2.Series(
            name="cpu", labels={"host": "a"}, timestamps_ms=[ts, ts + 1], values=[1.0, 2.0]
        )
        await rgrpc.RealtimeServiceStub(channel).IngestMetrics(rpb.IngestMetricsRequest(series=[series]))
        yield qgrpc.QueryServiceStub(channel)
    await running.stop(0)


async def _cores(window: float = 0.25) -> float:
    """CPU this process used over the next `window` seconds, in cores."""
    cpu, wall = time.process_time(), time.monotonic()
    await asyncio.sleep(window)
    return (time.process_time() - cpu) / (time.monotonic() - wall)


async def _becomes(busy: bool, within: float) -> float:
    """The seconds until a window of this process's CPU use is busy (or idle); fails after `within`."""
    started = time.monotonic()
    while time.monotonic() - started < within:
        cores = await _cores()
        if (cores > BUSY) if busy else (cores < IDLE):
            return time.monotonic() - started
    raise AssertionError(
        f"the process was not {'busy' if busy else 'idle'} within {within} s (last {cores:.2f})"
    )


async def _light_answers(stub) -> None:
    answer = await stub.Query(LIGHT, timeout=30)
    assert [v.number_value for v in answer.rows[0].values] == [2, 3.0]


@pytest.mark.parametrize("stub", [{"QUERY_TIMEOUT_SECONDS": "1"}], indirect=True)
async def test_a_query_past_the_configured_deadline_is_stopped_and_frees_the_cpu(stub):
    await _becomes(busy=False, within=5)  # a quiet start, so the CPU checks mean something
    cpu = time.process_time()
    with pytest.raises(aio.AioRpcError) as caught:
        await stub.Query(pb.QueryRequest(sql=HEAVY))  # no deadline of its own
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "did not finish within 1 s (QUERY_TIMEOUT_SECONDS) and was stopped" in caught.value.details()
    await _becomes(busy=False, within=1)
    assert time.process_time() - cpu < STOPPED_CPU_SECONDS
    await _light_answers(stub)


async def test_a_query_past_the_requests_deadline_is_stopped_and_frees_the_cpu(stub):
    await _becomes(busy=False, within=5)
    cpu = time.process_time()
    with pytest.raises(aio.AioRpcError) as caught:
        await stub.Query(pb.QueryRequest(sql=HEAVY), timeout=2)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    await _becomes(busy=False, within=1)
    assert time.process_time() - cpu < STOPPED_CPU_SECONDS
    await _light_answers(stub)


async def test_a_query_its_client_cancels_is_stopped_and_others_answer_meanwhile(stub):
    await _becomes(busy=False, within=5)
    cpu = time.process_time()
    heavy = stub.Query(pb.QueryRequest(sql=HEAVY))  # no deadline: only QUERY_TIMEOUT_SECONDS (30 s)
    await _becomes(busy=True, within=10)
    # While the heavy query holds DuckDB, SQL and the metrics API still answer.
    await _light_answers(stub)
    metrics = await stub.Query(
        pb.QueryRequest(metrics=["cpu"], aggregation="sum", time_range="1h", step="1h", mode="batch"),
        timeout=30,
    )
    assert sum(p.value for s in metrics.series for p in s.points) == 3.0
    assert not heavy.done()
    heavy.cancel()
    with pytest.raises(asyncio.CancelledError):
        await heavy
    await _becomes(busy=False, within=1)
    assert time.process_time() - cpu < STOPPED_CPU_SECONDS


@pytest.mark.parametrize("stub", [{"QUERY_MEMORY_LIMIT": "64MB"}], indirect=True)
async def test_a_query_over_the_memory_limit_is_refused_and_the_service_goes_on(stub):
    big = pb.QueryRequest(
        sql="SELECT length(string_agg(repeat('x', 1000000), ',')) FROM (SELECT unnest(range(200)))"
    )
    with pytest.raises(aio.AioRpcError) as caught:
        await stub.Query(big, timeout=60)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "QUERY_MEMORY_LIMIT (64MB)" in caught.value.details()
    await _light_answers(stub)


@pytest.mark.parametrize(
    ("sql", "reason"),
    [
        ("SELECT current_setting('allowed_directories')", "setting 'allowed_directories' is not readable"),
        ("SELECT current_setting('secret_directory')", "setting 'secret_directory' is not readable"),
        ("SELECT * FROM duckdb_settings()", "table functions such as duckdb_settings are not allowed"),
        ("SELECT * FROM duckdb_extensions()", "table functions such as duckdb_extensions are not allowed"),
        ("SELECT * FROM pragma_database_list", "table 'pragma_database_list' is not available"),
        (
            "SELECT * FROM pragma_database_list()",
            "table functions such as pragma_database_list are not allowed",
        ),
        ("EXPLAIN SELECT * FROM metrics", "only a single SELECT statement is allowed; got EXPLAIN"),
        ("EXPLAIN ANALYZE SELECT * FROM metrics", "got EXPLAIN"),
    ],
)
async def test_sql_that_would_show_server_paths_is_refused(stub, tmp_path, sql, reason):
    with pytest.raises(aio.AioRpcError) as caught:
        await stub.Query(pb.QueryRequest(sql=sql), timeout=30)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert reason in caught.value.details()
    assert str(tmp_path) not in caught.value.details()


async def test_explaining_sql_shows_no_path(stub, tmp_path):
    request = pb.QueryRequest(sql="SELECT * FROM metrics")
    explained = await stub.Explain(pb.ExplainRequest(query=request), timeout=30)
    inline = await stub.Query(pb.QueryRequest(sql="SELECT * FROM metrics", explain=True), timeout=30)
    assert [f.engine for f in explained.plan.fragments] == ["duckdb"]
    for plan in (explained.plan, inline.metadata.plan):
        assert str(tmp_path) not in str(plan) and "parquet" not in str(plan).lower()
