"""Debian's real Prometheus scraping the service through Envoy, and the export in distributed mode.

1. The stack as `make up` starts it (Envoy + `serve all`), scraped by `prometheus` (loopback, a free
   port, a temporary config and storage, scrape_interval 1s) twice: a plain scrape of the
   self-metrics, and a federation-style scrape with `params: {'match[]': [...]}`. Values are read
   back from Prometheus' HTTP API and compared with what the service reported.
2. Distributed mode on a real Pulsar: the monitoring process's export also carries the other
   processes' self-metrics (read back from analytics_self), and promtool accepts the result.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from platformq.analytics.v1 import (
    monitoring_service_pb2,
    monitoring_service_pb2_grpc,
    query_service_pb2,
    query_service_pb2_grpc,
    realtime_service_pb2,
    realtime_service_pb2_grpc,
)
from tests.e2e.conftest import ANALYTICS, Stack, healthy, stack_env, stop_and_check_nothing_left
from tests.e2e.test_prometheus import prometheus_tools
from tests.helpers import REPO_ROOT, free_port, wait_until
from tests.integration.conftest import Service

pytestmark = pytest.mark.integration

DATASOURCE = "scrape_case"
SELECTOR = f'scrape_temp{{room="a b", datasource="{DATASOURCE}"}}'  # the space is sent as '+'


def value_of(text: str, name: str, **labels: str) -> float | None:
    """The value of the one sample called `name` whose labels include `labels` (exposition text)."""
    found = [
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name and labels.items() <= s.labels.items()
    ]
    assert len(found) <= 1, found
    return found[0] if found else None


def fetch(url: str, data: bytes | None = None) -> bytes:
    request = urllib.request.Request(url, data=data, headers={"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as reply:
        return reply.read()


@pytest.fixture
def scraped_stack(tmp_path) -> Iterator[Stack]:
    """The stack as `make up` starts it, writing its self-metrics every second."""
    env = stack_env(tmp_path / "data", DEMO="0", SELF_METRICS_INTERVAL_SECONDS="1")
    log = (tmp_path / "stack.log").open("w")
    process = subprocess.Popen(
        [ANALYTICS, "up"], cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=log, text=True
    )
    port = int(env["GATEWAY_PORT"])
    try:
        wait_until(lambda: healthy(port) or process.poll() is not None, 60, "the gateway's /health")
        assert process.poll() is None, (tmp_path / "stack.log").read_text()[-4000:]
        yield Stack(f"http://127.0.0.1:{port}", port, int(env["GRPC_PORT"]), env, process)
    finally:
        if process.poll() is None:
            stop_and_check_nothing_left(process)
        log.close()


class Prometheus:
    """A real `prometheus` on loopback with its own config and storage; stopped by `stop`."""

    def __init__(self, config: dict, workdir: Path) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        (workdir / "prometheus.yml").write_text(json.dumps(config))  # JSON is YAML
        self.log = workdir / "prometheus.log"
        with self.log.open("w") as out:
            self.process = subprocess.Popen(
                [
                    str(prometheus_tools() / "prometheus"),
                    f"--config.file={workdir / 'prometheus.yml'}",
                    f"--storage.tsdb.path={workdir / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                ],
                stdout=out,
                stderr=out,
            )

    def query(self, promql: str) -> list[dict]:
        """An instant query's result vector (empty while nothing matches)."""
        assert self.process.poll() is None, self.log.read_text()[-3000:]
        reply = json.loads(fetch(f"{self.base}/api/v1/query?" + urllib.parse.urlencode({"query": promql})))
        assert reply["status"] == "success", reply
        return reply["data"]["result"]

    def targets_up(self) -> bool:
        try:
            reply = json.loads(fetch(f"{self.base}/api/v1/targets"))
        except OSError:
            return False
        targets = reply["data"]["activeTargets"]
        return len(targets) == 2 and all(t["health"] == "up" for t in targets)

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def test_prometheus_scrapes_the_export_through_envoy(scraped_stack, tmp_path):
    stack = scraped_stack
    now = int(time.time() * 1000)
    points = [
        {"name": "scrape_temp", "value": 21.25, "timestamp_ms": now - 1000, "labels": {"room": "a b"}},
        {"name": "scrape_temp", "value": 30.0, "timestamp_ms": now - 1000, "labels": {"room": "c"}},
    ]
    reply = json.loads(
        fetch(
            f"{stack.base}/api/v1/metrics/ingest",
            json.dumps({"datasource": DATASOURCE, "points": points}).encode(),
        )
    )
    assert reply["accepted"] == "2", reply
    # What the service itself reports for the ingest counter of this datasource.
    reported = value_of(
        fetch(f"{stack.base}/api/v1/export/prometheus").decode(),
        "analytics_ingest_points_total",
        datasource=DATASOURCE,
        result="accepted",
    )
    assert reported == 2
    target = {"targets": [f"127.0.0.1:{stack.gateway_port}"]}
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [
            {
                "job_name": "analytics",
                "metrics_path": "/api/v1/export/prometheus",
                "static_configs": [target],
            },
            {
                "job_name": "federate",
                "honor_labels": True,
                "metrics_path": "/api/v1/export/prometheus",
                "params": {"match[]": [SELECTOR]},
                "static_configs": [target],
            },
        ],
    }
    prometheus = Prometheus(config, tmp_path)
    try:
        wait_until(prometheus.targets_up, 60, "both scrape targets to be up")
        scraped = (
            f'analytics_ingest_points_total{{job="analytics",datasource="{DATASOURCE}",result="accepted"}}'
        )
        wait_until(lambda: prometheus.query(scraped), 30, "the ingest counter in Prometheus")
        [sample] = prometheus.query(scraped)
        assert float(sample["value"][1]) == reported
        # Prometheus keeps its own `instance` (the target) and renames the process's one.
        assert sample["metric"]["exported_instance"] == "all"
        assert sample["metric"]["instance"] == f"127.0.0.1:{stack.gateway_port}"

        federated = 'scrape_temp{job="federate"}'
        wait_until(lambda: prometheus.query(federated), 30, "the federated series in Prometheus")
        [sample] = prometheus.query(federated)
        assert sample["metric"] == {
            "__name__": "scrape_temp",
            "datasource": DATASOURCE,
            "room": "a b",
            "instance": f"127.0.0.1:{stack.gateway_port}",
            "job": "federate",
        }
        assert float(sample["value"][1]) == 21.25
        # The stored timestamp is kept: Prometheus stored the point at the time it was ingested for.
        [stamp] = prometheus.query(f"timestamp({federated})")
        assert round(float(stamp["value"][1]) * 1000) == now - 1000
    finally:
        prometheus.stop()


