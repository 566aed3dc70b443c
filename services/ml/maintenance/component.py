"""The Maintenance component: trains remaining-useful-life models (in a worker thread), logs and
registers each through ModelTracking, keeps entities' readings, predicts, caches answers and
publishes each prediction on `predictions.maintenance`. No gRPC here."""

from __future__ import annotations

import asyncio
import hashlib
import pickle
import time
from collections import defaultdict

import numpy as np

from libs.bus.base import Bus
from libs.cache import TtlCache
from libs.errors import InvalidArgument, NotFound
from platformq.analytics.v1 import common_pb2, events_pb2
from platformq.analytics.v1 import ml_service_pb2 as pb
from services.ml.history import HistoryClient, StoredSeries
from services.ml.maintenance.history import CYCLES, SECONDS, EntityHistory
from services.ml.maintenance.spec import ENTITY_LABEL, PredictSpec, StoredTraining, TrainSpec, check_histories
from services.ml.maintenance.store import MaintenanceStore
from services.ml.tracking import ModelTracking

CACHE_NAMESPACE = "ml.maintenance"
TOPIC = "predictions.maintenance"
ARTIFACT = "model.pkl"
DEFAULT_HORIZON = {CYCLES: 30.0, SECONDS: 3600.0}


def registered_name(model_name: str) -> str:
    """The registry name of a maintenance model."""
    return f"rul-{model_name}"


