"""Embedded storage: write-ahead log, hot tier, columnar segments.

The services use this package's public surface only (tests/unit/test_storage_surface.py):

- writing: `MetricStore.ingest` (a validated batch of `AcceptedSeries`, durable when it returns),
  `MetricStore.ingest_encoded` (the same batch as an `EncodedBatch`, encoded where it was validated:
  a REST body's worker process, with its own `SeriesMemo`) and `MetricStore.ingest_event` (a batch
  delivered by the bus), configured by `StoreConfig`;
- reading: `MetricStore.snapshot` (a `Snapshot`: the series catalog, the hot points (`HotPoints`:
  an Arrow table, or some series' points picked by their batches' series indexes) and the live
  `Segment`s at one instant), `MetricStore.datasources`, `MetricStore.partitions`,
  `MetricStore.segments_root` (the one directory DuckDB and Trino may read), `MetricStore.state`
  (a `PartitionState` per partition: series, unflushed points, segments; for the self-metrics);
  `MetricStore.series_files` and `Segment.read_points` (for external engines: the series files
  Trino reads as a table, a segment's raw points to copy into Druid);
- series lookup: `SeriesCatalog` (select, group, label values), `SeriesKey`, `series_id`;
- segment readers: `MappedReader` (rollups and points maps by memory map, `MapRead` the reads
  one query asks of it at once), the rollup planning
  helpers `cover`, `resolution_for`, `split_window`, `RESOLUTIONS`, `POINTS`,
  `ROLLUP_AGGREGATIONS`, `NEEDS`, and `Partials`.

Everything else (WAL, hot tier, segment writing, keys) is the store's own.

Each name is imported from its module at its first use (PEP 562), so a process that needs only
the light ones does not load the rest: the REST body worker processes take `EncodedBatch`,
`SeriesMemo`, `AcceptedSeries` and `SeriesKey` (numpy and the event codec) without pyarrow, the
hot tier or the segment readers, about 90 MiB less resident memory a worker.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from libs.storage.batches import AcceptedSeries, EncodedBatch, SeriesMemo
    from libs.storage.hot import HotPoints
    from libs.storage.keys import SeriesKey, series_id
    from libs.storage.rollups import (
        NEEDS,
        POINTS,
        RESOLUTIONS,
        ROLLUP_AGGREGATIONS,
        MappedReader,
        MapRead,
        Partials,
        cover,
        resolution_for,
        split_window,
    )
    from libs.storage.segments import Segment
    from libs.storage.series import SeriesCatalog
    from libs.storage.store import DEFAULT_TENANT, MetricStore, PartitionState, Snapshot, StoreConfig

_HOME = {
    **dict.fromkeys(["AcceptedSeries", "EncodedBatch", "SeriesMemo"], "libs.storage.batches"),
    **dict.fromkeys(["HotPoints"], "libs.storage.hot"),
    **dict.fromkeys(["SeriesKey", "series_id"], "libs.storage.keys"),
    **dict.fromkeys(
        [
            "NEEDS",
            "POINTS",
            "RESOLUTIONS",
            "ROLLUP_AGGREGATIONS",
            "MappedReader",
            "MapRead",
            "Partials",
            "cover",
            "resolution_for",
            "split_window",
        ],
        "libs.storage.rollups",
    ),
    **dict.fromkeys(["Segment"], "libs.storage.segments"),
    **dict.fromkeys(["SeriesCatalog"], "libs.storage.series"),
    **dict.fromkeys(
        ["DEFAULT_TENANT", "MetricStore", "PartitionState", "Snapshot", "StoreConfig"], "libs.storage.store"
    ),
}
"""The module of each public name."""

__all__ = [
    "DEFAULT_TENANT",
    "NEEDS",
    "POINTS",
    "RESOLUTIONS",
    "ROLLUP_AGGREGATIONS",
    "AcceptedSeries",
    "EncodedBatch",
    "HotPoints",
    "MapRead",
    "MappedReader",
    "MetricStore",
    "Partials",
    "PartitionState",
    "Segment",
    "SeriesCatalog",
    "SeriesKey",
    "SeriesMemo",
    "Snapshot",
    "StoreConfig",
    "cover",
    "resolution_for",
    "series_id",
    "split_window",
]


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(home), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
