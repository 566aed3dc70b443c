"""One online model: a river estimator, its prequential metric and its drift detector.

Learning is test-then-train (prequential): each labelled sample is predicted first, the metric and
ADWIN see that prediction's error, then the estimator learns the sample. ADWIN watches the error;
only a change to a higher error counts as drift, since the error falling is the model learning.
Everything is plain Python objects, so a model is checkpointed with pickle as a whole."""

from __future__ import annotations

import pickle
import time
from dataclasses import dataclass, field

from services.ml.online.spec import METRIC_NAMES

CHECKPOINT_FORMAT = 1
SEED = 42
# A Hoeffding tree fed a feature that only grows (a time, a counter) or the demo's stream splits
# without end into a chain: 187 levels after 120,000 of the demo's samples, each sample then
# walking it and its alternate trees (60 times slower to learn). 20 levels is more than any tree
# reached on the C-MAPSS stream (docs/online-learning.md: the same MAE with and without the bound).
MAX_TREE_DEPTH = 20


def build_estimator(kind: str, task: str):
    """A fresh river estimator. Features are standardised online (linear models and the trees'
    linear leaves need it); regression targets too, so the learning rate suits any unit."""
    from river import forest, linear_model, multiclass, preprocessing, tree

    if task == "regression":
        inner = {
            "linear_regression": linear_model.LinearRegression,
            "hoeffding_tree": lambda: tree.HoeffdingAdaptiveTreeRegressor(
                grace_period=50, max_depth=MAX_TREE_DEPTH, seed=SEED
            ),
            "adaptive_random_forest": lambda: forest.ARFRegressor(n_models=5, seed=SEED),
        }[kind]()
        return preprocessing.TargetStandardScaler(regressor=preprocessing.StandardScaler() | inner)
    inner = {
        # river's logistic regression is binary (bool targets): one-vs-rest makes it take any classes.
        "logistic_regression": lambda: multiclass.OneVsRestClassifier(linear_model.LogisticRegression()),
        "hoeffding_tree": lambda: tree.HoeffdingAdaptiveTreeClassifier(
            grace_period=50, max_depth=MAX_TREE_DEPTH, seed=SEED
        ),
        "adaptive_random_forest": lambda: forest.ARFClassifier(n_models=5, seed=SEED),
    }[kind]()
    return preprocessing.StandardScaler() | inner


@dataclass(frozen=True)
class Prediction:
    """A prediction for one sample: a number, or a class with its probability and all classes'."""

    index: int
    value: float
    label: str = ""
    probabilities: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Drift:
    """A detected change to a higher prequential error."""

    at_ms: int
    sample: int  # samples_seen when it was detected


@dataclass
class OnlineModel:
    """A named online model with its life-long counters; see the module docstring."""

    name: str
    kind: str
    task: str
    estimator: object
    metric: object
    detector: object
    samples_seen: int = 0
    drift_count: int = 0
    last_drift: Drift | None = None
    model_version: str = ""
    logged_samples: int = 0  # samples_seen at the last MLflow checkpoint
    logged_at_ms: int = 0
    entity_ts: dict[str, int] = field(default_factory=dict)  # stream bindings: last learned point per entity

    @classmethod
    def new(cls, name: str, kind: str, task: str) -> OnlineModel:
        """A model that has learned nothing yet."""
        from river import drift, metrics

        metric = metrics.MAE() if task == "regression" else metrics.Accuracy()
        return cls(
            name,
            kind,
            task,
            build_estimator(kind, task),
            metric,
            drift.ADWIN(),
            model_version=unregistered(name),
            logged_at_ms=int(time.time() * 1000),
        )

    @property
    def metric_name(self) -> str:
        """mae or accuracy."""
        return METRIC_NAMES[self.task]

    @property
    def metric_value(self) -> float:
        """The prequential metric over every sample seen (0 before the first)."""
        return float(self.metric.get()) if self.samples_seen else 0.0

    def learn(
        self, xs: list[dict[str, float]], ys: list[float | str | None], now_ms: int
    ) -> list[Prediction]:
        """Test-then-train over the samples in order; samples without a target are predicted
        (by the model as it is when they are reached) and not learned."""
        predictions = []
        for i, (x, y) in enumerate(zip(xs, ys, strict=True)):
            if y is None:
                predictions.append(self._predict(i, x))
                continue
            if self.task == "regression":
                guess = float(self.estimator.predict_one(x) or 0.0)
                error = abs(float(y) - guess)
                self.metric.update(float(y), guess)
            else:
                guess = self.estimator.predict_one(x)
                error = 0.0 if guess == y else 1.0
                self.metric.update(y, guess)
            self._watch(error, now_ms)
            self.estimator.learn_one(x, y)
            self.samples_seen += 1
        return predictions

    def predict(self, xs: list[dict[str, float]]) -> list[Prediction]:
        """Predictions without learning."""
        return [self._predict(i, x) for i, x in enumerate(xs)]

    def _predict(self, index: int, x: dict[str, float]) -> Prediction:
        if self.task == "regression":
            return Prediction(index, float(self.estimator.predict_one(x) or 0.0))
        proba = {str(k): float(v) for k, v in self.estimator.predict_proba_one(x).items()}
        if not proba:
            return Prediction(index, 0.0)
        label = max(proba, key=proba.__getitem__)
        return Prediction(index, proba[label], label, proba)

    def _watch(self, error: float, now_ms: int) -> None:
        before = self.detector.estimation
        self.detector.update(error)
        if self.detector.drift_detected and self.detector.estimation > before:
            self.drift_count += 1
            self.last_drift = Drift(now_ms, self.samples_seen + 1)

    def to_bytes(self) -> bytes:
        """The whole model as a checkpoint."""
        return pickle.dumps((CHECKPOINT_FORMAT, self), protocol=pickle.HIGHEST_PROTOCOL)

    @staticmethod
    def from_bytes(data: bytes) -> OnlineModel:
        """A model from `to_bytes` (files this service wrote in its own DATA_DIR, or its MLflow store)."""
        fmt, model = pickle.loads(data)  # our own checkpoints only: never a caller's bytes
        if fmt != CHECKPOINT_FORMAT or not isinstance(model, OnlineModel):
            raise ValueError(f"not an online-model checkpoint (format {fmt!r})")
        return model


def registered_name(name: str) -> str:
    """The MLflow registered-model name of an online model."""
    return f"online-{name}"


def unregistered(name: str) -> str:
    """model_version before the model's first MLflow checkpoint."""
    return f"{registered_name(name)}/unregistered"
