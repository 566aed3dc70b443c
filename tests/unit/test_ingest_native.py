"""Ingest's compiled fast path (native/, `native.encode_usual_request`), on REST bodies (in
`json_body`, as the gateway sends them) and gRPC requests: for every one it takes, the batch the
Python path (`validate_and_encode`, `validate`) gives, column for column and record for record;
every one it does not take (anything to reject, an unusual spelling) is left to the Python path,
which words the errors."""

from __future__ import annotations

import json
import random
import struct

import numpy as np
import pytest
from google.protobuf import json_format
from google.protobuf.message import DecodeError

from libs.storage import EncodedBatch, SeriesMemo
from libs.wire import varint
from platformq.analytics.v1 import common_pb2, events_pb2, realtime_service_pb2
from services.realtime.ingest import KnownGoodSeries, validate
from services.realtime.json_body import JsonIngestDecoder, validate_and_encode
from services.realtime.native import encode_usual_request

NOW = 1_795_852_800_000  # 2026-11-28T08:00:00Z
DAY_MS = 86_400_000


def _rest(body: bytes, **fields) -> bytes:
    """A REST call's request as the gateway sends it: the JSON body in `json_body`."""
    request = realtime_service_pb2.IngestMetricsRequest(**fields)
    request.json_body.content_type = "application/json"
    request.json_body.data = body
    return request.SerializeToString()


def _fast(data: bytes):
    """The fast path's batch of a REST body, or None."""
    return encode_usual_request(_rest(data), NOW, "acme")


def _python(data: bytes):
    return validate_and_encode(JsonIngestDecoder(), KnownGoodSeries(), SeriesMemo(), data, NOW, "acme")


def _assert_same_batch(data: bytes) -> int:
    """The fast path takes `data` and gives the Python path's batch; the points accepted."""
    fast = _fast(data)
    assert fast is not None, data[:200]
    return _assert_same(fast, _python(data))


def _assert_same(fast, slow, records_as_bytes: bool = True) -> int:
    (fast_batch, fast_encoded), (slow_batch, slow_encoded) = fast, slow
    assert slow_encoded is not None
    assert (fast_batch.datasource, fast_batch.accepted, fast_batch.rejected, fast_batch.errors) == (
        slow_batch.datasource,
        slow_batch.accepted,
        0,
        [],
    )
    assert (fast_encoded.tenant, fast_encoded.datasource) == (slow_encoded.tenant, slow_encoded.datasource)
    fast_cols, slow_cols = fast_encoded.columns, slow_encoded.columns
    assert fast_cols.keys == slow_cols.keys
    assert [type(k).__name__ for k in fast_cols.keys] == [type(k).__name__ for k in slow_cols.keys]
    for column, dtype in (
        ("lengths", np.int64),
        ("ts", np.int64),
        ("values", np.float64),
        ("sids", np.uint64),
    ):
        fast_col, slow_col = getattr(fast_cols, column), getattr(slow_cols, column)
        assert fast_col.dtype == dtype and fast_col.flags.writeable, column
        # Bytes, not values: -0.0 and 0.0 differ in the record.
        assert fast_col.tobytes() == slow_col.astype(dtype).tobytes(), column
    fast_event = events_pb2.MetricsBatchEvent.FromString(fast_encoded.payload)
    slow_event = events_pb2.MetricsBatchEvent.FromString(slow_encoded.payload)
    assert fast_event.batch_id == fast_encoded.batch_id and len(fast_event.batch_id) == 32
    assert abs(fast_event.accepted_at_ms - slow_event.accepted_at_ms) < 60_000
    fast_event.batch_id, fast_event.accepted_at_ms = slow_event.batch_id, slow_event.accepted_at_ms
    assert fast_event == slow_event
    # The series entries are byte for byte the Python codec's (the WAL holds these bytes); a gRPC
    # request's own series messages may hold their labels in another order (a map), so there the
    # parsed events above are what must agree.
    if records_as_bytes:
        assert (
            fast_encoded.payload[len(_head(fast_encoded)) :]
            == slow_encoded.payload[len(_head(slow_encoded)) :]
        )
    return fast_batch.accepted