class Maintenance:
    """Training and prediction of remaining useful life for one service process."""

    def __init__(
        self,
        store: MaintenanceStore,
        tracking: ModelTracking,
        history: HistoryClient,
        bus: Bus,
        cache: TtlCache,
        cache_ttl_seconds: float,
    ) -> None:
        self.store = store
        self.tracking = tracking
        self.history = history
        self.bus = bus
        self.cache = cache
        self.cache_ttl_seconds = cache_ttl_seconds
        # Loaded models by (tenant, name): (version, model); a lock per key loads each once.
        self._models: dict[tuple[str, str], tuple[str, object]] = {}
        self._loading: defaultdict[tuple[str, str], asyncio.Lock] = defaultdict(asyncio.Lock)

    async def train(
        self, spec: TrainSpec, tenant: str, timeout: float | None = None
    ) -> pb.TrainMaintenanceResponse:
        """Fit on the histories, log and register the model, and answer with it from now on."""
        histories, running = list(spec.histories), []
        if spec.stored is not None:
            histories, running = await self._stored_histories(spec.stored, tenant, timeout)
            check_histories(histories, "stored")
        from services.ml.maintenance import model as rul

        deadline = time.monotonic() + timeout if timeout is not None else None
        fitted = await asyncio.to_thread(rul.fit, histories, spec.cap, deadline)
        artifact = await asyncio.to_thread(pickle.dumps, fitted)
        version = await self.tracking.log_model(
            registered_name(spec.model_name),
            params={**fitted.params, "sensors": ",".join(fitted.sensors), "unit": fitted.unit},
            metrics={
                "cv_rmse": fitted.cv_rmse,
                "cv_rmse_uncapped": fitted.cv_rmse_uncapped,
                "interval_half_width": fitted.half_width,
                "entities": float(fitted.entities),
                "readings": float(fitted.readings),
            },
            artifacts={ARTIFACT: artifact},
            tags={"kind": "maintenance", "tenant": tenant},
        )
        await asyncio.to_thread(
            self.store.set_model, tenant, spec.model_name, version, int(time.time() * 1000)
        )
        self._models[(tenant, spec.model_name)] = (version, fitted)
        return pb.TrainMaintenanceResponse(
            model_version=version,
            entities=fitted.entities,
            readings=fitted.readings,
            sensors=fitted.sensors,
            dropped_sensors=fitted.dropped,
            unit=fitted.unit,
            cv_rmse=fitted.cv_rmse,
            interval_half_width=fitted.half_width,
            rul_cap=fitted.cap,
            running_entities=running,
        )

    async def predict(
        self, spec: PredictSpec, tenant: str, timeout: float | None = None
    ) -> pb.PredictMaintenanceResponse:
        """Append the reading (if any) and predict from the entity's stored history, or predict
        from the inline history; an identical request within the cache TTL gets the same answer."""
        loaded = self._models.get((tenant, spec.model_name))
        key = _cache_key(tenant, spec, loaded[0] if loaded else "")
        cached = self.cache.get(CACHE_NAMESPACE, key)
        if cached is not None:
            return cached
        version, fitted = await self._model(tenant, spec.model_name)
        if spec.sensors:
            missing = [s for s in fitted.sensors if s not in dict(spec.sensors)]
            if missing:
                raise InvalidArgument(
                    f"the model {version} needs sensors {missing} in every reading", "sensors"
                )
            # A timed model's reading without a time is a reading taken now.
            step = spec.step or (int(time.time() * 1000) if fitted.unit == SECONDS else None)
            await asyncio.to_thread(self.store.append, tenant, spec.entity_id, step, dict(spec.sensors))
        history = spec.inline
        if history is None:
            history = await asyncio.to_thread(
                self.store.history, tenant, spec.entity_id, fitted.sensors, fitted.unit
            )
            if history is None:
                raise NotFound(
                    f"entity {spec.entity_id!r} has no stored history with the model's sensors and the request "
                    "has no inline history: send its latest sensors (or a history)",
                    "entity_id",
                )
        else:
            missing = [s for s in fitted.sensors if s not in history.sensors]
            if missing:
                raise InvalidArgument(f"the model needs sensors {missing}", "history")
        horizon = spec.horizon or DEFAULT_HORIZON[fitted.unit]
        p = await asyncio.to_thread(fitted.predict, history, horizon)
        response = pb.PredictMaintenanceResponse(
            entity_id=spec.entity_id,
            remaining_useful_life=p.rul,
            lower=p.lower,
            upper=p.upper,
            failure_probability=p.failure_probability,
            horizon=horizon,
            unit=fitted.unit,
            model_version=version,
            readings=len(history.steps),
            driving_sensors=[pb.SensorContribution(sensor=s, effect=e, value=v) for s, e, v in p.drivers],
        )
        await self.bus.publish(
            TOPIC,
            events_pb2.PredictionEvent(
                tenant=tenant,
                source=spec.entity_id,
                kind="maintenance",
                remaining_useful_life=p.rul,
                model_version=version,
            ),
            key=spec.entity_id,
        )
        hit = pb.PredictMaintenanceResponse()
        hit.CopyFrom(response)
        hit.cached = True
        self.cache.put(CACHE_NAMESPACE, key, hit, self.cache_ttl_seconds)
        return response

    async def _model(self, tenant: str, name: str) -> tuple[str, object]:
        """The model `name` answers with: in memory, or the registered version recorded in the store."""
        found = self._models.get((tenant, name))
        if found is not None:
            return found
        async with self._loading[(tenant, name)]:
            found = self._models.get((tenant, name))
            if found is not None:
                return found
            version = await asyncio.to_thread(self.store.model_version, tenant, name)
            data = None
            if version is not None:
                data = await self.tracking.load_artifact(registered_name(name), version, ARTIFACT)
            if data is None:
                raise NotFound(
                    f"no maintenance model {name!r} is trained: train one with POST /api/v1/ml/predict-maintenance/train",
                    "model_name",
                )
            fitted = await asyncio.to_thread(pickle.loads, data)
            self._models[(tenant, name)] = (version, fitted)
            return version, fitted

    async def _stored_histories(
        self, stored: StoredTraining, tenant: str, timeout: float | None
    ) -> tuple[list[EntityHistory], list[str]]:
        """(histories, running): each failed entity's readings (every metric at the same
        timestamp) up to its failure, and the entities that have not failed (failure_metric only)."""
        now = int(time.time() * 1000)
        end = stored.end_ms or now
        start = stored.start_ms if stored.start_ms is not None else end - (stored.lookback_ms or 0)
        filters = [common_pb2.LabelFilter(label=k, op="=", value=v) for k, v in sorted(stored.labels.items())]
        wanted = list(stored.metrics) + ([stored.failure_metric] if stored.failure_metric else [])
        series = await self.history.raw(stored.datasource, wanted, filters, start, end + 1, timeout)
        by_entity: defaultdict[str, list[StoredSeries]] = defaultdict(list)
        failures = dict(stored.failures)
        for s in series:
            entity = s.labels.get(ENTITY_LABEL)
            if entity is None:
                continue
            if s.metric == stored.failure_metric:
                marked = s.ts[s.values > 0]
                if len(marked):
                    failures[entity] = int(marked[0])
            else:
                by_entity[entity].append(s)
        if not by_entity:
            raise InvalidArgument(
                "no stored series of these metrics carry the label entity_id", "stored.metrics"
            )
        out, running = [], []
        for entity, found in sorted(by_entity.items()):
            if entity not in failures:
                if stored.failure_metric:
                    running.append(entity)
                    continue
                raise InvalidArgument(
                    f"{entity}: its history has no failure (give stored.failures[{entity}] or filter it out)",
                    f"stored.failures.{entity}",
                )
            missing = sorted(set(stored.metrics) - {s.metric for s in found})
            if missing:
                raise InvalidArgument(f"{entity}: has no series of {missing}", f"stored.failures.{entity}")
            failure = failures[entity]
            common = found[0].ts
            for s in found[1:]:
                common = np.intersect1d(common, s.ts)
            common = common[common <= failure]
            if not len(common):
                raise InvalidArgument(
                    f"{entity}: no readings of every metric before its failure", f"stored.failures.{entity}"
                )
            names = tuple(sorted(stored.metrics))
            columns = []
            for metric in names:
                s = next(x for x in found if x.metric == metric)
                columns.append(s.values[np.searchsorted(s.ts, common)])
            out.append(EntityHistory(entity, common, names, np.column_stack(columns), SECONDS, failure))
        return out, running


def _cache_key(tenant: str, spec: PredictSpec, version: str) -> tuple:
    inline = None
    if spec.inline is not None:
        digest = hashlib.sha256(spec.inline.steps.tobytes() + spec.inline.values.tobytes())
        digest.update(",".join(spec.inline.sensors).encode())
        inline = digest.hexdigest()
    return (tenant, spec.model_name, version, spec.entity_id, spec.sensors, spec.step, spec.horizon, inline)
