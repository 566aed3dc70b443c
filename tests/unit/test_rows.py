import datetime

from google.protobuf import json_format

from platformq.analytics.v1 import query_service_pb2
from services.query_router.rows import encode_rows


def test_rows_round_trip_every_cell_kind():
    rows = [
        (1795852800000, 2.5, "auth-service", None, True, False),
        (-1, 0.0, "é" * 200, {"host": "a", "n": 3}, [1, "x", None], datetime.date(2026, 11, 28)),
    ]
    response = query_service_pb2.QueryResponse(columns=list("abcdef"))
    response.MergeFromString(encode_rows(rows))
    assert json_format.MessageToDict(response)["rows"] == [
        [1795852800000.0, 2.5, "auth-service", None, True, False],
        [-1.0, 0.0, "é" * 200, {"host": "a", "n": 3.0}, [1.0, "x", None], "2026-11-28"],
    ]
    assert list(response.columns) == list("abcdef")


def test_no_rows_is_no_bytes():
    assert encode_rows([]) == b""


def test_numeric_rows_take_the_vectorised_path_and_decode_exactly():
    rows = [(1795852800000 + i, i * 0.1, -i, 1e300) for i in range(500)]
    response = query_service_pb2.QueryResponse()
    response.MergeFromString(encode_rows(rows))
    decoded = [tuple(v.number_value for v in r.values) for r in response.rows]
    assert decoded == [tuple(float(c) for c in row) for row in rows]
    wide = [tuple(range(20))]  # a row body over 127 bytes needs a two-byte length
    response = query_service_pb2.QueryResponse()
    response.MergeFromString(encode_rows(wide))
    assert [v.number_value for v in response.rows[0].values] == [float(c) for c in range(20)]