def _head(encoded) -> bytes:
    event = events_pb2.MetricsBatchEvent.FromString(encoded.payload)
    del event.series[:]
    return event.SerializeToString()


def _body(**fields) -> bytes:
    return json.dumps(fields).encode()


USUAL = {
    "columns": _body(
        datasource="tsbs",
        series=[
            {
                "name": "cpu",
                "labels": {"host": "h1", "dc": "a"},
                "timestamps_ms": [NOW - 2, NOW - 1],
                "values": [1, 2.5],
            },
            {"name": "mem", "labels": {}, "timestamps_ms": [NOW], "values": [-3.25e-7]},
        ],
    ),
    "rows, labels in two orders (one series)": _body(
        points=[
            {"name": "cpu", "value": 1, "timestamp_ms": NOW - 1, "labels": {"a": "1", "b": "2"}},
            {"name": "cpu", "value": 2, "timestamp_ms": NOW, "labels": {"b": "2", "a": "1"}},
            {"name": "mem", "value": 3, "timestamp_ms": NOW},
        ]
    ),
    "series and rows together, the same series in both": _body(
        series=[{"name": "cpu", "labels": {"a": "1"}, "timestamps_ms": [NOW - 5], "values": [5]}],
        points=[{"name": "cpu", "value": 6, "timestamp_ms": NOW - 5, "labels": {"a": "1"}}],
    ),
    "a series twice, an empty series, empty label value": _body(
        series=[
            {"name": "m", "labels": {"a": ""}, "timestamps_ms": [NOW], "values": [1]},
            {"name": "m", "labels": {"b": "x"}, "timestamps_ms": [], "values": []},
            {"name": "m", "labels": {"a": ""}, "timestamps_ms": [NOW - 1], "values": [2]},
        ]
    ),
    "escapes and non-ASCII": (
        '{"series": [{"name": "temp\\u00e9\\n", "labels": {"site": "Z\\u00fcrich \\"main\\"", "k_9": "\u65e5\u672c"},'
        f' "timestamps_ms": [{NOW}], "values": [21.5]}}]}}'
    ).encode(),
    "numbers: zero, exponents, 2^53, epoch 0, a day ahead": _body(
        series=[
            {
                "name": "n",
                "timestamps_ms": [0, 1, NOW, NOW + DAY_MS],
                "values": [0, 0.0, 1e300, 9007199254740992],
            },
            {"name": "neg", "timestamps_ms": [5], "values": [-9007199254740992]},
        ]
    ),
    "a value left out": f'{{"points": [{{"name": "z", "timestamp_ms": {NOW - 1}}}]}}'.encode(),
    "datasource with dots and dashes, 64 labels": _body(
        datasource="team-a.prod_1",
        series=[
            {
                "name": "x" * 1024,
                "labels": {f"l{i}": "v" * 1024 for i in range(64)},
                "timestamps_ms": [NOW],
                "values": [1],
            }
        ],
    ),
}


@pytest.mark.parametrize("data", USUAL.values(), ids=USUAL.keys())
def test_a_usual_body_gives_the_python_paths_batch(data):
    assert _assert_same_batch(data) > 0


