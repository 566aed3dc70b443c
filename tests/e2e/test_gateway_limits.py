"""Refusals at the gateway itself: a client dripping its headers (slowloris, also on a WebSocket
upgrade) is cut off after GATEWAY_HEADERS_TIMEOUT_SECONDS; oversized headers get 431."""

from __future__ import annotations

import socket
import time

import pytest

from tests.e2e.conftest import own_stack, stack_env

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def quick_stack(tmp_path_factory):
    env = stack_env(tmp_path_factory.mktemp("limits"), DEMO="0", GATEWAY_HEADERS_TIMEOUT_SECONDS="1")
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
