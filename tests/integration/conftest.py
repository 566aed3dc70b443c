"""A real Apache Pulsar standalone for the session: `scripts/pulsar-standalone` on free loopback ports.

The first run on a machine resolves Pulsar from Maven Central into ~/.m2 (about 250 MB, a minute).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar
from urllib.parse import quote

import grpc
import pytest
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from platformq.analytics.v1 import realtime_service_pb2 as rpb
from platformq.analytics.v1 import realtime_service_pb2_grpc as rgrpc
from tests.helpers import REPO_ROOT, alive, free_port, wait_until
from tests.integration.druid_server import DruidCluster, druid_cluster
from tests.integration.ignite_server import IgniteNode
from tests.integration.trino_server import TrinoServer, trino_server

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


class _Server(Protocol):
    def start(self) -> None: ...

    def stop(self) -> None: ...


S = TypeVar("S", bound=_Server)


def _running(server: S) -> Iterator[S]:
    """A session fixture's body for a server script's process: started, yielded, stopped."""
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session", name="trino_server")
def trino_server_fixture(tmp_path_factory) -> TrinoServer:
    """A real Trino for the session (scripts/trino-server), started by the first test that needs it."""
    yield from _running(trino_server(tmp_path_factory.mktemp("trino")))


@pytest.fixture(scope="session", name="druid_cluster")
def druid_cluster_fixture(tmp_path_factory) -> DruidCluster:
    """A real Druid for the session (scripts/druid-cluster), started by the first test that needs it."""
    yield from _running(druid_cluster(tmp_path_factory.mktemp("druid")))


@pytest.fixture(scope="session", name="ignite_node")
def ignite_node_fixture(tmp_path_factory) -> IgniteNode:
    """A real Ignite node for the session (scripts/ignite-server), started by the first test that needs it."""
    yield from _running(IgniteNode(tmp_path_factory.mktemp("ignite")))


class Service:
    """One `analytics serve <name>` process of the cluster."""

    def __init__(self, name: str, env: dict[str, str], log: Path) -> None:
        self.name, self.env, self.log = name, env, log
        self.port = int(env["GRPC_PORT"])
        self.proc: subprocess.Popen | None = None

    def start(self) -> Service:
        with self.log.open("a") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "services.cli", "serve", self.name],
                cwd=REPO_ROOT,
                env=self.env,
                stdout=out,
                stderr=out,
            )
        wait_until(self.serving, 60, f"{self.name} to serve")
        return self

    def serving(self) -> bool:
        assert self.proc.poll() is None, self.log.read_text()[-3000:]
        with grpc.insecure_channel(f"127.0.0.1:{self.port}") as channel:
            try:
                reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1)
            except grpc.RpcError:
                return False
        return reply.status == health_pb2.HealthCheckResponse.SERVING

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def cluster(pulsar_broker, tmp_path):
    """A query-router (store and bus consumer) and two realtime replicas on the broker."""
    base = {
        **os.environ,
        "PULSAR_URL": pulsar_broker.service_url,
        "LOG_LEVEL": "INFO",
        "HOT_FLUSH_SECONDS": "1",
        "HOT_FLUSH_POINTS": "5000",
        "WS_BRIDGE_PORT": str(free_port()),
    }
    services = {
        "query-router": Service(
            "query-router",
            {**base, "GRPC_PORT": str(free_port()), "DATA_DIR": str(tmp_path / "store")},
            tmp_path / "query-router.log",
        ),
        "realtime-1": Service(
            "realtime",
            {**base, "GRPC_PORT": str(free_port()), "DATA_DIR": str(tmp_path / "r1")},
            tmp_path / "realtime-1.log",
        ),
        "realtime-2": Service(
            "realtime",
            {**base, "GRPC_PORT": str(free_port()), "DATA_DIR": str(tmp_path / "r2")},
            tmp_path / "realtime-2.log",
        ),
    }
    try:
        for service in services.values():
            service.start()
        yield services
    finally:
        for service in services.values():
            service.stop()


def start_ml(cluster: dict[str, Service], service_url: str, data_dir: Path, **env: str) -> Service:
    """An ml service process on the broker, reading history from the cluster's query-router."""
    return Service(
        "ml",
        {
            **os.environ,
            "PULSAR_URL": service_url,
            "GRPC_PORT": str(free_port()),
            "DATA_DIR": str(data_dir),
            "QUERY_ROUTER_ADDRESS": f"127.0.0.1:{cluster['query-router'].port}",
            "WS_BRIDGE_PORT": str(free_port()),
            **env,
        },
        data_dir.with_suffix(".log"),
    ).start()


async def ingest_in_chunks(
    cluster: dict[str, Service], datasource: str, name: str, labels: dict[str, str], ts, values, chunk: int
) -> None:
    """Ingest one series in chunks of `chunk` points, alternating between the two realtime
    replicas; each chunk must be accepted whole."""
    replicas = [cluster["realtime-1"].port, cluster["realtime-2"].port]
    for k, lo in enumerate(range(0, len(ts), chunk)):
        async with aio.insecure_channel(f"127.0.0.1:{replicas[k % 2]}") as channel:
            batch = rpb.IngestMetricsRequest(datasource=datasource)
            batch.series.add(
                name=name,
                labels=labels,
                timestamps_ms=[int(t) for t in ts[lo : lo + chunk]],
                values=[float(v) for v in values[lo : lo + chunk]],
            )
            reply = await rgrpc.RealtimeServiceStub(channel).IngestMetrics(batch, timeout=10)
            assert reply.accepted == len(batch.series[0].values), reply
