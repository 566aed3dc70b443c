"""Validation of ML requests into domain specs; every rejection names its field."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from libs.errors import InvalidArgument
from libs.timeparse import parse_duration_ms, parse_time_ms
from platformq.analytics.v1 import ml_service_pb2 as pb
from services.ml.detectors import METHODS
from services.ml.detectors.base import DEFAULT_SENSITIVITY, FloatArray, IntArray
from services.ml.maintenance import spec as maintenance_spec
from services.query_router.spec import DEFAULT_DATASOURCE, LABEL_KEY, LabelMatch, filters_from_proto

DEFAULT_SELECTION_LOOKBACK_MS = 3_600_000
LIST_DEFAULT_LIMIT = 100
LIST_MAX_LIMIT = 1000
VERDICTS = ("true_positive", "false_positive")


@dataclass(frozen=True)
class InlineSeries:
    """One caller-held series to score."""

    metric: str
    labels: dict[str, str]
    ts: IntArray
    values: FloatArray


@dataclass(frozen=True)
class DetectSpec:
    """A validated DetectAnomalies request: exactly one of snapshot, selection or inline."""

    kind: str  # "snapshot", "selection" or "inline"
    method: str
    sensitivity: float
    include_points: bool = False
    simulation_id: str = ""
    snapshot: tuple[tuple[str, float], ...] = ()
    datasource: str = DEFAULT_DATASOURCE
    metrics: tuple[str, ...] = ()
    filters: tuple[LabelMatch, ...] = ()
    lookback_ms: int | None = None
    start_ms: int | None = None
    end_ms: int | None = None
    inline: tuple[InlineSeries, ...] = ()


@dataclass(frozen=True)
class ListSpec:
    """A validated ListAnomalies request."""

    datasource: str
    metric: str
    labels: dict[str, str]
    lookback_ms: int | None
    start_ms: int | None
    end_ms: int | None
    min_score: float
    method: str
    limit: int
    cursor: str


def _method(value: str) -> str:
    if not value:
        return "auto"
    if value not in METHODS:
        raise InvalidArgument(f"{value!r} is not a method; use one of {', '.join(METHODS)}", "config.method")
    return value


def _sensitivity(value: float) -> float:
    if value == 0:
        return DEFAULT_SENSITIVITY  # proto3 cannot tell 0 from unset; 0 is outside (0, 1) anyway
    if not (0 < value < 1):
        raise InvalidArgument(f"{value} is outside (0, 1)", "config.sensitivity")
    return value


def parse_window(
    time_range: str, start: str, end: str, where: str
) -> tuple[int | None, int | None, int | None]:
    """A lookback or absolute start/end of a request; fields named under the prefix `where`."""
    lookback = parse_duration_ms(time_range, f"{where}time_range") if time_range else None
    start_ms = parse_time_ms(start, f"{where}start") if start else None
    end_ms = parse_time_ms(end, f"{where}end") if end else None
    if lookback is not None and start_ms is not None:
        raise InvalidArgument("give either time_range or start (and end), not both", f"{where}time_range")
    if start_ms is not None and end_ms is not None and end_ms <= start_ms:
        raise InvalidArgument("end must be after start", f"{where}end")
    return lookback, start_ms, end_ms


def parse_inline(i: int, series) -> InlineSeries:
    """An inline `Series` (the i-th of the request) checked: finite values, increasing times."""
    where = f"series[{i}]"
    if not series.name:
        raise InvalidArgument("must not be empty", f"{where}.name")
    if len(series.timestamps_ms) != len(series.values):
        raise InvalidArgument(
            f"{len(series.timestamps_ms)} timestamps for {len(series.values)} values", f"{where}.values"
        )
    ts = np.array(series.timestamps_ms, dtype=np.int64)
    values = np.array(series.values, dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(values))
    if bad.size:
        raise InvalidArgument(
            f"{values[bad[0]]} is not a finite number ({bad.size} such points in this series)",
            f"{where}.values[{bad[0]}]",
        )
    steps = np.diff(ts)
    if steps.size and (steps <= 0).any():
        j = int(np.flatnonzero(steps <= 0)[0]) + 1
        raise InvalidArgument("timestamps must be strictly increasing", f"{where}.timestamps_ms[{j}]")
    return InlineSeries(series.name, dict(series.labels), ts, values)


def detect_from_proto(request: pb.DetectAnomaliesRequest) -> DetectSpec:
    """Validate a DetectAnomaliesRequest; it must carry exactly one of its three shapes."""
    method = _method(request.config.method)
    sensitivity = _sensitivity(request.config.sensitivity)
    selection = request.selection if request.HasField("selection") else None
    shapes = [
        name
        for name, given in (
            ("metrics", request.metrics),
            ("selection", selection),
            ("series", request.series),
        )
        if given
    ]
    if len(shapes) != 1:
        raise InvalidArgument(
            "give exactly one of metrics (a snapshot, with simulation_id), selection (stored series) "
            f"or series (inline); got {', '.join(shapes) or 'none'}",
            "metrics" if not shapes else shapes[1],
        )
    common = {"method": method, "sensitivity": sensitivity, "include_points": request.include_points}
    if request.metrics:
        if not request.simulation_id:
            raise InvalidArgument("name the simulation (or service) the metrics come from", "simulation_id")
        for name, value in request.metrics.items():
            if not name:
                raise InvalidArgument("metric names must not be empty", "metrics")
            if not math.isfinite(value):
                raise InvalidArgument(f"{value} is not a finite number", f"metrics.{name}")
        return DetectSpec(
            "snapshot",
            simulation_id=request.simulation_id,
            snapshot=tuple(sorted(request.metrics.items())),
            **common,
        )
    if selection is not None:
        if not selection.metrics:
            raise InvalidArgument("give at least one metric to score", "selection.metrics")
        for i, name in enumerate(selection.metrics):
            if not name.strip():
                raise InvalidArgument("must not be empty", f"selection.metrics[{i}]")
        for key in selection.labels:
            if not LABEL_KEY.fullmatch(key):
                raise InvalidArgument(f"{key!r} is not a label key", f"selection.labels.{key}")
        equal = tuple(LabelMatch(k, "=", (v,)) for k, v in sorted(selection.labels.items()))
        lookback, start, end = parse_window(
            selection.time_range, selection.start, selection.end, "selection."
        )
        return DetectSpec(
            "selection",
            datasource=selection.datasource or DEFAULT_DATASOURCE,
            metrics=tuple(selection.metrics),
            filters=equal + filters_from_proto(list(selection.filters), "selection.filters"),
            lookback_ms=lookback
            if lookback is not None or start is not None
            else DEFAULT_SELECTION_LOOKBACK_MS,
            start_ms=start,
            end_ms=end,
            **common,
        )
    return DetectSpec(
        "inline", inline=tuple(parse_inline(i, s) for i, s in enumerate(request.series)), **common
    )


def list_from_proto(request: pb.ListAnomaliesRequest) -> ListSpec:
    """Validate a ListAnomalies request."""
    labels: dict[str, str] = {}
    for i, item in enumerate(request.labels):
        key, sep, value = item.partition("=")
        if not sep or not LABEL_KEY.fullmatch(key):
            raise InvalidArgument(f"{item!r} is not key=value", f"labels[{i}]")
        labels[key] = value
    if request.simulation_id:
        labels["simulation_id"] = request.simulation_id
    if request.method and request.method not in METHODS:
        raise InvalidArgument(
            f"{request.method!r} is not a method; use one of {', '.join(METHODS)}", "method"
        )
    if not (0 <= request.min_score <= 1):
        raise InvalidArgument(f"{request.min_score} is outside [0, 1]", "min_score")
    if request.limit < 0 or request.limit > LIST_MAX_LIMIT:
        raise InvalidArgument(f"must be between 1 and {LIST_MAX_LIMIT}", "limit")
    lookback, start, end = parse_window(request.time_range, request.start, request.end, "")
    return ListSpec(
        datasource=request.datasource,
        metric=request.metric,
        labels=labels,
        lookback_ms=lookback,
        start_ms=start,
        end_ms=end,
        min_score=request.min_score,
        method=request.method,
        limit=request.limit or LIST_DEFAULT_LIMIT,
        cursor=request.cursor,
    )


def check_feedback(request: pb.SubmitAnomalyFeedbackRequest) -> None:
    """Feedback names an anomaly and a verdict."""
    if not request.id:
        raise InvalidArgument("must not be empty", "id")
    if request.feedback not in VERDICTS:
        raise InvalidArgument(
            f"{request.feedback!r} is not a verdict; use one of {', '.join(VERDICTS)}", "feedback"
        )


def maintenance_from_proto(request: pb.PredictMaintenanceRequest) -> maintenance_spec.PredictSpec:
    """Validate a PredictMaintenance request (see services.ml.maintenance.spec)."""
    return maintenance_spec.predict_from_proto(request)


def train_maintenance_from_proto(request: pb.TrainMaintenanceRequest) -> maintenance_spec.TrainSpec:
    """Validate a TrainMaintenance request (see services.ml.maintenance.spec)."""
    return maintenance_spec.train_from_proto(request)


# Online-learning requests are validated by services.ml.online.spec (train_from_proto, predict_from_proto).
