"""Model tracking through a real `mlflow server` (scripts/mlflow-server, loopback, a free port, a
temporary backend store and artifact root): MLFLOW_TRACKING_URI points the ml service's
ModelTracking at it, and runs, registered versions and artifacts go through its REST API."""

from __future__ import annotations

import os
import signal
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from libs.config import load_settings
from services.ml.tracking import ModelTracking
from tests.helpers import REPO_ROOT, free_port, wait_until

pytestmark = pytest.mark.integration

SCRIPT = str(REPO_ROOT / "scripts" / "mlflow-server")


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as reply:
            return reply.status == 200
    except OSError:
        return False


@pytest.fixture
def mlflow_server(tmp_path) -> Iterator[tuple[str, Path]]:
    """A started server: its URL and the folder it stores artifacts in."""
    server_dir = tmp_path / "server"
    port = free_port()
    env = {**os.environ, "DATA_DIR": str(server_dir), "MLFLOW_PORT": str(port)}
    log = (tmp_path / "mlflow-server.log").open("w")
    process = subprocess.Popen(
        [SCRIPT], env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _healthy(url) or process.poll() is not None, 120, "mlflow server /health")
        if process.poll() is not None:
            pytest.fail(f"mlflow server exited: {(tmp_path / 'mlflow-server.log').read_text()[-2000:]}")
        yield url, server_dir / "mlflow" / "artifacts"
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
        log.close()


async def test_runs_and_registered_versions_go_through_the_server(mlflow_server, tmp_path, monkeypatch):
    url, artifact_root = mlflow_server
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    service_dir = tmp_path / "service"
    settings = load_settings(data_dir=service_dir)
    assert settings.mlflow_tracking_uri == url
    tracking = ModelTracking(settings.mlflow_tracking_uri, settings.data_dir)
    await tracking.start()

    first = await tracking.log_model(
        "rul-server-test",
        params={"window": 30},
        metrics={"rmse": 11.8},
        artifacts={"model.pkl": b"version one"},
        tags={"kind": "rul"},
    )
    second = await tracking.log_model(
        "rul-server-test",
        params={"window": 40},
        metrics={"rmse": 11.2},
        artifacts={"model.pkl": b"version two"},
    )
    run_id = await tracking.log_run("forecast-backtest", params={"method": "auto"}, metrics={"smape": 9.6})
    assert (first, second) == ("rul-server-test/1", "rul-server-test/2")
    assert await tracking.load_artifact("rul-server-test", first) == b"version one"
    assert await tracking.load_artifact("rul-server-test", "2") == b"version two"
    assert await tracking.load_artifact("rul-server-test") == b"version two"
    assert await tracking.load_artifact("rul-server-test", "2", "missing.bin") is None
    assert await tracking.load_artifact("rul-server-test", "3") is None
    # A configuration's version is found again through the server by its fingerprint tag.
    config = {"method": "auto", "library.statsforecast": "2.1.1"}
    assert await tracking.register_config("forecast-server-test", params=config) == "forecast-server-test/1"
    assert await tracking.register_config("forecast-server-test", params=config) == "forecast-server-test/1"
    changed = await tracking.register_config("forecast-server-test", params={**config, "method": "mstl"})
    assert changed == "forecast-server-test/2"
    await tracking.close()

    # What the server holds, asked through its REST API by a client of its own.
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=url, registry_uri=url)
    versions = client.search_model_versions("name = 'rul-server-test'")
    assert sorted(int(v.version) for v in versions) == [1, 2]
    one = client.get_run(client.get_model_version("rul-server-test", "1").run_id)
    assert one.data.params == {"window": "30"} and one.data.metrics == {"rmse": 11.8}
    assert client.get_run(run_id).data.metrics == {"smape": 9.6}
    # The artifacts went to the server's artifact root, nothing to the service's DATA_DIR.
    stored = sorted(p.read_bytes() for p in artifact_root.rglob("model.pkl"))
    assert stored == [b"version one", b"version two"]
    assert not (service_dir / "mlflow").exists()