UNUSUAL = {
    "a value as a string": _body(series=[{"name": "m", "timestamps_ms": [NOW], "values": ["1.5"]}]),
    "NaN": _body(series=[{"name": "m", "timestamps_ms": [NOW], "values": ["NaN"]}]),
    "a time as a string": _body(series=[{"name": "m", "timestamps_ms": [str(NOW)], "values": [1]}]),
    "lowerCamelCase": _body(series=[{"name": "m", "timestampsMs": [NOW], "values": [1]}]),
    "an unknown field": _body(series=[{"name": "m", "timestamps_ms": [NOW], "values": [1], "unit": "s"}]),
    "a bad label key": _body(
        series=[{"name": "m", "labels": {"9x": "a"}, "timestamps_ms": [NOW], "values": [1]}]
    ),
    "a label value too long": _body(
        series=[{"name": "m", "labels": {"a": "v" * 1025}, "timestamps_ms": [NOW], "values": [1]}]
    ),
    "65 labels": _body(
        series=[
            {"name": "m", "labels": {f"l{i}": "v" for i in range(65)}, "timestamps_ms": [NOW], "values": [1]}
        ]
    ),
    "an empty name": _body(series=[{"name": "", "timestamps_ms": [NOW], "values": [1]}]),
    "a name too long": _body(series=[{"name": "é" * 513, "timestamps_ms": [NOW], "values": [1]}]),
    "a time before 1970": _body(series=[{"name": "m", "timestamps_ms": [-1], "values": [1]}]),
    "a time more than a day ahead": _body(
        series=[{"name": "m", "timestamps_ms": [NOW + DAY_MS + 1], "values": [1]}]
    ),
    "more values than times": _body(series=[{"name": "m", "timestamps_ms": [NOW], "values": [1, 2]}]),
    "a value past 2^53 as an integer": _body(
        series=[{"name": "m", "timestamps_ms": [NOW], "values": [9007199254740993]}]
    ),
    # msgspec reads "-0" as the integer 0 and "-0.0" as minus zero; serde_json gives minus zero for both.
    "minus zero as an integer": f'{{"series": [{{"name": "m", "timestamps_ms": [{NOW}], "values": [-0]}}]}}'.encode(),
    "minus zero": f'{{"series": [{{"name": "m", "timestamps_ms": [{NOW}], "values": [-0.0]}}]}}'.encode(),
    "a repeated label key": (
        f'{{"series": [{{"name": "m", "labels": {{"a": "1", "a": "2"}}, "timestamps_ms": [{NOW}], "values": [1]}}]}}'
    ).encode(),
    "a row with an RFC 3339 time": _body(
        points=[{"name": "m", "value": 1, "timestamp": "2026-11-28T07:00:00Z"}]
    ),
    "a row without a time": _body(points=[{"name": "m", "value": 1}]),
    # The Python path reads it through protobuf's parser (labels absent).
    "labels null in a row": f'{{"points": [{{"name": "m", "value": 1, "timestamp_ms": {NOW}, "labels": null}}]}}'.encode(),
    "a row with a value null": f'{{"points": [{{"name": "m", "value": null, "timestamp_ms": {NOW}}}]}}'.encode(),
    "a bad datasource": _body(datasource="9x", series=[{"name": "m", "timestamps_ms": [NOW], "values": [1]}]),
    "no points": _body(series=[{"name": "m", "timestamps_ms": [], "values": []}]),
    "not an object": b"[]",
    # serde's derived structs would also read an array of the fields in order; the Python path does not.
    "the body as an array of its fields": f'["tsbs", [["m", {{}}, [{NOW}], [1]]]]'.encode(),
    "a series as an array": f'{{"series": [["m", {{}}, [{NOW}], [1]]]}}'.encode(),
    "an empty array for a series": f'{{"series": [[], {{"name": "m", "timestamps_ms": [{NOW}], "values": [1]}}]}}'.encode(),
    "a row as an array": f'{{"points": [["m", 1, "", {NOW}]]}}'.encode(),
    "not JSON": b'{"series": [',
    "not UTF-8": b'{"series": [{"name": "\xff", "timestamps_ms": [1], "values": [1]}]}',
    "trailing bytes": _body(series=[{"name": "m", "timestamps_ms": [NOW], "values": [1]}]) + b" x",
}


@pytest.mark.parametrize("data", UNUSUAL.values(), ids=UNUSUAL.keys())
def test_a_body_with_anything_to_refuse_or_an_unusual_spelling_is_left_to_the_python_path(data):
    assert _fast(data) is None


