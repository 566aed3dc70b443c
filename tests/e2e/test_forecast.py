"""Forecasting through the real Envoy, as a REST client calls it: the README's examples verbatim
on series ingested through the REST ingest endpoint, and bad input as 400 naming the field."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

import numpy as np
import pytest

from tests.e2e.conftest import own_stack, stack_env
from tests.e2e.test_gateway import http
from tests.helpers import readme_bodies

FORECAST = "/api/v1/ml/forecast"
HOUR = 3_600_000


def _post(stack, body: str) -> tuple[int, dict]:
    """POST a forecast: the first one starts the forecast workers and imports MLflow in the server,
    which can take longer than `http`'s 10 s on a busy machine."""
    request = urllib.request.Request(
        stack.base + FORECAST, data=body.encode(), method="POST", headers={"content-type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


def _ingest_hourly(stack) -> None:
    """Eight days of hourly cpu_usage: auth-service cycles 80 +- 15 a day, billing 30 +- 5."""
    n = 24 * 8
    ts = (int(time.time() * 1000) // HOUR - n) * HOUR + HOUR * np.arange(n)
    cycle = np.sin(2 * np.pi * ((ts // HOUR) % 24) / 24)
    series = [
        {
            "name": "cpu_usage",
            "labels": {"service_name": name},
            "timestamps_ms": ts.tolist(),
            "values": v.tolist(),
        }
        for name, v in (("auth-service", 80 + 15 * cycle), ("billing", 30 + 5 * cycle))
    ]
    status, _, reply = http(
        stack,
        "POST",
        "/api/v1/metrics/ingest",
        json.dumps({"datasource": "platform_metrics", "series": series}),
    )
    assert status == 200 and reply["accepted"] == str(2 * n), reply


@pytest.fixture(scope="module")
def own(tmp_path_factory):
    """A stack of its own: the README's example forecasts auth-service's cpu_usage, which other
    modules of the shared stack write minutes of."""
    with own_stack(stack_env(tmp_path_factory.mktemp("forecast"), DEMO="0", ANOMALY_STREAM="0")) as s:
        yield s


def test_the_readme_examples_forecast(own):
    stack = own
    _ingest_hourly(stack)
    seed, grouped, inline = readme_bodies(FORECAST)
    status, reply = _post(stack, seed)
    assert status == 200, reply
    assert len(reply["points"]) == 24 and reply["step_ms"] == str(HOUR) and reply["levels"] == [80, 95]
    (series,) = reply["series"]
    assert series["labels"] == {"service_name": "auth-service"} and series["backtest_smape"] < 5
    values = [p["value"] for p in reply["points"]]
    assert 60 < min(values) < 70 and 90 < max(values) < 100  # the daily cycle 80 +- 15 goes on
    assert all(len(p["intervals"]) == 2 for p in reply["points"])

    status, reply = _post(stack, grouped)
    assert status == 200, reply
    by = {s["labels"]["service_name"]: s for s in reply["series"]}
    assert set(by) == {"auth-service", "billing"}
    assert (
        "forecast_ms" in by["auth-service"]["crossing"]
        and by["auth-service"]["crossing"]["probability"] > 0.9
    )
    assert (
        "forecast_ms" not in by["billing"]["crossing"]
        and by["billing"]["crossing"].get("probability", 0) < 0.01
    )

    status, reply = _post(stack, inline)
    assert status == 200, reply
    (series,) = reply["series"]
    assert reply["step_ms"] == "1000" and reply["points"][0]["timestamp_ms"] == "20000"
    values = [p["value"] for p in reply["points"]]
    assert 39 < values[0] < 42 and 43 < values[-1] < 47  # the trend of 1.5 a step goes on
    # A 1 s step has no season: every auto method at season 1 (naive, SES, mean of the last two, drift).
    assert series["backtest_windows"] == 2 and set(series["candidates"]) == {
        "seasonal_naive:1",
        "seasonal_es:1",
        "seasonal_window_average:1",
        "stl_drift:1",
    }
    assert "forecast_ms" in series["crossing"]  # and reaches 42


def test_bad_forecast_input_is_named(stack):
    for body, field, says in (
        ({"metric": "cpu_usage", "horizon": 0}, "horizon", "between 1 and"),
        ({"metric": "cpu_usage", "horizon": 3, "method": "lstm"}, "method", "seasonal_naive"),
        (
            {
                "history": {"timestamps_ms": [0, 1000, 2000], "values": [1, 2, 3]},
                "horizon": 3,
                "method": "auto_ets",
            },
            "history",
            "at least 10 points",
        ),
    ):
        status, reply = _post(stack, json.dumps(body))
        assert status == 400 and reply["message"].startswith(f"{field}:") and says in reply["message"], reply
