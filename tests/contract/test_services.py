"""Contract tests: real grpc.aio servers on port 0, real stubs."""

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from platformq.analytics.v1 import (
    query_service_pb2,
    query_service_pb2_grpc,
    realtime_service_pb2,
    realtime_service_pb2_grpc,
)

API_SERVICES = {
    "platformq.analytics.v1.QueryService",
    "platformq.analytics.v1.RealtimeService",
    "platformq.analytics.v1.MLService",
    "platformq.analytics.v1.MonitoringService",
}


async def test_health_reports_each_service(channel):
    stub = health_pb2_grpc.HealthStub(channel)
    for name in ["", *API_SERVICES]:
        reply = await stub.Check(health_pb2.HealthCheckRequest(service=name))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING, name
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Check(health_pb2.HealthCheckRequest(service="platformq.analytics.v1.Nope"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_reflection_lists_the_four_services(channel):
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    call = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    reply = await call.read()
    names = {s.name for s in reply.list_services_response.service}
    assert names >= API_SERVICES
    assert "grpc.health.v1.Health" in names


async def test_subscribe_checks_the_stream(channel):
    # Streams themselves: tests/contract/test_subscribe.py.
    stub = realtime_service_pb2_grpc.RealtimeServiceStub(channel)
    call = stub.Subscribe(realtime_service_pb2.SubscribeRequest(stream_type="metrics", stream_id="cpu"))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call.read()
    assert err.value.code() == grpc.StatusCode.NOT_FOUND  # nothing ingested: no metric cpu yet
    call = stub.Subscribe(realtime_service_pb2.SubscribeRequest(stream_type="weather", stream_id="x"))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call.read()
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith("stream_type: ")


async def test_invalid_argument_names_field_and_reason(channel):
    stub = query_service_pb2_grpc.QueryServiceStub(channel)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Query(query_service_pb2.QueryRequest(metrics=["cpu_usage"], mode="fast"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details() == "mode: 'fast' is not allowed; use one of auto, batch, realtime, cache"
