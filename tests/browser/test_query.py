"""The query page in a real browser: metrics queries and SQL against the real stack, the answer as
chart and table with the REST answer's numbers, the Explain plan, and the API's own error messages."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from datetime import UTC, datetime

import pytest

from tests.browser.conftest import api, screenshot
from tests.helpers import wait_until

pytestmark = pytest.mark.browser


def rfc3339(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def past_window(minutes: int, step_s: int) -> tuple[int, int]:
    """A window that ended a minute ago, aligned to the step: its answer no longer changes."""
    end = (int(time.time()) // step_s) * step_s * 1000 - 60_000
    return end - minutes * 60_000, end


def error_of(stack, path: str, body: dict) -> tuple[int, str]:
    request = urllib.request.Request(
        stack.base + path,
        data=json.dumps(body).encode(),
        method="POST",
        headers={"content-type": "application/json"},
    )
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=30)
    return caught.value.code, json.loads(caught.value.read())["message"]


def number(text: str) -> float:
    return float(text.replace(",", "").replace("\u202f", ""))


def series_label(series: dict) -> str:
    entries = list(series.get("group", {}).items())
    if len(entries) == 1:
        return entries[0][1] or f"(no {entries[0][0]})"
    return ", ".join(f"{k}={v}" for k, v in entries) or series["metric"]


def open_query(page, stack, body: dict) -> None:
    page.goto(stack.base + "/#/query?q=" + urllib.parse.quote(json.dumps(body)))


def test_a_metrics_query_shows_the_rest_answer_as_chart_table_and_plan(console_stack, page):
    start, end = past_window(30, 60)
    body = {
        "metrics": ["cpu_usage"],
        "datasource": "platform_metrics",
        "start": rfc3339(start),
        "end": rfc3339(end),
        "step": "1m",
        "aggregation": "avg",
        "group_by": ["service_name"],
        "mode": "auto",
    }
    wait_until(
        lambda: len(api(console_stack, "POST", "/api/v1/query", body)["series"]) >= 3,
        30,
        "the demo's services in the query window",
    )
    answer = api(console_stack, "POST", "/api/v1/query", body)
    open_query(page, console_stack, body)
    page.wait_for_selector("#q-series-table tbody tr")

    # The form shows the query the link holds, and the request it sends is that query.
    assert page.locator('#q-metric-list input[value="cpu_usage"]').is_checked()
    assert page.locator('#q-group-list input[value="service_name"]').is_checked()
    assert page.locator("#q-range-kind").input_value() == "absolute"
    assert json.loads(page.locator("#q-request").text_content()) == body

    # The chart holds every point of the answer, one line per series.
    chart = page.locator("#q-chart")
    points = [p for s in answer["series"] for p in s["points"]]
    assert chart.get_attribute("data-lines") == str(len(answer["series"]))
    assert chart.get_attribute("data-points") == str(len(points))
    assert chart.get_attribute("data-newest") == str(max(int(p["timestamp_ms"]) for p in points))
    page.wait_for_selector("#q-chart canvas")

    # The table: one column per series, newest bucket first, the REST values (6 significant digits).
    headers = page.locator("#q-series-table thead th").all_inner_texts()
    assert headers == ["time"] + [series_label(s) for s in answer["series"]]
    newest = max(int(p["timestamp_ms"]) for p in points)
    row = page.locator(f'#q-series-table tbody tr[data-t="{newest}"] td').all_inner_texts()
    for series, cell in zip(answer["series"], row[1:], strict=True):
        value = {int(p["timestamp_ms"]): p.get("value", 0.0) for p in series["points"]}.get(newest)
        if value is None:
            assert cell == ""
        else:
            assert number(cell) == pytest.approx(value, rel=1e-5)
    assert page.locator("#q-series-table tbody tr").count() == len({p["timestamp_ms"] for p in points})

    # How it was answered, and the plan Explain gives for the same query.
    assert page.locator('#q-metadata dd[data-key="engines"]').inner_text() != "none"
    plan = api(console_stack, "POST", "/api/v1/query/explain", {"query": body})["plan"]
    fragments = page.locator("#q-plan .q-fragment")
    assert fragments.count() == len(plan["fragments"])
    assert [f["engine"] for f in plan["fragments"]] == fragments.evaluate_all(
        "items => items.map(i => i.dataset.engine)"
    )
    assert plan["reason"] in page.locator("#q-plan").inner_text()
    assert page.locator('#q-plan dd[data-key="resolution"]').inner_text() == "step 1m"
    screenshot(page, "query")


def test_sql_mode_shows_columns_and_rows_and_runs_with_ctrl_enter(console_stack, page):
    sql = "SELECT metric, count(*) AS series FROM series WHERE datasource = ? GROUP BY 1 ORDER BY 1"
    body = {"sql": sql, "params": ["platform_metrics"]}
    answer = api(console_stack, "POST", "/api/v1/query", body)
    page.goto(console_stack.base + "/#/query")
    page.wait_for_selector("#q-metric-list input")
    page.get_by_role("button", name="SQL", exact=True).click()
    page.locator("#q-sql-text").fill(sql)
    page.locator("#q-params").fill('["platform_metrics"]')
    with page.expect_request("**/api/v1/query") as sent:
        page.locator("#q-sql-text").press("Control+Enter")
    assert sent.value.post_data_json == body
    page.wait_for_selector("#q-sql-table tbody tr")

    assert page.locator("#q-sql-table thead th").all_inner_texts() == answer["columns"]
    rows = page.locator("#q-sql-table tbody tr")
    assert rows.count() == min(len(answer["rows"]), 100)
    first = rows.first.locator("td").all_inner_texts()
    assert first[0] == answer["rows"][0][0]
    assert number(first[1]) == answer["rows"][0][1]
    # Explain has little to say about SQL, and the page says so.
    plan = api(console_stack, "POST", "/api/v1/query/explain", {"query": body})["plan"]
    assert plan["reason"] in page.locator("#q-plan").inner_text()
    assert page.locator('#q-plan dd[data-key="resolution"]').inner_text() == "not applicable (SQL)"
    assert "sql" in page.url and "platform_metrics" in urllib.parse.unquote(page.url)
    screenshot(page, "query-sql")


def test_a_bad_query_shows_the_apis_message(console_stack, page):
    page.goto(console_stack.base + "/#/query")
    page.wait_for_selector('#q-metric-list input[value="cpu_usage"]')
    page.locator('#q-metric-list input[value="cpu_usage"]').check()
    page.locator("#q-step").fill("1ms")
    with page.expect_request("**/api/v1/query") as sent:
        page.locator("#q-run").click()
    shown = json.loads(page.locator("#q-request").text_content())
    assert sent.value.post_data_json == shown
    assert shown["step"] == "1ms" and shown["metrics"] == ["cpu_usage"]
    status, message = error_of(console_stack, "/api/v1/query", shown)
    assert status == 400
    error = page.locator("#q-results .error")
    error.wait_for()
    assert message in error.inner_text()

    # A refused SQL statement: the API's message as it is.
    page.get_by_role("button", name="SQL", exact=True).click()
    page.locator("#q-sql-text").fill("DROP TABLE metrics")
    page.locator("#q-params").fill("[]")
    page.locator("#q-run").click()
    status, message = error_of(console_stack, "/api/v1/query", {"sql": "DROP TABLE metrics"})
    assert status == 400 and message.startswith("sql:")
    page.wait_for_function(
        "m => document.querySelector('#q-results .error')?.textContent.includes(m)", arg=message
    )


def test_ten_series_of_a_thousand_points_are_drawn(console_stack, page):
    start, end = past_window(10_000 // 60, 10)
    start = end - 10_000 * 1000  # 1,000 buckets of 10 s
    body = {
        "metrics": ["cpu_usage"],
        "datasource": "platform_metrics",
        "start": rfc3339(start),
        "end": rfc3339(end),
        "step": "10s",
        "aggregation": "avg",
        "group_by": ["host"],
        "filters": [{"label": "host", "op": "!=", "value": ""}],
        "mode": "auto",
        "limit": 10,
    }

    def total() -> int:
        answer = api(console_stack, "POST", "/api/v1/query", body)
        return sum(len(s["points"]) for s in answer["series"])

    wait_until(lambda: total() >= 9_000, 60, "the demo's backfill of the query window")
    answer = api(console_stack, "POST", "/api/v1/query", body)
    expected = sum(len(s["points"]) for s in answer["series"])
    buckets = len({p["timestamp_ms"] for s in answer["series"] for p in s["points"]})
    open_query(page, console_stack, body)
    page.wait_for_selector("#q-chart canvas")
    assert json.loads(page.locator("#q-request").text_content()) == body
    chart = page.locator("#q-chart")
    assert chart.get_attribute("data-lines") == "10"
    assert int(chart.get_attribute("data-points")) == expected
    # The table is paged: 100 of its ~1,000 rows at a time, with a note saying so.
    assert page.locator("#q-series-table tbody tr").count() == 100
    results = page.locator("#q-results")
    assert f"rows 1\u2013100 of {buckets:,} (newest first), 100 per page" in results.inner_text()
    page.get_by_role("button", name="Next").click()
    assert f"rows 101\u2013200 of {buckets:,}" in results.inner_text()
