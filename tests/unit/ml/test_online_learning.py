"""OnlineLearning and stream bindings without gRPC: create on first use, restart resumes, a bad
batch learns nothing, MLflow checkpoints (a real local store) give model_version, the bus feeds a
binding and a redelivered batch is learned once."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from libs.bus import Envelope
from libs.errors import ConfigError, InvalidArgument, NotFound
from platformq.analytics.v1 import events_pb2
from platformq.analytics.v1 import ml_service_pb2 as pb
from services.ml.online.bindings import StreamTrainer, parse_bindings
from services.ml.online.learning import LEARN_CHUNK_ROWS, OnlineConfig, OnlineLearning
from services.ml.online.spec import PredictSpec, train_from_proto
from services.ml.tracking import ModelTracking


def _samples(n: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    a = rng.uniform(0, 10, n)
    return [{"features": {"a": float(v)}, "target": float(2 * v + 5 + rng.normal(0, 0.5))} for v in a]


def _train(name: str, samples: list[dict], **kw):
    return train_from_proto(pb.TrainOnlineRequest(model_name=name, samples=samples, **kw))


async def test_a_model_is_created_on_first_use_and_a_restart_resumes_its_count(tmp_path):
    learning = OnlineLearning(OnlineConfig(tmp_path))
    first = await learning.train(_train("lat", _samples(100), kind="hoeffding_tree"))
    assert first.created and first.samples_seen == first.samples_learned == 100
    assert (first.kind, first.task, first.metric_name) == ("hoeffding_tree", "regression", "mae")
    assert first.model_version == "online-lat/unregistered"
    await learning.stop()
    again = OnlineLearning(OnlineConfig(tmp_path))
    second = await again.train(_train("lat", _samples(50, seed=1)))
    assert not second.created and second.samples_seen == 150 and second.kind == "hoeffding_tree"


async def test_a_bad_batch_learns_nothing_and_creates_nothing(tmp_path):
    learning = OnlineLearning(OnlineConfig(tmp_path))
    bad = [{"features": {"a": 1.0}, "target": 1}, {"features": {"a": 2.0}, "target": 0.5}]
    with pytest.raises(InvalidArgument) as err:
        await learning.train(_train("cls", bad, task="classification"))
    assert err.value.field == "samples[1].target"
    with pytest.raises(NotFound):
        await learning.predict(PredictSpec("cls", ({"a": 1.0},)))
    await learning.train(_train("cls", [{"features": {"a": 1.0}, "target": 1}], task="classification"))
    with pytest.raises(InvalidArgument):
        await learning.train(
            _train("cls", [{"features": {"a": 3.0}, "label": "x"}, {"features": {"a": 2.0}, "target": 0.5}])
        )
    answer = await learning.predict(PredictSpec("cls", ({"a": 1.0},)))
    assert answer.samples_seen == 1 and answer.predictions[0].label == "1"


async def test_checkpoints_are_logged_to_mlflow_every_n_samples_and_give_the_model_version(tmp_path):
    tracking = ModelTracking("", tmp_path)
    await tracking.start()
    learning = OnlineLearning(OnlineConfig(tmp_path, track_samples=100, track_seconds=3600), tracking)
    small = await learning.train(_train("reg", _samples(60)))
    await learning.stop()  # waits for background logging: none is due below 100 samples
    assert small.model_version == "online-reg/unregistered"
    await learning.train(_train("reg", _samples(60, seed=1)))
    await learning.stop()
    after = await learning.predict(PredictSpec("reg", ({"a": 1.0},)))
    assert after.model_version == "online-reg/1" and after.samples_seen == 120
    stored = await tracking.load_artifact("online-reg")
    await tracking.close()
    assert stored is not None and len(stored) > 100


def _batch(ts: list[int], host: str, cpu: list[float], latency: list[float]) -> Envelope:
    event = events_pb2.MetricsBatchEvent(datasource="platform_metrics")
    event.series.add(name="cpu_usage", labels={"host": host}, timestamps_ms=ts, values=cpu)
    event.series.add(name="latency_p95", labels={"host": host}, timestamps_ms=ts, values=latency)
    event.series.add(name="disk_io", labels={"host": host}, timestamps_ms=ts, values=[1.0] * len(ts))
    return Envelope("simulation.metrics.demo", "platform_metrics", event.SerializeToString(), "x", 0)


async def test_a_binding_learns_joined_rows_once_even_when_redelivered(tmp_path):
    (binding,) = parse_bindings('[{"model": "lat", "features": ["cpu_usage"], "target": "latency_p95"}]')
    learning = OnlineLearning(OnlineConfig(tmp_path))
    trainer = StreamTrainer(bus=None, learning=learning, bindings=(binding,))
    cpu = np.random.default_rng(4).uniform(10, 90, 200)
    ts = list(range(0, 200_000, 1000))
    envelope = _batch(ts, "h1", cpu.tolist(), (3 * cpu + 20).tolist())
    await trainer.handle(envelope)
    await trainer.handle(envelope)  # a redelivery
    # cpu in one batch, latency in the next: joined by host and timestamp.
    late = events_pb2.MetricsBatchEvent(datasource="platform_metrics")
    late.series.add(name="cpu_usage", labels={"host": "h2"}, timestamps_ms=[5], values=[50.0])
    await trainer.handle(Envelope("t", "k", late.SerializeToString(), "x", 0))
    late2 = events_pb2.MetricsBatchEvent(datasource="platform_metrics")
    late2.series.add(name="latency_p95", labels={"host": "h2"}, timestamps_ms=[5], values=[170.0])
    await trainer.handle(Envelope("t", "k", late2.SerializeToString(), "x", 0))
    answer = await learning.predict(PredictSpec("lat", ({"cpu_usage": 50.0},)))
    assert answer.samples_seen == 201
    assert answer.predictions[0].value == pytest.approx(170.0, abs=15.0)


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("not json", "not JSON"),
        ('{"model": "x"}', "JSON list"),
        ('[{"model": "x", "features": ["a"]}]', "ONLINE_BINDINGS[0]"),
        ('[{"model": "x", "features": ["a"], "target": "b", "kind": "svm"}]', "ONLINE_BINDINGS[0].kind"),
        ('[{"model": "x", "features": ["a"], "target": "a"}]', "ONLINE_BINDINGS[0].target"),
        ('[{"model": "x", "features": ["a"], "target": "b", "colour": "red"}]', "ONLINE_BINDINGS[0]"),
    ],
)
def test_bad_bindings_stop_start_up_naming_the_entry(text, says):
    with pytest.raises(ConfigError) as err:
        parse_bindings(text)
    assert says in str(err.value)


async def test_a_request_over_the_sample_limit_is_refused_before_anything_is_learned(tmp_path):
    learning = OnlineLearning(OnlineConfig(tmp_path, max_samples=50))
    with pytest.raises(InvalidArgument) as err:
        await learning.train(_train("big", _samples(51)))
    assert err.value.field == "samples" and "at most 50" in err.value.reason
    with pytest.raises(NotFound):
        await learning.predict(PredictSpec("big", ({"a": 1.0},)))
    assert (await learning.train(_train("big", _samples(50)))).samples_seen == 50


async def test_models_beyond_the_memory_bound_are_dropped_and_reloaded_without_losing_anything(
    tmp_path, caplog
):
    # Three models, two in memory (ONLINE_MAX_MODELS=2), used round-robin: each use reloads the
    # model dropped last time, and every model goes on counting and learning y = 2a + 5 (+ noise).
    caplog.set_level("INFO", logger="services.ml.online.learning")
    names = ("m0", "m1", "m2")
    learning = OnlineLearning(OnlineConfig(tmp_path, max_models=2))
    for round_ in range(4):
        for i, name in enumerate(names):
            reply = await learning.train(_train(name, _samples(50, seed=10 * round_ + i)))
            assert reply.samples_seen == 50 * (round_ + 1) and reply.samples_learned == 50
            assert reply.created == (round_ == 0)
    restored = [r.model for r in caplog.records if r.getMessage() == "online model restored"]
    # round-robin over 3 with room for 2: from the second round on, every use is a reload
    assert sorted(restored) == sorted(names * 3)
    for name in names:
        answer = await learning.predict(PredictSpec(name, ({"a": 4.0},)))
        # prequential MAE over all 200 (the first, untrained guesses are ~15 off): a model that forgot
        # at each reload would stay far above this
        assert answer.samples_seen == 200 and answer.metric < 2.5
        assert abs(answer.predictions[0].value - 13.0) < 1.0  # 2 * 4 + 5
    await learning.stop()

    # a restart resumes every model, the dropped ones included
    again = OnlineLearning(OnlineConfig(tmp_path, max_models=2))
    for name in names:
        reply = await again.train(_train(name, _samples(10, seed=99)))
        assert not reply.created and reply.samples_seen == 210
    await again.stop()


async def test_a_prediction_waits_for_one_chunk_of_a_binding_s_backlog_not_the_whole_batch(tmp_path):
    # A batch of three chunks' rows: a prediction asked while the first chunk learns is answered
    # between the first and the second, with the first chunk's samples only.
    learning = OnlineLearning(OnlineConfig(tmp_path))
    await learning.train(_train("lat", _samples(1)))
    n = 3 * LEARN_CHUNK_ROWS
    rng = np.random.default_rng(5)
    rows = [(f"h{i % 7}", i, {"a": float(v)}, float(2 * v)) for i, v in enumerate(rng.uniform(0, 10, n))]
    batch = asyncio.ensure_future(learning.learn_rows("lat", "linear_regression", "regression", rows))
    for _ in range(5):  # the batch starts: it takes the lock and learns its first chunk in a thread
        await asyncio.sleep(0)
    answer = await learning.predict(PredictSpec("lat", ({"a": 1.0},)))
    assert not batch.done()
    assert answer.samples_seen == 1 + LEARN_CHUNK_ROWS
    assert await batch == n
    assert (await learning.predict(PredictSpec("lat", ({"a": 1.0},)))).samples_seen == 1 + n
