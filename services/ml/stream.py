"""The live anomaly scorer: consumes `simulation.metrics.*` on its own subscription, scores every
arriving point with the `auto` detector, keeps and publishes what it flags.

Per series it holds one `AutoState` (bounded: `AutoState.nbytes`, about the same for every
series). The least recently seen series are evicted above ML_STATE_MAX_BYTES, and series silent
for ML_STATE_IDLE_SECONDS on each checkpoint; a series that comes back (or is seen for the first
time) is re-warmed from the last MEMORY_POINTS + EPISODE_GAP points of its stored history, read
through the query-router, so its scores and episodes are those it would have had without the gap.
An anomaly is the onset of an episode (`base.onsets`). All state is
checkpointed in DATA_DIR every ML_CHECKPOINT_SECONDS and on stop, so a restart resumes without
a blind warm-up; points at or before a series' last scored timestamp are skipped, so
redeliveries are scored once. The checkpoint is also the detectors' state worth keeping: at most
every `model_log_seconds` (and only when points were scored since) it is logged to MLflow and
registered as a new version of `anomaly-stream`, in the background. Scoring runs in a worker
thread (the detector's kernel releases the GIL), and ingest never waits for it: the scorer is one
more consumer of the bus. The anomalies it finds carry the registry version of the `auto` detector's
configuration ("anomaly-auto/<n>", `services/ml/versions.py`), as DetectAnomalies answers do.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import struct
import time
from collections import OrderedDict
from dataclasses import dataclass
from itertools import chain
from pathlib import Path

import numpy as np

from libs.bus import Bus, Envelope
from libs.errors import DeadlineExceeded, Unavailable
from libs.identity import acting_as, reader_of
from libs.selfmetrics import SELF_DATASOURCE, SelfMetrics
from libs.writes import METRICS_TOPICS
from platformq.analytics.v1 import common_pb2, events_pb2
from services.ml.anomalies import detector_model, shared_fields
from services.ml.anomaly_store import AnomalyRecord, AnomalyStore, anomaly_id
from services.ml.detectors.auto import MEMORY_POINTS, AutoState, score_chunk
from services.ml.detectors.base import (
    DEFAULT_SENSITIVITY,
    EPISODE_GAP,
    Scores,
    explained_deviation,
    onsets,
    reason_at,
)
from services.ml.history import HistoryClient
from services.ml.thresholds import series_threshold
from services.ml.tracking import ModelTracking
from services.ml.versions import ConfigVersions, unregistered

log = logging.getLogger(__name__)

SUBSCRIPTION = "ml-anomaly"
REGISTERED_MODEL = "anomaly-stream"
METHOD = "auto"
WARM_POINTS = MEMORY_POINTS + EPISODE_GAP
DEFAULT_SPACING_MS = 60_000
VERSION_WAIT_SECONDS = 30.0
"""The live scorer waits this long at most for the detector's registry version (once, at its first anomaly)."""

SeriesKey = tuple[str, str, str, tuple[tuple[str, str], ...]]  # tenant, datasource, metric, labels


@dataclass(frozen=True)
class StreamConfig:
    """Knobs of the live scorer (from the settings)."""

    data_dir: Path
    max_state_bytes: int = 256 * 1024 * 1024
    idle_seconds: float = 3600.0
    checkpoint_seconds: float = 60.0
    max_redeliveries: int = 3
    max_backlog_bytes: int = 256 * 1024 * 1024
    sensitivity: float = DEFAULT_SENSITIVITY
    # Hourly: a registered version per checkpoint (every minute) would bury the useful ones.
    model_log_seconds: float = 3600.0


@dataclass
class _Live:
    state: AutoState  # its last_ts is the series' last scored timestamp
    last_seen: float
    threshold: float
    since_above: int = EPISODE_GAP + 1  # points since the last one at or above the threshold


