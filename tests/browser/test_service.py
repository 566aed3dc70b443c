"""The service view in a real browser: its figures and peers from the monitor API, its charts fed
live by the metrics streams (a point ingested through REST is on a chart within 2 s)."""

from __future__ import annotations

import re
import time

import pytest

from tests.browser.conftest import api, screenshot
from tests.helpers import wait_until

pytestmark = pytest.mark.browser


def a_service_with_hosts(stack) -> tuple[str, list[str]]:
    """A demo service whose hosts report cpu_usage (the demo backfills within seconds)."""
    found: dict = {}

    def ready() -> bool:
        platform = api(stack, "GET", "/api/v1/monitor/platform")
        for entity in platform["entities"]:
            if entity["kind"] != "service":
                continue
            scope = api(stack, "GET", f"/api/v1/monitor/service?id={entity['name']}")
            hosts = [e["name"] for e in scope["entities"] if e["kind"] == "host"]
            if hosts and any(s["metric"] == "cpu_usage" for s in scope["series"]):
                found.update(name=entity["name"], hosts=hosts)
                return True
        return False

    wait_until(ready, 30, "a demo service with hosts")
    return found["name"], found["hosts"]


def test_a_chart_receives_a_live_point_within_2_s_of_an_ingest(console_stack, page):
    name, hosts = a_service_with_hosts(console_stack)
    page.goto(f"{console_stack.base}/#/service/{name}")
    chart = page.locator('.svc-chart[data-metric="cpu_usage"]')
    chart.locator("canvas").wait_for()
    state = page.locator('.svc-metric[data-metric="cpu_usage"] .panel-state')
    page.wait_for_selector('.svc-metric[data-metric="cpu_usage"] .panel-state[data-state="live"]')
    assert state.inner_text().startswith("live")

    # A point newer than everything shown (whole seconds: the chart's axis is in seconds).
    shown = max(int(n) for n in chart.evaluate_all("cs => cs.map(c => c.dataset.newest)") if n)
    stamp = (max(shown, int(time.time() * 1000)) // 1000 + 30) * 1000
    reply = api(
        console_stack,
        "POST",
        "/api/v1/metrics/ingest",
        {
            "points": [
                {
                    "name": "cpu_usage",
                    "value": 77.5,
                    "timestamp_ms": stamp,
                    "labels": {"service_name": name, "host": hosts[0]},
                }
            ]
        },
    )
    assert reply["accepted"] == "1"
    page.wait_for_function(
        "t => document.querySelector('.svc-chart[data-metric=\"cpu_usage\"]').dataset.newest === String(t)",
        arg=stamp,
        timeout=2000,
    )
    # It went on that host's live line; the page was not reloaded (the chart is the same element).
    assert chart.get_attribute("data-lines") == str(1 + len(hosts))


def test_a_lost_stream_shows_its_state_and_resumes_with_since(console_stack, page):
    """The cpu_usage stream is cut (by the browser-side WebSocket route) and kept from reconnecting
    while a point is ingested; once it may reconnect it asks with ?since=<last cursor> and the point
    sent while it was away arrives. Without `since` the new connection would only see later points."""
    name, hosts = a_service_with_hosts(console_stack)
    connections: list = []
    allow = {"reconnect": True}

    def route(ws) -> None:
        connections.append(ws)
        if allow["reconnect"]:
            ws.connect_to_server()
        else:
            ws.close(code=1011, reason="test: the network is down")

    page.route_web_socket(re.compile(r".*/api/v1/ws/metrics/cpu_usage\?.*"), route)
    page.goto(f"{console_stack.base}/#/service/{name}")
    state = page.locator('.svc-metric[data-metric="cpu_usage"] .panel-state')
    page.wait_for_selector('.svc-metric[data-metric="cpu_usage"] .panel-state[data-state="live"]')
    assert len(connections) == 1 and "since=" not in connections[0].url

    allow["reconnect"] = False
    connections[0].close(code=1001, reason="test: connection lost")
    page.wait_for_selector('.svc-metric[data-metric="cpu_usage"] .panel-state[data-state="reconnecting"]')
    assert page.locator("#conn").get_attribute("data-state") == "reconnecting"
    assert state.inner_text() != "live"

    chart = page.locator('.svc-chart[data-metric="cpu_usage"]')
    shown = int(chart.get_attribute("data-newest"))
    stamp = (max(shown, int(time.time() * 1000)) // 1000 + 60) * 1000
    point = {
        "name": "cpu_usage",
        "value": 12.5,
        "timestamp_ms": stamp,
        "labels": {"service_name": name, "host": hosts[0]},
    }
    assert api(console_stack, "POST", "/api/v1/metrics/ingest", {"points": [point]})["accepted"] == "1"
    # A retry came and was refused (Playwright delivers route calls while the test waits in it).
    wait_until(lambda: page.wait_for_timeout(50) or len(connections) >= 2, 10, "a refused reconnection")
    assert chart.get_attribute("data-newest") == str(shown)

    allow["reconnect"] = True
    page.wait_for_function(
        "t => document.querySelector('.svc-chart[data-metric=\"cpu_usage\"]').dataset.newest === String(t)",
        arg=stamp,
        timeout=20_000,
    )
    assert "since=" in connections[-1].url
    page.wait_for_selector('.svc-metric[data-metric="cpu_usage"] .panel-state[data-state="live"]')


def test_the_service_view_shows_its_figures_and_its_peers(console_stack, page):
    name, hosts = a_service_with_hosts(console_stack)
    page.goto(f"{console_stack.base}/#/service/{name}")
    page.wait_for_selector(".svc-peer-chart canvas")
    scope = api(console_stack, "GET", f"/api/v1/monitor/service?id={name}&time_range=1h")

    # Its hosts, and the comparison with its peers, metric by metric, with its rank.
    shown = page.locator("#svc-hosts tbody tr").evaluate_all("rows => rows.map(r => r.dataset.entity)")
    assert shown == [e["name"] for e in scope["entities"]]
    assert set(hosts) <= set(shown)
    for row in scope["comparison"]:
        cells = page.locator(f'#svc-compare tr[data-metric="{row["metric"]}"]')
        assert cells.locator('[data-key="rank"]').inner_text() == f"{row['rank']} of {row['peers']}"

    # One chart of the service and one of every service per metric, this one highlighted.
    metrics = sorted({s["metric"] for s in scope["series"]})
    charts = page.locator(".svc-metric").evaluate_all("cards => cards.map(c => c.dataset.metric)")
    assert charts == metrics
    platform = api(console_stack, "GET", "/api/v1/monitor/platform?time_range=1h")
    services = {s["group"]["service_name"] for s in platform["series"] if s["metric"] == "cpu_usage"}
    peers = page.locator('.svc-peer-chart[data-metric="cpu_usage"]')
    peers.locator("canvas").wait_for()
    assert int(peers.get_attribute("data-lines")) == len(services)
    assert peers.get_attribute("data-highlight") == name
    # Every chart's stream is live.
    for metric in metrics:
        page.wait_for_selector(f'.svc-metric[data-metric="{metric}"] .panel-state[data-state="live"]')
    screenshot(page, "service")


def test_the_service_view_on_a_phone_changes_its_time_range(console_stack, phone_page):
    page = phone_page
    name, _ = a_service_with_hosts(console_stack)
    page.goto(f"{console_stack.base}/#/service/{name}")
    page.wait_for_selector(".svc-chart canvas")
    page.get_by_role("button", name="6h").click()
    page.wait_for_function("() => location.hash.endsWith('?range=6h')")
    scope = api(console_stack, "GET", f"/api/v1/monitor/service?id={name}&time_range=6h")
    cpu = next(s for s in scope["series"] if s["metric"] == "cpu_usage")
    step_s = (int(cpu["points"][1]["timestamp_ms"]) - int(cpu["points"][0]["timestamp_ms"])) // 1000
    step = f"{step_s // 60} min" if step_s % 60 == 0 else f"{step_s} s"  # as the page says it
    page.wait_for_function(
        "s => document.querySelector('.svc-metric[data-metric=\"cpu_usage\"] h3').textContent.includes(s)",
        arg=f"per {step})",
    )
    assert page.get_by_role("button", name="6h").get_attribute("aria-pressed") == "true"
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    screenshot(page, "service-phone")
