"""Online learning through the real Envoy, as a REST client calls it: the README's examples
verbatim, predictions, and bad input as 400 and 404 naming what is wrong."""

from __future__ import annotations

import json

from tests.e2e.test_gateway import http
from tests.helpers import readme_bodies


def test_the_readme_examples_train_and_predict(stack):
    seed, classes = readme_bodies("/api/v1/ml/train-online")
    status, headers, reply = http(stack, "POST", "/api/v1/ml/train-online", seed)
    assert status == 200 and headers["content-type"] == "application/json", reply
    assert reply["model_name"] == "latency" and int(reply["samples_seen"]) >= 1
    assert reply["metric_name"] == "mae" and reply["kind"] == "linear_regression"
    assert reply["model_version"].startswith("online-latency/")

    status, _, reply = http(stack, "POST", "/api/v1/ml/train-online", classes)
    assert status == 200, reply
    assert (reply["kind"], reply["task"], reply["metric_name"]) == (
        "hoeffding_tree",
        "classification",
        "accuracy",
    )
    assert reply["samples_learned"] == "2"
    (p,) = reply["predictions"]
    assert p["index"] == 2 and p["label"] in {"high", "low"} and set(p["probabilities"]) == {"high", "low"}

    (predict,) = readme_bodies("/api/v1/ml/predict-online")
    status, _, reply = http(stack, "POST", "/api/v1/ml/predict-online", predict)
    assert status == 200, reply
    assert reply["model_name"] == "latency" and len(reply["predictions"]) == 1
    assert isinstance(reply["predictions"][0]["value"], float | int)


def test_a_model_learns_over_several_requests_and_reports_its_metric(stack):
    body = {
        "model_name": "e2e-linear",
        "samples": [{"features": {"x": x / 10}, "target": 3 * x / 10 + 1} for x in range(200)],
    }
    for _ in range(3):
        status, _, reply = http(stack, "POST", "/api/v1/ml/train-online", json.dumps(body))
        assert status == 200, reply
    assert reply["samples_seen"] == "600" and reply["samples_learned"] == "200"
    status, _, reply = http(
        stack,
        "POST",
        "/api/v1/ml/predict-online",
        '{"model_name": "e2e-linear", "samples": [{"features": {"x": 10}}]}',
    )
    assert status == 200 and abs(reply["predictions"][0]["value"] - 31) < 3, reply


def test_bad_input_is_400_naming_the_field_and_an_unknown_model_404(stack):
    status, _, reply = http(
        stack,
        "POST",
        "/api/v1/ml/train-online",
        '{"model_name": "m", "kind": "svm", "samples": [{"features": {"x": 1}}]}',
    )
    assert (
        status == 400
        and reply["message"].startswith("kind: ")
        and "adaptive_random_forest" in reply["message"]
    )
    status, _, reply = http(
        stack,
        "POST",
        "/api/v1/ml/train-online",
        '{"model_name": "c", "task": "classification", "samples": [{"features": {"x": 1}, "target": 0.5}]}',
    )
    assert status == 400 and reply["message"].startswith("samples[0].target: "), reply
    status, _, reply = http(
        stack,
        "POST",
        "/api/v1/ml/predict-online",
        '{"model_name": "never-trained", "samples": [{"features": {"x": 1}}]}',
    )
    assert status == 404 and "never-trained" in reply["message"], reply
