"""The dashboards pages in a real browser against the stack as `make up` runs it (demo feed on):
the list, creating and editing through the form (read back through REST), the API's 400 message,
and a dashboard's panels drawn and kept live by its WebSocket stream."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

import pytest

from tests.browser.conftest import api, screenshot

pytestmark = pytest.mark.browser


def api_error(stack, method: str, path: str, body: dict) -> tuple[int, str]:
    """The status and message the API answers a request it refuses."""
    request = urllib.request.Request(
        stack.base + path,
        data=json.dumps(body).encode(),
        method=method,
        headers={"content-type": "application/json"},
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=30)
    return refused.value.code, json.loads(refused.value.read())["message"]


def stored(stack) -> list[dict]:
    return [d for d in api(stack, "GET", "/api/v1/dashboards")["dashboards"] if not d.get("builtin")]


def test_creating_a_dashboard_in_the_ui_stores_what_was_typed(console_stack, page):
    page.goto(console_stack.base + "/#/dashboards")
    page.wait_for_selector(".dash-list tbody tr")
    page.click("#new-dashboard")
    page.wait_for_selector("#dash-form")
    page.fill("input[name=name]", "Checkout latency")
    page.select_option("select[name=type]", "service-comparison")
    # Metrics: two picked from the datasource's known metrics, one typed (which has no data).
    page.check('[data-field=metrics] input[type=checkbox][value="latency_p95"]')
    page.check('[data-field=metrics] input[type=checkbox][value="error_rate"]')
    metrics = page.locator("input[name=metrics]")
    metrics.fill(metrics.input_value() + ", latency")
    page.check('[data-field=services] input[type=checkbox][value="checkout-service"]')
    page.check('[data-field=services] input[type=checkbox][value="auth-service"]')
    page.fill("input[name=time_range]", "6h")
    page.fill("input[name=step]", "5m")
    page.select_option("select[name=aggregation]", "max")
    page.fill("input[name=refresh_interval]", "60")
    # The request shown is the one sent: what was typed, nothing else.
    expected = {
        "name": "Checkout latency",
        "type": "service-comparison",
        "config": {
            "services": ["checkout-service", "auth-service"],
            "metrics": ["latency_p95", "error_rate", "latency"],
            "time_range": "6h",
            "datasource": "platform_metrics",
            "step": "5m",
            "aggregation": "max",
        },
        "refresh_interval": 60,
    }
    assert json.loads(page.inner_text("#dash-request")) == expected
    assert page.inner_text("#dash-method") == "POST /api/v1/dashboards"
    page.click("#dash-save")
    saved = page.wait_for_selector("#dash-result .dash-saved")
    dashboard_id = saved.get_attribute("data-id")

    dashboard = api(console_stack, "GET", f"/api/v1/dashboards/{dashboard_id}")["dashboard"]
    assert dashboard["name"] == expected["name"] and dashboard["type"] == expected["type"]
    assert dashboard["refresh_interval"] == 60
    config = {key: value for key, value in dashboard["config"].items() if value}
    assert config == expected["config"]
    # The API's warning about the metric without data is shown as it came.
    assert "metric 'latency'" in page.inner_text("#dash-result .dash-warnings")
    # From now on the form edits what it created.
    assert page.inner_text("#dash-method") == f"PUT /api/v1/dashboards/{dashboard_id}"
    assert page.evaluate("location.hash") == f"#/dashboards/{dashboard_id}/edit"
    screenshot(page, "dashboard-edit")

    # Opened, it shows one chart per panel, the panel without data saying why.
    page.click("#dash-open")
    page.wait_for_selector("#dash-panels .panel canvas")
    page.wait_for_selector('#dash-live[data-state="live"]')
    titles = page.locator("#dash-panels .panel").evaluate_all("cards => cards.map(c => c.dataset.panel)")
    assert titles == [
        p["title"] for p in api(console_stack, "GET", f"/api/v1/dashboards/{dashboard_id}")["panels"]
    ]
    warning = page.locator("#dash-panels .panel", has_text="latency:").locator(".dash-warning")
    assert "latency" in warning.inner_text()
    screenshot(page, "dashboard-view")


def test_editing_a_dashboard_in_the_ui_updates_it(console_stack, page):
    created = api(
        console_stack,
        "POST",
        "/api/v1/dashboards",
        {
            "name": "Edit me",
            "type": "platform-overview",
            "config": {"metrics": ["cpu_usage"], "time_range": "1h"},
            "refresh_interval": 30,
        },
    )["dashboard"]
    page.goto(console_stack.base + f"/#/dashboards/{created['id']}/edit")
    page.wait_for_selector('[data-field=metrics] input[type=checkbox][value="memory_usage"]')
    # The form shows the stored dashboard.
    assert page.input_value("input[name=name]") == "Edit me"
    assert page.input_value("input[name=metrics]") == "cpu_usage"
    assert page.is_checked('[data-field=metrics] input[value="cpu_usage"]')
    assert page.input_value("input[name=step]") == ""
    assert page.input_value("input[name=datasource]") == ""
    # platform-overview shows no simulations: that list is off and not sent.
    assert page.is_disabled("input[name=simulations]")

    page.fill("input[name=name]", "Memory, 2 hours")
    page.uncheck('[data-field=metrics] input[value="cpu_usage"]')
    page.check('[data-field=metrics] input[value="memory_usage"]')
    page.fill("input[name=time_range]", "2h")
    page.fill("input[name=refresh_interval]", "120")
    assert page.inner_text("#dash-method") == f"PUT /api/v1/dashboards/{created['id']}"
    page.click("#dash-save")
    page.wait_for_selector("#dash-result .dash-saved")

    dashboard = api(console_stack, "GET", f"/api/v1/dashboards/{created['id']}")["dashboard"]
    assert dashboard["name"] == "Memory, 2 hours"
    assert dashboard["config"]["metrics"] == ["memory_usage"]
    assert dashboard["config"]["time_range"] == "2h"
    # Stored without a datasource, it is shown empty and saved empty (no default slipped in).
    assert dashboard["config"]["datasource"] == ""
    assert dashboard["refresh_interval"] == 120
    assert int(dashboard["updated_at_ms"]) > int(created["updated_at_ms"])


def test_a_bad_value_shows_the_apis_message_and_saves_nothing(console_stack, page):
    before = stored(console_stack)
    page.goto(console_stack.base + "/#/dashboards/new")
    page.wait_for_selector("#dash-form")
    page.fill("input[name=name]", "Banana")
    page.fill("input[name=time_range]", "banana")
    sent = json.loads(page.inner_text("#dash-request"))
    assert sent["config"]["time_range"] == "banana"
    page.click("#dash-save")
    error = page.wait_for_selector("#dash-result .error")
    status, message = api_error(console_stack, "POST", "/api/v1/dashboards", sent)
    assert status == 400 and message.startswith("config.time_range:")
    assert error.inner_text() == f"not saved: {message} (HTTP 400)"
    assert stored(console_stack) == before
    # Nothing left the form: it still says POST.
    assert page.inner_text("#dash-method") == "POST /api/v1/dashboards"


def ingest(stack, datasource: str, points: list[tuple[int, float]]) -> None:
    api(
        stack,
        "POST",
        "/api/v1/metrics/ingest",
        {
            "datasource": datasource,
            "points": [
                {
                    "name": "request_rate",
                    "value": value,
                    "timestamp_ms": t,
                    "labels": {"service_name": "live-svc", "host": "h1"},
                }
                for t, value in points
            ],
        },
    )


def test_a_dashboard_draws_its_panels_and_follows_its_stream(console_stack, page):
    # Its own datasource, so the test decides when a new point arrives.
    datasource = "console_dash_live"
    now = int(time.time() * 1000) // 10_000 * 10_000
    ingest(console_stack, datasource, [(now - k * 10_000, 100.0 + k) for k in range(1, 13)])
    dashboard = api(
        console_stack,
        "POST",
        "/api/v1/dashboards",
        {
            "name": "Live",
            "type": "platform-overview",
            "config": {
                "metrics": ["request_rate"],
                "time_range": "15m",
                "step": "10s",
                "datasource": datasource,
            },
            "refresh_interval": 5,
        },
    )["dashboard"]
    page.goto(console_stack.base + f"/#/dashboards/{dashboard['id']}")
    chart = page.wait_for_selector('#dash-panels .panel .dash-chart[data-points="12"]')
    page.wait_for_selector('#dash-live[data-state="live"]')
    assert page.get_attribute("#dash-edit", "href") == f"#/dashboards/{dashboard['id']}/edit"
    newest = int(chart.get_attribute("data-newest"))
    assert newest == now - 10_000

    # A new point is ingested; the next refresh (every 5 s) reaches the open page over its stream.
    ingest(console_stack, datasource, [(now + 10_000, 250.0)])
    page.wait_for_function(
        "([el, newest]) => Number(el.dataset.newest) === newest && el.dataset.points === '13'",
        arg=[chart, now + 10_000],
        timeout=20_000,
    )
    assert int(page.get_attribute("#dash-panels", "data-frames")) >= 1


def test_the_list_opens_and_deletes_dashboards(console_stack, page):
    created = api(
        console_stack,
        "POST",
        "/api/v1/dashboards",
        {"name": "Delete me", "type": "simulation", "config": {"time_range": "30m"}, "refresh_interval": 30},
    )["dashboard"]
    page.goto(console_stack.base + "/#/dashboards")
    page.wait_for_selector(f'.dash-list tr[data-id="{created["id"]}"]')
    listed = api(console_stack, "GET", "/api/v1/dashboards")["dashboards"]
    rows = page.locator(".dash-list tbody tr").evaluate_all("rows => rows.map(r => r.dataset.id)")
    assert rows == [d["id"] for d in listed]
    # Built-ins first: they offer a copy, not edit or delete.
    builtin = page.locator('.dash-list tr[data-builtin="true"]').first
    assert builtin.get_by_role("link", name="Save a copy").count() == 1
    assert builtin.get_by_role("button").count() == 0
    screenshot(page, "dashboards-list")

    row = page.locator(f'.dash-list tr[data-id="{created["id"]}"]')
    row.get_by_role("button", name="Delete Delete me").click()
    row.get_by_role("button", name="Cancel").click()  # nothing is deleted without a yes
    assert created["id"] in [d["id"] for d in stored(console_stack)]
    row.get_by_role("button", name="Delete Delete me").click()
    row.get_by_role("button", name="Yes, delete").click()
    page.wait_for_selector(f'.dash-list tr[data-id="{created["id"]}"]', state="detached")
    assert created["id"] not in [d["id"] for d in stored(console_stack)]

    # A built-in opens live, and its "Save a copy" fills the form with its settings.
    page.locator('.dash-list tr[data-id="builtin:service-comparison"] a.dash-open').click()
    page.wait_for_selector("#dash-panels .panel canvas")
    page.click("#dash-copy")
    page.wait_for_selector("#dash-form")
    assert page.input_value("input[name=name]") == "Copy of Service comparison"
    assert page.inner_text("#dash-method") == "POST /api/v1/dashboards"


def test_dashboards_on_a_phone_width(console_stack, phone_page):
    page = phone_page
    page.goto(console_stack.base + "/#/dashboards/builtin:platform-overview")
    page.wait_for_selector("#dash-panels .panel canvas")
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    screenshot(page, "dashboard-view-phone")
    page.goto(console_stack.base + "/#/dashboards/new")
    page.wait_for_selector("[data-field=metrics] input[type=checkbox]")
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    page.goto(console_stack.base + "/#/dashboards")
    page.wait_for_selector(".dash-list tbody tr")
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    screenshot(page, "dashboards-list-phone")
