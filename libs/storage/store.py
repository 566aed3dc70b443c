"""The metric store: write-ahead log, hot tier and segments working together.

Ingest: validated series -> one MetricsBatchEvent -> WAL (group commit, fsync) -> hot tier; the
call is acknowledged after the WAL append, and the points answer queries at once. A background
flusher writes hot chunks into Parquet segments (and their 1-minute and 1-hour rollups), oldest
first and at most HOT_FLUSH_POINTS a round, commits them in the manifest together with the WAL
position they cover, then truncates the WAL. Replay on start re-reads exactly the records
after that position, so an acknowledged point is found once, whatever the crash.

One point per (series, timestamp), last write wins, from acknowledgement on: a batch whose points
may repeat a stored key (a client's retry, a corrected value) is applied under the flush lock, and
the older copy is marked dead in the hot tier, or its segment is taken out in the same step as the
hot insert: a segment of up to a flush's size gives its other points back to the hot tier through
one WAL record (moved points, which lose to every other copy of their keys), a larger one is
rewritten without the older copies. Batches that only append (every series' timestamps after its last
stored one, the usual case) are recognised by a vectorised check and skip all of that.
"""

from __future__ import annotations

import asyncio
import dataclasses
import heapq
import logging
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from libs import arrowbuf
from libs.bus.events import encode_event, series_header
from libs.errors import ResourceExhausted
from libs.storage.batches import AcceptedSeries, BatchColumns, EncodedBatch, SeriesMemo
from libs.storage.hot import Chunk, HotPoints, HotTier, PartitionKey
from libs.storage.keys import SeriesKey, last_wins
from libs.storage.segments import DAY_MS, WEEK_MS, WEEK_OFFSET_MS, Points, Segment, SegmentStore
from libs.storage.series import SeriesCatalog
from libs.storage.wal import WriteAheadLog
from platformq.analytics.v1 import events_pb2

log = logging.getLogger(__name__)

DEFAULT_TENANT = "default"
RECENT_BATCHES = 10_000
# Compaction merges the day partitions of a week (Monday to Sunday) into one file once the week
# has been over for this long (late points are rare by then; one that comes is written to a day
# partition again), so a long range reads a few large files instead of one per day...
WEEK_MERGE_AFTER_DAYS = 2
# ...in datasources keeping raw points at least this long: retention drops whole files, so in a
# week partition a point can outlive the retention by up to 6 days, which short retentions would feel.
WEEK_MERGE_MIN_RETENTION_DAYS = 28
# A week holding more points than this stays in day files: a merge holds its points in memory,
# about 150 bytes a point at its peak (measured: 6 M points, +885 MiB), so up to ~1.4 GiB.
WEEK_MERGE_MAX_POINTS = 10_000_000


@dataclass(frozen=True)
class StoreConfig:
    """Knobs of the store (filled from Settings)."""

    data_dir: Path
    hot_max_points: int = 20_000_000
    hot_flush_points: int = 2_000_000
    hot_flush_seconds: float = 30.0
    retention_days: dict[str, float] = field(default_factory=dict)
    default_retention_days: float = 30.0
    # Rollups outlive raw points where these say longer (downsampling); 0 keeps them as long as raw.
    rollup_retention_days: dict[str, float] = field(default_factory=dict)
    default_rollup_retention_days: float = 0.0
    compact_min_files: int = 8
    # A week's day files merge only once none has been written for this long (a backfill of the
    # week, or a flush of its last points, may still be adding files).
    week_merge_quiet_seconds: float = 600.0
    wal_fsync: bool = True


@dataclass(frozen=True)
class Snapshot:
    """What a query reads: the catalog, the hot points and the live segments at one instant.

    `segments` hold raw points (and rollups); `downsampled` ones, past the raw retention, only
    rollups, so only queries a rollup answers see them."""

    catalog: SeriesCatalog
    hot: HotPoints | None
    hot_min_ts: int | None
    hot_max_ts: int | None
    segments: tuple[Segment, ...]
    downsampled: tuple[Segment, ...] = ()


MOVED_SOURCE = "storage:moved"
"""The `source` of the WAL record of points a segment gave back to the hot tier (never published)."""

