"""Validation of maintenance requests, and the store of entities' readings."""

from __future__ import annotations

from pathlib import Path

import pytest

from libs.errors import InvalidArgument
from platformq.analytics.v1 import common_pb2
from platformq.analytics.v1 import ml_service_pb2 as pb
from services.ml.maintenance.spec import predict_from_proto, train_from_proto
from services.ml.maintenance.store import MaintenanceStore


def _history(entity: str, n: int, sensors=("a", "b")) -> pb.RunToFailure:
    return pb.RunToFailure(
        entity_id=entity,
        readings=[pb.SensorReading(cycle=i + 1, sensors={s: float(i) for s in sensors}) for i in range(n)],
    )


def _reject(fn, request) -> InvalidArgument:
    with pytest.raises(InvalidArgument) as caught:
        fn(request)
    return caught.value


def test_inline_histories_end_at_their_failure() -> None:
    spec = train_from_proto(pb.TrainMaintenanceRequest(histories=[_history(f"m{i}", 5) for i in range(3)]))
    assert spec.model_name == "default"
    assert [h.failure_at for h in spec.histories] == [5, 5, 5]
    assert list(spec.histories[0].remaining()) == [4, 3, 2, 1, 0]


def test_mismatched_sensors_name_the_entity() -> None:
    request = pb.TrainMaintenanceRequest(
        histories=[_history("m1", 5), _history("m2", 5), _history("odd", 5, ("a", "c"))]
    )
    error = _reject(train_from_proto, request)
    assert "odd" in error.reason
    assert error.field == "histories[2]"


def test_failure_before_the_last_reading_names_the_entity() -> None:
    bad = _history("early", 5)
    bad.failure_at = 3
    error = _reject(
        train_from_proto, pb.TrainMaintenanceRequest(histories=[_history("m1", 5), _history("m2", 5), bad])
    )
    assert "early" in error.reason


def test_too_few_histories_and_both_shapes_are_refused() -> None:
    assert (
        _reject(train_from_proto, pb.TrainMaintenanceRequest(histories=[_history("m1", 5)])).field
        == "histories"
    )
    both = pb.TrainMaintenanceRequest(
        histories=[_history("m1", 5)],
        stored=pb.StoredRunToFailure(metrics=["x"], failures={"m1": "2026-01-01T00:00:00Z"}),
    )
    assert _reject(train_from_proto, both).field == "histories"


def test_stored_needs_failures() -> None:
    error = _reject(train_from_proto, pb.TrainMaintenanceRequest(stored=pb.StoredRunToFailure(metrics=["x"])))
    assert error.field == "stored.failures"
    both = pb.StoredRunToFailure(
        metrics=["x"], failures={"m1": "2026-01-01T00:00:00Z"}, failure_metric="failed"
    )
    assert _reject(train_from_proto, pb.TrainMaintenanceRequest(stored=both)).field == "stored.failures"
    spec = train_from_proto(
        pb.TrainMaintenanceRequest(stored=pb.StoredRunToFailure(metrics=["x"], failure_metric="failed"))
    )
    assert spec.stored.failure_metric == "failed" and spec.stored.failures == {}


def test_predict_requests() -> None:
    seed = predict_from_proto(pb.PredictMaintenanceRequest(entity_id="m1", sensors={"b": 2.0, "a": 1.0}))
    assert seed.sensors == (("a", 1.0), ("b", 2.0)) and seed.inline is None and seed.horizon is None
    assert _reject(predict_from_proto, pb.PredictMaintenanceRequest(sensors={"a": 1.0})).field == "entity_id"
    assert (
        _reject(predict_from_proto, pb.PredictMaintenanceRequest(entity_id="m", horizon=-1)).field
        == "horizon"
    )
    assert (
        _reject(
            predict_from_proto, pb.PredictMaintenanceRequest(entity_id="m", sensors={"a": float("nan")})
        ).field
        == "sensors.a"
    )
    series = [
        common_pb2.Series(name="b", timestamps_ms=[1, 2], values=[3.0, 4.0]),
        common_pb2.Series(name="a", timestamps_ms=[1, 2], values=[1.0, 2.0]),
    ]
    inline = predict_from_proto(pb.PredictMaintenanceRequest(entity_id="m", history=series)).inline
    assert inline.sensors == ("a", "b") and inline.values.tolist() == [[1.0, 3.0], [2.0, 4.0]]


def test_store_appends_and_reads_back(tmp_path: Path) -> None:
    store = MaintenanceStore(tmp_path / "m.db")
    store.open()
    assert store.append("t", "m1", None, {"a": 1.0, "b": 2.0}) == 1
    assert store.append("t", "m1", None, {"a": 3.0, "b": 4.0}) == 2
    store.append("t", "m1", None, {"a": 5.0})  # lacks b: skipped when b is needed
    history = store.history("t", "m1", ("a", "b"))
    assert history.steps.tolist() == [1, 2] and history.values.tolist() == [[1.0, 2.0], [3.0, 4.0]]
    assert store.history("t", "other", ("a",)) is None
    store.set_model("t", "default", "rul-default/2", 0)
    store.close()
    store.open()
    assert store.model_version("t", "default") == "rul-default/2"
    store.close()
