"""A service run alone stops gracefully on SIGTERM and SIGINT."""

import json
import os
import signal
import subprocess
import sys

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.helpers import REPO_ROOT, free_port, wait_until


def _serving(port: int) -> bool:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service="platformq.analytics.v1.RealtimeService"), timeout=1
            )
        except grpc.RpcError:
            return False
        return reply.status == health_pb2.HealthCheckResponse.SERVING


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_serve_one_service_and_stop_on_signal(tmp_path, sig):
    port = free_port()
    env = {**os.environ, "GRPC_PORT": str(port), "DATA_DIR": str(tmp_path), "SHUTDOWN_GRACE_SECONDS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.realtime"], cwd=REPO_ROOT, env=env, stderr=subprocess.PIPE, text=True
    )
    try:
        wait_until(lambda: _serving(port), 30, "realtime to serve")
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=15)
    finally:
        proc.kill()
    assert proc.returncode == 0
    messages = [json.loads(line)["message"] for line in stderr.splitlines() if line.startswith("{")]
    assert messages[-2:] == ["stopping", "stopped"]
