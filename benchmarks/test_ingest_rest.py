"""The REST ingest benchmark's bodies: every form carries exactly the same points."""

from __future__ import annotations

import json

from benchmarks.ingest_rest import columnar_bodies, grpc_requests, make_data, row_bodies, vm_bodies
from platformq.analytics.v1 import realtime_service_pb2


def _points(bodies: list[bytes], form: str) -> list[tuple]:
    out = []
    for body in bodies:
        if form == "vm":
            for line in body.splitlines():
                doc = json.loads(line)
                labels = tuple(sorted((k, v) for k, v in doc["metric"].items() if k != "__name__"))
                name = doc["metric"]["__name__"]
                out += [
                    (name, labels, t, float(v)) for t, v in zip(doc["timestamps"], doc["values"], strict=True)
                ]
        elif form == "grpc":
            request = realtime_service_pb2.IngestMetricsRequest.FromString(body)
            for s in request.series:
                labels = tuple(sorted(s.labels.items()))
                out += [(s.name, labels, t, v) for t, v in zip(s.timestamps_ms, s.values, strict=True)]
            out += [
                (p.name, tuple(sorted(p.labels.items())), p.timestamp_ms, p.value) for p in request.points
            ]
        else:
            doc = json.loads(body)
            for p in doc.get("points", []):
                out.append(
                    (p["name"], tuple(sorted(p["labels"].items())), p["timestamp_ms"], float(p["value"]))
                )
            for s in doc.get("series", []):
                labels = tuple(sorted(s["labels"].items()))
                out += [
                    (s["name"], labels, t, float(v))
                    for t, v in zip(s["timestamps_ms"], s["values"], strict=True)
                ]
    return sorted(out)


def test_every_form_carries_the_same_points():
    data = make_data(20_000, hosts=20)
    columnar = columnar_bodies(data, 8)
    assert len(columnar) == 8
    expected = _points(columnar, "columnar")
    assert len(expected) == data.points == 20_000
    assert len(set(expected)) == len(expected)
    assert _points(row_bodies(data, 8), "rows") == expected
    assert _points(vm_bodies(data, 8), "vm") == expected
    assert _points(grpc_requests(data, 8), "grpc") == expected
    assert _points(grpc_requests(data, 8, rows=True), "grpc") == expected