def _random_usual_body(rng: random.Random, series_chance: float = 0.7) -> bytes:
    """Bodies in the usual shapes with every point acceptable, varied in every way those allow
    (rows alone, which the hand-written rows reader takes, `1 - series_chance` of the time)."""
    names = ["cpu", "mem_used", "Ünïcode", "a" * 40]
    keys = ["host", "dc", "_x", "service_name", "simulation_id"]

    def labels() -> dict[str, str]:
        picked = rng.sample(keys, rng.randrange(0, len(keys) + 1))
        return {k: rng.choice(["", "a", "b", "été", str(rng.randrange(1000))]) for k in picked}

    def value() -> float | int:
        return rng.choice(
            [
                rng.randrange(-(2**53), 2**53),
                rng.uniform(-1e6, 1e6),
                rng.random() * 10 ** rng.randrange(-300, 300),
                0,
            ]
        )

    def when() -> int:
        return rng.choice([rng.randrange(0, NOW + DAY_MS), NOW - rng.randrange(0, 10**7)])

    body: dict = {}
    if rng.random() < 0.7:
        body["datasource"] = rng.choice(["", "tsbs", "platform_metrics", "a.b-c"])
    if rng.random() < series_chance:
        body["series"] = [
            {
                "name": rng.choice(names),
                "labels": labels(),
                "timestamps_ms": [when() for _ in range(n)],
                "values": [value() for _ in range(n)],
            }
            for n in (rng.randrange(0, 30) for _ in range(rng.randrange(1, 20)))
        ]
    if rng.random() < 0.7 or not body.get("series"):
        series = [(rng.choice(names), labels()) for _ in range(rng.randrange(1, 8))]
        points = []
        for _ in range(rng.randrange(1, 60)):
            name, ls = rng.choice(series)
            ls = dict(rng.sample(list(ls.items()), len(ls)))  # the same labels in any order
            point = {"name": name, "value": value(), "timestamp_ms": when() or 1}
            if ls or rng.random() < 0.5:
                point["labels"] = ls
            points.append(dict(rng.sample(list(point.items()), len(point))))
        body["points"] = points
    layout = rng.choice([{}, {"separators": (",", ":")}, {"indent": 2}, {"indent": "\t"}])
    return json.dumps(body, ensure_ascii=rng.random() < 0.5, **layout).encode()


@pytest.mark.parametrize("seed", range(40))
def test_random_usual_bodies_give_the_python_paths_batch(seed):
    _assert_same_batch(_random_usual_body(random.Random(seed)))


@pytest.mark.parametrize("seed", range(40))
def test_random_row_bodies_give_the_python_paths_batch(seed):
    _assert_same_batch(_random_usual_body(random.Random(30_000 + seed), series_chance=0))


_ODD = [
    None,
    True,
    "",
    "x",
    "1",
    "NaN",
    -0.0,
    0,
    -1,
    1e308,
    2**53 + 1,
    2**63,
    2**64,
    1.5,
    [],
    {},
    "é",
    "\u0000",
]


def _mutated(data: bytes, rng: random.Random) -> bytes:
    """A usual body with a few fields, elements or spellings changed: mostly bodies the fast path
    must leave, some it may still take."""
    body = json.loads(data)
    for _ in range(rng.randrange(1, 4)):
        node = body
        while True:
            if isinstance(node, dict) and node:
                key = rng.choice(list(node))
                if isinstance(node[key], (dict, list)) and node[key] and rng.random() < 0.6:
                    node = node[key]
                    continue
                if rng.random() < 0.2:
                    del node[key]
                else:
                    node[rng.choice([key, key, "timestampMs", "unit", "labels", "value"])] = rng.choice(_ODD)
            elif isinstance(node, list) and node:
                i = rng.randrange(len(node))
                if isinstance(node[i], (dict, list)) and rng.random() < 0.7:
                    node = node[i]
                    continue
                node[i] = rng.choice(_ODD)
            break
    text = json.dumps(body, ensure_ascii=rng.random() < 0.5)
    if rng.random() < 0.3:
        text = text.replace('"name"', '"n\\u0061me"', rng.choice([1, 2]))  # an escaped key
    return text.encode()


