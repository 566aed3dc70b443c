"""The per-process self-metrics: what the registry exports (no `_created`, process metrics,
cache, bus, model-quality and storage collectors), and how the writer turns samples into an ingest batch."""

import asyncio
import math
import time
from dataclasses import dataclass

import numpy as np

from libs.bus import Envelope
from libs.bus.inprocess import InProcessBus
from libs.cache import TtlCache
from libs.config import SERVICE_NAMES
from libs.selfmetrics import SELF_DATASOURCE, SelfMetrics, SelfSample, sample_families
from libs.selfmetrics_writer import ingest_request, process_labels
from libs.storage import AcceptedSeries, MetricStore, SeriesKey, StoreConfig
from platformq.analytics.v1 import common_pb2, events_pb2
from services.ml.anomaly_store import AnomalyStore
from services.ml.history import HistoryClient
from services.ml.stream import StreamConfig, StreamScorer
from services.realtime.ingest import validate


def by_name(samples: list[SelfSample]) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for s in samples}


def test_every_sample_carries_the_process_labels_and_no_created_series():
    metrics = SelfMetrics()
    metrics.query_duration.labels("hot", "realtime").observe(0.3)
    metrics.query_failures.labels("none", "INVALID_ARGUMENT").inc()
    samples = metrics.samples({"instance": "all", "replica": "h:1"})
    assert not [s for s in samples if s.name.endswith("_created")]
    assert all(s.labels["instance"] == "all" and s.labels["replica"] == "h:1" for s in samples)
    values = by_name(samples)
    common = (("engine", "hot"), ("instance", "all"), ("mode", "realtime"), ("replica", "h:1"))
    assert values[("analytics_query_duration_seconds_count", common)] == 1
    assert values[("analytics_query_duration_seconds_bucket", tuple(sorted((*common, ("le", "0.5")))))] == 1
    assert values[("analytics_query_duration_seconds_bucket", tuple(sorted((*common, ("le", "0.25")))))] == 0
    failures = (("code", "INVALID_ARGUMENT"), ("engine", "none"), ("instance", "all"), ("replica", "h:1"))
    assert values[("analytics_query_failures_total", failures)] == 1
    names = {s.name for s in samples}
    assert {"process_cpu_seconds_total", "process_resident_memory_bytes", "python_info"} <= names


def test_nan_and_infinite_samples_are_not_written():
    metrics = SelfMetrics()
    metrics.stream_lag.labels("ml-anomaly").set(math.nan)
    metrics.ws_connections.labels("metrics").set(math.inf)
    metrics.ws_connections.labels("dashboard").set(2)
    names = {(s.name, s.labels.get("stream_type")) for s in metrics.samples()}
    assert ("analytics_ws_connections", "dashboard") in names
    assert ("analytics_ws_connections", "metrics") not in names
    assert "analytics_stream_lag_seconds" not in {n for n, _ in names}


def test_cache_and_bus_are_read_when_collected():
    cache = TtlCache()
    bus = InProcessBus()
    metrics = SelfMetrics(cache=cache, bus=bus)
    cache.get("query", "k")
    cache.put("query", "k", 1, ttl=60)
    cache.get("query", "k")
    cache.get("query", "k")
    cache.get("dashboard", "d")
    bus.stats["published"] = 7
    values = by_name(metrics.samples())
    assert values[("analytics_cache_requests_total", (("namespace", "query"), ("result", "hit")))] == 2
    assert values[("analytics_cache_requests_total", (("namespace", "query"), ("result", "miss")))] == 1
    assert values[("analytics_cache_requests_total", (("namespace", "dashboard"), ("result", "miss")))] == 1
    assert values[("analytics_bus_messages_total", (("event", "published"),))] == 7
    assert values[("analytics_bus_messages_total", (("event", "dead_lettered"),))] == 0


