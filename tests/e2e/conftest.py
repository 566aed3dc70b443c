"""The stack as `make up` starts it (`analytics up`: Envoy + `serve all`), on free loopback ports."""

from __future__ import annotations

import os
import shutil
import signal
import ssl
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import pytest

from tests.helpers import REPO_ROOT, alive, descendants, free_port, wait_until

ANALYTICS = str(Path(sys.executable).with_name("analytics"))


@dataclass
class Stack:
    base: str
    gateway_port: int
    grpc_port: int
    env: dict[str, str]
    process: subprocess.Popen


def stack_env(data_dir: Path, **extra: str) -> dict[str, str]:
    """Environment for a stack on fresh loopback ports."""
    return {
        **os.environ,
        "GATEWAY_PORT": str(free_port()),
        "ENVOY_ADMIN_PORT": str(free_port()),
        "WS_BRIDGE_PORT": str(free_port()),
        "GRPC_PORT": str(free_port()),
        "DATA_DIR": str(data_dir),
        "SHUTDOWN_GRACE_SECONDS": "1",
        **extra,
    }


def healthy(port: int, tls: bool = False) -> bool:
    """GET /health answers 200 (over TLS, the test's own self-signed certificate unchecked, when `tls`)."""
    context = None
    if tls:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    try:
        url = f"{'https' if tls else 'http'}://127.0.0.1:{port}/health"
        with urllib.request.urlopen(url, timeout=1, context=context) as reply:
            return reply.status == 200
    except OSError:
        return False


def stop_and_check_nothing_left(process: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    """Signal the launcher and assert every process it started is gone."""
    children = descendants(process.pid)
    assert children, "the launcher started no processes"
    process.send_signal(sig)
    process.wait(timeout=30)
    wait_until(lambda: not any(alive(pid) for pid in children), 10, "every child to exit")


@pytest.fixture(scope="session")
def stack(tmp_path_factory, mlflow_template) -> Stack:
    data_dir = tmp_path_factory.mktemp("stack")
    # An MLflow store with its tables made: the ml service then resolves its registry versions in the
    # background at start, and the first detection answers at once (a brand-new store takes seconds
    # of migrations, paid by the first ML request; docs/mlflow.md).
    (data_dir / "mlflow").mkdir()
    shutil.copyfile(mlflow_template, data_dir / "mlflow" / "mlflow.db")
    # DEMO=0: the assertions count exactly what the tests ingest (test_make_up covers the demo).
    # HOT_FLUSH_SECONDS=3600: nothing leaves the hot tier during the session, so a query's engines are
    # the same whatever order the modules run in and however slow the machine is (the default 30 s
    # flush moved earlier modules' points of the same metrics into segments mid-session).
    env = stack_env(
        data_dir,
        WS_HEARTBEAT_SECONDS="0.3",
        MAX_REQUEST_BYTES="1048576",
        DEMO="0",
        HOT_FLUSH_SECONDS="3600",
    )
    # Logs of Envoy and the services go to a file, read back when start-up fails.
    with (data_dir / "stack.log").open("w") as log, running_stack(env, log) as started:
        yield started


@contextmanager
def running_stack(
    env: dict[str, str], log: IO[str] | int = subprocess.DEVNULL, timeout: float = 60
) -> Iterator[Stack]:
    """`analytics up` with `env` until the gateway's /health answers; stopped (and checked that it
    left no process behind) when the block ends. Its stderr goes to `log`, shown when it fails."""
    process = subprocess.Popen(
        [ANALYTICS, "up"], cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=log
    )
    port = int(env["GATEWAY_PORT"])
    tls = bool(env.get("TLS_CERT"))
    try:
        wait_until(lambda: healthy(port, tls) or process.poll() is not None, timeout, "the gateway's /health")
        if process.poll() is not None:
            shown = Path(log.name).read_text()[-4000:] if hasattr(log, "name") else ""
            raise AssertionError(f"the stack did not start: {shown}")
        scheme = "https" if tls else "http"
        yield Stack(f"{scheme}://127.0.0.1:{port}", port, int(env["GRPC_PORT"]), env, process)
    finally:
        if process.poll() is None:
            stop_and_check_nothing_left(process)


@contextmanager
def own_stack(env: dict[str, str]) -> Iterator[Stack]:
    """A stack of its own (`analytics up` with `env`), for a test whose data must not meet others'."""
    with running_stack(env) as started:
        yield started
