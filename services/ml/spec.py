"""Validation of ML requests; every rejection names its field."""

from __future__ import annotations

import math

from libs.errors import InvalidArgument
from platformq.analytics.v1 import ml_service_pb2 as pb

DETECTORS = ("isolation_forest", "zscore", "mad", "lof", "ecod")


def check_detect(request: pb.DetectAnomaliesRequest) -> None:
    """A detect request needs a known method, a sensitivity in (0, 1] and finite values."""
    if request.config.method and request.config.method not in DETECTORS:
        raise InvalidArgument(
            f"{request.config.method!r} is not a detector; use one of {', '.join(DETECTORS)}", "config.method"
        )
    sensitivity = request.config.sensitivity
    if not (0 <= sensitivity <= 1) or math.isnan(sensitivity):
        raise InvalidArgument(f"{sensitivity} is outside (0, 1]", "config.sensitivity")
    if not request.metrics and not request.series:
        raise InvalidArgument("give metric values (or series) to score", "metrics")
    for name, value in request.metrics.items():
        if not name:
            raise InvalidArgument("metric names must not be empty", "metrics")
        if not math.isfinite(value):
            raise InvalidArgument(f"{value} is not a finite number", f"metrics.{name}")


def check_forecast(request: pb.ForecastRequest) -> None:
    """A forecast needs a metric (or history) and a positive horizon."""
    if not request.metric and not request.history.values:
        raise InvalidArgument("give a metric (or history) to forecast", "metric")
    if request.horizon < 0:
        raise InvalidArgument("must be positive", "horizon")


def check_maintenance(request: pb.PredictMaintenanceRequest) -> None:
    """A maintenance prediction needs an entity and some sensor readings."""
    if not request.entity_id:
        raise InvalidArgument("must not be empty", "entity_id")
    if not request.sensors and not request.history:
        raise InvalidArgument("give sensor values (or history)", "sensors")


def check_train(request: pb.TrainOnlineRequest) -> None:
    """Online training needs a model name and at least one sample."""
    if not request.model_name:
        raise InvalidArgument("must not be empty", "model_name")
    if not request.samples:
        raise InvalidArgument("give at least one sample", "samples")
