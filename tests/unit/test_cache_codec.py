"""The shared cache's encodings: keys canonical across processes, entries round-tripping as protobuf
bytes (never pickle), and bad keys, values and bytes refused with a message naming them."""

from __future__ import annotations

import msgspec
import pytest

from libs.cache_codec import decode_entry, decode_write, encode_entry, encode_write, key_digest
from platformq.analytics.v1 import common_pb2, ml_service_pb2, monitoring_service_pb2
from platformq.analytics.v1 import query_service_pb2 as pb
from services.query_router.spec import LabelMatch


def test_equal_keys_give_equal_digests_and_different_keys_or_namespaces_do_not():
    key = ("default", ("ds", ("cpu",), "avg", (LabelMatch("host", "=", ("a",)),), 0, 60_000, None))
    same = ("default", ("ds", ("cpu",), "avg", (LabelMatch("host", "=", ("a",)),), 0, 60_000, None))
    assert key_digest("query", key) == key_digest("query", same)
    assert key_digest("query", key) != key_digest("ml", key)
    other = ("default", ("ds", ("cpu",), "avg", (LabelMatch("host", "=", ("b",)),), 0, 60_000, None))
    assert key_digest("query", key) != key_digest("query", other)
    # Sets and dicts do not depend on their iteration order; 1 and "1" and 1.0 stay apart.
    assert key_digest("q", frozenset({"b", "a", "c"})) == key_digest("q", frozenset({"c", "a", "b"}))
    assert key_digest("q", {"x": 1, "y": 2}) == key_digest("q", {"y": 2, "x": 1})
    assert len({key_digest("q", v) for v in (1, "1", 1.5, b"1", None, True)}) == 6


def test_a_key_part_that_has_no_stable_form_is_refused_by_type():
    with pytest.raises(TypeError, match=r"cache key part .* of type object cannot be encoded"):
        key_digest("query", ("tenant", object()))


@pytest.mark.parametrize(
    "message",
    [
        pb.QueryResponse(
            series=[
                common_pb2.SeriesResult(
                    metric="cpu", points=[common_pb2.DataPoint(timestamp_ms=5, value=2.5)]
                )
            ],
            metadata=pb.QueryMetadata(cache_hit=True, engines=["cache"]),
        ),
        monitoring_service_pb2.GetDashboardResponse(computed_at_ms=7),
        ml_service_pb2.ForecastResponse(cached=True),
        ml_service_pb2.DetectAnomaliesResponse(method="mad", threshold=0.5),
    ],
)
def test_entries_round_trip_their_message_type_and_scope(message):
    raw = encode_entry(message, ("default", "ds", 0, 10), 42, 1234.5)
    entry = decode_entry(raw)
    assert type(entry.value) is type(message) and entry.value == message
    assert (entry.scope, entry.seq, entry.expires_at) == (("default", "ds", 0, 10), 42, 1234.5)
    assert decode_entry(encode_entry(message, None, 0, 1.0)).scope is None


def test_only_messages_are_encoded_and_only_entries_decoded():
    with pytest.raises(TypeError, match="protobuf messages only, not dict"):
        encode_entry({"a": 1}, None, 0, 1.0)
    with pytest.raises(ValueError, match="not a cache entry"):
        decode_entry(b"\xff\x00garbage")
    with pytest.raises(ValueError, match=r"unknown message type 'no\.such\.Type'"):
        decode_entry(msgspec.msgpack.encode([1, "no.such.Type", b"", None, 0, 1.0]))


def test_write_records_round_trip():
    assert decode_write(encode_write("t", "ds", -5, 7)) == ("t", "ds", -5, 7)
    with pytest.raises(ValueError, match="not a write record"):
        decode_write(b"\x01")
