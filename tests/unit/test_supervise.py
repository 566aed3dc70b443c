"""The launcher's supervisor (`services.launcher.supervise`): children named to start once the
gateway is healthy (the distributed stack's demo feed) start only after /health first answers 200,
and SIGTERM stops every child. Run in a process of its own, as `analytics up-distributed` runs it
(it installs signal handlers); the gateway is a small HTTP server of this test."""

from __future__ import annotations

import http.server
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

from tests.helpers import REPO_ROOT, descendants, free_port, wait_until


class _Health(http.server.BaseHTTPRequestHandler):
    healthy = threading.Event()

    def do_GET(self) -> None:
        self.send_response(200 if self.healthy.is_set() else 503)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_children_marked_once_healthy_start_after_the_gateway_answers_and_sigterm_stops_all(tmp_path):
    port = free_port()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), _Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    early, late = tmp_path / "early", tmp_path / "late"
    script = textwrap.dedent(
        f"""
        from libs.config import load_settings
        from services.launcher import supervise
        settings = load_settings(data_dir={str(tmp_path)!r}, gateway_port={port})
        raise SystemExit(supervise(
            {{"first": (["sh", "-c", "touch {early}; exec sleep 60"], {{}})}},
            settings,
            "distributed",
            once_healthy={{"demo": (["sh", "-c", "touch {late}; exec sleep 60"], {{}})}},
        ))
        """
    )
    launcher = subprocess.Popen(
        [sys.executable, "-c", script], cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        wait_until(early.exists, 20, "the first child to start")
        time.sleep(1.0)  # the supervisor polls /health every 0.2 s: several 503s
        assert not late.exists()
        _Health.healthy.set()
        wait_until(late.exists, 10, "the child started once healthy")
        children = descendants(launcher.pid)
        assert len(children) == 2
        launcher.send_signal(signal.SIGTERM)
        assert launcher.wait(30) == 0
        wait_until(
            lambda: not any(os.path.exists(f"/proc/{pid}") for pid in children), 10, "children to exit"
        )
    finally:
        if launcher.poll() is None:
            launcher.kill()
        server.shutdown()
