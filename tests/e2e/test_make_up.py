"""`make up` runs the stack in the foreground; SIGTERM to make leaves no process behind."""

from __future__ import annotations

import signal
import subprocess
import threading

from tests.e2e.conftest import healthy, stack_env, stop_and_check_nothing_left
from tests.helpers import REPO_ROOT, wait_until


def test_make_up_serves_then_stops_cleanly_on_sigterm(tmp_path):
    env = stack_env(tmp_path)
    process = subprocess.Popen(
        ["make", "--no-print-directory", "up"],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(process.stdout), daemon=True)
    reader.start()
    try:
        port = int(env["GATEWAY_PORT"])
        wait_until(
            lambda: any("Ctrl-C stops everything" in line for line in lines) or process.poll() is not None,
            120,
            "make up to print its banner",
        )
        assert process.poll() is None
        assert healthy(port)
        stop_and_check_nothing_left(process, signal.SIGTERM)
        reader.join(timeout=10)
        banner = "".join(lines)
        assert f"http://127.0.0.1:{port}/health" in banner
        assert banner.count("curl -s") == 3
        assert not healthy(port)
    finally:
        if process.poll() is None:
            process.kill()
