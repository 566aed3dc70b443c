"""Validation of maintenance requests into domain specs; every rejection names its field (and,
for training histories, the entity)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from libs.errors import InvalidArgument
from libs.timeparse import parse_duration_ms, parse_time_ms
from platformq.analytics.v1 import ml_service_pb2 as pb
from services.ml.maintenance.history import CYCLES, SECONDS, EntityHistory
from services.query_router.spec import DEFAULT_DATASOURCE, LABEL_KEY

DEFAULT_MODEL = "default"
MIN_ENTITIES = 3
DEFAULT_STORED_LOOKBACK_MS = 30 * 86_400_000
ENTITY_LABEL = "entity_id"


@dataclass(frozen=True)
class StoredTraining:
    """Stored sensor metrics to train on, with each entity's failure time (Unix ms)."""

    datasource: str
    metrics: tuple[str, ...]
    labels: dict[str, str]
    start_ms: int | None
    end_ms: int | None
    lookback_ms: int | None
    failures: dict[str, int]
    failure_metric: str = ""


@dataclass(frozen=True)
class TrainSpec:
    """A validated TrainMaintenance request: inline histories or a stored selection."""

    model_name: str
    cap: float | None
    histories: tuple[EntityHistory, ...] = ()
    stored: StoredTraining | None = None


@dataclass(frozen=True)
class PredictSpec:
    """A validated PredictMaintenance request: a reading to append (`sensors`) or an inline history."""

    entity_id: str
    model_name: str
    horizon: float | None
    sensors: tuple[tuple[str, float], ...] = ()
    step: int | None = None
    inline: EntityHistory | None = None


def _model_name(value: str) -> str:
    if not value:
        return DEFAULT_MODEL
    if not LABEL_KEY.fullmatch(value.replace("-", "_")):
        raise InvalidArgument(f"{value!r} is not a model name (letters, digits, _ and -)", "model_name")
    return value


def _finite(values: dict[str, float], where: str) -> None:
    if not values:
        raise InvalidArgument("give at least one sensor value", where)
    for name, value in values.items():
        if not name:
            raise InvalidArgument("sensor names must not be empty", where)
        if not math.isfinite(value):
            raise InvalidArgument(f"{value} is not a finite number", f"{where}.{name}")


def readings_history(entity: str, readings, where: str, failure_at: int = 0) -> EntityHistory:
    """An EntityHistory from SensorReading messages (cycles or timestamps, increasing, the same sensors)."""
    if not readings:
        raise InvalidArgument(f"{entity}: give at least one reading", where)
    timed = any(r.timestamp_ms for r in readings)
    unit = SECONDS if timed else CYCLES
    sensors = tuple(sorted(readings[0].sensors))
    steps = np.empty(len(readings), dtype=np.int64)
    values = np.empty((len(readings), len(sensors)))
    for i, r in enumerate(readings):
        _finite(dict(r.sensors), f"{where}[{i}].sensors")
        if tuple(sorted(r.sensors)) != sensors:
            raise InvalidArgument(
                f"{entity}: reading {i} has sensors {sorted(r.sensors)}, the first has {list(sensors)}",
                f"{where}[{i}].sensors",
            )
        if timed and not r.timestamp_ms:
            raise InvalidArgument(f"{entity}: give timestamp_ms on every reading or on none", f"{where}[{i}]")
        steps[i] = r.timestamp_ms if timed else (r.cycle or i + 1)
        values[i] = [r.sensors[s] for s in sensors]
    if len(steps) > 1 and (np.diff(steps) <= 0).any():
        j = int(np.flatnonzero(np.diff(steps) <= 0)[0]) + 1
        raise InvalidArgument(f"{entity}: cycles (or timestamps) must increase", f"{where}[{j}]")
    failure = None
    if failure_at:
        if failure_at < steps[-1]:
            raise InvalidArgument(f"{entity}: the failure is before its last reading", f"{where}")
        failure = failure_at
    return EntityHistory(entity, steps, sensors, values, unit, failure)


def train_from_proto(request: pb.TrainMaintenanceRequest) -> TrainSpec:
    """Validate a TrainMaintenanceRequest: inline run-to-failure histories or stored metrics."""
    name = _model_name(request.model_name)
    if request.rul_cap < 0 or not math.isfinite(request.rul_cap):
        raise InvalidArgument("must be positive", "rul_cap")
    cap = request.rul_cap or None
    has_stored = request.HasField("stored")
    if bool(request.histories) == has_stored:
        raise InvalidArgument("give either histories (inline) or stored (stored sensor metrics)", "histories")
    if has_stored:
        return TrainSpec(name, cap, stored=_stored(request.stored))
    histories: list[EntityHistory] = []
    seen: set[str] = set()
    for i, h in enumerate(request.histories):
        where = f"histories[{i}]"
        if not h.entity_id:
            raise InvalidArgument("must not be empty", f"{where}.entity_id")
        if h.entity_id in seen:
            raise InvalidArgument(f"{h.entity_id}: appears twice", f"{where}.entity_id")
        seen.add(h.entity_id)
        history = readings_history(h.entity_id, h.readings, f"{where}.readings", h.failure_at)
        # Inline histories end at their failure unless failure_at says when.
        if history.failure_at is None:
            history = EntityHistory(
                history.entity_id,
                history.steps,
                history.sensors,
                history.values,
                history.unit,
                int(history.steps[-1]),
            )
        histories.append(history)
    check_histories(histories, "histories")
    return TrainSpec(name, cap, histories=tuple(histories))


