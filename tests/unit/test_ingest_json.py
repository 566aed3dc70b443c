"""The REST ingest body parsed by the service (services/realtime/json_body.py): for every body, the
same validated batch as protobuf's JSON parser followed by the ordinary validation (what the
gateway's transcoder did before), and a 400 naming the field for what neither accepts."""

from __future__ import annotations

import json
import random

import pytest
from google.api import httpbody_pb2
from google.protobuf import json_format

from libs.bus import make_bus
from libs.errors import InvalidArgument
from platformq.analytics.v1 import realtime_service_pb2
from services.realtime.core import RealtimeCore
from services.realtime.ingest import KnownGoodSeries, validate
from services.realtime.json_body import JsonIngestDecoder
from tests.helpers import batch_summary

NOW = 1_795_852_800_000  # 2026-11-28T08:00:00Z
DAY_MS = 86_400_000


def _through_protobuf(body: bytes):
    return validate(json_format.Parse(body, realtime_service_pb2.IngestMetricsRequest()), now_ms=NOW)


def _assert_same(body: dict | bytes) -> tuple:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    ours = batch_summary(JsonIngestDecoder().validate(data, now_ms=NOW))
    assert ours == batch_summary(_through_protobuf(data))
    return ours


def _random_body(rng: random.Random) -> dict:
    """Rows and series with good and bad names, labels, times and values, in every spelling."""
    names = ["cpu", "mem", "", "x" * 1100]
    label_sets = [{}, {"host": "a"}, {"host": "b", "dc": "1"}, {"dc": "1", "host": "b"}, {"9bad": "x"}]
    times = [NOW - 5, NOW - 1000, -5, NOW + 2 * DAY_MS, 0]
    values = [1.5, 2, -3.25, 0, "NaN", "Infinity", "4.5"]
    points = []
    for _ in range(rng.randrange(0, 40)):
        point = {"name": rng.choice(names), "value": rng.choice(values), "labels": rng.choice(label_sets)}
        when = rng.randrange(4)
        if when == 0:
            point["timestamp_ms"] = rng.choice(times)
        elif when == 1:
            point["timestamp_ms"] = str(rng.choice(times))
        elif when == 2:
            point["timestamp"] = rng.choice(
                ["2026-11-28T07:00:00Z", "2026-11-28", "yesterday", "1969-12-31T23:59:59Z"]
            )
        points.append(point)
    series = []
    for _ in range(rng.randrange(0, 6)):
        n = rng.randrange(0, 6)
        ts = [rng.choice(times) for _ in range(n)]
        vals = [rng.choice(values) for _ in range(n + rng.choice([0, 0, 0, 1]))]
        series.append(
            {"name": rng.choice(names), "labels": rng.choice(label_sets), "timestamps_ms": ts, "values": vals}
        )
    return {"datasource": rng.choice(["", "tsbs", "platform_metrics"]), "points": points, "series": series}


@pytest.mark.parametrize("seed", range(60))
def test_random_bodies_give_the_batch_protobuf_gives(seed):
    _assert_same(_random_body(random.Random(seed)))


def test_rows_and_columns_of_the_same_points_give_the_same_series():
    labels = {"service_name": "auth", "host": "h1"}
    ts, values = [NOW - 2000, NOW - 1000, NOW], [1.0, 2.5, 3.0]
    columns = _assert_same(
        {"series": [{"name": "cpu", "labels": labels, "timestamps_ms": ts, "values": values}]}
    )
    rows = _assert_same(
        {
            "points": [
                # Label order differs between rows: still one series.
                {
                    "name": "cpu",
                    "value": v,
                    "timestamp_ms": t,
                    "labels": dict(reversed(labels.items())) if i else labels,
                }
                for i, (t, v) in enumerate(zip(ts, values, strict=True))
            ]
        }
    )
    assert columns == rows
    assert columns[1:3] == (3, 0)


def test_proto3_json_spellings_are_accepted_like_the_transcoder_did():
    body = {
        "series": [{"name": "m", "timestampsMs": [str(NOW)], "values": ["1.5"]}],
        "points": [{"name": "m", "value": None, "timestampMs": NOW, "labels": None}],
    }
    assert _assert_same(body)[1:3] == (2, 0)


@pytest.mark.parametrize(
    ("body", "field", "reason"),
    [
        (b'{"series": [', "body", "is not valid JSON"),
        (b"[]", "body", "expected object, got array"),
        (
            b'{"series": [{"values": [1, "x"], "timestamps_ms": [1, 2]}]}',
            "series[0].values[1]",
            "expected float, got str",
        ),
        (
            b'{"series": [{"values": [1, 2], "timestamps_ms": [1, 2.5]}]}',
            "series[0].timestamps_ms[1]",
            "expected int",
        ),
        (
            b'{"points": [{"name": "m", "timestamp_ms": "soon"}]}',
            "points[0].timestamp_ms",
            "is not an integer",
        ),
        (b'{"points": [{"name": "m", "labels": {"a": 1}}]}', "labels", "label values are strings"),
        (b'{"points": [{"name": "m", "timestamp_ms": 9223372036854775813}]}', "points[0].timestamp_ms", "<="),
        (
            b'{"points": [{"name": "m", "timestamp_ms": "9999999999999999999"}]}',
            "timestamp_ms",
            "int64 range",
        ),
        (
            b'{"series": [{"values": [1], "timestamps_ms": [9223372036854775813]}]}',
            "series[0].timestamps_ms[0]",
            "<=",
        ),
        (
            b'{"points": [{"name": "m", "colour": "red"}]}',
            "points[0].colour",
            "is not a field of IngestMetricsRequest",
        ),
        (b'{"datasource": "../etc"}', "datasource", "must match"),
        (b'{"json_body": {"data": "e30="}}', "json_body", "is set by the gateway"),
    ],
)
def test_what_neither_parser_accepts_is_invalid_naming_the_field(body, field, reason):
    with pytest.raises(InvalidArgument) as caught:
        JsonIngestDecoder().validate(body, now_ms=NOW)
    assert caught.value.field == field
    assert reason in caught.value.reason
    if body != b"[]" and field != "json_body":  # protobuf's parser takes [] as an empty message
        with pytest.raises((json_format.ParseError, InvalidArgument)):
            _through_protobuf(body)


def test_known_series_skip_their_checks_on_later_bodies_with_the_same_answer():
    known = KnownGoodSeries()
    decoder = JsonIngestDecoder()
    body = json.dumps(
        {"points": [{"name": "cpu", "value": 1, "timestamp_ms": NOW, "labels": {"h": "a"}}]}
    ).encode()
    first = batch_summary(decoder.validate(body, known, now_ms=NOW))
    assert batch_summary(decoder.validate(body, known, now_ms=NOW)) == first
    assert first[1:3] == (1, 0)


async def test_the_core_refuses_json_body_beside_the_fields():
    core = RealtimeCore(None, make_bus("", "public", "default"))
    request = realtime_service_pb2.IngestMetricsRequest(
        datasource="x", json_body=httpbody_pb2.HttpBody(content_type="application/json", data=b"{}")
    )
    with pytest.raises(InvalidArgument) as caught:
        await core.ingest(request)
    assert caught.value.field == "json_body"