@pytest.mark.parametrize("seed", range(250))
def test_a_mutated_body_the_fast_path_takes_gives_the_python_paths_batch(seed):
    """A differential fuzz, seeded (a run of 50,000 such bodies found the two cases now in UNUSUAL
    that serde reads and msgspec does not: arrays for objects, and a row's labels null); the last
    100 seeds mutate bodies of rows alone."""
    rng = random.Random(10_000 + seed)
    data = _mutated(_random_usual_body(rng, series_chance=0.7 if seed < 150 else 0), rng)
    if _fast(data) is not None:
        _assert_same_batch(data)


# --- gRPC's IngestMetrics: the request's protobuf bytes (services/realtime/native.py) ---------------


def _python_request(data: bytes):
    request = realtime_service_pb2.IngestMetricsRequest.FromString(data)
    batch = validate(request, NOW, KnownGoodSeries())
    return batch, EncodedBatch.encode("acme", batch.datasource, batch.series, SeriesMemo())


def _assert_same_request(data: bytes) -> int:
    fast = encode_usual_request(data, NOW, "acme")
    assert fast is not None, data[:200]
    return _assert_same(fast, _python_request(data), records_as_bytes=False)


def _request(datasource: str = "", *series: common_pb2.Series) -> bytes:
    return realtime_service_pb2.IngestMetricsRequest(datasource=datasource, series=series).SerializeToString()


def _series(name="cpu", labels=None, ts=(NOW,), values=(1.0,)) -> common_pb2.Series:
    return common_pb2.Series(name=name, labels=labels or {}, timestamps_ms=ts, values=values)


def _unpacked(name: str, key: str, value: str, ts: list[int], values: list[float]) -> bytes:
    """A request whose series' times and values are written one field each (not packed), as a
    proto2-era writer may: protobuf parsers take both."""
    entry = b"\x0a" + varint(len(key)) + key.encode() + b"\x12" + varint(len(value)) + value.encode()
    body = b"\x0a" + varint(len(name)) + name.encode() + b"\x12" + varint(len(entry)) + entry
    body += b"".join(b"\x18" + varint(t) for t in ts)
    body += b"".join(b"\x21" + struct.pack("<d", v) for v in values)
    return b"\x1a" + varint(len(body)) + body


def test_a_usual_request_gives_the_python_paths_batch():
    assert (
        _assert_same_request(
            _request(
                "tsbs",
                _series(labels={"host": "h1", "dc": "a"}, ts=[NOW - 2, NOW - 1], values=[1, 2.5]),
                _series("mem"),
            )
        )
        == 3
    )
    # Defaults, an empty series, a series twice, empty label values, non-ASCII, the limits.
    assert (
        _assert_same_request(
            _request(
                "",
                _series("m", {"a": ""}),
                _series("m", {"b": "x"}, ts=[], values=[]),
                _series("m", {"a": ""}, ts=[NOW - 1], values=[-0.0]),
                _series(
                    "temp\u00e9\n",
                    {"site": 'Z\u00fcrich "main"', "k_9": "\u65e5\u672c"},
                    ts=[0, NOW + DAY_MS],
                    values=[1e300, -3.25e-7],
                ),
                _series("x" * 1024, {f"l{i}": "v" * 1024 for i in range(64)}),
            )
        )
        == 5
    )
    assert _assert_same_request(_unpacked("cpu", "host", "h1", [NOW - 1, NOW], [0.5, 7.0])) == 2


@pytest.mark.parametrize("seed", range(40))
def test_random_usual_requests_give_the_python_paths_batch(seed):
    request = json_format.Parse(
        _random_usual_body(random.Random(seed)), realtime_service_pb2.IngestMetricsRequest()
    )
    _assert_same_request(request.SerializeToString())


