"""`make up` runs the stack in the foreground; SIGTERM to make leaves no process behind."""

from __future__ import annotations

import json
import re
import shlex
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

from services.demo.simulation import HOUR_MS, MINUTE_MS, SimulatedPlatform
from tests.e2e.conftest import healthy, stack_env, stop_and_check_nothing_left
from tests.helpers import REPO_ROOT, curl_examples, readme_bodies, wait_until

DEMO_SEED = 7  # the demo feed's seed (services/demo/feed.py)


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
        _injected_spikes_are_listed(port)
        _monitoring_shows_the_demo(port, {s["group"]["service_name"] for s in series})
        _the_readme_reads_answer(port)
        _the_readme_ingest_example_lands(port)
        _the_readme_forecast_answers(port)
        _the_streams_tail_prints_frames(port)
        stop_and_check_nothing_left(process, signal.SIGTERM)
        reader.join(timeout=10)
        banner = "".join(lines)
        assert f"http://127.0.0.1:{port}/health" in banner
        assert f"Web console:               http://127.0.0.1:{port}/" in banner
        assert banner.count("curl -s") == 3
        assert not healthy(port)
    finally:
        if process.poll() is None:
            process.kill()


def _get(port: int, path: str) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as reply:
        return json.loads(reply.read())


def _monitoring_shows_the_demo(port: int, services: set[str]) -> None:
    """What a newcomer opens first: the platform scope lists every demo service with its figures,
    and the built-in platform overview has a curve per service, with no set-up."""
    platform = _get(port, "/api/v1/monitor/platform?time_range=15m")
    listed = {e["name"]: e for e in platform["entities"] if e["kind"] == "service"}
    assert set(listed) == services
    assert all(e["status"] != "unknown" and e["metrics"]["request_rate"] > 0 for e in listed.values())

    def overview() -> dict:
        return {p["metric"]: p for p in _get(port, "/api/v1/dashboards/platform-overview")["panels"]}

    # Panel data is cached DASHBOARD_CACHE_TTL_SECONDS (30 s): an answer computed while the demo's
    # backfill was still arriving may be served until then.
    wait_until(
        lambda: (
            "request_rate" in (panels := overview()) and len(panels["request_rate"].get("series", ())) == 10
        ),
        60,
        "the platform overview to show every demo service",
    )
    panels = overview()
    assert {"request_rate", "error_rate", "latency_p95", "cpu_usage", "memory_usage"} <= set(panels)
    assert {s["group"]["service_name"] for s in panels["request_rate"]["series"]} == services
    assert all(len(s["points"]) > 10 for s in panels["request_rate"]["series"])


def _retargeted(command: str, port: int) -> str:
    """A command of the docs as a reader copies it, pointed at this stack's gateway."""
    return command.replace("localhost:8080", f"127.0.0.1:{port}")


def _curl(command: str, port: int, *options: str) -> subprocess.CompletedProcess[str]:
    """A curl command of the docs run against this stack, with `options` and a 30 s limit added."""
    args = shlex.split(_retargeted(command, port))
    return subprocess.run(
        [args[0], *options, "--max-time", "30", *args[1:]], capture_output=True, text=True, check=False
    )


def _the_readme_reads_answer(port: int) -> None:
    """The README's curl examples that only read (every GET, and the query, timeseries and explain
    POSTs), run by curl as a reader copies them, answer 200 on the demo stack."""
    commands = [
        c
        for c in curl_examples((REPO_ROOT / "README.md").read_text())
        if "<id>" not in c and "$(" not in c and (" -X " not in c or "/api/v1/query" in c)
    ]
    assert len(commands) >= 20
    for command in commands:
        done = _curl(command, port, "-s", "-o", "/dev/null", "-w", "%{http_code}")
        assert (done.returncode, done.stdout) == (0, "200"), command


def _the_readme_ingest_example_lands(port: int) -> None:
    """The README's ingest example, run by curl as a reader copies it: its point is accepted (and,
    run before the forecast example as the README orders them, does not make that one refuse)."""
    (command,) = [c for c in curl_examples((REPO_ROOT / "README.md").read_text()) if "/metrics/ingest" in c]
    done = _curl(command, port, "-s")
    assert done.returncode == 0 and json.loads(done.stdout)["accepted"] == "1", done.stdout


def _the_readme_forecast_answers(port: int) -> None:
    """The README's first forecast example, on the demo's backfill (and the README's ingest
    example's point): a forecast per host."""
    body = readme_bodies("/api/v1/ml/forecast")[0]
    request = urllib.request.Request(f"http://127.0.0.1:{port}/api/v1/ml/forecast", data=body.encode())
    # The first forecast starts the worker processes (statsforecast, compiled on first use).
    with urllib.request.urlopen(request, timeout=180) as reply:
        answer = json.loads(reply.read())
    assert {s["labels"]["host"] for s in answer["series"]} == {"auth-service-1", "auth-service-2"}
    assert all(len(s["points"]) == 24 for s in answer["series"])


def _the_streams_tail_prints_frames(port: int) -> None:
    """docs/streams.md's shell example, run as a reader copies it: the hello frame, then data frames
    of the demo's auth-service CPU as the feed writes them."""
    text = (REPO_ROOT / "docs" / "streams.md").read_text()
    (command,) = [block for block in re.findall(r"```sh\n(.*?)```", text, re.S) if "ws_connect" in block]
    tail = subprocess.Popen(
        ["bash", "-c", _retargeted(command, port)],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        frames = []
        deadline = time.monotonic() + 60
        assert tail.stdout is not None
        while len(frames) < 2 and time.monotonic() < deadline:
            line = tail.stdout.readline()
            if not line:
                break
            frames.append(json.loads(line))
    finally:
        tail.kill()
        _, errors = tail.communicate()
    assert [f["type"] for f in frames] == ["hello", "data"], (frames, errors)
    assert frames[1]["series"][0]["group"]["service_name"] == "auth-service"


def _anomalies(port: int, **query: str) -> list[dict]:
    url = f"http://127.0.0.1:{port}/api/v1/ml/anomalies?" + urllib.parse.urlencode(query)
    with urllib.request.urlopen(url, timeout=10) as reply:
        return json.loads(reply.read()).get("anomalies", [])


def _injected_spikes_are_listed(port: int) -> None:
    """The demo's spikes of the backfilled hours (ground truth from the simulation itself) are found
    by the live scorer and listed under their simulation (or service) within a minute."""
    now = int(time.time() * 1000)
    # After the detector's warm-up (48 points of 10 s) and ended a minute ago.
    window_start, window_end = now - 6 * HOUR_MS + 10 * MINUTE_MS, now - MINUTE_MS
    spikes = [
        i
        for i in SimulatedPlatform(seed=DEMO_SEED).incidents_between(window_start, window_end)
        if i.kind == "spike" and i.start_ms >= window_start and i.end_ms <= window_end
    ]
    on_simulations = [i for i in spikes if "simulation_id" in i.target]
    chosen = on_simulations or spikes  # simulations get a spike in half of the 6-hour blocks
    assert chosen, "the simulation injects 2-4 spikes every 6 hours"

    def found(incident) -> bool:
        key = "simulation_id" if "simulation_id" in incident.target else "service_name"
        listed = _anomalies(
            port,
            labels=f"{key}={incident.target[key]}",
            start=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(incident.start_ms / 1000)),
            end=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(incident.end_ms / 1000 + 300)),
        )
        return any(
            a["metric"] in incident.metrics and a["labels"][key] == incident.target[key] for a in listed
        )

    wait_until(lambda: all(found(i) for i in chosen), 60, f"the demo's injected spikes {chosen} to be listed")
