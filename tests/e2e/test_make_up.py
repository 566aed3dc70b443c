"""`make up` runs the stack in the foreground; SIGTERM to make leaves no process behind."""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import urllib.request

from tests.e2e.conftest import healthy, stack_env, stop_and_check_nothing_left
from tests.helpers import REPO_ROOT, wait_until


def _seed_query(port: int) -> list[dict]:
    body = b'{"metrics": ["cpu_usage", "memory_usage"], "time_range": "1h", "group_by": ["service_name"], "mode": "auto"}'
    request = urllib.request.Request(f"http://127.0.0.1:{port}/api/v1/query", data=body, method="POST")
    with urllib.request.urlopen(request, timeout=10) as reply:
        return json.loads(reply.read())["series"]


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
        wait_until(lambda: len(_seed_query(port)) >= 10, 60, "demo data for the seed query")
        series = _seed_query(port)
        services = {s["group"]["service_name"] for s in series} - {""}
        assert len(services) == 10
        assert all(len(s["points"]) > 100 for s in series if s["group"]["service_name"])
        stop_and_check_nothing_left(process, signal.SIGTERM)
        reader.join(timeout=10)
        banner = "".join(lines)
        assert f"http://127.0.0.1:{port}/health" in banner
        assert banner.count("curl -s") == 3
        assert not healthy(port)
    finally:
        if process.poll() is None:
            process.kill()
