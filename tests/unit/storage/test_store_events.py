"""Batches from the bus are stored once, whatever the redelivery: hot, flushed, after a restart."""

import numpy as np

from libs.storage.series import SeriesKey
from libs.storage.store import AcceptedSeries, MetricStore, StoreConfig, build_event


def _event(batch: int):
    series = AcceptedSeries(
        SeriesKey.of("cpu", {"host": "a"}), np.array([batch * 10, batch * 10 + 1]), np.array([1.0, 2.0])
    )
    return build_event("default", "ds", [series])


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
