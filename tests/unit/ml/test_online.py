"""Online models: prequential accuracy floors on synthetic streams, drift after a concept change,
checkpoints, and the validation of a batch before anything is learned."""

from __future__ import annotations

import numpy as np
import pytest

from libs.errors import InvalidArgument
from platformq.analytics.v1 import ml_service_pb2 as pb
from services.ml.online.models import MAX_TREE_DEPTH, OnlineModel
from services.ml.online.spec import check_targets, resolve_kind_task, train_from_proto


def _linear(n: int, seed: int = 0, slope: float = 3.0, offset: float = 100.0):
    rng = np.random.default_rng(seed)
    a, b = rng.uniform(0, 10, n), rng.uniform(-5, 5, n)
    y = slope * a - 2 * b + offset + rng.normal(0, 1, n)
    return [{"a": float(p), "b": float(q)} for p, q in zip(a, b, strict=True)], [float(v) for v in y]


def _classes(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    a, b = rng.uniform(0, 10, n), rng.uniform(-5, 5, n)
    return [{"a": float(p), "b": float(q)} for p, q in zip(a, b, strict=True)], [
        "high" if p + q > 5 else "low" for p, q in zip(a, b, strict=True)
    ]


@pytest.mark.parametrize("kind", ["linear_regression", "hoeffding_tree", "adaptive_random_forest"])
def test_regression_on_a_linear_target_reaches_an_mae_near_the_noise(kind):
    xs, ys = _linear(600)
    model = OnlineModel.new("m", kind, "regression")
    model.learn(xs, ys, 0)
    # Noise is N(0, 1): its MAE is 0.8; predicting the mean would give about 7.
    assert model.samples_seen == 600 and model.metric_name == "mae"
    assert model.metric_value < 2.5
    (p,) = model.predict([{"a": 5.0, "b": 0.0}])
    assert p.value == pytest.approx(115.0, abs=3.0)


@pytest.mark.parametrize("kind", ["logistic_regression", "hoeffding_tree", "adaptive_random_forest"])
def test_classification_reaches_an_accuracy_floor(kind):
    xs, ys = _classes(600)
    model = OnlineModel.new("m", kind, "classification")
    model.learn(xs, ys, 0)
    assert model.metric_name == "accuracy" and model.metric_value > 0.85
    (p,) = model.predict([{"a": 9.0, "b": 4.0}])
    assert p.label == "high" and p.value > 0.5 and set(p.probabilities) == {"high", "low"}


def test_a_concept_change_is_detected_as_drift_and_a_steady_stream_is_not():
    xs, ys = _linear(1500, seed=1)
    model = OnlineModel.new("m", "linear_regression", "regression")
    model.learn(xs, ys, 1)
    assert model.drift_count == 0 and model.last_drift is None
    xs2, ys2 = _linear(800, seed=2, slope=-3.0, offset=140.0)
    model.learn(xs2, ys2, 2)
    assert model.drift_count >= 1
    assert model.last_drift.at_ms == 2 and 1500 < model.last_drift.sample <= 1700


def test_samples_without_target_are_predicted_where_they_stand_in_the_batch_and_not_learned():
    xs, ys = _linear(300)
    model = OnlineModel.new("m", "linear_regression", "regression")
    predictions = model.learn([*xs, {"a": 5.0, "b": 0.0}], [*ys, None], 0)
    assert model.samples_seen == 300
    assert [p.index for p in predictions] == [300] and predictions[0].value == pytest.approx(115.0, abs=3.0)


def test_a_checkpoint_restores_the_model_and_its_counters():
    xs, ys = _linear(200)
    model = OnlineModel.new("m", "hoeffding_tree", "regression")
    model.learn(xs, ys, 0)
    back = OnlineModel.from_bytes(model.to_bytes())
    assert (back.samples_seen, back.metric_value, back.kind) == (200, model.metric_value, "hoeffding_tree")
    assert back.predict(xs[:3]) == model.predict(xs[:3])


def _request(**kw) -> pb.TrainOnlineRequest:
    return pb.TrainOnlineRequest(**kw)


def test_an_unknown_kind_is_refused_listing_the_kinds():
    with pytest.raises(InvalidArgument) as err:
        train_from_proto(_request(model_name="m", kind="svm", samples=[{"features": {"a": 1}, "target": 1}]))
    assert err.value.field == "kind"
    assert (
        "linear_regression, logistic_regression, hoeffding_tree, adaptive_random_forest" in err.value.reason
    )


@pytest.mark.parametrize(
    ("request_kw", "field"),
    [
        ({"model_name": "bad name", "samples": [{"features": {"a": 1}}]}, "model_name"),
        ({"model_name": "m"}, "samples"),
        ({"model_name": "m", "samples": [{"features": {}}]}, "samples[0].features"),
        (
            {"model_name": "m", "samples": [{"features": {"a": 1}}, {"features": {"a": float("nan")}}]},
            "samples[1].features.a",
        ),
        ({"model_name": "m", "task": "clustering", "samples": [{"features": {"a": 1}}]}, "task"),
        (
            {
                "model_name": "m",
                "kind": "linear_regression",
                "task": "classification",
                "samples": [{"features": {"a": 1}}],
            },
            "task",
        ),
        (
            {"model_name": "m", "samples": [{"features": {"a": 1}, "target": 1, "label": "x"}]},
            "samples[0].label",
        ),
    ],
)
def test_bad_requests_name_their_field(request_kw, field):
    with pytest.raises(InvalidArgument) as err:
        train_from_proto(_request(**request_kw))
    assert err.value.field == field


def test_a_classifier_refuses_a_fractional_target_and_a_regressor_a_label():
    spec = train_from_proto(
        _request(
            model_name="m",
            samples=[{"features": {"a": 1}, "target": 1}, {"features": {"a": 2}, "target": 0.5}],
        )
    )
    assert check_targets(spec.samples, "regression") == [1.0, 0.5]
    with pytest.raises(InvalidArgument) as err:
        check_targets(spec.samples, "classification")
    assert err.value.field == "samples[1].target" and "integer target or a label" in err.value.reason
    labelled = train_from_proto(_request(model_name="m", samples=[{"features": {"a": 1}, "label": "ok"}]))
    assert check_targets(labelled.samples, "classification") == ["ok"]
    with pytest.raises(InvalidArgument) as err:
        check_targets(labelled.samples, "regression")
    assert err.value.field == "samples[0].label"


def test_kind_and_task_default_and_an_existing_model_keeps_its_own():
    assert resolve_kind_task("", "", None) == ("linear_regression", "regression")
    assert resolve_kind_task("", "classification", None) == ("logistic_regression", "classification")
    assert resolve_kind_task("hoeffding_tree", "", None) == ("hoeffding_tree", "regression")
    assert resolve_kind_task("", "", ("hoeffding_tree", "classification")) == (
        "hoeffding_tree",
        "classification",
    )
    with pytest.raises(InvalidArgument) as err:
        resolve_kind_task("adaptive_random_forest", "", ("hoeffding_tree", "regression"))
    assert err.value.field == "kind"


def test_a_hoeffding_tree_on_a_growing_feature_stays_within_the_depth_bound() -> None:
    # A feature that only grows (a time) makes an unbounded Hoeffding tree a chain: 139 levels
    # after 5,000 samples, each sample walking all of it (22 s for those 5,000 here, 0.9 s bounded).
    model = OnlineModel.new("t", "hoeffding_tree", "regression")
    i = np.arange(2000)
    model.learn([{"t": float(v)} for v in i], (10 * np.sin(i / 40)).tolist(), 0)
    (tree,) = [s for name, s in model.estimator.regressor.steps.items() if "Tree" in name]
    assert 5 < tree.height <= MAX_TREE_DEPTH + 1  # river counts the leaves' level
