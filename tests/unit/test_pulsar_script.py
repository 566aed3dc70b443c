"""scripts/pulsar-standalone's `stop` and its pid file: a recorded broker that has already died (a
Ctrl-C reaches it with the rest of the terminal's process group, so it may be a zombie or exiting
when `make up-distributed` stops it) is forgotten quietly; a live process that is not the broker is
never touched."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from tests.helpers import REPO_ROOT

SCRIPT = REPO_ROOT / "scripts" / "pulsar-standalone"


def _stop(data_dir) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PULSAR_DATA_DIR": str(data_dir), "PULSAR_STOP_TIMEOUT": "5"}
    return subprocess.run([str(SCRIPT), "stop"], env=env, capture_output=True, text=True, timeout=30)


def test_a_broker_that_died_but_was_not_reaped_yet_is_forgotten(tmp_path):
    dead = subprocess.Popen(["sh", "-c", "exit 0"])  # not waited for: a zombie until then
    try:
        while Path(f"/proc/{dead.pid}/stat").read_text().split()[2] != "Z":
            time.sleep(0.05)
        (tmp_path / "pulsar.pid").write_text(str(dead.pid))
        done = _stop(tmp_path)
        assert (done.returncode, done.stderr.strip()) == (0, "pulsar-standalone: not running")
        assert not (tmp_path / "pulsar.pid").exists()
    finally:
        dead.wait()


def test_a_live_process_that_is_not_the_broker_is_not_touched(tmp_path):
    other = subprocess.Popen(["sleep", "30"])
    try:
        (tmp_path / "pulsar.pid").write_text(str(other.pid))
        done = _stop(tmp_path)
        assert done.returncode == 1 and "alive but not the broker" in done.stderr
        assert (tmp_path / "pulsar.pid").exists() and other.poll() is None
    finally:
        other.kill()
        other.wait()
