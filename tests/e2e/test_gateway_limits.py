"""Refusals at the gateway itself: a client dripping its headers (slowloris, also on a WebSocket
upgrade) is cut off after GATEWAY_HEADERS_TIMEOUT_SECONDS; oversized headers get 431; a body over
MAX_REQUEST_BYTES gets 413; a connection over GATEWAY_MAX_CONNECTIONS is closed; each is counted in
the self-metrics."""

from __future__ import annotations

import socket
import time
import urllib.error
import urllib.request

import pytest

from tests.e2e.conftest import own_stack, stack_env

pytestmark = pytest.mark.e2e


MAX_CONNECTIONS = 6


@pytest.fixture(scope="module")
def quick_stack(tmp_path_factory):
    env = stack_env(
        tmp_path_factory.mktemp("limits"),
        DEMO="0",
        GATEWAY_HEADERS_TIMEOUT_SECONDS="1",
        MAX_REQUEST_BYTES="65536",
        GATEWAY_MAX_CONNECTIONS=str(MAX_CONNECTIONS),
    )
    with own_stack(env) as started:
        yield started


def _closed_after_drip(port: int, start: bytes, budget_s: float) -> float:
    """Send `start`, then one header byte every 0.2 s; the seconds until the gateway hung up."""
    began = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=budget_s) as conn:
        conn.sendall(start)
        while time.monotonic() - began < budget_s:
            try:
                conn.sendall(b"x")
                conn.settimeout(0.2)
                if conn.recv(4096) == b"":
                    return time.monotonic() - began
            except TimeoutError:
                continue
            except OSError:  # reset by the peer
                return time.monotonic() - began
            else:
                return time.monotonic() - began  # it answered (a 408) and will close
    raise AssertionError(f"the gateway still held the connection after {budget_s} s")


def test_a_client_dripping_its_headers_is_cut_off(quick_stack):
    upgrade = (
        b"GET /api/v1/ws/metrics/cpu_usage HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\nX-Slow: "
    )
    assert _closed_after_drip(quick_stack.gateway_port, upgrade, budget_s=15) < 10
    plain = b"POST /api/v1/query HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "
    assert _closed_after_drip(quick_stack.gateway_port, plain, budget_s=15) < 10


def test_oversized_headers_get_431(quick_stack):
    with socket.create_connection(("127.0.0.1", quick_stack.gateway_port), timeout=10) as conn:
        conn.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n")
        answer = conn.recv(4096)
    assert answer.startswith(b"HTTP/1.1 431"), answer[:200]


def _refusals(stack) -> dict[str, float]:
    with urllib.request.urlopen(stack.base + "/api/v1/export/prometheus", timeout=10) as reply:
        text = reply.read().decode()
    counts = {}
    for line in text.splitlines():
        if line.startswith("analytics_gateway_refusals_total{"):
            reason = line.split('reason="', 1)[1].split('"', 1)[0]
            counts[reason] = float(line.rsplit(" ", 1)[1])
    return counts


def test_refusals_are_counted_in_the_self_metrics(quick_stack):
    before = _refusals(quick_stack)
    body = b"{" + b" " * (int(quick_stack.env["MAX_REQUEST_BYTES"]) + 1) + b"}"
    request = urllib.request.Request(quick_stack.base + "/api/v1/query", data=body, method="POST")
    try:
        urllib.request.urlopen(request, timeout=10)
    except urllib.error.HTTPError as err:
        assert err.code == 413
    with socket.create_connection(("127.0.0.1", quick_stack.gateway_port), timeout=10) as conn:
        conn.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n")
        conn.recv(4096)
    _closed_after_drip(quick_stack.gateway_port, b"GET /health HTTP/1.1\r\nX-Slow: ", budget_s=15)
    after = _refusals(quick_stack)
    assert after["body_too_large"] >= before.get("body_too_large", 0) + 1, (before, after)
    assert after["bad_request"] >= before.get("bad_request", 0) + 1, (before, after)
    assert after["headers_timeout"] >= before.get("headers_timeout", 0) + 1, (before, after)


def _answers(port: int) -> bytes:
    """What the gateway sends back to a GET /health on a new connection (b"" when it hangs up)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        try:
            return conn.recv(4096)
        except ConnectionResetError:
            return b""


def test_a_connection_over_the_limit_is_closed_and_counted_and_the_next_one_served(quick_stack):
    before = _refusals(quick_stack).get("connections", 0)
    port = quick_stack.gateway_port
    idle = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(MAX_CONNECTIONS)]
    try:
        # Refused once Envoy's worker has accepted the idle ones, which on a loaded machine can take
        # longer than any fixed wait (a fresh-clone run answered 200 after 0.5 s).
        deadline = time.monotonic() + 10
        while _answers(port) != b"" and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _answers(port) == b""
        # Envoy's admin port stays reachable (the ws bridge reads the refusal counters there).
        admin = f"http://127.0.0.1:{quick_stack.env['ENVOY_ADMIN_PORT']}/ready"
        with urllib.request.urlopen(admin, timeout=5) as reply:
            assert reply.status == 200
    finally:
        for conn in idle:
            conn.close()
    deadline = time.monotonic() + 10
    while not _answers(port).startswith(b"HTTP/1.1 200") and time.monotonic() < deadline:
        time.sleep(0.2)  # until Envoy has seen the idle ones go
    assert _answers(port).startswith(b"HTTP/1.1 200")
    assert _refusals(quick_stack)["connections"] >= before + 1
