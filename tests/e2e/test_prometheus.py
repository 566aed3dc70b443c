"""The Prometheus export through the real Envoy: the self-metrics in the text exposition format
checked by Debian's real `promtool check metrics`, `match[]` (form-encoded as Prometheus sends it)
returning an ingested series' latest value (and the store's gauges counting it), a bad selector as a 400 naming `match[]`, and the
self-metrics queried back from datasource analytics_self with POST /api/v1/query."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from tests.e2e.test_gateway import http
from tests.helpers import REPO_ROOT, wait_until

EXPORT = "/api/v1/export/prometheus"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def prometheus_tools() -> Path:
    """The directory holding Debian's prometheus and promtool, unpacked by scripts/prometheus-deps
    (`make test` runs it first; here it is a no-op then)."""
    done = subprocess.run(
        [str(REPO_ROOT / "scripts" / "prometheus-deps")],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return Path(done.stdout.strip())


def get_text(stack, path: str) -> tuple[int, dict, str]:
    """GET `path` through the gateway: status, headers, body as text."""
    try:
        with urllib.request.urlopen(stack.base + path, timeout=10) as reply:
            return reply.status, dict(reply.headers), reply.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read().decode()


def export_path(*selectors: str) -> str:
    # urlencode writes a space as '+', as Go's url.Values (Prometheus' `params`) does.
    return EXPORT + ("?" + urllib.parse.urlencode([("match[]", s) for s in selectors]) if selectors else "")


def test_the_self_metrics_are_served_and_promtool_finds_nothing_wrong(stack, tmp_path):
    status, headers, body = get_text(stack, EXPORT)
    assert status == 200, body
    assert headers["content-type"] == CONTENT_TYPE
    assert "# TYPE analytics_query_duration_seconds histogram" in body
    assert "# TYPE analytics_cache_requests_total counter" in body
    assert 'process_resident_memory_bytes{instance="all"' in body
    checked = subprocess.run(
        [str(prometheus_tools() / "promtool"), "check", "metrics"],
        input=body,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (checked.returncode, checked.stdout + checked.stderr) == (0, "")


def test_match_returns_the_latest_value_of_an_ingested_series(stack):
    now = int(time.time() * 1000)
    points = [
        {
            "name": "e2e_export_temp",
            "value": v,
            "timestamp_ms": now - 1000 * (3 - i),
            "labels": {"room": "a b"},
        }
        for i, v in enumerate((20.0, 20.5, 21.25))
    ]
    status, _, reply = http(
        stack, "POST", "/api/v1/metrics/ingest", json.dumps({"datasource": "e2e_export", "points": points})
    )
    assert status == 200 and reply["accepted"] == "3", reply
    status, headers, body = get_text(
        stack, export_path('e2e_export_temp{room="a b", datasource="e2e_export"}')
    )
    assert status == 200, body
    assert headers["content-type"] == CONTENT_TYPE
    samples = [line for line in body.splitlines() if not line.startswith("#")]
    assert samples == [f'e2e_export_temp{{datasource="e2e_export",room="a b"}} 21.25 {now - 1000}']
    # The store's own gauges count the new datasource's series (and its points, still hot or not).
    _, _, body = get_text(stack, EXPORT)
    storage = {
        line.split("{")[0]: float(line.rsplit(" ", 1)[1])
        for line in body.splitlines()
        if line.startswith("analytics_storage_") and 'datasource="e2e_export"' in line
    }
    assert storage["analytics_storage_series"] == 1
    assert storage["analytics_storage_hot_points"] + storage["analytics_storage_segments"] >= 1


@pytest.mark.parametrize(
    ("selector", "reason"),
    [
        ("cpu_usage{", "unterminated label matchers"),
        ('{room=""}', "at least one matcher that does not match the empty string"),
        ('cpu{a=~"("}', "is not a valid regular expression"),
    ],
)
def test_a_bad_selector_is_a_400_naming_match(stack, selector, reason):
    status, headers, body = get_text(stack, export_path(selector))
    assert headers["content-type"] == "application/json"
    assert status == 400, body
    reply = json.loads(body)
    assert reply["message"].startswith("match[]: ") and reason in reply["message"]


def test_the_self_metrics_answer_a_query_on_analytics_self(stack):
    status, _, reply = http(stack, "POST", "/api/v1/query", '{"metrics": ["cpu_usage"], "time_range": "1h"}')
    assert status == 200, reply
    query = json.dumps(
        {
            "datasource": "analytics_self",
            "metrics": ["analytics_query_duration_seconds_count"],
            "time_range": "5m",
            "aggregation": "max",
            "group_by": ["instance", "mode"],
        }
    )

    def counted() -> bool:
        status, _, reply = http(stack, "POST", "/api/v1/query", query)
        if status == 404:  # nothing written yet (every SELF_METRICS_INTERVAL_SECONDS, 10 s here)
            return False
        assert status == 200, reply
        return any(s["group"]["instance"] == "all" and s["points"][-1]["value"] >= 1 for s in reply["series"])

    wait_until(counted, 40, "analytics_query_duration_seconds_count in datasource analytics_self")
