"""Predictive maintenance through the real Envoy, as a REST client calls it: the README's examples
verbatim (train, then the seed body), and bad input as 400 and 404 naming what is wrong."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

from tests.e2e.test_gateway import http
from tests.helpers import readme_bodies

TRAIN = "/api/v1/ml/predict-maintenance/train"
PREDICT = "/api/v1/ml/predict-maintenance"


def _train(stack, body: str) -> tuple[int, dict, dict]:
    """POST a training request: the first one imports MLflow in the server, which can take longer
    than `http`'s 10 s on a busy machine."""
    request = urllib.request.Request(
        stack.base + TRAIN, data=body.encode(), method="POST", headers={"content-type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as reply:
            return reply.status, dict(reply.headers), json.loads(reply.read())
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), json.loads(err.read() or b"{}")


def test_the_readme_examples_train_and_predict(stack):
    inline, stored = readme_bodies(TRAIN)
    status, headers, reply = _train(stack, inline)
    assert status == 200 and headers["content-type"] == "application/json", reply
    assert reply["model_version"].startswith("rul-default/")
    assert reply["entities"] == 3 and reply["unit"] == "cycles"
    assert set(reply["sensors"]) == {"s2", "s3"}

    seed = readme_bodies(PREDICT)[0]
    status, _, answer = http(stack, "POST", PREDICT, seed)
    assert status == 200, answer
    assert answer["model_version"] == reply["model_version"] and answer["unit"] == "cycles"
    assert answer["entity_id"] == "engine-7" and answer["horizon"] == 30
    assert answer["lower"] <= answer["remaining_useful_life"] <= answer["upper"]
    assert 0 <= answer["failure_probability"] <= 1

    # DEMO=0: nothing stored carries entity_id, and the stored example says so by field.
    status, _, error = http(stack, "POST", TRAIN, stored)
    assert status == 400 and error["message"].startswith("stored.metrics"), error


def test_bad_maintenance_input_is_named(stack):
    body = {
        "histories": [
            {"entity_id": f"e{i}", "readings": [{"cycle": c, "sensors": {"a": c * 1.0}} for c in range(1, 4)]}
            for i in range(2)
        ]
        + [{"entity_id": "odd", "readings": [{"cycle": 1, "sensors": {"b": 1.0}}]}]
    }
    status, _, error = http(stack, "POST", TRAIN, json.dumps(body))
    assert status == 400 and "odd" in error["message"] and error["message"].startswith("histories[2]"), error

    status, _, error = http(
        stack, "POST", PREDICT, json.dumps({"entity_id": "x", "model_name": "never-trained"})
    )
    assert status == 404 and "no maintenance model 'never-trained'" in error["message"], error

    status, _, error = http(stack, "POST", PREDICT, json.dumps({"entity_id": "x", "horizon": -1}))
    assert status == 400 and error["message"].startswith("horizon"), error