class StreamScorer:
    """Scores the live stream per series; bounded state, checkpointed, re-warmed from history."""

    def __init__(
        self,
        bus: Bus,
        store: AnomalyStore,
        history: HistoryClient,
        config: StreamConfig,
        metrics: SelfMetrics | None = None,
        tracking: ModelTracking | None = None,
        versions: ConfigVersions | None = None,
    ) -> None:
        self.bus = bus
        self.store = store
        self.history = history
        self.config = config
        self.metrics = metrics
        self.tracking = tracking
        self.versions = versions  # the detector's registry version for the anomalies it finds
        self.model_version: str | None = None  # the last registered version of the checkpoint
        self.path = config.data_dir / "ml" / "stream_state.bin"
        self._states: OrderedDict[SeriesKey, _Live] = OrderedDict()
        self._bytes = 0
        self._task: asyncio.Task[None] | None = None
        self._logging: asyncio.Task[None] | None = None  # the checkpoint being registered in MLflow
        self.stats = {"points": 0, "anomalies": 0, "warmed": 0, "evicted": 0, "checkpoints": 0}

    @property
    def state_bytes(self) -> int:
        """Bytes held by per-series state now."""
        return self._bytes

    @property
    def series(self) -> int:
        """Series with live state now."""
        return len(self._states)

    # ---- life cycle -----------------------------------------------------------------------
    async def start(self) -> None:
        """Load the checkpoint, subscribe, start checkpointing."""
        for key, live in await asyncio.to_thread(self._load):
            self._put(key, live)
        await self.bus.subscribe(
            METRICS_TOPICS,
            SUBSCRIPTION,
            self.handle,
            max_redeliveries=self.config.max_redeliveries,
            max_backlog_bytes=self.config.max_backlog_bytes,
        )
        self._task = asyncio.create_task(self._checkpoints(), name="ml-checkpoints")

    async def stop(self) -> None:
        """Stop checkpointing and write a last checkpoint."""
        for task in (self._task, self._logging):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        await asyncio.to_thread(self._save)

    async def _checkpoints(self) -> None:
        logged_at, logged_points = time.monotonic(), self.stats["points"]
        while True:
            await asyncio.sleep(self.config.checkpoint_seconds)
            self._evict_idle(time.monotonic())
            await asyncio.to_thread(self._save)
            due = time.monotonic() - logged_at >= self.config.model_log_seconds
            idle = self._logging is None or self._logging.done()
            if self.tracking is not None and due and idle and self.stats["points"] > logged_points:
                logged_at, logged_points = time.monotonic(), self.stats["points"]
                # Read now: the next checkpoint replaces the file. MLflow may take seconds (its
                # import, a slow server), so checkpoints go on meanwhile.
                data = await asyncio.to_thread(self.path.read_bytes)
                self._logging = asyncio.create_task(self._log_model(self.tracking, data), name="ml-state-log")

    async def _log_model(self, tracking: ModelTracking, data: bytes) -> None:
        """Register a checkpoint as a new version; a tracking failure is logged, never raised:
        scoring and checkpointing go on without it."""
        try:
            self.model_version = await tracking.log_model(
                REGISTERED_MODEL,
                params={
                    "method": METHOD,
                    "sensitivity": self.config.sensitivity,
                    "memory_points": MEMORY_POINTS,
                    "max_state_bytes": self.config.max_state_bytes,
                },
                metrics={
                    "series": float(self.series),
                    "state_bytes": float(self.state_bytes),
                    **{k: float(v) for k, v in self.stats.items()},
                },
                artifacts={self.path.name: data},
                tags={"kind": "anomaly-detector-state"},
            )
        except Unavailable as exc:
            log.warning("live scorer state not registered", extra={"error": exc.reason})

    # ---- scoring --------------------------------------------------------------------------
    async def handle(self, envelope: Envelope) -> None:
        """Bus handler: score a batch; a malformed one raises, so the bus dead-letters it.

        The service's own metrics (datasource analytics_self) are not scored: they are counters
        and histogram buckets of this very process, and scoring them would make every query,
        ingest and anomaly feed back into the anomaly stream."""
        event = events_pb2.MetricsBatchEvent.FromString(envelope.payload)
        if not event.datasource:
            raise ValueError(f"not an ingest batch on {envelope.topic}: datasource is required")
        if event.datasource != SELF_DATASOURCE:
            await self._score_event(event, envelope.topic)
        if self.metrics is not None:
            lag = time.time() - envelope.publish_time_ms / 1000
            self.metrics.stream_lag.labels(SUBSCRIPTION).set(max(0.0, lag))

    async def _score_event(self, event: events_pb2.MetricsBatchEvent, topic: str) -> None:
        # Per-series work runs in a worker thread, not on the event loop that also serves ingest
        # and the live streams: a 1,000-series batch costs tens of milliseconds of Python. It
        # first lets the batch's other consumers (the live streams) run: their frames wait on it
        # otherwise, since the thread holds the GIL for most of its work.
        await asyncio.sleep(0)
        prepared = await asyncio.to_thread(_prepare, event, topic)
        work: list[tuple[SeriesKey, _Live, np.ndarray, np.ndarray]] = []
        for key, ts, values in prepared:
            live = self._states.get(key)
            if live is None:
                live = await self._warm(key, ts)
            work.append((key, live, ts, values))
        if not work:
            return
        started = time.perf_counter()
        points, records = await asyncio.to_thread(_score_batch, work, int(time.time() * 1000))
        if self.metrics is not None:
            self.metrics.ml_scoring_duration.labels(METHOD).observe(time.perf_counter() - started)
        now = time.monotonic()
        for key, live, _, _ in work:
            live.last_seen = now
            self._states.move_to_end(key)
        self.stats["points"] += points
        self._evict_over_bound()
        if records:
            # The detector configuration's registry version, as DetectAnomalies with method auto
            # answers; resolved once, when the first anomaly is found.
            version = await self._detector_version()
            records = [dataclasses.replace(r, model_version=version) for r in records]
            added = await asyncio.to_thread(self.store.add, records)
            self.stats["anomalies"] += added
            if self.metrics is not None:
                self.metrics.anomalies_detected.labels(METHOD, event.datasource).inc(added)
            for record in records:
                # Keyed by series, so a series' anomalies keep their order for every consumer.
                series_key = f"{record.metric}{json.dumps(record.labels, sort_keys=True)}"
                await self.bus.publish(
                    f"anomalies.{record.datasource}", anomaly_event(record), key=series_key
                )

    async def _detector_version(self) -> str:
        name = detector_model(METHOD)
        if self.versions is None:
            return unregistered(name)
        try:
            return await self.versions.version(name, VERSION_WAIT_SECONDS)
        except DeadlineExceeded:
            # MLflow is slow to answer (a server retrying): the stream does not stall on it; the
            # resolution goes on and later anomalies carry the version.
            log.warning("live anomalies recorded before their detector version was registered")
            return unregistered(name)

    async def _warm(self, key: SeriesKey, ts: np.ndarray) -> _Live:
        """A state for a series not in memory: its stored history replayed, and its threshold."""
        tenant, datasource, metric, labels = key
        spacing = int(np.median(np.diff(ts))) if len(ts) > 1 else DEFAULT_SPACING_MS
        filters = [common_pb2.LabelFilter(label=k, op="=", value=v) for k, v in labels]
        # Outside any request: the history read is made for the series' own tenant.
        with acting_as(reader_of(tenant)):
            history = await self.history.last_before(
                datasource, [metric], filters, int(ts[0]), WARM_POINTS, spacing
            )
        tp, fp = await asyncio.to_thread(self.store.feedback_counts, tenant, datasource, metric, dict(labels))
        live = _Live(AutoState.new(), time.monotonic(), series_threshold(self.config.sensitivity, tp, fp))
        series = history.get((metric, labels))  # the filters also match series with more labels
        if series is not None:
            # The memory rebuilds the state exactly; the episode gap after it, scored from that
            # state, says whether an episode is still open.
            scores = await asyncio.to_thread(score_chunk, live.state, series.ts, series.values)
            _, live.since_above = onsets(scores.score, live.threshold)
            self.stats["warmed"] += 1
        self._put(key, live)
        return live

    def threshold_changed(self, key: SeriesKey, threshold: float) -> None:
        """Apply a series' new threshold (after a verdict given in this process) at once."""
        live = self._states.get(key)
        if live is not None:
            live.threshold = threshold

    # ---- bounds -----------------------------------------------------------------------------
    def _put(self, key: SeriesKey, live: _Live) -> None:
        old = self._states.pop(key, None)
        if old is not None:
            self._bytes -= old.state.nbytes
        self._states[key] = live
        self._bytes += live.state.nbytes
        self._evict_over_bound()

    def _evict_over_bound(self) -> None:
        while self._bytes > self.config.max_state_bytes and len(self._states) > 1:
            _, live = self._states.popitem(last=False)
            self._bytes -= live.state.nbytes
            self.stats["evicted"] += 1

    def _evict_idle(self, now: float) -> None:
        idle = [k for k, live in self._states.items() if now - live.last_seen > self.config.idle_seconds]
        for key in idle:
            self._bytes -= self._states.pop(key).state.nbytes
        self.stats["evicted"] += len(idle)

    # ---- checkpoint -------------------------------------------------------------------------
    def _save(self) -> None:
        """Write every state to a new file, fsync it, then rename it over the old one."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        with tmp.open("wb") as out:
            for key, live in list(self._states.items()):
                head = json.dumps([*key[:3], list(key[3]), live.threshold, live.since_above]).encode()
                body = live.state.to_bytes()
                out.write(struct.pack("<II", len(head), len(body)) + head + body)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, self.path)
        self.stats["checkpoints"] += 1

    def _load(self) -> list[tuple[SeriesKey, _Live]]:
        if not self.path.exists():
            return []
        data = self.path.read_bytes()
        out = []
        pos = 0
        now = time.monotonic()
        while pos + 8 <= len(data):
            head_len, body_len = struct.unpack_from("<II", data, pos)
            pos += 8
            tenant, datasource, metric, labels, threshold, since_above = json.loads(
                data[pos : pos + head_len]
            )
            pos += head_len
            state = AutoState.from_bytes(data[pos : pos + body_len])
            pos += body_len
            key = (tenant, datasource, metric, tuple((k, v) for k, v in labels))
            out.append((key, _Live(state, now, threshold, since_above)))
        log.info("live scorer state restored", extra={"series": len(out), "path": str(self.path)})
        return out


def _prepare(
    event: events_pb2.MetricsBatchEvent, topic: str
) -> list[tuple[SeriesKey, np.ndarray, np.ndarray]]:
    """Each non-empty series of a batch as (key, timestamps, values) in time order (in a worker
    thread); a malformed series raises ValueError, so the bus dead-letters the batch. The checks
    run once over the whole batch: per-series numpy calls would cost more than the scoring."""
    series, counts = [], []
    for s in event.series:
        n = len(s.values)
        if len(s.timestamps_ms) != n:
            raise ValueError(f"series {s.name!r} on {topic} has mismatched timestamps and values")
        if n:
            series.append(s)
            counts.append(n)
    if not series:
        return []
    lengths = np.array(counts, dtype=np.int64)
    total = int(lengths.sum())
    ts_all = np.fromiter(chain.from_iterable(s.timestamps_ms for s in series), np.int64, total)
    values_all = np.fromiter(chain.from_iterable(s.values for s in series), np.float64, total)
    if not np.isfinite(values_all).all():
        bad = int(np.searchsorted(np.cumsum(lengths), np.flatnonzero(~np.isfinite(values_all))[0], "right"))
        raise ValueError(f"series {series[bad].name!r} on {topic} has non-finite values")
    ends = np.cumsum(lengths)
    # A step back in time inside a series (not across the boundary to the next one) needs a sort.
    backwards = np.flatnonzero(np.diff(ts_all) < 0) + 1
    unsorted = set(np.searchsorted(ends, backwards, "right")[~np.isin(backwards, ends)].tolist())
    out = []
    start = 0
    for i, (s, end) in enumerate(zip(series, ends.tolist(), strict=True)):
        ts, values, start = ts_all[start:end], values_all[start:end], end
        if i in unsorted:
            order = np.argsort(ts, kind="stable")
            ts, values = ts[order], values[order]
        key: SeriesKey = (event.tenant, event.datasource, s.name, tuple(sorted(s.labels.items())))
        out.append((key, ts, values))
    return out


def _score_batch(
    work: list[tuple[SeriesKey, _Live, np.ndarray, np.ndarray]], detected_at: int
) -> tuple[int, list[AnomalyRecord]]:
    """Advance each series' state over its points newer than the state (in a worker thread): the
    points scored and the anomalies found (episode onsets above the series' threshold)."""
    points = 0
    records: list[AnomalyRecord] = []
    for key, live, ts, values in work:
        if live.state.last_ts is not None:
            fresh = ts > live.state.last_ts
            ts, values = ts[fresh], values[fresh]
        if not len(ts):
            continue
        scores = score_chunk(live.state, ts, values)
        points += len(ts)
        flags, live.since_above = onsets(scores.score, live.threshold, live.since_above)
        records += _records(key, live.threshold, ts, values, scores, np.flatnonzero(flags), detected_at)
    return points, records


def _records(
    key: SeriesKey,
    threshold: float,
    ts: np.ndarray,
    values: np.ndarray,
    scores: Scores,
    flagged: np.ndarray,
    detected_at: int,
) -> list[AnomalyRecord]:
    if not flagged.size:
        return []
    tenant, datasource, metric, labels = key
    label_map = dict(labels)
    dev = explained_deviation(
        values[flagged],
        scores.expected[flagged],
        scores.lower[flagged],
        scores.upper[flagged],
        scores.score[flagged],
    )
    return [
        AnomalyRecord(
            tenant=tenant,
            datasource=datasource,
            metric=metric,
            labels=label_map,
            timestamp_ms=int(ts[i]),
            value=float(values[i]),
            score=float(scores.score[i]),
            method=METHOD,
            expected=float(scores.expected[i]),
            lower=float(scores.lower[i]),
            upper=float(scores.upper[i]),
            deviation=float(d),
            threshold=threshold,
            model_version="",  # set by the caller: the registry version
            contributions={},
            source="stream",
            detected_at_ms=detected_at,
            id=anomaly_id(tenant, datasource, metric, label_map, int(ts[i]), METHOD),
            reason=reason_at(scores, int(i)),
        )
        for i, d in zip(flagged, dev, strict=True)
    ]


def anomaly_event(record: AnomalyRecord) -> events_pb2.AnomalyEvent:
    """The bus message of one anomaly."""
    return events_pb2.AnomalyEvent(**shared_fields(record), tenant=record.tenant, source=record.datasource)
