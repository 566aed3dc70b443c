"""`make up` runs the stack in the foreground; SIGTERM to make leaves no process behind."""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import urllib.error
import urllib.request

from tests.e2e.conftest import healthy, stack_env, stop_and_check_nothing_left
from tests.helpers import REPO_ROOT, wait_until


def _seed_query(port: int) -> list[dict]:
    body = b'{"metrics": ["cpu_usage", "memory_usage"], "time_range": "1h", "group_by": ["service_name"], "mode": "auto"}'
    request = urllib.request.Request(f"http://127.0.0.1:{port}/api/v1/query", data=body, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return json.loads(reply.read())["series"]
    except urllib.error.HTTPError as err:
        # Before the demo's first batch lands, no series has service_name yet: a precise 400.
        assert err.code == 400 and b"group_by[0]: label 'service_name' does not exist" in err.read()
        return []


def test_make_up_serves_then_stops_cleanly_on_sigterm(tmp_path):
    env = stack_env(tmp_path)
    process = subprocess.Popen(
        ["make", "--no-print-directory", "up"],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(process.stdout), daemon=True)
    reader.start()
    try:
        port = int(env["GATEWAY_PORT"])
        wait_until(
            lambda: any("Ctrl-C stops everything" in line for line in lines) or process.poll() is not None,
            120,
            "make up to print its banner",
        )
        assert process.poll() is None
        assert healthy(port)

        # The demo feed backfills through the public ingest API: the seed query returns curves.
        # The backfill arrives in time slices; wait until the last hour is in, then check its shape.
        def full_hour() -> bool:
            return sum(len(s["points"]) > 100 for s in _seed_query(port) if s["group"]["service_name"]) >= 20

        wait_until(full_hour, 60, "an hour of demo data for the seed query")
        series = [s for s in _seed_query(port) if s["group"]["service_name"]]
        assert {s["group"]["service_name"] for s in series} == {
            "analytics-service",
            "api-gateway",
            "auth-service",
            "billing-service",
            "catalog-service",
            "checkout-service",
            "notification-service",
            "search-service",
            "simulation-engine",
            "user-service",
        }
        assert {s["metric"] for s in series} == {"cpu_usage", "memory_usage"}
        stop_and_check_nothing_left(process, signal.SIGTERM)
        reader.join(timeout=10)
        banner = "".join(lines)
        assert f"http://127.0.0.1:{port}/health" in banner
        assert banner.count("curl -s") == 3
        assert not healthy(port)
    finally:
        if process.poll() is None:
            process.kill()
