"""Bucket semantics: step-aligned buckets overlapping the window, clipped to it (explicit start/end),
and relative windows widened outward to whole steps; the same buckets on every path."""

from __future__ import annotations

import time

import numpy as np
import pytest

from libs.cache import TtlCache
from libs.storage import AcceptedSeries
from libs.storage.keys import SeriesKey
from libs.timeparse import format_time_ms
from platformq.analytics.v1 import query_service_pb2 as pb
from services.query_router.core import Limits, QueryRouter
from services.query_router.planner import resolve_window
from services.query_router.spec import query_from_proto, timeseries_from_proto
from tests.helpers import opened_store

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
MINUTE = 60_000
STEP = 10 * MINUTE


@pytest.mark.parametrize("now", [T0, T0 + 1, T0 + 2 * MINUTE, T0 + STEP - 1])
def test_a_relative_window_is_widened_to_whole_steps_and_holds_the_whole_range(now):
    window = resolve_window(STEP, None, None, STEP, now, 100)
    assert window.start % STEP == 0 and window.end % STEP == 0
    assert window.start <= now - STEP and window.end > now
    assert window.end - window.start <= 2 * STEP


def test_an_explicit_window_is_kept_as_given():
    window = resolve_window(None, T0 + 7 * MINUTE, T0 + 53 * MINUTE, STEP, T0 + 10 * STEP, 100)
    assert (window.start, window.end) == (T0 + 7 * MINUTE, T0 + 53 * MINUTE)


@pytest.fixture
async def store(tmp_path):
    store = opened_store(tmp_path)
    yield store
    await store.close()


def _minutes(start: int, count: int, host: str = "a") -> list[AcceptedSeries]:
    ts = start + MINUTE * np.arange(count, dtype=np.int64)
    return [AcceptedSeries(SeriesKey.of("m", {"host": host}), ts, np.arange(count, dtype=np.float64) + 1)]


async def test_a_point_written_two_minutes_ago_is_in_a_ten_minute_window_of_ten_minute_steps(store):
    now = int(time.time() * 1000)
    await store.ingest("default", "ds", _minutes(now - 2 * MINUTE, 1))
    router = QueryRouter(store, TtlCache(), Limits())
    for step in ("1m", "5m", "10m"):
        request = pb.QueryRequest(
            datasource="ds", metrics=["m"], aggregation="count", time_range="10m", step=step
        )
        response = await router.query(query_from_proto(request))
        assert [p.value for s in response.series for p in s.points] == [1.0], step


def _expected(
    ts: np.ndarray, values: np.ndarray, start: int, end: int, aggregation: str
) -> list[tuple[int, float]]:
    inside = (ts >= start) & (ts < end)
    buckets: dict[int, list[float]] = {}
    for t, v in zip(ts[inside].tolist(), values[inside].tolist(), strict=True):
        buckets.setdefault(t // STEP * STEP, []).append(v)
    reduce = {"count": len, "sum": sum, "max": max, "min": min}[aggregation]
    return [(b, float(reduce(vs))) for b, vs in sorted(buckets.items())]


@pytest.mark.parametrize("aggregation", ["count", "sum", "max", "min"])
async def test_windows_not_a_multiple_of_the_step_give_clipped_buckets_on_every_path(store, aggregation):
    # Segments hold the first 40 minutes, the hot tier the last 30 (so auto federates).
    await store.ingest("default", "ds", _minutes(T0, 40))
    await store.flush()
    await store.ingest("default", "ds", _minutes(T0 + 40 * MINUTE, 30))
    ts = T0 + MINUTE * np.arange(70, dtype=np.int64)
    values = np.concatenate([np.arange(40) + 1, np.arange(30) + 1]).astype(np.float64)
    router = QueryRouter(store, TtlCache(), Limits())
    windows = [
        (T0 + 7 * MINUTE, T0 + 53 * MINUTE),
        (T0 + 45 * MINUTE, T0 + 61 * MINUTE),
        (T0 + 3 * MINUTE, T0 + 9 * MINUTE),
    ]
    for start, end in windows:
        expected = _expected(ts, values, start, end, aggregation)
        for mode in ("auto", "batch", "realtime"):
            request = pb.QueryRequest(
                datasource="ds",
                metrics=["m"],
                aggregation=aggregation,
                start=format_time_ms(start),
                end=format_time_ms(end),
                step="10m",
                mode=mode,
            )
            response = await router.query(query_from_proto(request))
            got = [(p.timestamp_ms, p.value) for s in response.series for p in s.points]
            assert got == expected, (mode, start - T0, end - T0)
        timeseries = pb.QueryTimeseriesRequest(
            datasource="ds",
            intervals=[f"{format_time_ms(start)}/{format_time_ms(end)}"],
            granularity="PT10M",
            aggregations=[pb.Aggregation(type=aggregation, metric="m", name="v")],
        )
        response = await router.query_timeseries(timeseries_from_proto(timeseries))
        got = [(r.timestamp, r.result["v"]) for r in response.results]
        assert got == [(format_time_ms(b), v) for b, v in expected], ("timeseries", start - T0, end - T0)
