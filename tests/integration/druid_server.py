"""A real Apache Druid cluster for a test session: `scripts/druid-cluster` on free loopback ports.

The first run on a machine resolves Druid from Maven Central into ~/.m2 (about 190 MB, 40 s; `make
druid-deps` does it ahead of pytest); a start then takes about 20 to 40 s on 2 busy cores.
"""

from __future__ import annotations

import os
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from tests.helpers import REPO_ROOT, alive, free_port

SCRIPT = str(REPO_ROOT / "scripts" / "druid-cluster")
SERVICES = ("zookeeper", "coordinator", "broker", "historical", "indexer")


@dataclass
class DruidCluster:
    """One scripts/druid-cluster instance: its ports, data dir and environment; start and stop it
    (all of it, or one service, as the fault tests do with the broker)."""

    ports: dict[str, int]
    data_dir: Path
    env: dict[str, str]
    pids: dict[str, int] = field(default_factory=dict)

    @property
    def broker_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['broker']}"

    @property
    def coordinator_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['coordinator']}"

    def run(self, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [SCRIPT, *args], env=self.env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout
        )

    def _record_pids(self) -> None:
        for service in SERVICES:
            pid_file = self.data_dir / f"{service}.pid"
            if pid_file.exists():
                self.pids[service] = int(pid_file.read_text())

    def start(self, *services: str) -> None:
        started = self.run("start", *services, timeout=900)
        self._record_pids()
        assert started.returncode == 0, f"druid-cluster start failed:\n{started.stderr[-6000:]}"

    def stop(self, *services: str) -> None:
        stopped = self.run("stop", *services, timeout=180)
        for service in services or SERVICES:
            pid = self.pids.get(service)
            if pid is not None and alive(pid):  # the script could not stop it: leave nothing running
                os.kill(pid, signal.SIGKILL)
        assert stopped.returncode == 0, stopped.stderr

    def rss_bytes(self) -> int:
        """Resident memory of every service process, summed (from /proc)."""
        total = 0
        for pid in self.pids.values():
            try:
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
            except OSError:
                continue
        return total


def druid_cluster(data_dir: Path) -> DruidCluster:
    """A (not yet started) cluster on free ports, stopped by itself should the session die."""
    ports = {name: free_port() for name in (*SERVICES, "derby")}
    env = {
        **os.environ,
        "DRUID_DATA_DIR": str(data_dir),
        "DRUID_ZK_PORT": str(ports["zookeeper"]),
        "DRUID_DERBY_PORT": str(ports["derby"]),
        "DRUID_COORDINATOR_PORT": str(ports["coordinator"]),
        "DRUID_BROKER_PORT": str(ports["broker"]),
        "DRUID_HISTORICAL_PORT": str(ports["historical"]),
        "DRUID_INDEXER_PORT": str(ports["indexer"]),
        "DRUID_OWNER_PID": str(os.getpid()),
    }
    return DruidCluster(ports, data_dir, env)