async def test_the_in_process_bus_reports_what_waits_for_each_subscription():
    bus = InProcessBus()
    metrics = SelfMetrics(bus=bus)
    release = asyncio.Event()

    async def slow(envelope):
        await release.wait()

    await bus.subscribe("t.*", "slow", slow)
    message = common_pb2.Point(name="x" * 100)
    for _ in range(3):
        await bus.publish("t.a", message)
    waiting = by_name(metrics.samples())[("analytics_bus_backlog_bytes", (("subscription", "slow"),))]
    # The consumer holds one message; the others wait in its queue.
    assert waiting in (2 * message.ByteSize(), 3 * message.ByteSize())
    release.set()
    await bus.close()


@dataclass
class Tally:
    anomalies: int
    true_positive: int
    false_positive: int
    precision: float | None


def test_model_quality_comes_from_the_attached_feedback_tallies():
    metrics = SelfMetrics()
    assert not [s for s in metrics.samples() if s.name.startswith("analytics_ml_")]
    metrics.model_quality.attach(lambda: {"auto": Tally(10, 3, 1, 0.75), "zscore": Tally(4, 0, 0, None)})
    values = by_name(metrics.samples())
    assert values[("analytics_ml_model_precision", (("method", "auto"),))] == 0.75
    assert ("analytics_ml_model_precision", (("method", "zscore"),)) not in values
    assert values[("analytics_ml_anomalies_stored", (("method", "zscore"),))] == 4
    assert (
        values[("analytics_ml_feedback_verdicts", (("method", "auto"), ("verdict", "false_positive")))] == 1
    )


def test_sample_names_map_to_their_families():
    families = sample_families(SelfMetrics(cache=TtlCache()).families())
    assert families["analytics_query_duration_seconds_bucket"].type == "histogram"
    assert families["analytics_query_duration_seconds_count"].name == "analytics_query_duration_seconds"
    assert families["analytics_cache_requests_total"].type == "counter"
    assert families["analytics_ws_connections"].type == "gauge"
    assert "analytics_cache_requests_created" not in families


def test_the_writer_stores_one_series_per_sample_at_one_timestamp():
    samples = [
        SelfSample(
            "analytics_ingest_points_total", {"datasource": "d", "result": "accepted", "instance": "all"}, 5
        ),
        SelfSample("process_open_fds", {"instance": "all"}, 12),
    ]
    request = ingest_request(samples, 1_700_000_000_123)
    assert request.datasource == SELF_DATASOURCE
    assert [(s.name, dict(s.labels), list(s.timestamps_ms), list(s.values)) for s in request.series] == [
        (
            "analytics_ingest_points_total",
            {"datasource": "d", "result": "accepted", "instance": "all"},
            [1_700_000_000_123],
            [5.0],
        ),
        ("process_open_fds", {"instance": "all"}, [1_700_000_000_123], [12.0]),
    ]
    # Every sample of a real registry passes ingest's validation.
    metrics = SelfMetrics(cache=TtlCache(), bus=InProcessBus())
    metrics.query_duration.labels("hot", "realtime").observe(0.1)
    batch = validate(ingest_request(metrics.samples(process_labels(SERVICE_NAMES, 50051)), 1_700_000_000_000))
    assert batch.rejected == 0 and batch.accepted == len(metrics.samples())


def test_process_labels_name_the_process():
    assert process_labels(SERVICE_NAMES, 50051)["instance"] == "all"
    assert process_labels(["ml"], 50053)["instance"] == "ml"
    assert process_labels(["bridge"], 8081)["replica"].endswith(":8081")


class NoHistory(HistoryClient):
    """The query-router stand-in: there is no stored history, and reads are counted."""

    def __init__(self) -> None:
        super().__init__(lambda: "unused", 0)
        self.reads = 0

    async def raw(self, datasource, metrics, filters, start_ms, end_ms, timeout=None):
        self.reads += 1
        return []


