"""The batch encoder writes the same MetricsBatchEvent protobuf would build field by field."""

from __future__ import annotations

import numpy as np
import pytest

from libs.bus.events import encode_event, series_header
from libs.wire import varints
from platformq.analytics.v1 import common_pb2, events_pb2


def _expected(
    series: list[tuple[str, dict[str, str], list[int], list[float]]],
) -> events_pb2.MetricsBatchEvent:
    event = events_pb2.MetricsBatchEvent(
        tenant="t", datasource="ds", source="ds", batch_id="b1", accepted_at_ms=1_700_000_000_000
    )
    for name, labels, ts, values in series:
        event.series.add(name=name, labels=labels, timestamps_ms=ts, values=values)
    return event


def _encode(series: list[tuple[str, dict[str, str], list[int], list[float]]]) -> events_pb2.MetricsBatchEvent:
    columns = [
        (
            series_header(name, tuple(sorted(labels.items()))),
            np.array(ts, np.int64),
            np.array(values, np.float64),
        )
        for name, labels, ts, values in series
    ]
    return events_pb2.MetricsBatchEvent.FromString(encode_event("t", "ds", "b1", 1_700_000_000_000, columns))


@pytest.mark.parametrize(
    "ts",
    [
        [1_700_000_000_000, 1_700_000_010_000],  # one varint length for all: the dense path
        [0, 1, 127, 128, 16_383, 16_384, 2**35, 2**63 - 1],  # every length from 1 to 9 bytes
        [-1, -(2**63), 5],  # negatives: ten bytes, as protobuf writes int64
    ],
)
def test_timestamps_of_every_varint_length_round_trip(ts: list[int]) -> None:
    series = [("cpu", {"host": "a"}, ts, [float(i) for i in range(len(ts))])]
    assert _encode(series) == _expected(series)


def test_many_series_with_odd_names_labels_and_values_round_trip() -> None:
    series = [
        ("m", {}, [1], [0.0]),
        ("", {"k": ""}, [2, 3], [-0.5, 1e300]),  # an empty name and an empty label value
        ("métrique", {"région": "été", "a": "x" * 300}, [4, 5, 6], [float("inf"), -1.0, 2.5]),
        ("cpu", {"host": "b", "dc": "1"}, list(range(1_000, 1_200)), [float(i) / 3 for i in range(200)]),
    ]
    got = _encode(series)
    assert got == _expected(series)
    assert [list(s.timestamps_ms) for s in got.series] == [s[2] for s in series]


def test_a_serialised_series_is_taken_as_is_between_column_series() -> None:
    ready = common_pb2.Series(name="ready", labels={"x": "1"}, timestamps_ms=[7, 8], values=[1.0, 2.0])
    columns = (series_header("col", (("y", "2"),)), np.array([9], np.int64), np.array([3.0]))
    event = events_pb2.MetricsBatchEvent.FromString(
        encode_event("t", "ds", "b1", 1, [columns, ready.SerializeToString(), columns])
    )
    assert [s.name for s in event.series] == ["col", "ready", "col"]
    assert event.series[1] == ready
    assert list(event.series[2].timestamps_ms) == [9]


def test_varints_match_protobuf_for_random_values() -> None:
    rng = np.random.default_rng(7)
    values = rng.integers(-(2**62), 2**62, size=1_000) >> rng.integers(0, 62, size=1_000)
    encoded, lengths = varints(values)
    reference = common_pb2.Series(timestamps_ms=values.tolist()).SerializeToString()
    # The packed field: tag, byte length, then the varints.
    assert reference.endswith(encoded.tobytes())
    assert int(lengths.sum()) == len(encoded)