def test_the_distributed_export_carries_every_process(pulsar_broker, tmp_path):
    ports = {name: free_port() for name in ("query-router", "realtime", "monitoring")}
    base = {
        **os.environ,
        "PULSAR_URL": pulsar_broker.service_url,
        "SELF_METRICS_INTERVAL_SECONDS": "1",
        "ANOMALY_STREAM": "0",
        "WS_BRIDGE_PORT": str(free_port()),
        **{f"{n.replace('-', '_').upper()}_ADDRESS": f"127.0.0.1:{p}" for n, p in ports.items()},
    }
    services = [
        Service(
            name, {**base, "GRPC_PORT": str(port), "DATA_DIR": str(tmp_path / name)}, tmp_path / f"{name}.log"
        )
        for name, port in ports.items()
    ]
    try:
        for service in services:
            service.start()
        with grpc.insecure_channel(f"127.0.0.1:{ports['realtime']}") as channel:
            request = realtime_service_pb2.IngestMetricsRequest(datasource="dist_case")
            request.points.add(name="load", value=1.0, timestamp_ms=int(time.time() * 1000))
            realtime_service_pb2_grpc.RealtimeServiceStub(channel).IngestMetrics(request, timeout=30)
        with grpc.insecure_channel(f"127.0.0.1:{ports['query-router']}") as channel:
            query_service_pb2_grpc.QueryServiceStub(channel).Query(
                query_service_pb2.QueryRequest(metrics=["load"], time_range="5m"), timeout=30
            )
        with grpc.insecure_channel(f"127.0.0.1:{ports['monitoring']}") as channel:
            stub = monitoring_service_pb2_grpc.MonitoringServiceStub(channel)

            def export() -> str:
                return stub.ExportPrometheus(
                    monitoring_service_pb2.ExportPrometheusRequest(), timeout=30
                ).data.decode()

            def every_process_is_there() -> bool:
                text = export()
                return all(
                    (
                        value_of(
                            text,
                            "analytics_query_duration_seconds_count",
                            instance="query-router",
                            mode="batch",
                        ),
                        value_of(
                            text,
                            "analytics_ingest_batches_total",
                            instance="realtime",
                            datasource="dist_case",
                        ),
                        value_of(text, "process_resident_memory_bytes", instance="monitoring"),
                    )
                )

            wait_until(
                every_process_is_there, 60, "the query-router's and realtime's self-metrics in the export"
            )
            text = export()
        # One family block per metric, whichever processes reported it: promtool accepts it.
        checked = subprocess.run(
            [str(prometheus_tools() / "promtool"), "check", "metrics"],
            input=text,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert (checked.returncode, checked.stdout + checked.stderr) == (0, "")
        assert text.count("# TYPE process_resident_memory_bytes gauge") == 1
        instances = {
            s.labels["instance"]
            for family in text_string_to_metric_families(text)
            for s in family.samples
            if s.name == "process_resident_memory_bytes"
        }
        assert instances == {"query-router", "realtime", "monitoring"}
    finally:
        for service in services:
            service.stop()
