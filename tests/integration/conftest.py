"""A real Apache Pulsar standalone for the session: `scripts/pulsar-standalone` on free loopback ports.

The first run on a machine resolves Pulsar from Maven Central into ~/.m2 (about 250 MB, a minute).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest

from tests.helpers import REPO_ROOT, alive, free_port, wait_until

SCRIPT = str(REPO_ROOT / "scripts" / "pulsar-standalone")
NAMESPACE = "public/default"


@dataclass(frozen=True)
class Broker:
    service_url: str
    http_url: str
    data_dir: Path

    def _admin(self, method: str, path: str) -> bytes:
        request = urllib.request.Request(f"{self.http_url}/admin/v2/{path}", method=method)
        with urllib.request.urlopen(request, timeout=30) as reply:
            return reply.read()

    def create_topic(self, topic: str) -> None:
        """Create a non-partitioned persistent topic ahead of its producers and consumers."""
        self._admin("PUT", f"persistent/{NAMESPACE}/{quote(topic)}")

    def backlog(self, topic: str, subscription: str) -> int:
        """Messages of `topic` not yet acknowledged on `subscription`."""
        stats = json.loads(self._admin("GET", f"persistent/{NAMESPACE}/{quote(topic)}/stats"))
        return stats["subscriptions"][subscription]["msgBacklog"]


def _run(command: str, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SCRIPT, command], env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="session")
def pulsar_broker(tmp_path_factory) -> Broker:
    data_dir = tmp_path_factory.mktemp("pulsar")
    port, http_port = free_port(), free_port()
    env = {
        **os.environ,
        "PULSAR_PORT": str(port),
        "PULSAR_HTTP_PORT": str(http_port),
        "PULSAR_DATA_DIR": str(data_dir),
        # Should this session die without its finalizer, the broker stops by itself.
        "PULSAR_OWNER_PID": str(os.getpid()),
    }
    pid_file = data_dir / "pulsar.pid"
    pid = None
    try:
        # Maven's first download plus the start itself; later runs take about 10 s.
        started = _run("start", env, timeout=900)
        if pid_file.exists():
            pid = int(pid_file.read_text())
        assert started.returncode == 0, f"pulsar-standalone start failed:\n{started.stderr[-6000:]}"
        yield Broker(f"pulsar://127.0.0.1:{port}", f"http://127.0.0.1:{http_port}", data_dir)
    finally:
        stopped = _run("stop", env, timeout=120)
        if pid is not None and alive(pid):  # the script could not stop it: leave nothing running
            os.kill(pid, signal.SIGKILL)
            wait_until(lambda: not alive(pid), 10, "the broker to be killed")
        assert stopped.returncode == 0, stopped.stderr
