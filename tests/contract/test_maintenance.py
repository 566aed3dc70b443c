"""Predictive maintenance over real gRPC, all four services in one server on a temporary DATA_DIR:
training on inline and on stored run-to-failure histories, the seed body appending readings, the
cache, the predictions topic, bad input, and a restart keeping the registered model."""

from __future__ import annotations

import asyncio
import time

import grpc
import numpy as np
import pytest
from grpc import aio

from libs.config import SERVICE_NAMES, load_settings
from libs.timeparse import format_time_ms
from platformq.analytics.v1 import (
    events_pb2,
    ml_service_pb2_grpc,
    realtime_service_pb2,
    realtime_service_pb2_grpc,
)
from platformq.analytics.v1 import ml_service_pb2 as pb
from services.context import ServiceContext
from services.runner import start_services
from tests.unit.ml.maintenance_data import SENSORS, units


def _readings(history, n: int | None = None) -> list[pb.SensorReading]:
    n = len(history.steps) if n is None else n
    return [
        pb.SensorReading(
            cycle=int(history.steps[i]), sensors=dict(zip(SENSORS, history.values[i], strict=True))
        )
        for i in range(n)
    ]


def _train_request() -> pb.TrainMaintenanceRequest:
    return pb.TrainMaintenanceRequest(
        rul_cap=80,
        histories=[pb.RunToFailure(entity_id=h.entity_id, readings=_readings(h)) for h in units(8, seed=1)],
    )


async def _start(data_dir, context: ServiceContext | None = None):
    settings = load_settings(data_dir=data_dir, ml_checkpoint_seconds=3600)
    context = context or ServiceContext(settings, hosted=tuple(SERVICE_NAMES))
    return await start_services(list(SERVICE_NAMES), settings, 0, context=context), context


async def _rejected(call) -> aio.AioRpcError:
    with pytest.raises(aio.AioRpcError) as err:
        await call
    return err.value


async def test_train_inline_then_predict_by_entity_and_survive_a_restart(tmp_path):
    server, context = await _start(tmp_path)
    events: asyncio.Queue = asyncio.Queue()
    await context.bus.subscribe("predictions.*", "contract-test", events.put)
    worn = units(1, seed=42)[0]  # a new machine, 10 cycles before its failure at the end
    seen = len(worn.steps) - 10
    try:
        async with aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = ml_service_pb2_grpc.MLServiceStub(channel)
            err = await _rejected(
                stub.PredictMaintenance(pb.PredictMaintenanceRequest(entity_id="m1", sensors={"x": 1}))
            )
            assert err.code() == grpc.StatusCode.NOT_FOUND and "no maintenance model" in err.details()

            trained = await stub.TrainMaintenance(_train_request())
            assert trained.model_version == "rul-default/1"
            assert set(trained.dropped_sensors) == {"constant", "noise"}
            assert (trained.entities, trained.unit, trained.rul_cap) == (8, "cycles", 80)

            err = await _rejected(stub.PredictMaintenance(pb.PredictMaintenanceRequest(entity_id="m1")))
            assert err.code() == grpc.StatusCode.NOT_FOUND and "no stored history" in err.details()

            # The seed body, reading by reading: each is appended to m1's stored history.
            for r in _readings(worn, seen):
                reply = await stub.PredictMaintenance(
                    pb.PredictMaintenanceRequest(entity_id="m1", sensors=r.sensors, cycle=r.cycle)
                )
            assert reply.readings == seen and reply.unit == "cycles" and reply.horizon == 30
            assert (
                reply.remaining_useful_life < 30 and reply.lower <= reply.remaining_useful_life <= reply.upper
            )
            assert reply.failure_probability > 0.5
            assert reply.driving_sensors[0].sensor in {"pressure", "temperature"}
            assert reply.model_version == "rul-default/1" and not reply.cached

            again = await stub.PredictMaintenance(
                pb.PredictMaintenanceRequest(entity_id="m1", sensors=r.sensors, cycle=r.cycle)
            )
            assert again.cached and again.remaining_useful_life == reply.remaining_useful_life

            inline = await stub.PredictMaintenance(
                pb.PredictMaintenanceRequest(entity_id="m2", readings=_readings(worn, seen))
            )
            assert inline.remaining_useful_life == pytest.approx(reply.remaining_useful_life)

            event = None
            while event is None or event.source != "m1":
                envelope = await asyncio.wait_for(events.get(), 10)
                assert envelope.topic == "predictions.maintenance"
                event = events_pb2.PredictionEvent.FromString(envelope.payload)
            assert (event.kind, event.model_version) == ("maintenance", "rul-default/1")
    finally:
        await server.stop(0)

    server, _ = await _start(tmp_path)
    try:
        async with aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = ml_service_pb2_grpc.MLServiceStub(channel)
            after = await stub.PredictMaintenance(pb.PredictMaintenanceRequest(entity_id="m1"))
            assert after.model_version == "rul-default/1"
            assert after.readings == seen
            assert after.remaining_useful_life == pytest.approx(reply.remaining_useful_life)
    finally:
        await server.stop(0)


