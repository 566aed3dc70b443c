"""Model tracking on the default local MLflow store (SQLite + artifacts under DATA_DIR): runs with
params, metrics and artifacts, registered versions "<name>/<version>", artifacts loaded back, and
the live scorer registering its checkpoint. The same calls against a real `mlflow server` are in
tests/integration/test_mlflow_server.py."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from libs.bus import Envelope, InProcessBus
from libs.errors import Unavailable
from platformq.analytics.v1 import events_pb2
from services.ml.anomaly_store import AnomalyStore
from services.ml.stream import REGISTERED_MODEL, StreamConfig, StreamScorer
from services.ml.tracking import ModelTracking, local_tracking_uri
from tests.unit.ml.test_stream import RecordedHistory


@pytest.fixture
async def tracking(data_dir):
    tracking = ModelTracking("", data_dir)
    await tracking.start()
    yield tracking
    await tracking.close()


def _client(tmp_path):
    from mlflow.tracking import MlflowClient

    uri = local_tracking_uri(tmp_path)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


async def test_a_model_is_logged_registered_and_loaded_back_by_version(tracking, tmp_path):
    first = await tracking.log_model(
        "rul-test",
        params={"window": 30, "loss": "squared_error"},
        metrics={"rmse": 12.5},
        artifacts={"model.pkl": b"first", "features.json": b"[1, 2]"},
        tags={"kind": "rul"},
    )
    second = await tracking.log_model(
        "rul-test", params={"window": 40}, metrics={}, artifacts={"model.pkl": b"second"}
    )
    assert (first, second) == ("rul-test/1", "rul-test/2")

    assert await tracking.load_artifact("rul-test") == b"second"  # latest
    assert await tracking.load_artifact("rul-test", "1") == b"first"
    assert await tracking.load_artifact("rul-test", first, "features.json") == b"[1, 2]"
    assert await tracking.load_artifact("rul-test", "2", "features.json") is None
    assert await tracking.load_artifact("rul-test", "3") is None
    assert await tracking.load_artifact("other-model") is None
    assert await tracking.load_artifact("rul-test", "other-model/1") is None

    client = _client(tmp_path)
    version = client.get_model_version("rul-test", "1")
    run = client.get_run(version.run_id)
    assert run.data.params == {"window": "30", "loss": "squared_error"}
    assert run.data.metrics == {"rmse": 12.5}
    assert run.data.tags["kind"] == "rul" and version.tags == {"kind": "rul"}
    assert run.info.status == "FINISHED"
    # Artifacts stay under DATA_DIR, not in the working directory.
    assert (tmp_path / "mlflow" / "artifacts" / "rul-test" / run.info.run_id / "artifacts" / "model").is_dir()


async def test_concurrent_registrations_get_distinct_versions_and_keep_their_artifacts(tracking):
    versions = await asyncio.gather(
        *(
            tracking.log_model(
                "online-test", params={"i": i}, metrics={"mae": i}, artifacts={"m.bin": bytes([i])}
            )
            for i in range(4)
        )
    )
    assert sorted(versions) == [f"online-test/{n}" for n in range(1, 5)]
    for i, version in enumerate(versions):
        assert await tracking.load_artifact("online-test", version, "m.bin") == bytes([i])


async def test_a_run_without_a_model_and_a_restart_that_keeps_counting(data_dir):
    tracking = ModelTracking("", data_dir)
    await tracking.start()
    run_id = await tracking.log_run("forecast-backtest", params={"method": "auto"}, metrics={"smape": 9.4})
    assert await tracking.log_model("m", params={}, metrics={}, artifacts={"model.pkl": b"a"}) == "m/1"
    await tracking.close()

    again = ModelTracking("", data_dir)
    await again.start()
    assert await again.load_artifact("m") == b"a"
    assert await again.log_model("m", params={}, metrics={}, artifacts={"model.pkl": b"b"}) == "m/2"
    await again.close()
    run = _client(data_dir).get_run(run_id)
    assert run.data.metrics == {"smape": 9.4} and run.data.params == {"method": "auto"}


async def test_many_params_and_metrics_are_all_kept(tracking, data_dir):
    params = {f"sensor_{i}": i for i in range(150)}
    metrics = {f"importance_{i}": i / 10 for i in range(150)}
    assert await tracking.log_model("wide", params=params, metrics=metrics, artifacts={}) == "wide/1"
    client = _client(data_dir)
    run = client.get_run(client.get_model_version("wide", "1").run_id)
    assert len(run.data.params) == 150 and run.data.metrics["importance_149"] == 14.9
    # A version string that was never registered (e.g. before a model's first checkpoint) finds nothing.
    assert await tracking.load_artifact("wide", "wide/unregistered") is None


async def test_bad_names_are_refused_before_mlflow_is_touched(tracking):
    with pytest.raises(ValueError, match="name"):
        await tracking.log_model("a/b", params={}, metrics={}, artifacts={})
    with pytest.raises(ValueError, match="plain file name"):
        await tracking.log_model("a", params={}, metrics={}, artifacts={"../x": b""})
    with pytest.raises(ValueError, match="name"):
        await tracking.log_run("it's", params={}, metrics={})


async def test_an_unreachable_server_answers_unavailable(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    tracking = ModelTracking("http://127.0.0.1:9", tmp_path)  # discard port: nothing listens
    await tracking.start()
    with pytest.raises(Unavailable, match="model tracking"):
        await tracking.log_run("x", params={}, metrics={})
    await tracking.close()


def test_mlflow_stays_off_the_start_up_path(tmp_path):
    code = (
        "import asyncio, sys, pathlib\n"
        "import services.ml, services.ml.stream\n"
        "from services.ml.tracking import ModelTracking\n"
        f"asyncio.run(ModelTracking('', pathlib.Path({str(tmp_path)!r})).start())\n"
        "print('mlflow' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


class RecordedTracking(ModelTracking):
    """Records what the scorer registers instead of writing an MLflow store (the store itself is
    covered above); fails on demand, as an unreachable server would."""

    def __init__(self) -> None:
        super().__init__("", Path("unused"))
        self.logged: list[dict] = []
        self.fail = False

    async def log_model(self, name, *, params, metrics, artifacts, tags=None):
        if self.fail:
            raise Unavailable("model tracking: server down")
        self.logged.append({"name": name, "params": params, "metrics": metrics, "artifacts": artifacts})
        return f"{name}/{len(self.logged)}"


def _envelope(n: int, start: int) -> Envelope:
    rng = np.random.default_rng(start)
    ts = 1_790_000_000_000 + 10_000 * np.arange(start, start + n, dtype=np.int64)
    event = events_pb2.MetricsBatchEvent(tenant="default", datasource="ds", batch_id=str(start))
    event.series.add(
        name="lat",
        labels={"host": "h1"},
        timestamps_ms=ts.tolist(),
        values=(30 + rng.normal(0, 1, n)).tolist(),
    )
    return Envelope("simulation.metrics.ds", "ds", event.SerializeToString(), "x", 0)


async def _wait(condition) -> None:
    for _ in range(500):
        if condition():
            return
        await asyncio.sleep(0.01)


async def test_the_live_scorer_registers_its_checkpoint_only_when_it_learned_something(tmp_path):
    store = AnomalyStore(tmp_path / "a.sqlite3")
    store.open()
    bus = InProcessBus()
    tracking = RecordedTracking()
    config = StreamConfig(data_dir=tmp_path, checkpoint_seconds=0.01, model_log_seconds=0)
    scorer = StreamScorer(bus, store, RecordedHistory(), config, tracking=tracking)
    await scorer.start()
    await scorer.handle(_envelope(200, 0))
    await _wait(lambda: tracking.logged)
    assert scorer.model_version == f"{REGISTERED_MODEL}/1"
    logged = tracking.logged[0]
    assert logged["name"] == REGISTERED_MODEL and logged["metrics"]["points"] == 200
    assert logged["metrics"]["series"] == 1 and logged["params"]["method"] == "auto"
    assert logged["artifacts"]["stream_state.bin"] == (tmp_path / "ml" / "stream_state.bin").read_bytes()

    # Checkpoints without new points register nothing; a failing server does not stop checkpointing.
    checkpoints = scorer.stats["checkpoints"]
    await _wait(lambda: scorer.stats["checkpoints"] >= checkpoints + 5)
    assert len(tracking.logged) == 1
    tracking.fail = True
    await scorer.handle(_envelope(50, 200))
    checkpoints = scorer.stats["checkpoints"]
    await _wait(lambda: scorer.stats["checkpoints"] >= checkpoints + 5)
    assert scorer.stats["checkpoints"] >= checkpoints + 5 and scorer.model_version == f"{REGISTERED_MODEL}/1"
    tracking.fail = False
    await scorer.handle(_envelope(50, 250))
    await _wait(lambda: len(tracking.logged) == 2)
    assert scorer.model_version == f"{REGISTERED_MODEL}/2" and tracking.logged[1]["metrics"]["points"] == 300
    await scorer.stop()
    await bus.close()
    store.close()
