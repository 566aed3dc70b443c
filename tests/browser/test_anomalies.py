"""The anomaly explorer in a real browser: an anomaly injected through ingest arrives on the live
stream, is shown on its series with the detector's band and its explanation, and is judged."""

from __future__ import annotations

import math
import time
import uuid

import pytest

from tests.browser.conftest import api, screenshot
from tests.helpers import wait_until

pytestmark = pytest.mark.browser

STEP_MS = 10_000
# auto, the live scorer's method, does not flag a brand-new series before its 48th point
# (docs/anomalies.md): 120 calm points, then one far outside their band.
HISTORY_POINTS = 120


def spike_series(metric: str, simulation_id: str) -> dict:
    now = int(time.time() * 1000) // STEP_MS * STEP_MS
    timestamps = [now - (HISTORY_POINTS - i) * STEP_MS for i in range(HISTORY_POINTS + 1)]
    values = [50 + 2 * math.sin(i * 0.7) + (i % 5) * 0.3 for i in range(HISTORY_POINTS)] + [95.0]
    return {
        "datasource": "platform_metrics",
        "series": [
            {
                "name": metric,
                "labels": {"simulation_id": simulation_id},
                "timestamps_ms": timestamps,
                "values": values,
            }
        ],
    }


def stored(stack, simulation_id: str) -> list[dict]:
    return api(stack, "GET", f"/api/v1/ml/anomalies?simulation_id={simulation_id}")["anomalies"]


def test_an_injected_anomaly_appears_live_on_its_series_and_is_judged(console_stack, page):
    simulation_id = f"ui-anomaly-{uuid.uuid4().hex[:8]}"
    metric = "ui_spike"
    page.goto(console_stack.base + f"/#/anomalies?simulation_id={simulation_id}")
    page.wait_for_selector("#conn[data-state='live']")
    page.wait_for_selector(".list-state:has-text('No anomaly matches')")
    assert page.locator("#anomaly-list tbody tr").count() == 0

    reply = api(console_stack, "POST", "/api/v1/metrics/ingest", spike_series(metric, simulation_id))
    assert int(reply["accepted"]) == HISTORY_POINTS + 1
    # The row arrives through the anomalies stream (class "fresh"), without reloading the page.
    row = page.wait_for_selector("#anomaly-list tbody tr.fresh", timeout=20_000)
    anomaly = stored(console_stack, simulation_id)[0]
    assert row.get_attribute("data-id") == anomaly["id"]
    assert metric in row.inner_text() and f"simulation_id={simulation_id}" in row.inner_text()

    # Selected: its stored series, the detector's band over the window and the anomaly as a marker.
    row.query_selector("button").click()
    chart = page.wait_for_selector("#anomaly-chart[data-lines='5']")
    assert chart.get_attribute("data-band") == "window"
    # 121 stored points, and upper, lower and expected for the scored ones, plus the marker.
    assert int(chart.get_attribute("data-points")) > (HISTORY_POINTS + 1) * 2
    assert f"id={anomaly['id']}" in page.evaluate("location.hash")
    explanation = page.locator("#anomaly-explanation").inner_text()
    assert "the value left its expected band" in explanation
    assert anomaly["model_version"] in explanation
    assert anomaly["id"] in explanation
    page.wait_for_selector("#anomaly-chart canvas")
    screenshot(page, "anomaly-selected")

    # A verdict is stored: the list shows it and the REST API reads it back.
    page.get_by_role("button", name="False positive").click()
    page.wait_for_selector(
        f"#anomaly-list tr[data-id='{anomaly['id']}'] .badge[data-status='false_positive']"
    )
    page.wait_for_selector("text=Future points of this series are judged against a threshold")
    assert stored(console_stack, simulation_id)[0]["feedback"] == "false_positive"
    stats = api(console_stack, "GET", "/api/v1/ml/anomalies/stats")["methods"]["auto"]
    page.wait_for_function(
        "n => document.querySelector(\"#anomaly-stats tr[data-method='auto'] td:nth-child(4)\")"
        "?.textContent === n",
        arg=str(stats["false_positive"]),
    )


def _settled_anomalies(stack) -> list[dict]:
    """The newest 100 anomalies once the live scorer has caught up with the demo's 50-hour
    backfill (until then new ones arrive at the top every second): two reads 2 s apart agree."""
    reads = [api(stack, "GET", "/api/v1/ml/anomalies?limit=100")["anomalies"]]

    def settled() -> bool:
        time.sleep(2)
        reads.append(api(stack, "GET", "/api/v1/ml/anomalies?limit=100")["anomalies"])
        return reads[-1] == reads[-2]

    wait_until(settled, 180, "the live scorer to catch up with the demo's backfill")
    return reads[-1]


def test_filters_live_in_the_link_and_the_unfiltered_list_shows_the_api_answer(console_stack, page):
    listed = _settled_anomalies(console_stack)
    assert listed, "the demo has found anomalies by now"
    page.goto(console_stack.base + "/#/anomalies")
    page.wait_for_selector("#anomaly-list tbody tr")  # the list has arrived (not just "loading")
    shown = page.locator("#anomaly-list tbody tr").evaluate_all("rows => rows.map(r => r.dataset.id)")
    # The page's rows are the API's list, in its order (newest first); anomalies found between the
    # two reads may be on one side only.
    ids = [a["id"] for a in listed]
    both = set(ids) & set(shown)
    assert ids and len(both) >= len(ids) - 2
    assert [i for i in shown if i in both] == [i for i in ids if i in both]
    screenshot(page, "anomalies")

    # A filter typed in the form goes into the link; opening the link reproduces the view.
    page.fill("input[name=metric]", "no_such_metric")
    page.select_option("select[name=method]", "zscore")
    page.fill("input[name=min_score]", "0.9")
    page.get_by_role("button", name="Apply").click()
    page.wait_for_selector(".list-state:has-text('No anomaly matches')")
    link = page.evaluate("location.href")
    assert "metric=no_such_metric" in link and "method=zscore" in link and "min_score=0.9" in link
    page.goto("about:blank")
    page.goto(link)
    page.wait_for_selector(".list-state:has-text('No anomaly matches')")
    assert page.input_value("input[name=metric]") == "no_such_metric"
    assert page.input_value("select[name=method]") == "zscore"

    # A filter the API refuses shows the API's own message.
    page.fill("input[name=labels]", "nokeyvalue")
    page.get_by_role("button", name="Apply").click()
    error = page.wait_for_selector("section .error")
    assert "labels[0]: 'nokeyvalue' is not key=value" in error.inner_text()


def test_an_overview_link_selects_its_anomaly_on_a_phone(console_stack, phone_page):
    page = phone_page
    simulation_id = f"ui-phone-{uuid.uuid4().hex[:8]}"
    api(console_stack, "POST", "/api/v1/metrics/ingest", spike_series("ui_spike", simulation_id))
    wait_until(lambda: stored(console_stack, simulation_id), 20, "the live scorer's anomaly")
    anomaly = stored(console_stack, simulation_id)[0]
    page.goto(console_stack.base + f"/#/anomalies?id={anomaly['id']}&metric=ui_spike")
    chart = page.wait_for_selector("#anomaly-chart[data-lines='5']")
    assert int(chart.get_attribute("data-points")) > 0
    assert page.locator(f"#anomaly-list tr.selected[data-id='{anomaly['id']}']").count() == 1
    page.wait_for_selector("#anomaly-chart canvas")
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    assert simulation_id in page.locator("#h-detail").inner_text()
    screenshot(page, "anomalies-phone")
