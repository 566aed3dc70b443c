"""The shared interceptor maps domain errors to their status, and bugs to INTERNAL without a trace."""

import grpc
import pytest
from grpc import aio

from libs.errors import NotFound, ResourceExhausted
from libs.grpc_server import ServiceBinding, start_server
from platformq.analytics.v1 import query_service_pb2 as pb
from platformq.analytics.v1 import query_service_pb2_grpc


class FaultyQueries(query_service_pb2_grpc.QueryServiceServicer):
    async def GetMetadata(self, request, context):
        if request.datasource == "missing":
            raise NotFound("no such datasource", "datasource")
        if request.datasource == "huge":
            raise ResourceExhausted("too many series")
        raise RuntimeError("secret internal detail")


@pytest.fixture
async def stub():
    servicer = FaultyQueries()
    binding = ServiceBinding(
        "query-router",
        "platformq.analytics.v1.QueryService",
        lambda s: query_service_pb2_grpc.add_QueryServiceServicer_to_server(servicer, s),
    )
    running = await start_server([binding], "127.0.0.1", 0, 1 << 20)
    async with aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        yield query_service_pb2_grpc.QueryServiceStub(channel)
    await running.stop(0)


@pytest.mark.parametrize(
    ("datasource", "code", "message"),
    [
        ("missing", grpc.StatusCode.NOT_FOUND, "datasource: no such datasource"),
        ("huge", grpc.StatusCode.RESOURCE_EXHAUSTED, "too many series"),
        (
            "bug",
            grpc.StatusCode.INTERNAL,
            "internal error in /platformq.analytics.v1.QueryService/GetMetadata",
        ),
    ],
)
async def test_errors_map_to_statuses(stub, datasource, code, message):
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.GetMetadata(pb.GetMetadataRequest(datasource=datasource))
    assert err.value.code() == code
    assert err.value.details().startswith(message)
    assert "secret" not in err.value.details()


async def test_bytes_that_are_not_the_request_message_are_a_400_naming_it(channel):
    # Envoy's transcoder writes such bytes for some JSON (an object where a map wants a number);
    # grpc's own decoding answered UNKNOWN, which the gateway made a 500.
    corrupt = b"\x12\x07\x0a\x01x\x12\x02\xff\xff"  # field 2 (a map entry) whose value is truncated
    call = channel.unary_unary("/platformq.analytics.v1.MLService/PredictOnline")
    with pytest.raises(aio.AioRpcError) as err:
        await call(corrupt)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith("body: the request is not a valid PredictOnline request")
