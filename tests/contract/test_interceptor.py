"""The shared interceptor maps domain errors to their status, and bugs to INTERNAL without a trace;
it decodes requests itself (bytes that are not the message are a 400), hands a method marked
`takes_serialized` its request's bytes, and holds a tenant to its concurrent-query limit."""

import asyncio
import contextlib
from collections.abc import AsyncIterator

import grpc
import pytest
from grpc import aio

from libs.errors import NotFound, ResourceExhausted
from libs.grpc_server import ServiceBinding, start_server
from libs.interceptor import SerializedRequest, takes_serialized
from libs.limits import TenantLimits
from platformq.analytics.v1 import query_service_pb2 as pb
from platformq.analytics.v1 import query_service_pb2_grpc


class FaultyQueries(query_service_pb2_grpc.QueryServiceServicer):
    async def GetMetadata(self, request, context):
        if request.datasource == "missing":
            raise NotFound("no such datasource", "datasource")
        if request.datasource == "huge":
            raise ResourceExhausted("too many series")
        raise RuntimeError("secret internal detail")


@contextlib.asynccontextmanager
async def _serving(
    servicer: query_service_pb2_grpc.QueryServiceServicer, **options
) -> AsyncIterator[aio.Channel]:
    """A channel to `servicer` as the query-router, on a server of libs/grpc_server (the interceptor)."""
    binding = ServiceBinding(
        "query-router",
        "platformq.analytics.v1.QueryService",
        lambda s: query_service_pb2_grpc.add_QueryServiceServicer_to_server(servicer, s),
    )
    running = await start_server([binding], "127.0.0.1", 0, 1 << 20, **options)
    try:
        async with aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            yield channel
    finally:
        await running.stop(0)


@pytest.fixture
async def stub():
    async with _serving(FaultyQueries()) as channel:
        yield query_service_pb2_grpc.QueryServiceStub(channel)


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


@pytest.mark.parametrize(
    ("method", "corrupt"),
    [
        # Field 2 (a map entry) whose value is truncated.
        ("MLService/PredictOnline", b"\x12\x07\x0a\x01x\x12\x02\xff\xff"),
        # Field 2 (a point) longer than the request: IngestMetrics takes its request serialized.
        ("RealtimeService/IngestMetrics", b"\x12\x10\x0a\x01x"),
    ],
)
async def test_bytes_that_are_not_the_request_message_are_a_400_naming_it(channel, method, corrupt):
    # Envoy's transcoder writes such bytes for some JSON (an object where a map wants a number);
    # grpc's own decoding answered UNKNOWN, which the gateway made a 500.
    call = channel.unary_unary(f"/platformq.analytics.v1.{method}")
    with pytest.raises(aio.AioRpcError) as err:
        await call(corrupt)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    name = method.rsplit("/", 1)[1]
    assert err.value.details().startswith(f"body: the request is not a valid {name} request")


class SerializedMetadata(query_service_pb2_grpc.QueryServiceServicer):
    """GetMetadata taking its request serialized: answers with what it was given."""

    @takes_serialized
    async def GetMetadata(self, request, context):
        assert isinstance(request, SerializedRequest)
        return pb.GetMetadataResponse(datasource=f"{len(request.data)} bytes: {request.message().datasource}")


async def test_a_method_that_takes_its_request_serialized_gets_the_bytes_and_parses_them_on_demand():
    async with _serving(SerializedMetadata()) as channel:
        stub = query_service_pb2_grpc.QueryServiceStub(channel)
        reply = await stub.GetMetadata(pb.GetMetadataRequest(datasource="lab"))
        assert reply.datasource == "5 bytes: lab"
        with pytest.raises(aio.AioRpcError) as err:
            await channel.unary_unary("/platformq.analytics.v1.QueryService/GetMetadata")(b"\x0a\x09la")
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.value.details().startswith("body: the request is not a valid GetMetadata request")


class SlowQueries(query_service_pb2_grpc.QueryServiceServicer):
    """Query holds until `release` is set, so a test can keep queries running."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.started = 0

    async def Query(self, request, context):
        self.started += 1
        await self.release.wait()
        return pb.QueryResponse()


async def test_a_tenant_at_its_concurrent_query_limit_gets_resource_exhausted_with_retry_after():
    servicer = SlowQueries()
    limits = TenantLimits.of(0, 1, max_queries=2, max_streams=0)
    async with _serving(servicer, limits=limits) as channel:
        stub = query_service_pb2_grpc.QueryServiceStub(channel)
        acme = (("x-platformq-tenant", "acme"), ("x-platformq-scopes", "read"))
        held = [asyncio.ensure_future(stub.Query(pb.QueryRequest(), metadata=acme)) for _ in range(2)]
        await wait_for(lambda: servicer.started == 2)
        with pytest.raises(aio.AioRpcError) as refused:
            await stub.Query(pb.QueryRequest(), metadata=acme)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "tenant 'acme' already has 2 queries running" in refused.value.details()
        assert dict(refused.value.trailing_metadata())["retry-after"] == "1"
        # Another tenant is not held back by acme's queries.
        other = asyncio.ensure_future(
            stub.Query(
                pb.QueryRequest(),
                metadata=(("x-platformq-tenant", "globex"), ("x-platformq-scopes", "read")),
            )
        )
        await wait_for(lambda: servicer.started == 3)
        servicer.release.set()
        await asyncio.gather(*held, other)
        assert limits.queries.running("acme") == 0


async def wait_for(predicate, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)
