"""SQL answers are cached per tenant and statement, and any write of the tenant drops them."""

from google.protobuf import struct_pb2

from platformq.analytics.v1 import common_pb2, query_service_pb2, query_service_pb2_grpc
from platformq.analytics.v1 import realtime_service_pb2 as rpb
from platformq.analytics.v1 import realtime_service_pb2_grpc as rgrpc


async def test_sql_is_cached_until_the_next_write(channel):
    ingest = rgrpc.RealtimeServiceStub(channel)
    query = query_service_pb2_grpc.QueryServiceStub(channel)

    async def write(ts: int) -> None:
        series = common_pb2.Series(name="cpu", labels={"host": "a"}, timestamps_ms=[ts], values=[1.0])
        assert (await ingest.IngestMetrics(rpb.IngestMetricsRequest(series=[series]))).accepted == 1

    request = query_service_pb2.QueryRequest(
        sql="SELECT count(*) FROM metrics WHERE metric = ?", params=[struct_pb2.Value(string_value="cpu")]
    )
    await write(1_795_000_000_000)
    first = await query.Query(request)
    second = await query.Query(request)
    assert (first.metadata.cache_hit, second.metadata.cache_hit) == (False, True)
    assert second.rows == first.rows and first.rows[0].values[0].number_value == 1
    await write(1_795_000_010_000)
    third = await query.Query(request)
    assert third.metadata.cache_hit is False
    assert third.rows[0].values[0].number_value == 2
