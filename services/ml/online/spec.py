"""Validation of online-learning requests (no river here): every rejection names its field, and a
whole batch is checked before any of it is learned."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from libs.errors import InvalidArgument

KINDS = ("linear_regression", "logistic_regression", "hoeffding_tree", "adaptive_random_forest")
TASKS = ("regression", "classification")
# The tasks each kind can do; the first is its default when a request names only the kind.
KIND_TASKS = {
    "linear_regression": ("regression",),
    "logistic_regression": ("classification",),
    "hoeffding_tree": TASKS,
    "adaptive_random_forest": TASKS,
}
METRIC_NAMES = {"regression": "mae", "classification": "accuracy"}
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


@dataclass(frozen=True)
class Sample:
    """One sample as given: features and an optional numeric target or class label."""

    features: dict[str, float]
    target: float | None = None
    label: str = ""

    @property
    def labelled(self) -> bool:
        """True when the sample is to be learned (it has a target or a label)."""
        return self.target is not None or bool(self.label)


@dataclass(frozen=True)
class TrainSpec:
    """A validated TrainOnline request (kind and task may be empty: the model's own, or defaults)."""

    model_name: str
    samples: tuple[Sample, ...]
    kind: str = ""
    task: str = ""


@dataclass(frozen=True)
class PredictSpec:
    """A validated PredictOnline request."""

    model_name: str
    samples: tuple[dict[str, float], ...]


def check_model_name(name: str, field: str = "model_name") -> str:
    """A model name is also a file name and an MLflow model name: keep it plain."""
    if not MODEL_NAME.fullmatch(name):
        raise InvalidArgument(
            f"{name!r} is not a model name: 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit",
            field,
        )
    return name


def _features(features, where: str) -> dict[str, float]:
    if not features:
        raise InvalidArgument("give at least one feature", where)
    for name, value in features.items():
        if not name:
            raise InvalidArgument("feature names must not be empty", where)
        if not math.isfinite(value):
            raise InvalidArgument(f"{value} is not a finite number", f"{where}.{name}")
    return dict(features)


def _kind_task(kind: str, task: str) -> None:
    if kind and kind not in KINDS:
        raise InvalidArgument(f"{kind!r} is not a model kind; use one of {', '.join(KINDS)}", "kind")
    if task and task not in TASKS:
        raise InvalidArgument(f"{task!r} is not a task; use one of {', '.join(TASKS)}", "task")
    if kind and task and task not in KIND_TASKS[kind]:
        raise InvalidArgument(f"{kind} does {' or '.join(KIND_TASKS[kind])}, not {task}", "task")


def train_from_proto(request) -> TrainSpec:
    """Validate a TrainOnlineRequest; targets are checked against the task in `check_targets`."""
    check_model_name(request.model_name)
    _kind_task(request.kind, request.task)
    if not request.samples:
        raise InvalidArgument("give at least one sample", "samples")
    samples = []
    for i, s in enumerate(request.samples):
        where = f"samples[{i}]"
        target = s.target if s.HasField("target") else None
        if target is not None and not math.isfinite(target):
            raise InvalidArgument(f"{target} is not a finite number", f"{where}.target")
        if target is not None and s.label:
            raise InvalidArgument("give a target or a label, not both", f"{where}.label")
        samples.append(Sample(_features(s.features, f"{where}.features"), target, s.label))
    return TrainSpec(request.model_name, tuple(samples), request.kind, request.task)


def predict_from_proto(request) -> PredictSpec:
    """Validate a PredictOnlineRequest."""
    check_model_name(request.model_name)
    if not request.samples:
        raise InvalidArgument("give at least one sample", "samples")
    return PredictSpec(
        request.model_name,
        tuple(_features(s.features, f"samples[{i}].features") for i, s in enumerate(request.samples)),
    )


def resolve_kind_task(spec_kind: str, spec_task: str, existing: tuple[str, str] | None) -> tuple[str, str]:
    """The kind and task a request trains: an existing model's own (a different one is refused),
    else the request's, else the defaults (linear regression; logistic for classification)."""
    if existing is not None:
        kind, task = existing
        if spec_kind and spec_kind != kind:
            raise InvalidArgument(f"the model is a {kind}, not a {spec_kind}; use another model_name", "kind")
        if spec_task and spec_task != task:
            raise InvalidArgument(f"the model does {task}, not {spec_task}; use another model_name", "task")
        return kind, task
    _kind_task(spec_kind, spec_task)
    task = spec_task or (KIND_TASKS[spec_kind][0] if spec_kind else "regression")
    kind = spec_kind or ("logistic_regression" if task == "classification" else "linear_regression")
    _kind_task(kind, task)
    return kind, task


def check_targets(samples: tuple[Sample, ...], task: str) -> list[float | str | None]:
    """Each sample's learning target for the task (None: predict only); a wrong type names its field.
    Classes are strings: a label, or an integer target written as an integer."""
    out: list[float | str | None] = []
    for i, s in enumerate(samples):
        if task == "regression":
            if s.label:
                raise InvalidArgument(
                    "a regression model learns a numeric target, not a class label", f"samples[{i}].label"
                )
            out.append(s.target)
        elif s.label:
            out.append(s.label)
        elif s.target is None:
            out.append(None)
        elif s.target.is_integer():
            out.append(str(int(s.target)))
        else:
            raise InvalidArgument(
                f"{s.target} is not a class: a classifier learns an integer target or a label",
                f"samples[{i}].target",
            )
    return out