@pytest.mark.parametrize("seed", range(40))
def test_random_row_requests_give_the_python_paths_batch(seed):
    request = json_format.Parse(
        _random_usual_body(random.Random(40_000 + seed), series_chance=0),
        realtime_service_pb2.IngestMetricsRequest(),
    )
    _assert_same_request(request.SerializeToString())


def _rows(*points: common_pb2.Point, series=()) -> bytes:
    return realtime_service_pb2.IngestMetricsRequest(points=points, series=series).SerializeToString()


def _entry(key: str, value: str) -> bytes:
    """A point's labels map entry (field 5)."""
    entry = (
        b"\x0a"
        + varint(len(key.encode()))
        + key.encode()
        + b"\x12"
        + varint(len(value.encode()))
        + value.encode()
    )
    return b"\x2a" + varint(len(entry)) + entry


def _hand_point(*fields: bytes) -> bytes:
    """A request of one row written field by field (field 2 of the request)."""
    point = b"".join(fields)
    return b"\x12" + varint(len(point)) + point


def test_rows_with_label_entries_among_the_other_fields_give_the_python_paths_batch():
    # Serialisers write a point's labels last and together; a hand-written one may not. The fast
    # path groups rows by their label entries' bytes first, so these must still be one series.
    name = b"\x0a\x03cpu"
    value = b"\x11" + struct.pack("<d", 2.5)

    def at(ts: int) -> bytes:
        return b"\x20" + varint(ts)

    request = (
        _hand_point(name, _entry("a", "1"), _entry("b", "2"), value, at(NOW - 3))
        + _hand_point(_entry("a", "1"), name, value, _entry("b", "2"), at(NOW - 2))
        + _hand_point(_entry("b", "2"), _entry("a", "1"), name, at(NOW - 1), value)
        + _hand_point(name, _entry("a", "1"), _entry("b", "2"), value, at(NOW - 3))
        + _hand_point(name, _entry("a", "1"), at(NOW), _entry("b", "3"))
    )
    assert _assert_same_request(request) == 5
    fast = encode_usual_request(request, NOW, "acme")
    assert fast is not None
    assert len(fast[1].columns.keys) == 2


def _point(name="cpu", value=1.0, ts=NOW, labels=None, **fields) -> common_pb2.Point:
    return common_pb2.Point(name=name, value=value, timestamp_ms=ts, labels=labels or {}, **fields)


def test_usual_rows_give_the_python_paths_batch():
    # Rows by series in order of their first row, a label set in two orders one series, a value left
    # out (0), and a columnar series of the same key kept apart, as the Python path keeps it.
    one = common_pb2.Point(name="cpu", value=2.0, timestamp_ms=NOW)
    one.labels["b"] = "2"
    one.labels["a"] = "1"
    request = _rows(
        _point(labels={"a": "1", "b": "2"}, ts=NOW - 1),
        _point("mem", 3.0),
        one,
        common_pb2.Point(name="z", timestamp_ms=NOW - 5),
        _point(labels={"a": "1", "b": "2"}, ts=NOW - 7, value=-0.0),
        series=[_series(labels={"a": "1", "b": "2"}, ts=[NOW - 9])],
    )
    assert _assert_same_request(request) == 6