async def test_bad_training_requests_name_the_entity(tmp_path):
    server, _ = await _start(tmp_path)
    try:
        async with aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = ml_service_pb2_grpc.MLServiceStub(channel)
            request = _train_request()
            del request.histories[2].readings[3].sensors["pressure"]
            err = await _rejected(stub.TrainMaintenance(request))
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "unit-2" in err.details() and err.details().startswith("histories[2].readings[3].sensors")

            stored = pb.TrainMaintenanceRequest(stored=pb.StoredRunToFailure(metrics=["pressure"]))
            err = await _rejected(stub.TrainMaintenance(stored))
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and err.details().startswith(
                "stored.failures"
            )
    finally:
        await server.stop(0)


async def test_train_on_stored_metrics_with_failure_times(tmp_path):
    server, _ = await _start(tmp_path)
    step = 10_000
    try:
        async with aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            ingest = realtime_service_pb2_grpc.RealtimeServiceStub(channel)
            request = realtime_service_pb2.IngestMetricsRequest(datasource="machines")
            failures = {}
            end = (int(time.time() * 1000) // step) * step
            for h in units(6, seed=3):
                ts = end - step * (len(h.steps) - h.steps)
                failures[h.entity_id] = format_time_ms(int(ts[-1]))
                for j, sensor in enumerate(SENSORS):
                    request.series.add(
                        name=sensor,
                        labels={"entity_id": h.entity_id},
                        timestamps_ms=ts.tolist(),
                        values=h.values[:, j].tolist(),
                    )
            assert (await ingest.IngestMetrics(request)).rejected == 0
            stub = ml_service_pb2_grpc.MLServiceStub(channel)
            stored = pb.StoredRunToFailure(datasource="machines", metrics=list(SENSORS), time_range="1d")
            stored.failures.update({k: v for k, v in failures.items() if k != "unit-4"})
            err = await _rejected(stub.TrainMaintenance(pb.TrainMaintenanceRequest(stored=stored)))
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "unit-4" in err.details()

            stored.failures["unit-4"] = failures["unit-4"]
            trained = await stub.TrainMaintenance(
                pb.TrainMaintenanceRequest(stored=stored, model_name="machines")
            )
            assert (trained.model_version, trained.unit, trained.entities) == ("rul-machines/1", "seconds", 6)
            assert set(trained.sensors) == {"pressure", "temperature"}
            assert np.isfinite(trained.cv_rmse) and trained.cv_rmse < trained.rul_cap / 2
    finally:
        await server.stop(0)


async def test_train_on_the_demo_machines_with_their_failure_metric(tmp_path):
    from services.demo.feed import to_request
    from services.demo.machines import DegradingMachines

    server, _ = await _start(tmp_path)
    now = int(time.time() * 1000)
    try:
        async with aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            batches = DegradingMachines(seed=7, step_ms=60_000).window(now - 12 * 3_600_000, now)
            ingest = realtime_service_pb2_grpc.RealtimeServiceStub(channel)
            assert (await ingest.IngestMetrics(to_request(batches))).rejected == 0
            failed = {b.labels["entity_id"] for b in batches if b.name == "machine_failure"}
            stub = ml_service_pb2_grpc.MLServiceStub(channel)
            stored = pb.StoredRunToFailure(
                metrics=["machine_vibration", "machine_temperature"],
                failure_metric="machine_failure",
                time_range="1d",
            )
            trained = await stub.TrainMaintenance(
                pb.TrainMaintenanceRequest(model_name="machines", stored=stored)
            )
            assert trained.entities == len(failed) >= 3
            running = {b.labels["entity_id"] for b in batches} - failed
            assert (
                set(trained.running_entities) == running and len(running) >= 3
            )  # a running life per machine
            assert trained.unit == "seconds" and trained.cv_rmse < trained.rul_cap / 3
    finally:
        await server.stop(0)
