"""Through Envoy: a heavy SQL query stops in DuckDB once the gateway has answered 504 (its timeout shorter
than QUERY_TIMEOUT_SECONDS here), a query over QUERY_MEMORY_LIMIT answers 429, and paths stay hidden."""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import own_stack, stack_env
from tests.helpers import descendants

# About 25 CPU-seconds of DuckDB work if nothing stops it.
HEAVY = (
    "SELECT count(*) FROM (SELECT unnest(range(100000)) AS a) x, (SELECT unnest(range(30000)) AS b) y "
    "WHERE (a * b) % 7 = 3"
)
TICKS = os.sysconf("SC_CLK_TCK")


@pytest.fixture(scope="module")
def gateway(tmp_path_factory) -> Iterator[tuple[str, int]]:
    """The stack with a 2 s gateway timeout, a longer query timeout and a small DuckDB memory: the base
    URL and the pid of the services' process."""
    env = stack_env(
        tmp_path_factory.mktemp("safety"),
        DEMO="0",
        REQUEST_TIMEOUT_SECONDS="2",
        QUERY_TIMEOUT_SECONDS="50",
        QUERY_MEMORY_LIMIT="64MB",
        SELF_METRICS_INTERVAL_SECONDS="0",
    )
    with own_stack(env) as stack:
        services = [pid for pid in descendants(stack.process.pid) if b"serve" in _cmdline(pid)]
        assert len(services) == 1, services
        yield stack.base, services[0]


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _cpu_seconds(pid: int) -> float:
    # utime and stime, the 14th and 15th fields of /proc/<pid>/stat (after the parenthesised name).
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def _idle_within(pid: int, seconds: float) -> None:
    """Fail unless a quarter-second window in which `pid` uses under 0.2 cores starts within `seconds`."""
    started = time.monotonic()
    while True:
        cpu, wall = _cpu_seconds(pid), time.monotonic()
        time.sleep(0.25)  # the measuring window, not a wait for something to happen
        cores = (_cpu_seconds(pid) - cpu) / (time.monotonic() - wall)
        if cores < 0.2:
            return
        assert wall - started < seconds, f"the services still use {cores:.2f} cores {seconds} s on"


def _post(base: str, body: dict, timeout: float = 60) -> tuple[int, dict]:
    request = urllib.request.Request(
        f"{base}/api/v1/query", json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_a_query_envoy_gave_up_on_stops_using_the_cpu(gateway):
    base, services = gateway
    _idle_within(services, 10)
    cpu = _cpu_seconds(services)
    status, body = _post(base, {"sql": HEAVY})
    assert status == 504, body
    _idle_within(services, 1)
    # Stopped, not run to its end (about 25 CPU-seconds).
    assert _cpu_seconds(services) - cpu < 10
    status, body = _post(base, {"sql": "SELECT 1 + 1 AS two"})
    assert status == 200 and body["rows"] == [[2]], body


def test_a_query_over_the_memory_limit_answers_429_naming_it(gateway):
    base, _ = gateway
    status, body = _post(
        base, {"sql": "SELECT length(string_agg(repeat('x', 1000000), ',')) FROM (SELECT unnest(range(200)))"}
    )
    assert status == 429, body
    assert "more memory than QUERY_MEMORY_LIMIT (64MB) allows" in body["message"]


def test_reading_the_allowed_directories_answers_400_without_a_path(gateway, tmp_path_factory):
    base, _ = gateway
    status, body = _post(base, {"sql": "SELECT current_setting('allowed_directories')"})
    assert status == 400, body
    assert body["message"].startswith("sql: setting 'allowed_directories' is not readable")
    assert "/" not in body["message"]