def _batch(datasource: str, publish_time_ms: int) -> Envelope:
    event = events_pb2.MetricsBatchEvent(tenant="default", datasource=datasource, batch_id=datasource)
    ts = 1_790_000_000_000 + 10_000 * np.arange(300, dtype=np.int64)
    values = np.where(np.arange(300) == 250, 500.0, 30.0 + np.sin(np.arange(300)))
    event.series.add(
        name="lat", labels={"instance": "all"}, timestamps_ms=ts.tolist(), values=values.tolist()
    )
    return Envelope(
        f"simulation.metrics.{datasource}", datasource, event.SerializeToString(), "x", publish_time_ms
    )


async def test_the_live_scorer_skips_the_self_metrics_and_reports_its_lag(tmp_path):
    store = AnomalyStore(tmp_path / "a.sqlite3")
    store.open()
    metrics = SelfMetrics()
    history = NoHistory()
    scorer = StreamScorer(InProcessBus(), store, history, StreamConfig(data_dir=tmp_path), metrics)
    published = int(time.time() * 1000) - 3000
    await scorer.handle(_batch(SELF_DATASOURCE, published))
    assert (scorer.series, history.reads, scorer.stats["points"]) == (0, 0, 0)
    lag = by_name(metrics.samples())[("analytics_stream_lag_seconds", (("consumer", "ml-anomaly"),))]
    assert 3 <= lag < 60
    await scorer.handle(_batch("platform_metrics", int(time.time() * 1000)))
    values = by_name(metrics.samples())
    assert scorer.series == 1 and scorer.stats["points"] == 300
    assert values[("analytics_ml_scoring_duration_seconds_count", (("method", "auto"),))] == 1
    found = values.get(
        ("analytics_anomalies_detected_total", (("datasource", "platform_metrics"), ("method", "auto")))
    )
    assert found == scorer.stats["anomalies"]
    store.close()


def test_self_metrics_writes_do_not_drop_cached_sql_answers():
    cache = TtlCache(unwatched_datasources={SELF_DATASOURCE})
    cache.put("query", "sql", 1, ttl=60, scope=("default", "*", -(2**63), 2**63))
    cache.put("self", "q", 2, ttl=60, scope=("default", SELF_DATASOURCE, 0, 10_000))
    assert cache.invalidate("default", SELF_DATASOURCE, 5_000, 6_000) == 1  # its own answers only
    assert (cache.get("query", "sql"), cache.get("self", "q")) == (1, None)
    assert cache.invalidate("default", "platform_metrics", 5_000, 6_000) == 1  # users' writes drop SQL
    assert cache.get("query", "sql") is None


async def test_the_store_reports_its_series_unflushed_points_and_segments_by_partition(tmp_path):
    store = MetricStore(StoreConfig(data_dir=tmp_path, wal_fsync=False, hot_flush_seconds=3600.0))
    store.open()
    metrics = SelfMetrics()
    assert not [s for s in metrics.samples() if s.name.startswith("analytics_storage_")]  # no store yet
    metrics.storage.attach(store.state)
    ts = np.arange(1_000, 61_000, 1_000, dtype=np.int64)
    await store.ingest(
        "acme", "ds", [AcceptedSeries(SeriesKey.of("cpu", {"h": str(h)}), ts, np.ones(60)) for h in range(3)]
    )
    await store.ingest("default", "other", [AcceptedSeries(SeriesKey.of("m", {}), ts[:5], np.ones(5))])

    def figures() -> dict:
        values = by_name(metrics.samples())
        return {
            (name.removeprefix("analytics_storage_"), dict(labels)["datasource"]): value
            for (name, labels), value in values.items()
            if name.startswith("analytics_storage_")
        }

    assert figures() == {
        ("series", "ds"): 3,
        ("hot_points", "ds"): 180,
        ("segments", "ds"): 0,
        ("series", "other"): 1,
        ("hot_points", "other"): 5,
        ("segments", "other"): 0,
    }
    await store.flush()
    after = figures()
    assert after[("hot_points", "ds")] == after[("hot_points", "other")] == 0
    assert after[("segments", "ds")] >= 1 and after[("segments", "other")] >= 1
    assert after[("series", "ds")] == 3
    await store.close()