REFUSED_REQUESTS = {
    "a row with an RFC 3339 time": _rows(_point(ts=0, timestamp="2026-11-28T08:00:00Z")),
    "a row without a time": _rows(_point(ts=0)),
    "a row with NaN": _rows(_point(value=float("nan"))),
    "a row with a bad label key": _rows(_point(labels={"a-b": "1"})),
    "a good row and a bad one": _rows(_point(), _point(ts=-5)),
    "a REST body": realtime_service_pb2.IngestMetricsRequest(
        series=[_series()], json_body={"data": b"{}"}
    ).SerializeToString(),
    "no series": _request("tsbs"),
    "only empty series": _request("", _series(ts=[], values=[])),
    "NaN": _request("", _series(values=[float("nan")])),
    "infinity": _request("", _series(values=[float("-inf")])),
    "a time before 1970": _request("", _series(ts=[-1])),
    "a time more than a day ahead": _request("", _series(ts=[NOW + DAY_MS + 1])),
    "more values than times": _request("", _series(ts=[NOW], values=[1, 2])),
    "no name": _request("", _series(name="")),
    "a bad label key": _request("", _series(labels={"1x": "a"})),
    "a long name": _request("", _series("x" * 1025)),
    "65 labels": _request("", _series(labels={f"l{i}": "v" for i in range(65)})),
    "a bad datasource": _request("bad name", _series()),
    "an unknown field": _request("", _series()) + b"\x48\x01",
    "an unknown series field": b"\x1a\x04\x28\x01\x0a\x00",
}


_REST_BODY = next(iter(USUAL.values()))
_WITH_EXTENSION = realtime_service_pb2.IngestMetricsRequest.FromString(_rest(_REST_BODY))
_WITH_EXTENSION.json_body.extensions.add()
REFUSED_REQUESTS |= {
    # Each the Python path takes: it refuses a body beside fields, and merges repeated messages.
    "a REST body and a datasource": _rest(_REST_BODY, datasource="x"),
    "a REST body and a series": _rest(_REST_BODY, series=[_series()]),
    "a REST body with an extension": _WITH_EXTENSION.SerializeToString(),
    "an empty REST body": _rest(b""),
}


_OTHER_REST_BODY = list(USUAL.values())[1]
REPEATED_REST_BODIES = {
    # What Envoy's transcoder sends: an empty json_body, then the one holding the body.
    "an empty json_body, then the body": b'"\x00' + _rest(_REST_BODY),
    "a REST body twice": _rest(_REST_BODY) + _rest(_REST_BODY),
    "two REST bodies": _rest(_OTHER_REST_BODY) + _rest(_REST_BODY),
    "a body, then a json_body with a content type only": _rest(_REST_BODY)
    + realtime_service_pb2.IngestMetricsRequest(json_body={"content_type": "text/plain"}).SerializeToString(),
}


@pytest.mark.parametrize("data", REPEATED_REST_BODIES.values(), ids=REPEATED_REST_BODIES.keys())
def test_a_json_body_written_more_than_once_is_merged_as_protobufs_parser_merges_it(data):
    merged = realtime_service_pb2.IngestMetricsRequest.FromString(data).json_body.data
    assert merged
    fast = encode_usual_request(data, NOW, "acme")
    assert fast is not None
    _assert_same(fast, _python(merged))


@pytest.mark.parametrize("data", REFUSED_REQUESTS.values(), ids=REFUSED_REQUESTS.keys())
def test_a_request_with_anything_to_refuse_is_left_to_the_python_path(data):
    assert encode_usual_request(data, NOW, "acme") is None


@pytest.mark.parametrize("seed", range(100))
def test_a_damaged_request_the_fast_path_takes_gives_the_python_paths_batch(seed):
    """Bytes changed, cut or repeated: whatever protobuf's parser still reads and the fast path
    takes must be the Python path's batch; what the parser refuses gRPC refuses first."""
    rng = random.Random(20_000 + seed)
    request = json_format.Parse(_random_usual_body(rng), realtime_service_pb2.IngestMetricsRequest())
    data = bytearray(request.SerializeToString())
    for _ in range(rng.randrange(1, 4)):
        if not data:
            break
        i = rng.randrange(len(data))
        choice = rng.random()
        if choice < 0.5:
            data[i] = rng.randrange(256)
        elif choice < 0.75:
            del data[i:]
        else:
            data[i:i] = data[max(0, i - 8) : i]
    try:
        realtime_service_pb2.IngestMetricsRequest.FromString(bytes(data))
    except DecodeError:
        return
    if encode_usual_request(bytes(data), NOW, "acme") is not None:
        _assert_same_request(bytes(data))
