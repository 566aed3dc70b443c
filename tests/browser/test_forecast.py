"""The forecast view in a real browser, on the demo's series: history, forecast and interval bands on
one chart, the method and its backtest error as the API answers them; an API refusal shown as is."""

from __future__ import annotations

import json

import pytest

from tests.browser.conftest import api, screenshot

pytestmark = pytest.mark.browser


def test_forecast_draws_history_forecast_and_bands_with_the_method_and_backtest(console_stack, page):
    page.goto(console_stack.base + "/#/forecast?threshold=40")
    # The running state is announced while statsforecast fits (a cold stack's first forecast
    # spawns the worker processes), then the chart holds history, forecast and two bands.
    chart = page.wait_for_selector("#forecast-chart[data-lines='7']", timeout=45_000)
    # history + forecast + upper/lower at 80% and 95% + the threshold line
    assert int(chart.get_attribute("data-points")) > 300
    sent = page.locator("details.request pre").text_content()
    assert sent.startswith("POST /api/v1/ml/forecast\n")
    body = json.loads(sent.split("\n", 1)[1])
    # Exactly what the form shows, nothing else.
    assert body == {
        "selection": {
            "metrics": ["cpu_usage"],
            "datasource": "platform_metrics",
            "labels": {"service_name": "auth-service"},
            "time_range": "7d",
        },
        "horizon": 60,
        "step": "1m",
        "method": "auto",
        "levels": [80, 95],
        "threshold": 40,
        "direction": "above",
    }
    answer = api(console_stack, "POST", "/api/v1/ml/forecast", body)  # the cached answer
    first = answer["series"][0]
    assert page.inner_text("#forecast-facts dd[data-field='method']") == first["method"]
    smape = page.inner_text("#forecast-facts dd[data-field='smape']")
    assert float(smape.rstrip(" %")) == pytest.approx(first["backtest_smape"], rel=1e-3)
    mase = page.inner_text("#forecast-facts dd[data-field='mase']")
    assert float(mase) == pytest.approx(first["backtest_mase"], rel=1e-3)
    assert first["model_version"] in page.inner_text("#forecast-facts")
    # The time until the threshold: the API's crossing, as the page shows it.
    crossing = first["crossing"]
    probability = page.inner_text("#forecast-facts dd[data-field='probability']")
    assert float(probability.rstrip("%")) / 100 == pytest.approx(crossing.get("probability", 0), abs=1e-4)
    crosses = page.inner_text("#forecast-facts dd[data-field='forecast-crosses']")
    assert ("not within" in crosses) == (int(crossing.get("forecast_ms", 0)) == 0), crosses
    assert page.locator("table.forecast-series tbody tr").count() == len(answer["series"])
    page.wait_for_selector("#forecast-chart canvas")
    screenshot(page, "forecast")


def test_a_bad_horizon_shows_the_api_message(console_stack, page):
    page.goto(console_stack.base + "/#/forecast")
    page.wait_for_selector("#forecast-chart[data-lines]", timeout=45_000)
    page.fill("input[name=horizon]", "5000")
    page.get_by_role("button", name="Forecast").click()
    error = page.wait_for_selector("#forecast-error .error")
    assert "horizon: must be between 1 and 2000 (FORECAST_MAX_HORIZON)" in error.inner_text()
    assert "horizon=5000" in page.evaluate("location.hash")


def test_forecast_on_a_phone_width(console_stack, phone_page):
    page = phone_page
    page.goto(console_stack.base + "/#/forecast")
    page.wait_for_selector("#forecast-chart canvas", timeout=45_000)
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    screenshot(page, "forecast-phone")
