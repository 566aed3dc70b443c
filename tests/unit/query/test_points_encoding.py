"""SeriesResult.points encoded directly on the wire equal the points protobuf builds itself."""

from __future__ import annotations

import numpy as np
import pytest

from platformq.analytics.v1 import common_pb2, query_service_pb2
from services.query_router.rows import encode_point_runs, encode_points, encode_series


@pytest.mark.parametrize(
    "ts",
    [
        [1_767_225_600_000 + 60_000 * i for i in range(500)],  # one varint size: the vectorised path
        [0, 1, 127, 128, 16_383, 16_384, 1_767_225_600_000],  # mixed sizes
        [-5, 3, 1_767_225_600_000],  # negative timestamps (before 1970)
        [],
    ],
)
def test_encoded_points_equal_the_ones_protobuf_builds(ts):
    ts_array = np.asarray(ts, dtype=np.int64)
    values = np.linspace(-3.5, 1e300, len(ts_array)) if len(ts) else np.empty(0)
    values = np.where(np.arange(len(ts_array)) % 7 == 3, np.nan, values) if len(ts) else values
    built = common_pb2.SeriesResult(metric="m")
    for t, v in zip(ts_array.tolist(), values.tolist(), strict=True):
        built.points.add(timestamp_ms=t, value=v)
    encoded = common_pb2.SeriesResult(metric="m")
    encoded.MergeFromString(encode_points(ts_array, values))
    assert encoded.SerializeToString() == built.SerializeToString()
    assert [p.timestamp_ms for p in encoded.points] == ts


@pytest.mark.parametrize(
    "ts", [[1_767_225_600_000 + i for i in range(10)], [5, 200, 1_767_225_600_000, 1, 2, 3, 4, 9, 10, -1]]
)
def test_runs_encode_like_each_run_alone(ts):
    ts_array = np.asarray(ts, dtype=np.int64)
    values = np.arange(len(ts_array), dtype=np.float64) / 3
    runs = [(0, 3), (3, 4), (4, 10)]
    assert encode_point_runs(ts_array, values, runs) == [
        encode_points(ts_array[a:b], values[a:b]) for a, b in runs
    ]


@pytest.mark.parametrize(
    ("metric", "group", "aggregation"),
    [
        ("cpu", [("host", "a"), ("region", "eu")], "avg"),
        ("cpu", [("host", "")], "max"),  # a label the series does not carry
        ("ü" * 100, [("k" * 200, "v" * 300)], "p99"),  # multi-byte lengths and UTF-8
        ("m", [], "raw"),
    ],
)
def test_encoded_series_parse_as_the_message_the_library_builds(metric, group, aggregation):
    ts = np.array([1_767_225_600_000, 1_767_225_660_000], dtype=np.int64)
    values = np.array([1.5, -2.25])
    want = query_service_pb2.QueryResponse(
        series=[
            common_pb2.SeriesResult(
                metric=metric,
                group=dict(group),
                aggregation=aggregation,
                points=[
                    common_pb2.DataPoint(timestamp_ms=t, value=v) for t, v in zip(ts, values, strict=True)
                ],
            )
        ]
        * 2
    )
    got = query_service_pb2.QueryResponse()
    got.MergeFromString(encode_series(metric, group, aggregation, encode_points(ts, values)) * 2)
    assert got == want
