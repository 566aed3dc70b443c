"""Druid configured but not there: ingestion keeps the hours unloaded (retried, nothing lost, our
writes unaffected); a query answers embedded, marked in `fallbacks` and counted; the request's
deadline bounds a Druid query and cancels it on the broker; bad Druid settings name the variable.

Unreachable endpoints are real closed loopback ports; the hanging broker is a tiny HTTP server that
never answers a query and records the DELETE that cancels it.
"""

from __future__ import annotations

import asyncio
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pyarrow as pa
import pytest

from libs.cache import TtlCache
from libs.errors import ConfigError, DeadlineExceeded
from libs.selfmetrics import SelfMetrics
from libs.storage import AcceptedSeries
from libs.storage.keys import SeriesKey
from platformq.analytics.v1 import query_service_pb2 as pb
from services.query_router.cancel import Deadline
from services.query_router.core import Limits, QueryRouter
from services.query_router.druid import DruidEngine, DruidMirror, DruidSettings, hours_of
from services.query_router.druid_loader import DruidLoader, LoaderSettings, druid_urls
from services.query_router.engine import Bucketing, Fragment
from services.query_router.spec import timeseries_from_proto
from tests.helpers import free_port, opened_store

T0 = 1_704_067_200_000
HOUR = 3_600_000


def _series(seed: int, start: int, end: int) -> list[AcceptedSeries]:
    ts = np.arange(start, end, 60_000, dtype=np.int64)
    return [
        AcceptedSeries(SeriesKey.of("cpu", {"host": h}), ts, ((np.arange(len(ts)) + seed + k) % 16) * 0.5)
        for k, h in enumerate("ab")
    ]


async def _flushed_store(tmp_path):
    store = opened_store(tmp_path)
    await store.ingest("t", "ds", _series(1, T0, T0 + 2 * HOUR))
    await store.flush()
    return store


def _closed_url() -> str:
    return f"http://127.0.0.1:{free_port()}"


async def test_ingestion_while_druid_is_down_keeps_hours_unloaded_and_writes_going(tmp_path):
    store = await _flushed_store(tmp_path)
    mirror = DruidMirror()
    loader = DruidLoader(
        store, mirror, LoaderSettings(_closed_url(), poll_seconds=0.05, max_backoff_seconds=0.1)
    )
    await loader.start()
    try:
        while loader.stats["failures"] < 3:
            await asyncio.sleep(0.05)
        # Our own writes go on while Druid is down.
        await store.ingest("t", "ds", _series(2, T0 + 2 * HOUR, T0 + 3 * HOUR))
        await store.flush()
        assert store.snapshot("t", "ds").segments
    finally:
        await loader.stop()
    assert loader.stats["tasks"] == 0
    assert mirror.loaded(("t", "ds")) == {}, "nothing may count as loaded"
    # Every hour is still to load: the next round (Druid back) sends them all.
    assert set(hours_of(store.snapshot("t", "ds").segments)) == {T0 // HOUR + h for h in range(3)}
    assert not list((tmp_path / "druid-staging").glob("*")), "staged files are removed"
    await store.close()


async def test_unreachable_broker_answers_embedded_marked_and_counted(tmp_path):
    store = await _flushed_store(tmp_path)
    mirror = DruidMirror()
    mirror.mark_loaded(("t", "ds"), hours_of(store.snapshot("t", "ds").segments))
    metrics = SelfMetrics()
    druid = QueryRouter(
        store, TtlCache(), Limits(), metrics, druid=DruidEngine(DruidSettings(_closed_url()), mirror)
    )
    embedded = QueryRouter(store, TtlCache(), Limits())
    spec = timeseries_from_proto(
        pb.QueryTimeseriesRequest(
            datasource="ds",
            metrics=["cpu"],
            intervals=["2024-01-01T00:00Z/2024-01-01T02:00Z"],
            granularity="hour",
        )
    )
    got = await druid.query_timeseries(spec, "t")
    want = await embedded.query_timeseries(spec, "t")
    assert [(r.timestamp, dict(r.result)) for r in got.results] == [
        (r.timestamp, dict(r.result)) for r in want.results
    ]
    assert want.results
    assert "unreachable" in got.metadata.fallbacks["druid"]
    assert "druid" not in got.metadata.engines
    assert got.metadata.plan.fragments[0].engine == "druid", "the plan still says Druid was chosen"
    count = metrics.registry.get_sample_value(
        "analytics_engine_connection_failures_total", {"engine": "druid"}
    )
    assert count == 1.0
    await store.close()


class _HangingBroker(BaseHTTPRequestHandler):
    """Never answers a query; records the DELETE that cancels it, then lets the query fail."""

    cancelled: list[str]
    release: threading.Event

    def do_POST(self):
        self.rfile.read(int(self.headers["content-length"]))
        self.release.wait(10)
        self.send_response(500)
        self.end_headers()
        self.wfile.write(b'{"error":"Query cancelled"}')

    def do_DELETE(self):
        self.cancelled.append(self.path)
        self.send_response(202)
        self.end_headers()
        self.release.set()

    def log_message(self, *args):
        pass


async def test_the_deadline_bounds_the_query_and_cancels_it_on_the_broker(tmp_path):
    store = await _flushed_store(tmp_path)
    handler = type("Handler", (_HangingBroker,), {"cancelled": [], "release": threading.Event()})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        mirror = DruidMirror()
        engine = DruidEngine(DruidSettings(f"http://127.0.0.1:{server.server_port}"), mirror)
        snapshot = store.snapshot("t", "ds")
        sids = snapshot.catalog.select_ids(["cpu"], [])
        selection = pa.table(
            {"series_id": pa.array(sids, pa.uint64()), "gid": pa.array([0] * len(sids), pa.int32())}
        )
        fragment = Fragment("druid", T0, T0 + 2 * HOUR, snapshot.segments, None)
        body = engine.query_body(fragment, sids, "avg", Bucketing(HOUR), 400)[1]
        assert body["context"]["timeout"] == 400, "the remaining time goes to the broker"
        with pytest.raises(DeadlineExceeded):
            await engine.run_fragment(fragment, selection, "avg", Bucketing(HOUR), Deadline.within(0.4, "X"))
        assert len(handler.cancelled) == 1 and handler.cancelled[0].startswith("/druid/v2/platformq-")
    finally:
        handler.release.set()
        server.shutdown()
        server.server_close()
        thread.join(5)
    await store.close()


def test_bad_druid_settings_name_the_variable():
    with pytest.raises(ConfigError, match="DRUID_OVERLORD_URL"):
        druid_urls("http://b:8082", "", "")
    with pytest.raises(ConfigError, match="DRUID_BROKER_URL"):
        druid_urls("b:8082", "http://o:8081", "")
    assert druid_urls("http://b:8082", "", "http://c:8081") == ("http://b:8082", "http://c:8081")
