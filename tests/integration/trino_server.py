"""A real Trino server for a test session: `scripts/trino-server` on a free loopback port.

The first run on a machine downloads Trino from Maven Central into ~/.m2 (821 MB) and unpacks it
under build/trino/ (`make trino-deps` does both ahead of pytest); a start then takes 15 to 50 s.
"""

from __future__ import annotations

import os
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.helpers import REPO_ROOT, alive, free_port, wait_until

SCRIPT = str(REPO_ROOT / "scripts" / "trino-server")


@dataclass
class TrinoServer:
    """One scripts/trino-server instance: its port, data dir and environment; start and stop it."""

    port: int
    data_dir: Path
    env: dict[str, str]
    pid: int | None = None

    def run(self, command: str, timeout: float) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [SCRIPT, command], env=self.env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout
        )

    def start(self) -> None:
        started = self.run("start", timeout=900)
        pid_file = self.data_dir / "trino.pid"
        if pid_file.exists():
            self.pid = int(pid_file.read_text())
        assert started.returncode == 0, f"trino-server start failed:\n{started.stderr[-6000:]}"

    def stop(self) -> None:
        stopped = self.run("stop", timeout=120)
        if self.pid is not None and alive(self.pid):  # the script could not stop it: leave nothing running
            os.kill(self.pid, signal.SIGKILL)
            wait_until(lambda: not alive(self.pid), 10, "Trino to be killed")
        assert stopped.returncode == 0, stopped.stderr


def trino_server(data_dir: Path) -> TrinoServer:
    """A (not yet started) server on a free port, stopped by itself should the session die."""
    port = free_port()
    env = {
        **os.environ,
        "TRINO_PORT": str(port),
        "TRINO_DATA_DIR": str(data_dir),
        "TRINO_OWNER_PID": str(os.getpid()),
    }
    return TrinoServer(port, data_dir, env)
