"""The cold tier: immutable Parquet segments, partitioned by tenant, datasource and day (a week,
Monday to Sunday, once compaction has merged a past week's days), sorted by hour, series and time,
with their rollups and points maps, listed in one manifest that is replaced atomically.

Layout under DATA_DIR/segments:
  tenant=<t>/datasource=<d>/points/<day|week>=<YYYY-MM-DD>/<min_ts>-<max_ts>-<uuid>.parquet
      series_id UBIGINT, ts BIGINT (epoch ms), value DOUBLE, sorted by (hour, series_id, ts): hour
      blocks of series-then-time runs, so a row group spans at most an hour (files of earlier
      releases, sorted by (series_id, ts), read the same)
  tenant=<t>/datasource=<d>/rollups/<1m|1h>/<day|week>=<YYYY-MM-DD>/<the segment's file stem>.arrow
      the segment's rollups (libs/storage/rollups.py), sorted by (series_id, ts); a downsampled
      segment (raw retention passed, rollup retention not yet) keeps only these
  tenant=<t>/datasource=<d>/maps/<day|week>=<YYYY-MM-DD>/<the segment's file stem>.arrow
      the segment's points map: its raw points sorted by (series_id, ts), uncompressed Arrow that
      the metrics API memory-maps (libs/storage/rollups.py); dropped with the raw points
  tenant=<t>/datasource=<d>/series/<uuid>.parquet
      series_id UBIGINT, metric VARCHAR, labels MAP(VARCHAR, VARCHAR)
  manifest.json
      the live files and the WAL position they cover; a file not listed is an orphan of a crash
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from libs import arrowbuf
from libs.storage.hot import POINTS_SCHEMA
from libs.storage.keys import SeriesKey, ids_in, keys_in, last_wins
from libs.storage.rollups import RESOLUTIONS, points_map, rollup, write_mapped

log = logging.getLogger(__name__)

SERIES_SCHEMA = pa.schema(
    [("series_id", pa.uint64()), ("metric", pa.string()), ("labels", pa.map_(pa.string(), pa.string()))]
)
DAY_MS = 86_400_000
WEEK_MS = 7 * DAY_MS
# Day 0 of the epoch (1970-01-01) was a Thursday: weeks start on Monday, as ISO weeks do.
WEEK_OFFSET_MS = 3 * DAY_MS
ROW_GROUP_ROWS = 65_536
BLOCK_MS = 3_600_000  # points files are sorted by (hour, series, ts)


def _joined(arrays: list[np.ndarray]) -> np.ndarray:
    """The arrays end to end (the one array itself when there is one: no copy)."""
    return arrays[0] if len(arrays) == 1 else np.concatenate(arrays)


def _by_partition(
    series_ids: np.ndarray, ts: np.ndarray, values: np.ndarray, width: int, offset: int
) -> Iterator[tuple[int, np.ndarray, np.ndarray, np.ndarray]]:
    """(partition number, its series ids, ts and values) for each day or week partition the points
    fall in, in order. Points of one partition (a flush of recent data: the usual case) are given
    as they are, without the masks and copies a split takes."""
    if not len(ts):
        return
    first, last = (int(ts.min()) + offset) // width, (int(ts.max()) + offset) // width
    if first == last:
        yield first, series_ids, ts, values
        return
    parts = (ts + offset) // width
    for part in np.unique(parts):
        mask = parts == part
        yield int(part), series_ids[mask], ts[mask], values[mask]


class Points(NamedTuple):
    """Points as columns: series ids, timestamps, values (a segment's order, by series then time,
    or a batch's as it arrived)."""

    series_ids: np.ndarray
    ts: np.ndarray
    values: np.ndarray


@dataclass(frozen=True)
class Segment:
    """One points file: where it is, the time span and rows it holds, its rollups, whether the
    raw points are still there (False once downsampled: only the rollups remain) and whether they
    have a points map (every segment once opened by this release)."""

    tenant: str
    datasource: str
    path: Path
    min_ts: int
    max_ts: int
    rows: int
    rollups: tuple[str, ...] = ()
    raw: bool = True
    mapped: bool = False

    @property
    def day(self) -> int:
        return self.min_ts // DAY_MS

    @property
    def weekly(self) -> bool:
        """True for a week partition (days merged by compaction), False for a day partition."""
        return self.path.parent.name.startswith("week=")

    def rollup_path(self, resolution: str) -> Path:
        """The file of this segment's rollup at `resolution` ("1m" or "1h")."""
        return self._rollup_paths[resolution]

    @cached_property
    def _rollup_paths(self) -> dict[str, Path]:
        # Built once per segment: every query asks for them, and a Path costs microseconds to make.
        day_dir = self.path.parent
        return {
            r: day_dir.parent.parent / "rollups" / r / day_dir.name / f"{self.path.stem}.arrow"
            for r in RESOLUTIONS
        }

    @cached_property
    def map_path(self) -> Path:
        """The file of this segment's points map."""
        day_dir = self.path.parent
        return day_dir.parent.parent / "maps" / day_dir.name / f"{self.path.stem}.arrow"

    def read_points(self) -> pa.Table:
        """The segment's raw points (series_id, ts, value) from its Parquet file: for copying
        them elsewhere (an external engine's ingestion), not for queries (MappedReader, DuckDB)."""
        return pq.read_table(self.path, columns=["series_id", "ts", "value"])

    def files(self) -> list[Path]:
        """Every file this segment keeps alive."""
        raw = [self.path] + ([self.map_path] if self.mapped else []) if self.raw else []
        return raw + [self.rollup_path(r) for r in self.rollups]


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
        """Read the manifest and delete files it does not list (left by a crash: a write the
        manifest never took, or files it had dropped that were still kept for readers)."""
        self.root.mkdir(parents=True, exist_ok=True)
        if self.manifest_path.exists():
            state = json.loads(self.manifest_path.read_text())
            self.flushed_through = state["flushed_through"]
            self.recent_batches = state.get("recent_batches", [])
            # Manifests of earlier releases have no "rollups"/"raw"/"mapped": see migrate().
            self.segments = [
                Segment(
                    s["tenant"],
                    s["datasource"],
                    self.root / s["path"],
                    s["min_ts"],
                    s["max_ts"],
                    s["rows"],
                    tuple(s.get("rollups", ())),
                    s.get("raw", True),
                    s.get("mapped", False),
                )
                for s in state["segments"]
            ]
            for s in state["series"]:
                self.series_files.setdefault((s["tenant"], s["datasource"]), []).append(self.root / s["path"])
        live = {p for s in self.segments for p in s.files()} | {
            p for ps in self.series_files.values() for p in ps
        }
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
                    "rollups": list(s.rollups),
                    "raw": s.raw,
                    "mapped": s.mapped,
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
        self,
        tenant: str,
        datasource: str,
        series_ids: np.ndarray,
        ts: np.ndarray,
        values: np.ndarray,
        weekly: bool = False,
    ) -> list[Segment]:
        """Write points as one sorted file per day (or per Monday-to-Sunday week); returns the new
        segments (not yet in the manifest)."""
        return self.write_batches(tenant, datasource, [Points(series_ids, ts, values)], weekly)

    def write_batches(
        self, tenant: str, datasource: str, batches: Sequence[Points], weekly: bool = False
    ) -> list[Segment]:
        """`write_points` of the points of `batches` taken in order (a flush's hot chunks). Each
        column is joined, cut to the points that are kept and sorted, and its joined copy dropped
        at once, so a flush does not hold its points twice beside the write's own copies."""
        # Writes are idempotent per series and timestamp: of several points with the same key, the
        # last to arrive wins (flush order is arrival order; compaction merges older files first).
        series_ids = _joined([b.series_ids for b in batches])
        ts = _joined([b.ts for b in batches])
        keep = last_wins(series_ids, ts)
        # One column at a time, each old array dropped as its name is rebound: a write holds about
        # 100 bytes a point at its peak, so nothing is kept longer than it is needed.
        series_ids = series_ids[keep]
        ts = ts[keep]
        values = _joined([b.values for b in batches])[keep]
        del keep
        width, offset, kind = (WEEK_MS, WEEK_OFFSET_MS, "week") if weekly else (DAY_MS, 0, "day")
        written = []
        for part, part_ids, part_ts, part_values in _by_partition(series_ids, ts, values, width, offset):
            lo, hi = int(part_ts.min()), int(part_ts.max())
            first_ms = int(part) * width - offset
            stamp = datetime.fromtimestamp(first_ms // 1000, tz=UTC).strftime("%Y-%m-%d")
            path = (
                self._base(tenant, datasource)
                / "points"
                / f"{kind}={stamp}"
                / f"{lo}-{hi}-{uuid.uuid4().hex}.parquet"
            )
            segment = Segment(tenant, datasource, path, lo, hi, len(part_ts), tuple(RESOLUTIONS), mapped=True)
            # Rollups and the points map: sorted by (series, ts).
            self._write_maps(segment, part_ids, part_ts, part_values)
            # Points: hour blocks, each sorted by (series, ts). Row groups then span at most an hour
            # (plus the series stats), so reading a few minutes of every series skips the rest.
            # The part is sorted by (series, ts) already: a stable sort by block keeps that order
            # within each block.
            order = np.argsort(part_ts // BLOCK_MS, kind="stable")
            table = pa.Table.from_arrays(
                [
                    arrowbuf.array(part_ids[order], pa.uint64()),
                    arrowbuf.array(part_ts[order], pa.int64()),
                    arrowbuf.array(part_values[order], pa.float64()),
                ],
                schema=POINTS_SCHEMA,
            )
            _write_parquet(table, path)
            written.append(segment)
        return written

    def _write_maps(
        self, segment: Segment, series_ids: np.ndarray, ts: np.ndarray, values: np.ndarray
    ) -> None:
        """Write the segment's rollups and points map from its points sorted by (series, ts)."""
        for name, width in RESOLUTIONS.items():
            write_mapped(rollup(series_ids, ts, values, width), segment.rollup_path(name))
        write_mapped(points_map(series_ids, ts, values), segment.map_path)

    def migrate(self) -> int:
        """Write the rollups and points maps of segments from releases that had none (once, on
        open); returns how many segments were upgraded."""
        # A listed file can be missing too: an earlier release opening this directory deletes
        # the points maps it does not know.
        missing = [
            s
            for s in self.segments
            if s.raw
            and (not s.mapped or set(s.rollups) != set(RESOLUTIONS) or not all(p.exists() for p in s.files()))
        ]
        if not missing:
            return 0
        upgraded = []
        for s in missing:
            table = pq.read_table(s.path)  # one point per key already
            ids, ts, values = (arrowbuf.numpy(table[c]) for c in ("series_id", "ts", "value"))
            order = np.lexsort((ts, ids))
            upgraded.append(dataclasses.replace(s, rollups=tuple(RESOLUTIONS), mapped=True))
            self._write_maps(upgraded[-1], ids[order], ts[order], values[order])
        self.commit(upgraded, {}, removed=missing)
        log.info(
            "wrote rollups and points maps of segments from an earlier release",
            extra={"segments": len(missing)},
        )
        return len(missing)

    def write_series(self, tenant: str, datasource: str, series: pa.Table) -> Path:
        """Write newly seen series (`SeriesCatalog.arrow(None, rows)`: series_id, metric, labels as
        a MAP); returns the file (not yet in the manifest)."""
        path = self._base(tenant, datasource) / "series" / f"{uuid.uuid4().hex}.parquet"
        _write_parquet(series.cast(SERIES_SCHEMA), path)
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
        before = {p for s in removed for p in s.files()}
        gone = {s.path for s in removed}
        self.segments = [s for s in self.segments if s.path not in gone] + added
        for key, path in series_added.items():
            self.series_files.setdefault(key, []).append(path)
        if flushed_through is not None:
            self.flushed_through = max(self.flushed_through, flushed_through)
        if recent_batches is not None:
            self.recent_batches = recent_batches
        self._save_manifest()
        # Readers may still hold a snapshot naming removed files: delete them a little later. A
        # segment replaced by itself (downsampled, rollups added) keeps the files it still lists.
        now = time.monotonic()
        kept = {p for s in added for p in s.files()}
        self._doomed.extend((now, p) for p in sorted(before - kept))

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

    def without_points(
        self, tenant: str, datasource: str, series_ids: np.ndarray, ts: np.ndarray, move_max_rows: int = 0
    ) -> tuple[list[Segment], list[Segment], list[Points]]:
        """The live segments that hold any of the keys (series id, ts), without them: a segment of at
        most `move_max_rows` rows gives its other points back (`moved`, for the hot tier, the
        caller's to make durable), a larger one is rewritten (up to `move_max_rows` rows in all
        are moved; 0 rewrites every one).

        Returns (added, removed, moved), not yet committed: the store commits them together with
        the hot-tier insert of the newer points, so no snapshot sees a key twice or not at all."""
        lo, hi = int(ts.min()), int(ts.max())
        wanted = np.unique(series_ids)
        added: list[Segment] = []
        removed: list[Segment] = []
        moved: list[Points] = []
        room = move_max_rows
        for seg in self.overlapping(tenant, datasource, lo, hi + 1):
            if not seg.raw:
                continue  # downsampled: older than the raw retention, its rollups stay as they are
            # A cheap probe first (two columns, row groups pruned by time) before any rewrite.
            probe_ids, probe_ts = _probe(seg, lo, hi)
            near = ids_in(probe_ids, wanted)
            if not near.any() or not keys_in(probe_ids[near], probe_ts[near], series_ids, ts).any():
                continue
            table = pq.read_table(seg.path)
            ids, seg_ts, values = (arrowbuf.numpy(table[c]) for c in ("series_id", "ts", "value"))
            keep = ~keys_in(ids, seg_ts, series_ids, ts)
            removed.append(seg)
            if not keep.any():
                continue
            if seg.rows <= room:
                room -= seg.rows
                moved.append(Points(ids[keep], seg_ts[keep], values[keep]))
            else:
                added += self.write_points(tenant, datasource, ids[keep], seg_ts[keep], values[keep])
        return added, removed, moved

    def holding(self, tenant: str, datasource: str, series_ids: np.ndarray, ts: np.ndarray) -> np.ndarray:
        """Boolean mask over the keys (series id, ts): True where a live segment with raw points
        holds the key."""
        found = np.zeros(len(ts), dtype=bool)
        if not len(ts):
            return found
        lo, hi = int(ts.min()), int(ts.max())
        for seg in self.overlapping(tenant, datasource, lo, hi + 1):
            if seg.raw:
                probe_ids, probe_ts = _probe(seg, lo, hi)
                found |= keys_in(series_ids, ts, probe_ids, probe_ts)
        return found

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


def _probe(seg: Segment, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
    """(series ids, timestamps) of a segment's points in [lo, hi]: two columns, row groups pruned
    by time."""
    probe = pq.read_table(seg.path, columns=["series_id", "ts"], filters=[("ts", ">=", lo), ("ts", "<=", hi)])
    return arrowbuf.numpy(probe["series_id"]), arrowbuf.numpy(probe["ts"])
