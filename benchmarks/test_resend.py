"""Correctness checks of benchmarks/resend.py's pieces (no timing, no servers)."""

from __future__ import annotations

import json

from benchmarks.ingest_rest import columnar_bodies, make_data, points_in, vm_bodies
from benchmarks.resend import METRIC, expected_sum


def test_the_expected_sum_is_that_of_the_bodies_points_of_the_metric_and_each_body_counts_its_points():
    data = make_data(20_000, hosts=2)
    bodies = columnar_bodies(data, 8)
    series = [s for b in bodies for s in json.loads(b)["series"]]
    assert expected_sum(data) == sum(sum(s["values"]) for s in series if s["name"] == METRIC) > 0
    assert sum(points_in(b, "columnar") for b in bodies) == data.points
    assert sum(points_in(b, "vm") for b in vm_bodies(data, 8)) == data.points
