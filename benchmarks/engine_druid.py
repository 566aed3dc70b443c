"""The Druid section of benchmarks/engines.py: start time and RSS of scripts/druid-cluster, the time
to mirror one day of segments into Druid, and the p50 latency of QueryTimeseries and a realtime
query on the embedded path against Druid (same store, cache bypassed: timeseries never caches,
realtime mode always runs its engines).

    .venv/bin/python -m benchmarks.engines druid [--runs 30]
"""

from __future__ import annotations

import asyncio
import functools
import tempfile
import time
from pathlib import Path

from benchmarks.engine_data import HOUR, HOURS, T0, day_store, side_by_side
from libs.cache import TtlCache
from libs.timeparse import format_time_ms
from platformq.analytics.v1 import query_service_pb2 as pb
from services.query_router.core import Limits, QueryRouter
from services.query_router.druid import DruidEngine, DruidMirror, DruidSettings
from services.query_router.druid_loader import DruidLoader, LoaderSettings
from services.query_router.engine import Bucketing
from services.query_router.planner import Window
from services.query_router.spec import query_from_proto, timeseries_from_proto
from tests.integration.druid_server import druid_cluster


async def bench_druid(runs: int) -> dict:
    """Druid: start, RSS, mirror time for a day of points, p50 latency embedded vs Druid."""
    with tempfile.TemporaryDirectory() as tmp:
        store, points = await day_store(Path(tmp) / "store")
        cluster = druid_cluster(Path(tmp) / "druid")
        started = time.monotonic()
        cluster.start()
        start_s = time.monotonic() - started
        mirror = DruidMirror()
        loader = DruidLoader(store, mirror, LoaderSettings(cluster.coordinator_url, poll_seconds=0.1))
        try:
            started = time.monotonic()
            await loader.start()
            window = Window(T0, T0 + HOURS * HOUR, Bucketing(HOUR))
            while mirror.cut("default", "ds", store.snapshot("default", "ds"), window) != window.end:
                if time.monotonic() - started > 600:
                    raise TimeoutError(f"Druid did not ingest in 600 s: {loader.stats}")
                await asyncio.sleep(0.1)
            ingest_s = time.monotonic() - started
            embedded = QueryRouter(store, TtlCache(), Limits())
            on_druid = QueryRouter(
                store, TtlCache(), Limits(), druid=DruidEngine(DruidSettings(cluster.broker_url), mirror)
            )
            interval = f"{format_time_ms(T0)}/{format_time_ms(T0 + HOURS * HOUR)}"
            timeseries = {
                "timeseries_avg_1h_by_host": pb.QueryTimeseriesRequest(
                    datasource="ds",
                    metrics=["cpu"],
                    intervals=[interval],
                    granularity="hour",
                    dimensions=["host"],
                ),
                "timeseries_sum_all": pb.QueryTimeseriesRequest(
                    datasource="ds",
                    aggregations=[pb.Aggregation(type="sum", metric="cpu")],
                    intervals=[interval],
                    granularity="all",
                ),
            }
            realtime = pb.QueryRequest(
                datasource="ds",
                metrics=["cpu"],
                mode="realtime",
                aggregation="max",
                step="5m",
                start=format_time_ms(T0),
                end=format_time_ms(T0 + HOURS * HOUR),
            )
            result = {
                "points": points,
                "start_s": round(start_s, 1),
                "ingest_s": round(ingest_s, 1),
                "runs": runs,
            }
            calls = {}
            for name, request in timeseries.items():
                spec = timeseries_from_proto(request)
                calls[name] = (
                    functools.partial(embedded.query_timeseries, spec),
                    functools.partial(on_druid.query_timeseries, spec),
                )
            spec = query_from_proto(realtime)
            calls["realtime_max_5m"] = (
                functools.partial(embedded.query, spec),
                functools.partial(on_druid.query, spec),
            )
            for name, (on_embedded, through_druid) in calls.items():
                result[name] = await side_by_side("druid", on_embedded, through_druid, runs)
            result["rss_mb"] = round(cluster.rss_bytes() / 2**20)
            return result
        finally:
            await loader.stop()
            cluster.stop()
            await store.close()
