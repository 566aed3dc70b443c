"""Batches from the bus are stored once, whatever the redelivery: hot, flushed, after a restart."""

import numpy as np

from libs.bus.events import encode_batch
from libs.storage import AcceptedSeries, MetricStore, StoreConfig
from libs.storage.keys import SeriesKey
from platformq.analytics.v1 import events_pb2


def _event(batch: int):
    series = AcceptedSeries(
        SeriesKey.of("cpu", {"host": "a"}), np.array([batch * 10, batch * 10 + 1]), np.array([1.0, 2.0])
    )
    return events_pb2.MetricsBatchEvent.FromString(encode_batch("default", "ds", [series]))


def _points(store: MetricStore) -> int:
    snap = store.snapshot("default", "ds")
    hot = snap.hot.num_rows if snap.hot is not None else 0
    return hot + sum(s.rows for s in snap.segments)


async def test_a_redelivered_batch_is_stored_once(tmp_path):
    store = MetricStore(StoreConfig(tmp_path))
    store.open()
    first, second = _event(1), _event(2)
    assert await store.ingest_event(first) is True
    assert await store.ingest_event(first) is False  # redelivered while hot
    await store.flush()
    assert await store.ingest_event(first) is False  # redelivered after its flush
    assert await store.ingest_event(second) is True
    await store.wal.close()  # crash: second is only in the WAL

    store = MetricStore(StoreConfig(tmp_path))
    store.open()
    assert await store.ingest_event(first) is False  # known from the manifest
    assert await store.ingest_event(second) is False  # known from the WAL replay
    assert _points(store) == 4
    await store.close()


async def test_the_same_series_and_timestamp_twice_is_stored_once_last_value_wins(tmp_path):
    store = MetricStore(StoreConfig(tmp_path, compact_min_files=2))
    store.open()
    key = SeriesKey.of("cpu", {"host": "a"})
    await store.ingest("default", "ds", [AcceptedSeries(key, np.array([1, 2]), np.array([1.0, 2.0]))])
    await store.ingest("default", "ds", [AcceptedSeries(key, np.array([2, 3]), np.array([20.0, 3.0]))])
    await store.flush()  # one flush: deduplicated while writing
    await store.ingest("default", "ds", [AcceptedSeries(key, np.array([3]), np.array([30.0]))])
    await store.flush()
    await store.compact()  # two files of one day: merged, deduplicated
    snap = store.snapshot("default", "ds")
    assert len(snap.segments) == 1
    import pyarrow.parquet as pq

    table = pq.read_table(snap.segments[0].path)
    assert list(zip(table["ts"].to_pylist(), table["value"].to_pylist(), strict=True)) == [
        (1, 1.0),
        (2, 20.0),
        (3, 30.0),
    ]
    await store.close()
