"""Drives scripts/pulsar-standalone: a real Apache Pulsar standalone on loopback, for distributed
mode (`make up-distributed`) and the integration tests."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "pulsar-standalone"


class PulsarStandalone:
    """One broker: its ports come from PULSAR_PORT / PULSAR_HTTP_PORT, its files from `data_dir`."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.port = int(os.environ.get("PULSAR_PORT", "6650"))
        self.http_port = int(os.environ.get("PULSAR_HTTP_PORT", "8085"))

    @property
    def url(self) -> str:
        """The broker's service URL."""
        return f"pulsar://127.0.0.1:{self.port}"

    def _run(self, command: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
        env = {
            **os.environ,
            "PULSAR_PORT": str(self.port),
            "PULSAR_HTTP_PORT": str(self.http_port),
            "PULSAR_DATA_DIR": str(self.data_dir),
        }
        return subprocess.run([str(SCRIPT), command], env=env, check=check)

    def running(self) -> bool:
        """True when this data directory's broker is running."""
        return self._run("status", check=False).returncode == 0

    def start(self) -> bool:
        """Start and wait until ready; False (and nothing done) when it was already running."""
        if self.running():
            return False
        self._run("start")
        return True

    def stop(self) -> None:
        """Stop the broker (SIGTERM, then SIGKILL after a timeout)."""
        self._run("stop", check=False)
