"""The live scorer on the in-process bus with a real anomaly store: flags what it should, keeps its
state bounded, resumes from its checkpoint, skips redeliveries, dead-letters poison."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from libs.bus import Envelope, InProcessBus
from platformq.analytics.v1 import events_pb2
from services.ml.anomaly_store import AnomalyFilter, AnomalyStore
from services.ml.detectors import auto
from services.ml.detectors.base import onsets, threshold_for
from services.ml.history import HistoryClient, StoredSeries
from services.ml.stream import StreamConfig, StreamScorer


class RecordedHistory(HistoryClient):
    """Stands in for the query-router: answers raw reads from series given to it (the real path,
    through gRPC, is covered by tests/contract/test_anomalies.py); the rest is the real client."""

    def __init__(self) -> None:
        super().__init__(lambda: "unused", 0)
        self.series: list[StoredSeries] = []
        self.reads = 0

    async def raw(self, datasource, metrics, filters, start_ms, end_ms, timeout=None):
        self.reads += 1
        out = []
        for s in self.series:
            keep = (s.ts >= start_ms) & (s.ts < end_ms)
            out.append(StoredSeries(s.metric, s.labels, s.ts[keep], s.values[keep]))
        return out


def _series(n: int, spikes=(), seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    ts = 1_790_000_000_000 + 10_000 * np.arange(n, dtype=np.int64)
    values = 30 + rng.normal(0, 1, n)
    values[list(spikes)] += 12
    return ts, values


def _envelope(ts, values, host: str = "h1", batch: str = "b") -> Envelope:
    event = events_pb2.MetricsBatchEvent(tenant="default", datasource="ds", batch_id=batch)
    event.series.add(name="lat", labels={"host": host}, timestamps_ms=ts.tolist(), values=values.tolist())
    return Envelope("simulation.metrics.ds", "ds", event.SerializeToString(), "x", 0)


def _scorer(tmp_path, history=None, **config) -> tuple[StreamScorer, AnomalyStore, InProcessBus]:
    store = AnomalyStore(tmp_path / "a.sqlite3")
    store.open()
    bus = InProcessBus()
    scorer = StreamScorer(bus, store, history or RecordedHistory(), StreamConfig(data_dir=tmp_path, **config))
    return scorer, store, bus


def _stored(store: AnomalyStore) -> dict[int, float]:
    records, _ = store.list(AnomalyFilter(datasource="ds", limit=1000))
    return {r.timestamp_ms: r.score for r in records}


async def test_spikes_are_flagged_stored_and_published(tmp_path):
    scorer, store, bus = _scorer(tmp_path)
    published = []

    async def collect(envelope):
        published.append(envelope.decode(events_pb2.AnomalyEvent))

    await bus.subscribe("anomalies.*", "t", collect)
    ts, values = _series(800, spikes=(600, 700))
    for lo in range(0, 800, 100):
        await scorer.handle(_envelope(ts[lo : lo + 100], values[lo : lo + 100]))
    for _ in range(100):
        await asyncio.sleep(0)
    assert {int(ts[600]), int(ts[700])} <= set(_stored(store)) and len(_stored(store)) <= 6
    assert {e.timestamp_ms for e in published} == set(_stored(store))
    assert all(e.labels["host"] == "h1" and e.datasource == "ds" for e in published)
    await bus.close()


async def test_a_redelivered_batch_is_scored_once(tmp_path):
    scorer, store, _ = _scorer(tmp_path)
    ts, values = _series(700, spikes=(650,))
    await scorer.handle(_envelope(ts, values))
    points = scorer.stats["points"]
    await scorer.handle(_envelope(ts, values))  # the bus delivers it again
    assert scorer.stats["points"] == points
    assert len(_stored(store)) == scorer.stats["anomalies"]


async def test_state_is_bounded_in_bytes_and_the_least_recent_series_go_first(tmp_path):
    per_series = auto.AutoState.new().nbytes
    scorer, _, _ = _scorer(tmp_path, max_state_bytes=3 * per_series)
    ts, values = _series(60)
    for host in ("a", "b", "c", "d", "e"):
        await scorer.handle(_envelope(ts, values, host=host))
    assert scorer.series == 3 and scorer.state_bytes == 3 * per_series
    assert scorer.stats["evicted"] == 2


async def test_a_returning_series_is_rewarmed_from_history_to_the_scores_it_would_have_had(tmp_path):
    history = RecordedHistory()
    scorer, store, _ = _scorer(tmp_path, history=history)
    ts, values = _series(1000, spikes=(900,))
    # The first 800 points are stored (another replica scored them); this scorer never saw them.
    history.series = [StoredSeries("lat", {"host": "h1"}, ts[:800], values[:800])]
    await scorer.handle(_envelope(ts[800:], values[800:]))
    assert scorer.stats["warmed"] == 1
    whole = auto.detect(ts, values)
    flags, _ = onsets(whole.score, threshold_for(0.95))
    expected = {
        int(t): float(s) for t, s, f in zip(ts, whole.score, flags, strict=True) if f and t >= ts[800]
    }
    assert _stored(store) == expected and int(ts[900]) in expected


async def test_a_restart_resumes_from_the_checkpoint_without_warming_up(tmp_path):
    ts, values = _series(1000, spikes=(900,))
    scorer, store, _ = _scorer(tmp_path)
    await scorer.handle(_envelope(ts[:800], values[:800]))
    await scorer.stop()
    store.close()
    history = RecordedHistory()
    scorer, store, bus = _scorer(tmp_path, history=history)
    await scorer.start()
    assert scorer.series == 1
    await scorer.handle(_envelope(ts[800:], values[800:]))
    assert history.reads == 0  # no warm-up read: the state came from the checkpoint
    whole = auto.detect(ts, values)
    assert _stored(store)[int(ts[900])] == whole.score[900]
    await scorer.stop()
    await bus.close()


async def test_a_poison_batch_is_dead_lettered_and_the_stream_flows(tmp_path):
    scorer, _, bus = _scorer(tmp_path, max_redeliveries=1)
    dead = []

    async def dlq(envelope):
        dead.append(envelope.topic)

    await scorer.start()
    await bus.subscribe("simulation.metrics.*.dlq", "dlq", dlq)
    # A batch without a datasource cannot be scored: the handler refuses it every time.
    await bus.publish("simulation.metrics.ds", events_pb2.MetricsBatchEvent(batch_id="poison"), key="ds")
    ts, values = _series(700, spikes=(650,))
    event = events_pb2.MetricsBatchEvent.FromString(_envelope(ts, values).payload)
    await bus.publish("simulation.metrics.ds", event, key="ds")
    for _ in range(200):
        await asyncio.sleep(0.01)
        if dead and scorer.stats["points"] == 700:
            break
    assert dead == ["simulation.metrics.ds.dlq"] and scorer.stats["points"] == 700
    await scorer.stop()
    await bus.close()


async def test_each_anomaly_says_what_fired_a_spike_or_a_level_shift(tmp_path):
    scorer, store, _ = _scorer(tmp_path)
    ts, values = _series(1400, spikes=(700,))
    values[1000:] += 2.0  # two sigma up for good: inside the value band, a level shift
    await scorer.handle(_envelope(ts, values))
    records, _ = store.list(AnomalyFilter(datasource="ds", limit=1000))
    by_ts = {r.timestamp_ms: r for r in records}
    assert by_ts[int(ts[700])].reason == "value"
    shift = [r for r in records if ts[1000] <= r.timestamp_ms < ts[1060]]
    assert shift and shift[0].reason == "level_shift"
    assert shift[0].lower <= shift[0].value <= shift[0].upper and shift[0].deviation >= 1.0


async def test_idle_series_lose_their_state_at_a_checkpoint(tmp_path):
    scorer, _, bus = _scorer(tmp_path, idle_seconds=0.05, checkpoint_seconds=0.1)
    await scorer.start()
    ts, values = _series(100)
    await scorer.handle(_envelope(ts, values))
    assert scorer.series == 1
    for _ in range(100):
        await asyncio.sleep(0.02)
        if scorer.stats["checkpoints"] and scorer.series == 0:
            break
    assert scorer.series == 0 and scorer.state_bytes == 0 and scorer.stats["evicted"] == 1
    await scorer.stop()
    await bus.close()


def test_a_batch_is_prepared_in_time_order_per_series_and_a_bad_one_is_refused():
    from platformq.analytics.v1 import common_pb2, events_pb2
    from services.ml.stream import _prepare

    event = events_pb2.MetricsBatchEvent(tenant="t", datasource="d")
    event.series.append(
        common_pb2.Series(name="a", labels={"x": "1"}, timestamps_ms=[3, 1, 2], values=[30, 10, 20])
    )
    event.series.append(common_pb2.Series(name="empty"))
    # 9 then 0 is a step back only across the boundary of two series: no sort is needed there.
    event.series.append(common_pb2.Series(name="b", timestamps_ms=[8, 9], values=[1, 2]))
    event.series.append(common_pb2.Series(name="c", timestamps_ms=[0, 5], values=[3, 4]))
    prepared = [(key[2], ts.tolist(), values.tolist()) for key, ts, values in _prepare(event, "topic")]
    assert prepared == [("a", [1, 2, 3], [10, 20, 30]), ("b", [8, 9], [1, 2]), ("c", [0, 5], [3, 4])]
    event.series.append(common_pb2.Series(name="bad", timestamps_ms=[1], values=[float("inf")]))
    with pytest.raises(ValueError, match="'bad' on topic has non-finite values"):
        _prepare(event, "topic")
    event.series.append(common_pb2.Series(name="short", timestamps_ms=[1, 2], values=[1]))
    with pytest.raises(ValueError, match="'short' on topic has mismatched"):
        _prepare(event, "topic")
