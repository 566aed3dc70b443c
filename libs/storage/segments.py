"""The cold tier: immutable Parquet segments, partitioned by tenant, datasource and day, sorted by
series then time, listed in one manifest that is replaced atomically.

Layout under DATA_DIR/segments:
  tenant=<t>/datasource=<d>/points/day=<YYYY-MM-DD>/<min_ts>-<max_ts>-<uuid>.parquet
      series_id UBIGINT, ts BIGINT (epoch ms), value DOUBLE, sorted by (series_id, ts)
  tenant=<t>/datasource=<d>/series/<uuid>.parquet
      series_id UBIGINT, metric VARCHAR, labels MAP(VARCHAR, VARCHAR)
  manifest.json
      the live files and the WAL position they cover; a file not listed is an orphan of a crash
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from libs.storage.hot import POINTS_SCHEMA
from libs.storage.series import SeriesKey

log = logging.getLogger(__name__)

SERIES_SCHEMA = pa.schema(
    [("series_id", pa.uint64()), ("metric", pa.string()), ("labels", pa.map_(pa.string(), pa.string()))]
)
DAY_MS = 86_400_000
ROW_GROUP_ROWS = 65_536


@dataclass(frozen=True)
class Segment:
    """One points file: where it is and the time span and rows it holds."""

    tenant: str
    datasource: str
    path: Path
    min_ts: int
    max_ts: int
    rows: int

    @property
    def day(self) -> int:
        return self.min_ts // DAY_MS


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_parquet(table: pa.Table, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    pq.write_table(table, tmp, row_group_size=ROW_GROUP_ROWS, compression="zstd")
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    tmp.rename(path)
    _fsync_dir(path.parent)


class SegmentStore:
    """The manifest and the files it lists; one process writes, any may read."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.segments: list[Segment] = []
        self.series_files: dict[tuple[str, str], list[Path]] = {}
        self.flushed_through = 0
        self.recent_batches: list[str] = []
        self._doomed: list[tuple[float, Path]] = []

    @property
    def manifest_path(self) -> Path:
        return self.root / "manifest.json"

    def load(self) -> None:
        """Read the manifest and delete files it does not list (left by a crash mid-write)."""
        self.root.mkdir(parents=True, exist_ok=True)
        if self.manifest_path.exists():
            state = json.loads(self.manifest_path.read_text())
            self.flushed_through = state["flushed_through"]
            self.recent_batches = state.get("recent_batches", [])
            self.segments = [
                Segment(
                    s["tenant"], s["datasource"], self.root / s["path"], s["min_ts"], s["max_ts"], s["rows"]
                )
                for s in state["segments"]
            ]
            for s in state["series"]:
                self.series_files.setdefault((s["tenant"], s["datasource"]), []).append(self.root / s["path"])
        live = {s.path for s in self.segments} | {p for ps in self.series_files.values() for p in ps}
        for path in self.root.glob("tenant=*/datasource=*/**/*"):
            if path.is_file() and path not in live:
                log.warning("removing orphan segment file", extra={"path": str(path)})
                path.unlink()

    def _save_manifest(self) -> None:
        state = {
            "flushed_through": self.flushed_through,
            "recent_batches": self.recent_batches,
            "segments": [
                {
                    "tenant": s.tenant,
                    "datasource": s.datasource,
                    "path": str(s.path.relative_to(self.root)),
                    "min_ts": s.min_ts,
                    "max_ts": s.max_ts,
                    "rows": s.rows,
                }
                for s in self.segments
            ],
            "series": [
                {"tenant": t, "datasource": d, "path": str(p.relative_to(self.root))}
                for (t, d), paths in self.series_files.items()
                for p in paths
            ],
        }
        tmp = self.manifest_path.with_suffix(".tmp")
        with open(tmp, "w") as f:
            json.dump(state, f)
            f.flush()
            os.fsync(f.fileno())
        tmp.rename(self.manifest_path)
        _fsync_dir(self.root)

    def _base(self, tenant: str, datasource: str) -> Path:
        return self.root / f"tenant={tenant}" / f"datasource={datasource}"

    def write_points(
        self, tenant: str, datasource: str, series_ids: np.ndarray, ts: np.ndarray, values: np.ndarray
    ) -> list[Segment]:
        """Write points as one sorted file per day; returns the new segments (not yet in the manifest)."""
        order = np.lexsort((ts, series_ids))  # stable: equal keys keep their arrival order
        series_ids, ts, values = series_ids[order], ts[order], values[order]
        # Writes are idempotent per series and timestamp: of several points with the same key, the
        # last to arrive wins (flush order is arrival order; compaction merges older files first).
        last = np.ones(len(ts), dtype=bool)
        last[:-1] = (series_ids[1:] != series_ids[:-1]) | (ts[1:] != ts[:-1])
        if not last.all():
            series_ids, ts, values = series_ids[last], ts[last], values[last]
        days = ts // DAY_MS
        written = []
        for day in np.unique(days):
            mask = days == day
            part_ts = ts[mask]
            lo, hi = int(part_ts.min()), int(part_ts.max())
            stamp = datetime.fromtimestamp(int(day) * 86_400, tz=UTC).strftime("%Y-%m-%d")
            path = (
                self._base(tenant, datasource)
                / "points"
                / f"day={stamp}"
                / f"{lo}-{hi}-{uuid.uuid4().hex}.parquet"
            )
            table = pa.Table.from_arrays(
                [pa.array(series_ids[mask], pa.uint64()), pa.array(part_ts), pa.array(values[mask])],
                schema=POINTS_SCHEMA,
            )
            _write_parquet(table, path)
            written.append(Segment(tenant, datasource, path, lo, hi, len(part_ts)))
        return written

    def write_series(self, tenant: str, datasource: str, rows: list[tuple[int, SeriesKey]]) -> Path:
        """Write newly seen series; returns the file (not yet in the manifest)."""
        path = self._base(tenant, datasource) / "series" / f"{uuid.uuid4().hex}.parquet"
        table = pa.Table.from_arrays(
            [
                pa.array([sid for sid, _ in rows], pa.uint64()),
                pa.array([key.metric for _, key in rows]),
                pa.array([list(key.labels) for _, key in rows], pa.map_(pa.string(), pa.string())),
            ],
            schema=SERIES_SCHEMA,
        )
        _write_parquet(table, path)
        return path

    def commit(
        self,
        added: list[Segment],
        series_added: dict[tuple[str, str], Path],
        flushed_through: int | None = None,
        recent_batches: list[str] | None = None,
        removed: list[Segment] = (),
    ) -> None:
        """Make new files live (and old ones dead) in one atomic manifest replacement."""
        gone = {s.path for s in removed}
        self.segments = [s for s in self.segments if s.path not in gone] + added
        for key, path in series_added.items():
            self.series_files.setdefault(key, []).append(path)
        if flushed_through is not None:
            self.flushed_through = max(self.flushed_through, flushed_through)
        if recent_batches is not None:
            self.recent_batches = recent_batches
        self._save_manifest()
        # Readers may still hold a snapshot naming removed files: delete them a little later.
        now = time.monotonic()
        self._doomed.extend((now, s.path) for s in removed)

    def delete_doomed(self, grace_s: float) -> None:
        """Delete files removed from the manifest more than `grace_s` seconds ago."""
        now = time.monotonic()
        keep = []
        for when, path in self._doomed:
            if now - when >= grace_s:
                path.unlink(missing_ok=True)
            else:
                keep.append((when, path))
        self._doomed = keep

    def overlapping(self, tenant: str, datasource: str, start: int, end: int) -> list[Segment]:
        """Live segments of a datasource with points in [start, end)."""
        return [
            s
            for s in self.segments
            if s.tenant == tenant and s.datasource == datasource and s.max_ts >= start and s.min_ts < end
        ]

    def read_series(self, tenant: str, datasource: str) -> list[tuple[int, SeriesKey]]:
        """Every series saved for a datasource."""
        rows = []
        for path in self.series_files.get((tenant, datasource), []):
            table = pq.read_table(path)
            for sid, metric, labels in zip(
                table["series_id"].to_pylist(),
                table["metric"].to_pylist(),
                table["labels"].to_pylist(),
                strict=True,
            ):
                rows.append((sid, SeriesKey(metric, tuple(sorted(labels)))))
        return rows

    def partitions(self) -> set[tuple[str, str]]:
        """Every (tenant, datasource) with saved series."""
        return set(self.series_files)
