"""The metrics path honours the request's deadline and cancellation: a fragment stops inside DuckDB
or between rollup files, and the caller gets DEADLINE_EXCEEDED."""

from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow as pa
import pytest

from libs.cache import TtlCache
from libs.errors import DeadlineExceeded
from libs.storage import AcceptedSeries, MetricStore, StoreConfig
from libs.storage.keys import SeriesKey, series_id
from libs.storage.rollups import ReadStopped
from libs.timeparse import format_time_ms
from platformq.analytics.v1 import query_service_pb2 as pb
from services.query_router.cancel import CancelToken, QueryInterrupted
from services.query_router.core import Limits, QueryRouter
from services.query_router.planner import plan, resolve_window
from services.query_router.spec import query_from_proto

T0 = 1_767_225_600_000
HOUR = 3_600_000


@pytest.fixture
async def store(tmp_path):
    store = MetricStore(
        StoreConfig(data_dir=tmp_path, hot_flush_points=10**9, hot_flush_seconds=3600.0, wal_fsync=False)
    )
    store.open()
    ts = T0 + np.arange(0, 2 * HOUR, 10_000, dtype=np.int64)
    await store.ingest("default", "ds", [AcceptedSeries(SeriesKey.of("m", {"h": "a"}), ts, np.ones(len(ts)))])
    await store.flush()
    yield store
    await store.close()


async def test_a_cancelled_fragment_stops_on_the_rollup_and_the_duckdb_path(store):
    router = QueryRouter(store, TtlCache(), Limits())
    window = resolve_window(None, T0, T0 + 2 * HOUR, HOUR, T0 + 10 * HOUR, 1000)
    fragment = plan("batch", window, store.snapshot("default", "ds"), "max").fragments[0]
    assert fragment.rollup == "1h"
    selection = pa.table(
        {"series_id": pa.array([series_id("m", {"h": "a"})], pa.uint64()), "gid": pa.array([0], pa.int32())}
    )
    token = CancelToken()
    assert router.engine.run(fragment, selection, "max", window.bucketing, token).table.num_rows == 2
    token.cancel()
    with pytest.raises(ReadStopped):
        router.engine.run(fragment, selection, "max", window.bucketing, token)
    with pytest.raises(QueryInterrupted):
        router.engine.run(
            dataclasses.replace(fragment, rollup=None), selection, "max", window.bucketing, token
        )


async def test_a_metrics_query_past_its_deadline_answers_deadline_exceeded(store):
    router = QueryRouter(store, TtlCache(), Limits())
    request = pb.QueryRequest(
        datasource="ds",
        metrics=["m"],
        aggregation="p50",
        step="1h",
        mode="batch",
        start=format_time_ms(T0),
        end=format_time_ms(T0 + 2 * HOUR),
    )
    with pytest.raises(DeadlineExceeded):
        await router.query(query_from_proto(request), time_remaining=0.0)
    answered = await router.query(query_from_proto(request), time_remaining=30.0)
    assert [p.value for s in answered.series for p in s.points] == [1.0, 1.0]
