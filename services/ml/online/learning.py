"""The online models of one ml service: created on first use, one at a time per model, learned in
a worker thread, checkpointed in DATA_DIR/ml/online/<name>.pkl before the answer (so a restart
resumes with every sample learned) and logged to MLflow every ONLINE_TRACK_SAMPLES samples or
ONLINE_TRACK_SECONDS seconds, in the background (MLflow is too slow for every request).

At most ONLINE_MAX_MODELS models stay in memory: the least recently used beyond are dropped and
reloaded from their checkpoint on their next use. Every change to a model is checkpointed before
its lock is released and a model is dropped only while its lock is free, so the checkpoint of a
dropped model holds everything it learned (samples_seen goes on counting after the reload).
A stream binding's batch is learned LEARN_CHUNK_ROWS rows per hold of the lock, so a prediction
waits for a chunk, not for a backlog."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from libs.errors import DeadlineExceeded, InvalidArgument, NotFound
from libs.timeparse import format_time_ms
from platformq.analytics.v1 import ml_service_pb2 as pb
from services.ml.online.models import OnlineModel, Prediction, registered_name
from services.ml.online.spec import PredictSpec, TrainSpec, check_targets, resolve_kind_task

if TYPE_CHECKING:
    from services.ml.tracking import ModelTracking

log = logging.getLogger(__name__)

# Rows of a stream binding learned per hold of the model's lock (about half a second for a
# Hoeffding tree here).
LEARN_CHUNK_ROWS = 1000


@dataclass(frozen=True)
class OnlineConfig:
    """Knobs of online learning (from the settings)."""

    data_dir: Path
    track_samples: int = 1000
    track_seconds: float = 300.0
    max_samples: int = 10_000
    max_models: int = 100


class OnlineLearning:
    """Trains and serves the online models; see the module docstring."""

    def __init__(self, config: OnlineConfig, tracking: ModelTracking | None = None) -> None:
        self.config = config
        self.tracking = tracking  # None: no MLflow logging
        self.folder = config.data_dir / "ml" / "online"
        self._models: OrderedDict[str, OnlineModel] = OrderedDict()  # least recently used first
        # One lock per model name ever used, kept when its model is dropped: a request may be
        # waiting on it (a few hundred bytes each; every name also has its checkpoint on disk).
        self._locks: dict[str, asyncio.Lock] = {}
        self._background: set[asyncio.Task] = set()
        self._logging: set[str] = set()

    async def stop(self) -> None:
        """Let running updates and MLflow checkpoints finish (their models are saved already)."""
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)

    # ---- requests --------------------------------------------------------------------------
    async def train(self, spec: TrainSpec, timeout: float | None = None) -> pb.TrainOnlineResponse:
        """Learn a batch; the update runs to its end even if the caller goes away, so a model is
        never left learned but not checkpointed."""
        return await self._shielded(self._train(spec, timeout))

    async def predict(self, spec: PredictSpec, timeout: float | None = None) -> pb.PredictOnlineResponse:
        """Predict with an existing model; 404 when there is none. It waits for an update of the
        model in progress (river models are not safe to read while they learn)."""
        self._check_size(len(spec.samples))
        lock = self._lock(spec.model_name)
        await self._acquire(lock, timeout)
        try:
            model = await self._get(spec.model_name)
            if model is None:
                raise NotFound(
                    f"no online model {spec.model_name!r}: train it first (TrainOnline)", "model_name"
                )
            predictions = await asyncio.to_thread(model.predict, list(spec.samples))
        finally:
            lock.release()
        return pb.PredictOnlineResponse(
            model_name=model.name,
            predictions=[_prediction(p) for p in predictions],
            samples_seen=model.samples_seen,
            metric=model.metric_value,
            metric_name=model.metric_name,
            model_version=model.model_version,
        )

    async def learn_rows(
        self,
        name: str,
        kind: str,
        task: str,
        entity_rows: Sequence[tuple[str, int, dict[str, float], float | str]],
    ) -> int:
        """Learn stream rows (entity, timestamp, features, target) of a binding; a row at or before
        its entity's last learned timestamp is skipped, so redelivered points are learned once."""
        return await self._shielded(self._learn_rows(name, kind, task, entity_rows))

    # ---- internals -------------------------------------------------------------------------
    async def _shielded(self, coro):
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return await asyncio.shield(task)

    def _lock(self, name: str) -> asyncio.Lock:
        return self._locks.setdefault(name, asyncio.Lock())

    async def _acquire(self, lock: asyncio.Lock, timeout: float | None) -> None:
        try:
            await asyncio.wait_for(lock.acquire(), timeout)
        except TimeoutError:
            raise DeadlineExceeded("the model was busy with another update until the deadline") from None

    def _check_size(self, n: int) -> None:
        # The bound on the work one request starts: an update is never cut off half-way.
        if n > self.config.max_samples:
            raise InvalidArgument(f"{n} samples; at most {self.config.max_samples} per request", "samples")

    async def _train(self, spec: TrainSpec, timeout: float | None) -> pb.TrainOnlineResponse:
        self._check_size(len(spec.samples))
        lock = self._lock(spec.model_name)
        await self._acquire(lock, timeout)
        try:
            model = await self._get(spec.model_name)
            existing = None if model is None else (model.kind, model.task)
            kind, task = resolve_kind_task(spec.kind, spec.task, existing)
            ys = check_targets(spec.samples, task)  # the whole batch, before anything is learned
            created = model is None
            if model is None:
                model = await asyncio.to_thread(OnlineModel.new, spec.model_name, kind, task)
            xs = [s.features for s in spec.samples]
            before = model.samples_seen
            predictions = await asyncio.to_thread(model.learn, xs, ys, _now_ms())
            data = await asyncio.to_thread(self._save, model)
            self._remember(model)
            self._maybe_track(model, data)
        finally:
            lock.release()
        return pb.TrainOnlineResponse(
            model_name=model.name,
            samples_seen=model.samples_seen,
            metric=model.metric_value,
            metric_name=model.metric_name,
            model_version=model.model_version,
            kind=model.kind,
            task=model.task,
            samples_learned=model.samples_seen - before,
            drift_count=model.drift_count,
            last_drift_at=format_time_ms(model.last_drift.at_ms) if model.last_drift else "",
            last_drift_sample=model.last_drift.sample if model.last_drift else 0,
            predictions=[_prediction(p) for p in predictions],
            created=created,
        )

    async def _learn_rows(self, name, kind, task, rows) -> int:
        # In chunks, the lock released between them: a backlog (the demo's backfill, a consumer
        # catching up) learns a batch for tens of seconds, and a prediction waits for one chunk,
        # not the batch. Each chunk is checkpointed like any update.
        ordered = sorted(rows, key=lambda r: r[1])
        learned = 0
        for i in range(0, len(ordered), LEARN_CHUNK_ROWS):
            n = await self._learn_chunk(name, kind, task, ordered[i : i + LEARN_CHUNK_ROWS])
            if n is None:
                break
            learned += n
        return learned

    async def _learn_chunk(self, name, kind, task, rows) -> int | None:
        """Learn rows in time order; None when the model has another kind or task."""
        lock = self._lock(name)
        async with lock:
            model = await self._get(name)
            if model is None:
                model = await asyncio.to_thread(OnlineModel.new, name, kind, task)
            elif (model.kind, model.task) != (kind, task):
                log.warning(
                    "online binding skipped: the model has another kind or task",
                    extra={"model": name, "kind": model.kind, "task": model.task},
                )
                return None
            # Checked under the lock: a request may have learned later points of an entity since.
            fresh = [r for r in rows if r[1] > model.entity_ts.get(r[0], -1)]
            if not fresh:
                return 0
            await asyncio.to_thread(model.learn, [r[2] for r in fresh], [r[3] for r in fresh], _now_ms())
            for entity, ts, _, _ in fresh:
                model.entity_ts[entity] = max(ts, model.entity_ts.get(entity, -1))
            data = await asyncio.to_thread(self._save, model)
            self._remember(model)
            self._maybe_track(model, data)
            return len(fresh)

    async def _get(self, name: str) -> OnlineModel | None:
        """The model in memory, else its checkpoint loaded (call with the model's lock held)."""
        model = self._models.get(name)
        if model is None:
            model = await asyncio.to_thread(self._load, name)
            if model is not None:
                self._remember(model)
        else:
            self._models.move_to_end(name)
        return model

    def _remember(self, model: OnlineModel) -> None:
        """Keep `model` as the most recently used; drop the least recently used beyond the bound,
        skipping any whose lock is held (in use: it may be learning and not yet checkpointed)."""
        self._models[model.name] = model
        self._models.move_to_end(model.name)
        excess = len(self._models) - self.config.max_models
        if excess <= 0:
            return
        for name in list(self._models):
            if excess == 0:
                break
            if name != model.name and not self._lock(name).locked():
                del self._models[name]
                excess -= 1
                log.debug("online model dropped from memory", extra={"model": name})

    def _path(self, name: str) -> Path:
        return self.folder / f"{name}.pkl"

    def _save(self, model: OnlineModel) -> bytes:
        """Write the checkpoint to a new file, fsync it, then rename it over the old one; the
        checkpoint's bytes are returned for MLflow."""
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self._path(model.name)
        tmp = path.with_suffix(".tmp")
        data = model.to_bytes()
        with tmp.open("wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
        return data

    def _load(self, name: str) -> OnlineModel | None:
        path = self._path(name)
        if not path.exists():
            return None
        model = OnlineModel.from_bytes(path.read_bytes())
        log.info("online model restored", extra={"model": name, "samples_seen": model.samples_seen})
        return model

    # ---- MLflow ----------------------------------------------------------------------------
    def _maybe_track(self, model: OnlineModel, data: bytes) -> None:
        """Start a background MLflow checkpoint of `data` (the model's checkpoint just written,
        under its lock) when enough samples or time have passed."""
        if self.tracking is None or model.name in self._logging:
            return
        fresh = model.samples_seen - model.logged_samples
        due = fresh >= self.config.track_samples or (
            fresh > 0 and _now_ms() - model.logged_at_ms >= self.config.track_seconds * 1000
        )
        if not due:
            return
        self._logging.add(model.name)
        snapshot = (data, model.samples_seen, model.metric_value, model.drift_count)
        task = asyncio.create_task(self._track(model, *snapshot), name=f"online-track-{model.name}")
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _track(self, model: OnlineModel, data: bytes, seen: int, metric: float, drifts: int) -> None:
        try:
            version = await self.tracking.log_model(
                registered_name(model.name),
                params={"kind": model.kind, "task": model.task},
                metrics={
                    model.metric_name: metric,
                    "samples_seen": float(seen),
                    "drift_count": float(drifts),
                },
                artifacts={"model.pkl": data},
                tags={"source": "online-learning"},
            )
        except Exception:  # MLflow down or misconfigured: learning goes on, the next checkpoint retries
            log.warning("online model not logged to MLflow", extra={"model": model.name}, exc_info=True)
            model.logged_at_ms = _now_ms()  # retry after ONLINE_TRACK_SECONDS, not on every request
            return
        finally:
            self._logging.discard(model.name)
        async with self._lock(model.name):
            # The model in memory now: `model` may have been dropped and reloaded since, and the
            # reloaded one has learned more.
            current = await self._get(model.name)
            if current is None:
                return
            current.model_version = version
            current.logged_samples = seen
            current.logged_at_ms = _now_ms()
            await asyncio.to_thread(self._save, current)


def _prediction(p: Prediction) -> pb.OnlinePrediction:
    return pb.OnlinePrediction(index=p.index, value=p.value, label=p.label, probabilities=p.probabilities)


def _now_ms() -> int:
    return int(time.time() * 1000)