def check_histories(histories: list[EntityHistory], where: str) -> None:
    """Training histories: enough of them, each with a failure, all with the same sensors and unit."""
    if len(histories) < MIN_ENTITIES:
        raise InvalidArgument(
            f"give at least {MIN_ENTITIES} run-to-failure histories, got {len(histories)}", where
        )
    first = histories[0]
    for i, h in enumerate(histories):
        if h.failure_at is None:
            raise InvalidArgument(f"{h.entity_id}: its history has no failure", f"{where}[{i}]")
        if h.sensors != first.sensors:
            raise InvalidArgument(
                f"{h.entity_id}: sensors {list(h.sensors)} do not match {first.entity_id}'s {list(first.sensors)}",
                f"{where}[{i}]",
            )
        if h.unit != first.unit:
            raise InvalidArgument(f"{h.entity_id}: mixes {h.unit} with {first.unit}", f"{where}[{i}]")


def _stored(stored: pb.StoredRunToFailure) -> StoredTraining:
    if not stored.metrics:
        raise InvalidArgument("give the sensor metrics", "stored.metrics")
    for key in stored.labels:
        if not LABEL_KEY.fullmatch(key):
            raise InvalidArgument(f"{key!r} is not a label key", f"stored.labels.{key}")
    if bool(stored.failures) == bool(stored.failure_metric):
        raise InvalidArgument(
            "give each entity's failure time (failures) or the metric that marks failures (failure_metric)",
            "stored.failures",
        )
    failures = {e: parse_time_ms(t, f"stored.failures.{e}") for e, t in stored.failures.items()}
    lookback = parse_duration_ms(stored.time_range, "stored.time_range") if stored.time_range else None
    start = parse_time_ms(stored.start, "stored.start") if stored.start else None
    end = parse_time_ms(stored.end, "stored.end") if stored.end else None
    if lookback is None and start is None:
        lookback = DEFAULT_STORED_LOOKBACK_MS
    return StoredTraining(
        stored.datasource or DEFAULT_DATASOURCE,
        tuple(stored.metrics),
        dict(stored.labels),
        start,
        end,
        lookback,
        failures,
        stored.failure_metric,
    )


def predict_from_proto(request: pb.PredictMaintenanceRequest) -> PredictSpec:
    """Validate a PredictMaintenanceRequest: the seed's latest sensors or an inline history."""
    if not request.entity_id:
        raise InvalidArgument("must not be empty", "entity_id")
    name = _model_name(request.model_name)
    if request.horizon < 0 or not math.isfinite(request.horizon):
        raise InvalidArgument("must be positive", "horizon")
    horizon = request.horizon or None
    given = [
        f
        for f, v in (
            ("sensors", request.sensors),
            ("history", request.history),
            ("readings", request.readings),
        )
        if v
    ]
    if len(given) > 1:
        raise InvalidArgument(f"give one of sensors, history or readings; got {', '.join(given)}", given[1])
    if request.sensors:
        _finite(dict(request.sensors), "sensors")
        if request.cycle < 0:
            raise InvalidArgument("must be positive", "cycle")
        return PredictSpec(
            request.entity_id, name, horizon, tuple(sorted(request.sensors.items())), request.cycle or None
        )
    if request.readings:
        return PredictSpec(
            request.entity_id,
            name,
            horizon,
            inline=readings_history(request.entity_id, request.readings, "readings"),
        )
    if request.history:
        return PredictSpec(request.entity_id, name, horizon, inline=_series_history(request))
    return PredictSpec(request.entity_id, name, horizon)  # the stored history alone


def _series_history(request: pb.PredictMaintenanceRequest) -> EntityHistory:
    first = request.history[0]
    sensors, columns = [], []
    for i, s in enumerate(request.history):
        if not s.name:
            raise InvalidArgument("must not be empty", f"history[{i}].name")
        if list(s.timestamps_ms) != list(first.timestamps_ms) or len(s.values) != len(s.timestamps_ms):
            raise InvalidArgument(
                "every sensor's series needs the same timestamps as the first", f"history[{i}]"
            )
        values = np.array(s.values, dtype=np.float64)
        if not np.isfinite(values).all():
            raise InvalidArgument("values must be finite numbers", f"history[{i}].values")
        sensors.append(s.name)
        columns.append(values)
    steps = np.array(first.timestamps_ms, dtype=np.int64)
    if not len(steps):
        raise InvalidArgument("give at least one point", "history[0].values")
    if len(steps) > 1 and (np.diff(steps) <= 0).any():
        raise InvalidArgument("timestamps must increase", "history[0].timestamps_ms")
    order = np.argsort(sensors)
    values = np.column_stack(columns)[:, order]
    # Series carry timestamps; small integers are cycles (the C-MAPSS way), anything else Unix ms.
    unit = CYCLES if steps[-1] < 10_000_000 else SECONDS
    return EntityHistory(request.entity_id, steps, tuple(sensors[j] for j in order), values, unit)