MOVE_BACK_MAX_POINTS = 4_000_000
"""At most this many points of segments a resent batch touches go back to the hot tier (one WAL
record of about 17 bytes a point: well under the WAL's record bound); beyond it they are rewritten."""


@dataclass(frozen=True)
class PartitionState:
    """What one (tenant, datasource) holds now (`MetricStore.state`)."""

    tenant: str
    datasource: str
    series: int
    """Series in its catalog."""
    hot_points: int
    """Points held in the hot tier: acknowledged (durable in the WAL, queryable) and not yet
    written to segments (points a later write replaced count until the flush drops them)."""
    segments: int
    """Live segment files, downsampled ones included."""


class MetricStore:
    """Durable, queryable metric storage for every tenant and datasource."""

    def __init__(self, config: StoreConfig) -> None:
        self.config = config
        self.wal = WriteAheadLog(config.data_dir / "wal", fsync=config.wal_fsync)
        self.segments = SegmentStore(config.data_dir / "segments")
        self.hot = HotTier()
        self.catalogs: dict[PartitionKey, SeriesCatalog] = {}
        self._done_lsns: list[int] = []
        self._contiguous = 0
        self._flush_lock = asyncio.Lock()
        # Batch ids of hot batches (by LSN) and of recently flushed ones, to drop redeliveries.
        self._hot_batches: dict[str, int] = {}  # batch id -> LSN, in the order they were stored
        self._recent_batches: dict[str, None] = {}
        self._flushed = asyncio.Event()
        # Newest timestamp stored per series since open, and per partition the newest segment
        # timestamp at open (a bound for series not written since): the duplicate check's memory.
        self._last_ts: dict[PartitionKey, np.ndarray] = {}
        self._open_floor: dict[PartitionKey, int] = {}
        self._task: asyncio.Task[None] | None = None
        self._memo = SeriesMemo()
        self.stats = {"ingested_points": 0, "flushes": 0, "compactions": 0}

    def state(self) -> list[PartitionState]:
        """Series, unflushed points and segments of every partition now: what the self-metrics
        export of the store reads. Safe to call from another thread (it copies what it reads)."""
        segments: dict[PartitionKey, int] = {}
        for seg in list(self.segments.segments):
            key = (seg.tenant, seg.datasource)
            segments[key] = segments.get(key, 0) + 1
        hot = {key: part.points for key, part in list(self.hot.partitions.items())}
        return [
            PartitionState(key[0], key[1], len(catalog), hot.get(key, 0), segments.get(key, 0))
            for key, catalog in sorted(list(self.catalogs.items()))
        ]

    @property
    def segments_root(self) -> Path:
        """Where the segment files live (readers query them with DuckDB; only the store writes)."""
        return self.segments.root

    # ---- start and stop -------------------------------------------------------------------
    def open(self) -> None:
        """Take the directory (the WAL's lock: a second writer fails here, before it touches a
        file), load the manifest and saved series, then replay the WAL after the flushed position."""
        self.wal.open()
        try:
            self._load()
        except BaseException:
            self.wal.close_sync()
            raise

    def _load(self) -> None:
        """open()'s work once the directory is this store's."""
        self.segments.load()
        self.segments.migrate()
        for s in self.segments.segments:
            key = (s.tenant, s.datasource)
            self._open_floor[key] = max(self._open_floor.get(key, s.max_ts), s.max_ts)
        for tenant, datasource in self.segments.partitions():
            catalog = self._catalog((tenant, datasource))
            for sid, key in self.segments.read_series(tenant, datasource):
                catalog.add(sid, key, saved=True)
        replayed = 0
        self._recent_batches.update(dict.fromkeys(self.segments.recent_batches))
        for lsn, payload in self.wal.replay(after_lsn=self.segments.flushed_through):
            event = events_pb2.MetricsBatchEvent.FromString(payload)
            columns = BatchColumns.of_event(event)
            if columns is not None:
                key = (event.tenant, event.datasource)
                chunk, may_repeat = self._chunk(lsn, key, columns)
                if event.source == MOVED_SOURCE:
                    self._replay_moved(key, chunk)
                elif may_repeat:
                    # Segments are rewritten here, never moved: replay writes no WAL record.
                    added, removed, _ = self._unshadow(key, chunk)
                    self._insert(key, chunk, added, removed, may_repeat=True)
                else:
                    self._insert(key, chunk, [], [], may_repeat=False)
            self._hot_batches[event.batch_id] = lsn
            replayed += 1
        self._contiguous = max(self.wal.last_lsn, self.segments.flushed_through)
        log.info(
            "store opened",
            extra={
                "segments": len(self.segments.segments),
                "replayed_batches": replayed,
                "hot_points": self.hot.points,
                "flushed_through": self.segments.flushed_through,
            },
        )

    async def start(self) -> None:
        """Start the background flusher."""
        self._task = asyncio.create_task(self._flush_loop(), name="store-flusher")

    async def close(self) -> None:
        """Stop the flusher, flush every hot point into segments, delete the files compaction and
        retention replaced (kept a minute for readers, who are gone now), close the WAL. A restart
        after a clean stop then finds only the manifest's files."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self.flush()
        self.segments.delete_doomed(grace_s=0)
        await self.wal.close()

    # ---- ingest --------------------------------------------------------------------------
    async def ingest(self, tenant: str, datasource: str, series: list[AcceptedSeries]) -> EncodedBatch | None:
        """Make `series` durable (WAL, fsync) and queryable; returns the batch as encoded (its
        `payload`, the WAL record, is also its bus event), None when no series has a point."""
        batch = EncodedBatch.encode(tenant, datasource, series, self._memo)
        if batch is not None:
            await self.ingest_encoded(batch)
        return batch

    async def ingest_encoded(self, batch: EncodedBatch) -> None:
        """`ingest` of a batch encoded elsewhere (`EncodedBatch.encode`)."""
        await self._store(batch.payload, batch.batch_id, (batch.tenant, batch.datasource), batch.columns)

    async def ingest_event(self, event: events_pb2.MetricsBatchEvent) -> bool:
        """Store a batch delivered by the bus, once: a redelivered batch (same batch_id) that is
        already stored is skipped, which makes at-least-once delivery idempotent. True if stored."""
        if self.knows_batch(event.batch_id):
            return False
        columns = BatchColumns.of_event(event)
        if columns is not None:
            await self._store(
                event.SerializeToString(), event.batch_id, (event.tenant, event.datasource), columns
            )
        return True

    def knows_batch(self, batch_id: str) -> bool:
        """True when the batch is in the hot tier or among the recently flushed ones."""
        return batch_id in self._recent_batches or batch_id in self._hot_batches

    async def _store(
        self,
        payload: bytes,
        batch_id: str,
        key: PartitionKey,
        columns: BatchColumns,
    ) -> None:
        """Append the serialised batch `payload` to the WAL, then put its `columns` in the hot tier."""
        await self._room_for(len(columns.ts))
        # Shielded: once the record may be in the WAL, it must reach the hot tier and its LSN must
        # be marked done even if the caller gives up, or flushes would stall behind it.
        await asyncio.shield(asyncio.ensure_future(self._append_and_apply(payload, batch_id, key, columns)))

    async def _append_and_apply(
        self,
        payload: bytes,
        batch_id: str,
        key: PartitionKey,
        columns: BatchColumns,
    ) -> None:
        lsn = await self.wal.append(payload)
        try:
            chunk, may_repeat = self._chunk(lsn, key, columns)
            if may_repeat:
                # Under the flush lock, so no flush or compaction moves the older copies meanwhile.
                async with self._flush_lock:
                    room = min(
                        self.config.hot_flush_points,
                        MOVE_BACK_MAX_POINTS,
                        max(0, self.config.hot_max_points - self.hot.points),
                    )
                    added, removed, moved = await asyncio.to_thread(self._unshadow, key, chunk, room)
                    moved_id, back = await self._log_moved(key, moved) if moved else ("", None)
                    try:
                        self._insert(key, chunk, added, removed, may_repeat=True, back=back)
                        if back is not None:
                            self._hot_batches[moved_id] = back.lsn
                    finally:
                        if back is not None:  # as for every appended record, or flushes stall
                            self._mark_done(back.lsn)
            else:
                self._insert(key, chunk, [], [], may_repeat=False)
            self._hot_batches[batch_id] = lsn
        finally:
            self._mark_done(lsn)

    async def _room_for(self, points: int) -> None:
        """Wait (bounded) for the flusher when the hot tier is at its memory bound."""
        deadline = time.monotonic() + 30
        while self.hot.points + points > self.config.hot_max_points and self.hot.points > 0:
            self._flushed.clear()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ResourceExhausted(
                    f"the hot tier is full ({self.hot.points} points, HOT_MAX_POINTS="
                    f"{self.config.hot_max_points}) and segments are not keeping up; retry later"
                )
            try:
                await asyncio.wait_for(self._flushed.wait(), remaining)
            except TimeoutError:
                continue

    def _chunk(self, lsn: int, key: PartitionKey, columns: BatchColumns) -> tuple[Chunk, bool]:
        """The batch as a hot chunk, and whether it may repeat a stored (series, ts) key."""
        catalog = self._catalog(key)
        sids = columns.sids
        if sids is None:
            # Ids from the bounded memo (a cache of every key ever seen cost about 400 B a series).
            memo = self._memo
            sids = np.fromiter(
                (memo.of(k)[0] for k in columns.keys), dtype=np.uint64, count=len(columns.keys)
            )
        rows = catalog.add_many(sids, columns.keys)
        lengths, ts = columns.lengths, columns.ts
        chunk = Chunk(lsn, np.repeat(sids, lengths), ts, columns.values)
        # Appends only when each series occurs once, its timestamps strictly increase, and its first
        # one is after the newest stored for it (the pending batch counts as stored from here on).
        starts = np.zeros(len(lengths), dtype=np.int64)
        np.cumsum(lengths[:-1], out=starts[1:])
        firsts = np.minimum.reduceat(ts, starts)
        lasts = np.maximum.reduceat(ts, starts)
        increasing = ts[1:] > ts[:-1]
        increasing[starts[1:] - 1] = True  # series boundaries
        newest = self._newest_by_row(key, len(catalog))
        before = newest[rows]
        may_repeat = (
            not increasing.all() or len(np.unique(rows)) < len(rows) or bool((firsts <= before).any())
        )
        np.maximum.at(newest, rows, lasts)
        return chunk, may_repeat

    def _newest_by_row(self, key: PartitionKey, rows: int) -> np.ndarray:
        """The newest timestamp stored per series of a partition since open, by catalog row (rows
        never change), at least `rows` long: 8 bytes a series instead of a dict entry. Series not
        written since open read the partition's newest segment timestamp at open, a safe bound."""
        newest = self._last_ts.get(key)
        if newest is None or len(newest) < rows:
            grown = np.full(
                max(rows, 2 * len(newest) if newest is not None else 1024),
                self._open_floor.get(key, -(2**63)),
                dtype=np.int64,
            )
            if newest is not None:
                grown[: len(newest)] = newest
            self._last_ts[key] = newest = grown
        return newest

    def _unshadow(
        self, key: PartitionKey, chunk: Chunk, move_max_rows: int = 0
    ) -> tuple[list[Segment], list[Segment], list[Points]]:
        """The segments holding keys `chunk` writes again, without them: (added, removed, moved),
        uncommitted. Segments of up to `move_max_rows` rows in all give their other points back
        (`moved`, for the hot tier, through the WAL: `_log_moved`); larger ones are rewritten."""
        return self.segments.without_points(*key, chunk.series_ids, chunk.ts, move_max_rows)

    def _replay_moved(self, key: PartitionKey, chunk: Chunk) -> None:
        """Replay points a segment gave back: only the keys no segment and no hot chunk holds, as
        every other copy of a key is a later write (or, if the segment's removal never committed,
        the same point in that segment)."""
        held = self.segments.holding(*key, chunk.series_ids, chunk.ts)
        if not held.all():
            self._insert_moved(
                key,
                Chunk(chunk.lsn, chunk.series_ids[~held], chunk.ts[~held], chunk.values[~held], moved=True),
            )

    def _insert_moved(self, key: PartitionKey, back: Chunk) -> None:
        """Put points a segment gave back into the hot tier, each losing to any hot copy of its key
        (`Chunk.moved`)."""
        part = self.hot.partitions.get(key)
        if part is not None:
            part.supersede(back)
        self.hot.insert(key, back)

    async def _log_moved(self, key: PartitionKey, moved: list[Points]) -> tuple[str, Chunk]:
        """The points of segments going back to the hot tier as one WAL record (durable when this
        returns, marked MOVED_SOURCE): its batch id, and the hot chunk at its position. Until the
        segments' removal is committed they are read from the segments alone. Moved points lose
        to every other copy of their keys (`Chunk.moved`): a batch appended to the WAL before this
        record but applied after it is newer. Replay (`_replay_moved`) takes only the keys no
        segment and no hot chunk holds, so a crash before or after the removal's commit loses and
        doubles nothing. A later resend of these keys then supersedes them in the hot tier (a few
        milliseconds) instead of rewriting a file, and the next flush writes the range once."""
        ids = np.concatenate([m.series_ids for m in moved])
        ts = np.concatenate([m.ts for m in moved])
        values = np.concatenate([m.values for m in moved])
        # Each segment is sorted by series: a series' points are one run per segment.
        starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
        keys = self._catalog(key).keys_of(ids[starts])
        batch_id = uuid.uuid4().hex
        payload = await asyncio.to_thread(_moved_record, key, batch_id, keys, starts, ts, values)
        return batch_id, Chunk(await self.wal.append(payload), ids, ts, values, moved=True)

    def _insert(
        self,
        key: PartitionKey,
        chunk: Chunk,
        added: list[Segment],
        removed: list[Segment],
        may_repeat: bool,
        back: Chunk | None = None,
    ) -> None:
        # No await from the segment commit to the hot insert: a snapshot sees each key once.
        if added or removed:
            self.segments.commit(added, {}, removed=removed)
        if back is not None:
            # The removed segments' other points (durable in the WAL at their chunk's position;
            # none of `chunk`'s keys among them). A batch appended to the WAL before them but
            # applied after (it waited for the flush lock) still wins over them.
            self._insert_moved(key, back)
        if may_repeat:
            keep = last_wins(chunk.series_ids, chunk.ts)
            if len(keep) < len(chunk):
                chunk = Chunk(chunk.lsn, chunk.series_ids[keep], chunk.ts[keep], chunk.values[keep])
            part = self.hot.partitions.get(key)
            if part is not None:
                part.supersede(chunk)
        self.hot.insert(key, chunk)
        self.stats["ingested_points"] += len(chunk)

    def _mark_done(self, lsn: int) -> None:
        # The flush position only moves over LSNs whose points are all in the hot tier, so a
        # batch acknowledged but not yet inserted is never skipped by a later replay.
        heapq.heappush(self._done_lsns, lsn)
        while self._done_lsns and self._done_lsns[0] <= self._contiguous + 1:
            self._contiguous = max(self._contiguous, heapq.heappop(self._done_lsns))

    def _remember_flushed(self, batch_ids: list[str]) -> None:
        # Redeliveries come within seconds of the crash they follow; the newest few thousand
        # flushed batch ids cover them.
        self._recent_batches.update(dict.fromkeys(batch_ids))
        while len(self._recent_batches) > RECENT_BATCHES:
            del self._recent_batches[next(iter(self._recent_batches))]

    def _catalog(self, key: PartitionKey) -> SeriesCatalog:
        catalog = self.catalogs.get(key)
        if catalog is None:  # not setdefault: an empty catalog costs a few arrays to build
            catalog = self.catalogs[key] = SeriesCatalog()
        return catalog

    # ---- reading --------------------------------------------------------------------------
    def snapshot(self, tenant: str, datasource: str) -> Snapshot | None:
        """A consistent view for one query, or None for an unknown datasource."""
        key = (tenant, datasource)
        catalog = self.catalogs.get(key)
        if catalog is None:
            return None
        part = self.hot.partitions.get(key)
        mine = [s for s in self.segments.segments if s.tenant == tenant and s.datasource == datasource]
        return Snapshot(
            catalog,
            part.view() if part else None,
            part.min_ts if part else None,
            part.max_ts if part else None,
            tuple(s for s in mine if s.raw),
            tuple(s for s in mine if not s.raw),
        )

    def datasources(self, tenant: str) -> list[str]:
        """Datasources of a tenant that hold at least one series."""
        return sorted(d for t, d in self.catalogs if t == tenant)

    def partitions(self) -> list[tuple[str, str]]:
        """Every (tenant, datasource) that holds at least one series."""
        return sorted(self.catalogs)

    def live_segments(self) -> list[Segment]:
        """Every live segment of every tenant and datasource, downsampled ones included."""
        return list(self.segments.segments)

    def series_files(self, tenant: str, datasource: str) -> list[Path]:
        """The live series files of a datasource (series_id, metric, labels), for an external engine
        that reads the segments as tables (Trino)."""
        return list(self.segments.series_files.get((tenant, datasource), ()))

    # ---- background work ------------------------------------------------------------------
    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(0.5)
            try:
                oldest = self.hot.oldest_arrival()
                due = oldest is not None and time.monotonic() - oldest >= self.config.hot_flush_seconds
                if self.hot.points >= self.config.hot_flush_points or due:
                    await self.flush(max_points=self.config.hot_flush_points)
                await self.compact()
                self.apply_retention()
                self.segments.delete_doomed(grace_s=60)
            except OSError:
                log.exception("background storage work failed; retrying")

    async def flush(self, max_points: int | None = None) -> int:
        """Write every hot chunk up to the contiguous acknowledged LSN into segments; with
        `max_points`, only the oldest chunks holding at most that many points (at least one), so
        the memory a write takes (about 100 bytes a point while it sorts and encodes) stays bounded
        when ingest outruns the flusher: the background loop writes the rest in the next rounds."""
        async with self._flush_lock:
            through = self._contiguous
            if max_points is not None:
                through = self.hot.lsn_holding(through, max_points)
            taken = self.hot.chunks_through(through)
            # Series ids only: their keys are built from the catalog's columns in the worker thread.
            unsaved = {
                key: np.array(catalog.unsaved, dtype=np.uint64)
                for key, catalog in self.catalogs.items()
                if catalog.unsaved
            }
            if not taken and not unsaved:
                return 0
            added, series_files = await asyncio.to_thread(self._write, taken, unsaved)
            # Commit and hot removal happen with no await between them, so a query snapshot sees
            # each point exactly once: either in the hot tier or in a committed segment.
            flushed_lsns = {c.lsn for chunks in taken.values() for c in chunks}
            flushed_batches = [batch for batch, lsn in self._hot_batches.items() if lsn in flushed_lsns]
            self._remember_flushed(flushed_batches)
            self.segments.commit(
                added, series_files, flushed_through=through, recent_batches=list(self._recent_batches)
            )
            self.hot.remove(taken)
            for batch in flushed_batches:
                del self._hot_batches[batch]
            for key, ids in unsaved.items():
                # `unsaved` is only appended to (and only emptied here, under the flush lock): the
                # saved ids are its first len(ids) entries.
                del self.catalogs[key].unsaved[: len(ids)]
            self.wal.truncate_through(through)
            self.stats["flushes"] += 1
            self._flushed.set()
            points = sum(len(c) for chunks in taken.values() for c in chunks)
            log.info(
                "flushed hot tier", extra={"points": points, "files": len(added), "through_lsn": through}
            )
            return points

    def _write(
        self, taken: dict[PartitionKey, list[Chunk]], unsaved: dict[PartitionKey, np.ndarray]
    ) -> tuple[list[Segment], dict[PartitionKey, Path]]:
        added: list[Segment] = []
        for (tenant, datasource), chunks in taken.items():
            added += self.segments.write_batches(tenant, datasource, [Points(*c.columns()) for c in chunks])
        # The catalog only appends rows, so reading the rows of known ids here, off the event loop,
        # is safe while ingest adds more series.
        series_files = {
            key: self.segments.write_series(
                *key, self.catalogs[key].arrow(None, self.catalogs[key].known_rows(ids))
            )
            for key, ids in unsaved.items()
        }
        return added, series_files

    async def compact(self, now_ms: int | None = None) -> None:
        """Merge a day's small segments into one sorted file once there are enough of them, and
        the days of a past week into one week partition (see WEEK_MERGE_*)."""
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        days: dict[tuple[str, str, int], list[Segment]] = {}
        weeks: dict[tuple[str, str, int], list[Segment]] = {}
        for s in self.segments.segments:
            if not s.raw or s.weekly:
                continue
            days.setdefault((s.tenant, s.datasource, s.day), []).append(s)
            week = (s.min_ts + WEEK_OFFSET_MS) // WEEK_MS
            retention = self.config.retention_days.get(s.datasource, self.config.default_retention_days)
            week_over = (week + 1) * WEEK_MS - WEEK_OFFSET_MS
            if (
                week_over <= now_ms - WEEK_MERGE_AFTER_DAYS * DAY_MS
                and retention >= WEEK_MERGE_MIN_RETENTION_DAYS
            ):
                weeks.setdefault((s.tenant, s.datasource, week), []).append(s)
        for (tenant, datasource, _), segs in days.items():
            if len(segs) >= self.config.compact_min_files:
                await self._compact(tenant, datasource, segs, weekly=False)
        live = set(self.segments.segments)  # a day merge above may have replaced some of them
        for (tenant, datasource, _), segs in weeks.items():
            if (
                len({s.day for s in segs}) >= 2  # one day's files follow the day rule above
                and live.issuperset(segs)
                and sum(s.rows for s in segs) <= WEEK_MERGE_MAX_POINTS
                and self._quiet(segs)
            ):
                await self._compact(tenant, datasource, segs, weekly=True)

    def _quiet(self, segs: list[Segment]) -> bool:
        """True when no file of `segs` was written in the last week_merge_quiet_seconds."""
        newest = max(s.path.stat().st_mtime for s in segs)
        return newest <= time.time() - self.config.week_merge_quiet_seconds

    async def _compact(self, tenant: str, datasource: str, segs: list[Segment], weekly: bool) -> None:
        async with self._flush_lock:
            merged = await asyncio.to_thread(self._merge, tenant, datasource, segs, weekly)
            self.segments.commit(merged, {}, removed=segs)
            self.stats["compactions"] += 1
        log.info(
            "compacted segments", extra={"files_in": len(segs), "files_out": len(merged), "weekly": weekly}
        )

    def _merge(
        self, tenant: str, datasource: str, segs: list[Segment], weekly: bool = False
    ) -> list[Segment]:
        import pyarrow.parquet as pq

        # Manifest order is commit order (oldest first), so a newer point with the same series and
        # timestamp wins the merge.
        table = pa.concat_tables([pq.read_table(s.path) for s in segs])
        return self.segments.write_points(
            tenant,
            datasource,
            arrowbuf.numpy(table["series_id"]),
            arrowbuf.numpy(table["ts"]),
            arrowbuf.numpy(table["value"]),
            weekly=weekly,
        )

    def apply_retention(self, now_ms: int | None = None) -> int:
        """Drop segments wholly older than their datasource's retention, or only their raw points
        where rollups are kept longer (downsampling); returns how many segments changed."""
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        expired, downsampled = [], []
        for s in self.segments.segments:
            raw_days = self.config.retention_days.get(s.datasource, self.config.default_retention_days)
            rollup_days = max(
                raw_days,
                self.config.rollup_retention_days.get(
                    s.datasource, self.config.default_rollup_retention_days
                ),
            )
            if s.max_ts < now_ms - rollup_days * 86_400_000 or (
                not s.rollups and s.max_ts < now_ms - raw_days * 86_400_000
            ):
                expired.append(s)
            elif s.raw and s.max_ts < now_ms - raw_days * 86_400_000:
                downsampled.append(s)
        if expired or downsampled:
            kept = [dataclasses.replace(s, raw=False) for s in downsampled]
            self.segments.commit(kept, {}, removed=expired + downsampled)
            log.info("retention applied", extra={"removed": len(expired), "downsampled": len(downsampled)})
        return len(expired) + len(downsampled)


def _moved_record(
    key: PartitionKey,
    batch_id: str,
    keys: list[SeriesKey],
    starts: np.ndarray,
    ts: np.ndarray,
    values: np.ndarray,
) -> bytes:
    """The WAL record of points going back from segments to the hot tier: one series entry per run
    (`starts`, the first index of each; `keys`, its series)."""
    ends = np.r_[starts[1:], len(ts)].tolist()
    return encode_event(
        key[0],
        key[1],
        batch_id,
        int(time.time() * 1000),
        [
            (series_header(k.metric, k.labels), ts[a:b], values[a:b])
            for k, a, b in zip(keys, starts.tolist(), ends, strict=True)
        ],
        source=MOVED_SOURCE,
    )
