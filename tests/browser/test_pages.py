"""Every page of the console: it renders from the cold stack without console errors, fits a phone's
width, every control is reachable with the keyboard and named for a screen reader; and a 501 from
the API is said plainly."""

from __future__ import annotations

import json
import re
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from tests.browser.conftest import screenshot

pytestmark = pytest.mark.browser

# Each page's address and an element that shows it has loaded its data. The forecast page starts a
# forecast as it opens, with a Cancel button while it runs: it has loaded when that forecast has
# answered (the form's button is enabled again), or a control would leave the page while the test
# tabs through it. The query page has loaded when its datasource's metadata has (its metric and
# label checkboxes drawn).
PAGES = {
    "overview": ("#/overview", "#entities .entity"),
    "service": ("#/service/auth-service", ".svc-metric canvas"),
    "dashboards": ("#/dashboards", "main table tbody tr"),
    "dashboard-new": ("#/dashboards/new", "main form"),
    "anomalies": ("#/anomalies", "main form"),
    "forecast": ("#/forecast", "main form button[type=submit]:enabled"),
    "query": ("#/query", "#q-meta-note:not(:empty)"),
}

CONTROLS = "main a[href], main button, main input, main select, main textarea, main summary"

# Controls the keyboard can reach (visible, enabled, not taken out of the tab order), and the ones
# among them without a name a screen reader could read.
CONTROLS_JS = """
sel => [...document.querySelectorAll(sel)]
  .filter(el => el.offsetParent !== null && !el.disabled && el.tabIndex >= 0)
  .map(el => {
    const label = el.labels && el.labels.length ? el.labels[0].innerText : '';
    const name = (el.getAttribute('aria-label') || label || el.innerText || el.value || el.title
                  || el.getAttribute('placeholder') || '').trim();
    return {key: el.tagName + '|' + (el.id || '') + '|' + (el.getAttribute('href') || '') + '|' + el.innerText.slice(0, 40),
            named: name.length > 0};
  })
"""
ACTIVE_JS = """
() => { const el = document.activeElement;
        return el.tagName + '|' + (el.id || '') + '|' + (el.getAttribute('href') || '') + '|' + (el.innerText || '').slice(0, 40); }
"""


@pytest.mark.parametrize("name", list(PAGES))
def test_every_control_is_reachable_by_keyboard_and_named(console_stack, page, name):
    address, loaded = PAGES[name]
    page.goto(f"{console_stack.base}/{address}")
    page.wait_for_selector(loaded, timeout=30_000)
    controls = page.evaluate(CONTROLS_JS, CONTROLS)
    assert controls, "the page has no control"
    unnamed = [c["key"] for c in controls if not c["named"]]
    assert not unnamed, unnamed
    wanted = {c["key"] for c in controls}
    reached: set[str] = set()
    for _ in range(len(controls) + 30):
        page.keyboard.press("Tab")
        reached.add(page.evaluate(ACTIVE_JS))
        if wanted <= reached:
            break
    assert wanted <= reached, sorted(wanted - reached)[:10]
    # The focused control shows it (an outline from :focus-visible).
    assert page.evaluate("getComputedStyle(document.activeElement).outlineStyle") != "none"


@pytest.mark.parametrize("name", list(PAGES))
def test_every_page_fits_a_phone(console_stack, phone_page, name):
    address, loaded = PAGES[name]
    phone_page.goto(f"{console_stack.base}/{address}")
    phone_page.wait_for_selector(loaded, timeout=30_000)
    assert phone_page.evaluate("document.documentElement.scrollWidth") <= 390


def test_an_endpoint_that_answers_501_is_said_plainly(console_stack, page):
    # Every endpoint the console uses is built, so this answer is made up by the browser (a
    # Playwright route standing in for a service not built yet): it checks the page says so instead
    # of drawing anything.
    page.route(
        "**/api/v1/monitor/platform**",
        lambda route: route.fulfill(
            status=501,
            content_type="application/json",
            body=json.dumps({"code": 12, "message": "MonitoringService.Monitor is not implemented yet"}),
        ),
    )
    page.goto(f"{console_stack.base}/#/overview")
    notice = page.wait_for_selector("main .notice")
    assert "not built yet" in notice.inner_text()
    assert "MonitoringService.Monitor is not implemented yet" in notice.inner_text()
    assert page.locator("#entities .entity").count() == 0
    screenshot(page, "not-built-yet")


def test_times_are_in_the_viewers_zone(console_stack, kolkata_page):
    page = kolkata_page
    page.goto(f"{console_stack.base}/#/overview")
    page.wait_for_selector("#entities .entity")
    # Chromium names the zone by its older alias.
    assert re.search(r"times in Asia/(Kolkata|Calcutta)", page.inner_text("main"))
    # "updated <time>" is the page's own clock, shown in the viewer's zone (UTC+05:30 here, whatever
    # the machine's zone); the chart axes use the same zone (uPlot formats in the browser's local time).
    shown = datetime.strptime(
        page.inner_text("main .panel-head small").removeprefix("updated "), "%b %d, %Y, %I:%M:%S %p"
    )
    now = datetime.now(ZoneInfo("Asia/Kolkata")).replace(tzinfo=None)
    assert abs((now - shown).total_seconds()) < 120


def test_a_401_asks_for_a_token_which_then_goes_with_every_request(console_stack, page):
    # The gateway of this stack runs AUTH_MODE=none; a Playwright route stands in for one with
    # AUTH_MODE=jwt (tests/e2e/test_auth.py covers the real one): without the token, 401.
    token = "dev.token.value"
    seen: list[str] = []

    def gateway(route) -> None:
        if route.request.headers.get("authorization") != f"Bearer {token}":
            route.fulfill(
                status=401, content_type="application/json", body='{"code": 401, "message": "Jwt is missing"}'
            )
        else:
            route.continue_()

    page.route("**/api/v1/**", gateway)
    page.on("websocket", lambda ws: seen.append(ws.url))
    page.goto(f"{console_stack.base}/#/overview")
    form = page.wait_for_selector("#auth-slot form.sign-in")
    assert "Jwt is missing" in form.inner_text()
    assert page.locator("#auth-slot form").count() == 1  # one form, however many requests failed
    page.fill("#token", token)
    page.click("#auth-slot button[type=submit]")
    page.wait_for_selector("#entities .entity")
    assert page.locator("#auth-slot form").count() == 0
    # WebSockets carry it as a query parameter (a browser cannot set their headers).
    page.wait_for_selector('#conn[data-state="live"]')
    assert seen and all(f"access_token={token}" in url for url in seen if "/api/v1/ws/" in url)
    assert page.evaluate("sessionStorage.getItem('platformq-token')") == token
