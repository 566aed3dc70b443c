"""Anomaly detection through the real Envoy, as a REST client calls it: the seed's body verbatim,
stored selections, the live scorer, listing, feedback and bad input."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from tests.e2e.test_gateway import SEED_EXAMPLES, http
from tests.helpers import wait_until

SEED_BODY = dict(SEED_EXAMPLES)["/api/v1/ml/detect-anomalies"]
STEP = 10_000


def _ingest(stack, datasource: str, series: list[dict]) -> None:
    status, _, reply = http(
        stack, "POST", "/api/v1/metrics/ingest", json.dumps({"datasource": datasource, "series": series})
    )
    assert status == 200 and reply.get("rejected", "0") == "0", reply


def _series(name: str, labels: dict, ts: np.ndarray, values: np.ndarray) -> dict:
    return {"name": name, "labels": labels, "timestamps_ms": ts.tolist(), "values": values.tolist()}


@pytest.fixture(scope="module")
def sim_123(stack):
    """Six hours of normal behaviour of sim-123's cpu, memory and disk_io."""
    rng = np.random.default_rng(11)
    n = 2160
    ts = (int(time.time() * 1000) // STEP - n) * STEP + STEP * np.arange(n, dtype=np.int64)
    labels = {"simulation_id": "sim-123"}
    _ingest(
        stack,
        "platform_metrics",
        [
            _series("cpu", labels, ts, 55 + rng.normal(0, 3, n)),
            _series("memory", labels, ts, 80 + rng.normal(0, 2, n)),
            _series("disk_io", labels, ts, 1150 + rng.normal(0, 60, n)),
        ],
    )
    return ts


def test_the_seed_body_verbatim_gets_a_real_score(stack, sim_123):
    status, headers, reply = http(stack, "POST", "/api/v1/ml/detect-anomalies", SEED_BODY)
    assert status == 200, reply
    assert headers["content-type"] == "application/json"
    assert reply["is_anomaly"] is True and reply["score"] > 0.9
    assert reply["method"] == "isolation_forest" and reply["threshold"] == pytest.approx(0.69, abs=0.01)
    cpu = reply["metric_scores"]["cpu"]
    assert cpu["is_anomaly"] is True and float(cpu["lower"]) < 55 < float(cpu["upper"]) < 95
    assert int(cpu["history_points"]) >= 2000
    assert reply["anomalies"][0]["metric"] == "cpu"


def test_a_spike_ingested_live_is_listed_with_its_simulation_within_a_minute(stack, sim_123):
    rng = np.random.default_rng(12)
    last = int(sim_123[-1])
    ts = last + STEP * np.arange(1, 31, dtype=np.int64)
    cpu = 55 + rng.normal(0, 3, 30)
    cpu[20] = 99.0
    started = time.monotonic()
    _ingest(stack, "platform_metrics", [_series("cpu", {"simulation_id": "sim-123"}, ts, cpu)])
    start = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(ts[0]) / 1000))

    def listed() -> bool:
        status, _, reply = http(stack, "GET", f"/api/v1/ml/anomalies?simulation_id=sim-123&start={start}")
        assert status == 200, reply
        return any(
            int(a["timestamp_ms"]) == int(ts[20]) and a["source"] == "stream"
            for a in reply.get("anomalies", [])
        )

    wait_until(listed, 60, "the live spike in GET /api/v1/ml/anomalies")
    assert time.monotonic() - started < 60


def test_selection_list_and_feedback_through_the_gateway(stack, sim_123):
    body = {
        "selection": {"metrics": ["disk_io"], "labels": {"simulation_id": "sim-123"}, "time_range": "7h"},
        "config": {"method": "zscore", "sensitivity": 0.99},
    }
    status, _, reply = http(stack, "POST", "/api/v1/ml/detect-anomalies", json.dumps(body))
    assert status == 200, reply
    (series,) = reply["series"]
    assert int(series["points_scored"]) > 2000
    status, _, listed = http(stack, "GET", "/api/v1/ml/anomalies?simulation_id=sim-123&method=zscore&limit=5")
    assert status == 200 and listed.get("anomalies"), listed
    anomaly = listed["anomalies"][0]
    assert anomaly["labels"] == {"simulation_id": "sim-123"} and anomaly["source"] == "request"
    status, _, judged = http(
        stack, "POST", f"/api/v1/ml/anomalies/{anomaly['id']}/feedback", '{"feedback": "false_positive"}'
    )
    assert status == 200, judged
    assert judged["anomaly"]["feedback"] == "false_positive" and judged["series_threshold"] > 0.7
    status, _, stats = http(stack, "GET", "/api/v1/ml/anomalies/stats")
    assert status == 200 and int(stats["methods"]["zscore"]["false_positive"]) >= 1


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "expected"),
    [
        (
            "POST",
            "/api/v1/ml/detect-anomalies",
            '{"simulation_id": "s", "metrics": {"cpu": 1}, "config": {"method": "magic"}}',
            400,
            "config.method: 'magic' is not a method; use one of auto, zscore, mad, seasonal",
        ),
        (
            "POST",
            "/api/v1/ml/detect-anomalies",
            '{"simulation_id": "s", "metrics": {"cpu": 1}, "config": {"sensitivity": 1.5}}',
            400,
            "config.sensitivity: 1.5 is outside (0, 1)",
        ),
        (
            "POST",
            "/api/v1/ml/detect-anomalies",
            '{"series": [{"name": "x", "timestamps_ms": [1, 2], "values": [1, 2]}], "config": {"method": "holt_winters"}}',
            400,
            "series[0]: holt_winters needs at least",
        ),
        (
            "POST",
            "/api/v1/ml/detect-anomalies",
            '{"series": [{"name": "x", "timestamps_ms": [1, 2], "values": [1, "NaN"]}]}',
            400,
            "series[0].values[1]: nan is not a finite number",
        ),
        (
            "POST",
            "/api/v1/ml/anomalies/0000000000000000/feedback",
            '{"feedback": "true_positive"}',
            404,
            "id: no anomaly",
        ),
        (
            "POST",
            "/api/v1/ml/anomalies/0000000000000000/feedback",
            '{"feedback": "yes"}',
            400,
            "feedback: 'yes' is not a verdict",
        ),
        ("GET", "/api/v1/ml/anomalies?min_score=2", None, 400, "min_score"),
        ("GET", "/api/v1/ml/anomalies?cursor=%%%", None, 400, "cursor"),
    ],
)
def test_bad_anomaly_input_is_named(stack, method, path, body, status, expected):
    got, headers, reply = http(stack, method, path, body)
    assert got == status, reply
    assert headers["content-type"] == "application/json"
    assert expected in reply["message"], reply["message"]


def test_inline_series_over_the_body_limit_is_413(stack):
    n = 120_000  # the e2e stack's MAX_REQUEST_BYTES is 1 MiB
    body = json.dumps({"series": [{"name": "x", "timestamps_ms": list(range(n)), "values": [1.5] * n}]})
    status, _, reply = http(stack, "POST", "/api/v1/ml/detect-anomalies", body)
    assert status == 413, reply
