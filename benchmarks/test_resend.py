"""Correctness checks of benchmarks/resend.py's pieces (no timing, no servers)."""

from __future__ import annotations

import json

from benchmarks.ingest_rest import columnar_bodies, make_data
from benchmarks.resend import METRIC, _iso, _points, expected_sum


def test_the_expected_sum_is_that_of_the_bodies_points_of_the_metric_and_each_body_counts_its_points():
    data = make_data(20_000, hosts=2)
    bodies = columnar_bodies(data, 8)
    series = [s for b in bodies for s in json.loads(b)["series"]]
    assert expected_sum(data) == sum(sum(s["values"]) for s in series if s["name"] == METRIC) > 0
    assert sum(map(_points, bodies)) == data.points


def test_times_are_rfc3339_with_milliseconds():
    assert _iso(1_767_225_600_123) == "2026-01-01T00:00:00.123Z"
