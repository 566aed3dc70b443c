"""A real Apache Ignite node for the test session: `scripts/ignite-server` on free loopback ports,
started once (about 2 to 5 s on a warm ~/.m2; `make ignite-deps` resolves it beforehand), stopped at
the end, and stoppable, pausable and restartable mid-test for the fault tests.

The session fixture `ignite_node` is in tests/integration/conftest.py."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

from tests.helpers import REPO_ROOT, alive, free_port, wait_until

SCRIPT = str(REPO_ROOT / "scripts" / "ignite-server")


class IgniteNode:
    """One node run by the repo script; `port` is its thin-client port."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.env = {
            **os.environ,
            "IGNITE_PORT": str(self.port),
            "IGNITE_DISCOVERY_PORT": str(free_port()),
            "IGNITE_COMMUNICATION_PORT": str(free_port()),
            "IGNITE_DATA_DIR": str(data_dir),
            # Should this session die without its finalizer, the node stops by itself.
            "IGNITE_OWNER_PID": str(os.getpid()),
        }
        self.pid: int | None = None

    def _run(self, command: str, timeout: float) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [SCRIPT, command], env=self.env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout
        )

    def start(self) -> None:
        """Start the node and wait until its thin-client port serves."""
        started = self._run("start", timeout=600)  # a cold ~/.m2 downloads ignite-core first
        pid_file = self.data_dir / "ignite.pid"
        if pid_file.exists():
            self.pid = int(pid_file.read_text())
        assert started.returncode == 0, f"ignite-server start failed:\n{started.stderr[-6000:]}"

    def stop(self) -> None:
        """Stop the node (SIGTERM, then SIGKILL if it lingers); nothing of it stays running."""
        if self.pid is not None and alive(self.pid):
            os.kill(self.pid, signal.SIGCONT)  # a paused node cannot handle SIGTERM
        stopped = self._run("stop", timeout=60)
        if self.pid is not None and alive(self.pid):
            os.kill(self.pid, signal.SIGKILL)
            wait_until(lambda: not alive(self.pid), 10, "the Ignite node to be killed")
        assert stopped.returncode == 0, stopped.stderr

    def pause(self) -> None:
        """Freeze the node (SIGSTOP): connections stay open but nothing answers."""
        os.kill(self.pid, signal.SIGSTOP)

    def resume(self) -> None:
        """Let a paused node run again."""
        os.kill(self.pid, signal.SIGCONT)
