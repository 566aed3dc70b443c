"""The overview page in a real browser, from the cold `make up` state (demo feed)."""

from __future__ import annotations

import re

import pytest

from tests.browser.conftest import api, screenshot

pytestmark = pytest.mark.browser


def test_overview_renders_the_platform_numbers_the_api_answers(console_stack, page):
    # A stored dashboard of the built-in's type, refreshed every 5 s: its updates must not replace
    # the overview's charts (which follow the built-in by its id).
    stored = api(
        console_stack,
        "POST",
        "/api/v1/dashboards",
        {
            "name": "one service",
            "type": "platform-overview",
            "config": {"services": ["auth-service"]},
            "refresh_interval": 5,
        },
    )["dashboard"]["id"]
    page.goto(console_stack.base + "/")
    # The first service card appears within seconds of opening a cold stack (the demo backfills).
    page.wait_for_selector("#entities .entity", timeout=20_000)
    platform = api(console_stack, "GET", "/api/v1/monitor/platform")
    names = {entity["name"] for entity in platform["entities"]}
    shown = set(page.locator("#entities .entity").evaluate_all("cards => cards.map(c => c.dataset.entity)"))
    assert names and shown == names

    # A figure on a card is the API's figure, as the console formats it.
    entity = next(e for e in platform["entities"] if "request_rate" in e["metrics"])
    cell = page.locator(f'#entities .entity[data-entity="{entity["name"]}"] dd[data-metric="request_rate"]')
    shown_rate = float(cell.inner_text().replace(",", ""))
    assert shown_rate == pytest.approx(entity["metrics"]["request_rate"], rel=0.05)

    # The charts are drawn (uPlot canvases), with one legend entry per service.
    page.wait_for_selector("#charts .panel canvas")
    legend = page.locator('#charts .panel[data-panel="request_rate by service"] .u-legend .u-series')
    assert legend.count() - 1 == len([e for e in platform["entities"] if e["kind"] == "service"])
    assert page.locator("#conn").get_attribute("data-state") == "live"
    # After live frames of the built-in dashboard (and of the stored one, on its own stream), still
    # every service.
    page.wait_for_function("Number(document.querySelector('#charts').dataset.frames) >= 1", timeout=40_000)
    assert legend.count() - 1 == len([e for e in platform["entities"] if e["kind"] == "service"])
    api(console_stack, "DELETE", f"/api/v1/dashboards/{stored}")
    screenshot(page, "overview")


def test_the_console_is_served_with_content_types_and_caching(console_stack, page):
    reply = page.request.get(console_stack.base + "/")
    assert reply.status == 200
    assert reply.headers["content-type"] == "text/html; charset=utf-8"
    assert reply.headers["cache-control"] == "no-cache"
    etag = reply.headers["etag"]
    again = page.request.get(console_stack.base + "/", headers={"if-none-match": etag})
    assert again.status == 304

    script = page.request.get(console_stack.base + "/ui/js/main.js")
    assert script.headers["content-type"] == "text/javascript; charset=utf-8"
    vendored = re.search(r'src="(/ui/vendor/uplot-[^"]+\.js)"', reply.text()).group(1)
    library = page.request.get(console_stack.base + vendored)
    assert library.status == 200 and "immutable" in library.headers["cache-control"]
    assert (
        page.request.get(console_stack.base + "/ui/app.css").headers["content-type"]
        == "text/css; charset=utf-8"
    )

    # What is not a console file is a JSON 404; the API's routes still answer as before.
    missing = page.request.get(console_stack.base + "/ui/nothing.js")
    assert missing.status == 404 and missing.json()["code"] == 404
    assert page.request.get(console_stack.base + "/api/v1/nothing").status == 404
    assert page.request.get(console_stack.base + "/health").json()["status"] == "SERVING"
    assert page.request.get(console_stack.base + "/api/v1/analytics/capabilities").status == 200


def test_overview_on_a_phone_width_has_a_menu_reachable_by_keyboard(console_stack, phone_page):
    page = phone_page
    page.goto(console_stack.base + "/#/overview")
    page.wait_for_selector("#entities .entity")
    nav = page.locator("#nav")
    assert not nav.is_visible()
    page.keyboard.press("Tab")  # the skip link
    page.keyboard.press("Tab")  # the brand
    page.keyboard.press("Tab")  # the menu button
    assert page.evaluate("document.activeElement.className") == "menu-toggle"
    page.keyboard.press("Enter")
    assert nav.is_visible()
    # Nothing is wider than the screen.
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    screenshot(page, "overview-phone")
