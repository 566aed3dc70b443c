"""Validation of ingest batches: exact accepted and rejected counts, and a reason per rejected
point naming the point and the field, in both the row and the columnar form."""

from __future__ import annotations

import math

import numpy as np
import pytest

from libs.errors import InvalidArgument
from libs.storage.keys import SeriesKey
from platformq.analytics.v1 import common_pb2, realtime_service_pb2
from services.realtime.ingest import KnownGoodSeries, validate

NOW = 1_795_852_800_000  # 2026-11-28T08:00:00Z
DAY_MS = 86_400_000
GOOD_LABELS = {"service_name": "auth-service"}


def _point(value: float = 1.0, *, name: str = "cpu_usage", labels=None, **when) -> common_pb2.Point:
    if not when:
        when = {"timestamp_ms": NOW}
    return common_pb2.Point(name=name, value=value, labels=GOOD_LABELS if labels is None else labels, **when)


def _request(points=(), series=(), datasource: str = "") -> realtime_service_pb2.IngestMetricsRequest:
    return realtime_service_pb2.IngestMetricsRequest(datasource=datasource, points=points, series=series)


def _violations(batch) -> list[tuple[int, str]]:
    return [(e.index, e.field) for e in batch.errors]


def _reasons(batch) -> dict[str, str]:
    return {e.field: e.reason for e in batch.errors}


# ---- row form -------------------------------------------------------------------------------


def test_valid_rows_are_grouped_by_series_with_both_time_forms():
    points = [
        _point(1.5, timestamp="2026-11-28T07:00:00Z"),
        _point(2.5, timestamp_ms=NOW - 1_000),
        _point(3.5, timestamp="2026-11-28T07:30:00.250+00:00", labels={"service_name": "db"}),
        _point(4.5, timestamp="2026-11-28", name="mem"),
    ]
    batch = validate(_request(points), now_ms=NOW)

    assert (batch.datasource, batch.accepted, batch.rejected, batch.errors) == ("platform_metrics", 4, 0, [])
    got = {s.key: (s.ts.tolist(), s.values.tolist()) for s in batch.series}
    assert got == {
        SeriesKey.of("cpu_usage", GOOD_LABELS): ([NOW - 3_600_000, NOW - 1_000], [1.5, 2.5]),
        SeriesKey.of("cpu_usage", {"service_name": "db"}): ([NOW - 1_800_000 + 250], [3.5]),
        SeriesKey.of("mem", GOOD_LABELS): ([NOW - 8 * 3_600_000], [4.5]),
    }
    assert all(s.ts.dtype == np.int64 and s.values.dtype == np.float64 for s in batch.series)


@pytest.mark.parametrize(
    ("bad", "field", "reason"),
    [
        pytest.param(_point(math.nan), "value", "NaN and infinite", id="nan"),
        pytest.param(_point(math.inf), "value", "NaN and infinite", id="plus-inf"),
        pytest.param(_point(-math.inf), "value", "NaN and infinite", id="minus-inf"),
        pytest.param(
            _point(timestamp_ms=NOW + DAY_MS + 1),
            "timestamp",
            "more than a day in the future",
            id="future-ms",
        ),
        pytest.param(
            _point(timestamp="2026-11-29T08:00:00.001Z"),
            "timestamp",
            "more than a day in the future",
            id="future-rfc3339",
        ),
        pytest.param(_point(timestamp_ms=-1), "timestamp", "before 1970", id="negative-ms"),
        pytest.param(_point(timestamp="1969-12-31T23:59:59Z"), "timestamp", "before 1970", id="1969-rfc3339"),
        pytest.param(
            common_pb2.Point(name="cpu_usage", value=1.0), "timestamp", "give timestamp", id="missing-time"
        ),
        pytest.param(_point(timestamp="yesterday"), "timestamp", "is not an RFC 3339 time", id="malformed"),
        pytest.param(
            _point(timestamp="2026-13-01T00:00:00Z"), "timestamp", "is not an RFC 3339 time", id="month-13"
        ),
        pytest.param(_point(name=""), "name", "must not be empty", id="empty-name"),
        pytest.param(_point(name="x" * 1025), "name", "longer than 1024 bytes", id="long-name"),
        pytest.param(_point(name="é" * 513), "name", "longer than 1024 bytes", id="long-name-in-bytes"),
        pytest.param(
            _point(labels={"9lives": "x"}), "labels.9lives", "must match", id="key-starts-with-digit"
        ),
        pytest.param(
            _point(labels={"service-name": "x"}), "labels.service-name", "must match", id="key-with-dash"
        ),
        pytest.param(_point(labels={"": "x"}), "labels.", "must match", id="empty-key"),
        pytest.param(
            _point(labels={f"l{i}": "v" for i in range(65)}),
            "labels",
            "has 65 labels; at most 64",
            id="65-labels",
        ),
        pytest.param(
            _point(labels={"k": "v" * 1025}), "labels.k", "longer than 1024 bytes", id="long-label-value"
        ),
    ],
)
def test_each_bad_row_is_rejected_naming_the_point_and_field(bad, field, reason):
    good = [_point(1.0, timestamp_ms=NOW - 2), _point(2.0, timestamp_ms=NOW - 1)]
    batch = validate(_request([good[0], bad, good[1]]), now_ms=NOW)

    assert (batch.accepted, batch.rejected) == (2, 1)
    assert _violations(batch) == [(1, f"points[1].{field}")]
    assert reason in batch.errors[0].reason
    (series,) = batch.series
    assert series.ts.tolist() == [NOW - 2, NOW - 1]


def test_row_limits_are_inclusive():
    at_limits = [
        _point(timestamp_ms=NOW + DAY_MS),
        _point(timestamp="1970-01-01T00:00:00Z", name="n" * 1024),
        _point(labels={f"l{i}": "v" * 1024 for i in range(64)}),
        _point(timestamp_ms=NOW, name="é" * 512),
    ]
    batch = validate(_request(at_limits), now_ms=NOW)
    assert (batch.accepted, batch.rejected, batch.errors) == (4, 0, [])


# ---- columnar form --------------------------------------------------------------------------


def test_columnar_bad_values_and_times_are_rejected_point_by_point():
    ts = [NOW - 4, NOW - 3, NOW + DAY_MS + 1, -5, NOW - 1, NOW + 2 * DAY_MS]
    values = [1.0, math.nan, 3.0, 4.0, -math.inf, math.inf]
    request = _request(
        series=[common_pb2.Series(name="cpu", labels=GOOD_LABELS, timestamps_ms=ts, values=values)]
    )
    batch = validate(request, now_ms=NOW)

    assert (batch.accepted, batch.rejected) == (1, 5)
    # A point with two problems (the last: +Inf and in the future) is reported and counted once.
    assert _violations(batch) == [
        (0, "series[0].values[1]"),
        (0, "series[0].values[4]"),
        (0, "series[0].values[5]"),
        (0, "series[0].timestamps_ms[3]"),
        (0, "series[0].timestamps_ms[2]"),
    ]
    reasons = _reasons(batch)
    assert "NaN and infinite" in reasons["series[0].values[1]"]
    assert reasons["series[0].timestamps_ms[3]"] == "is before 1970"
    assert reasons["series[0].timestamps_ms[2]"] == "is more than a day in the future"
    (accepted,) = batch.series
    assert (accepted.ts.tolist(), accepted.values.tolist()) == ([NOW - 4], [1.0])


@pytest.mark.parametrize(
    ("series", "field", "rejected", "reason"),
    [
        pytest.param(
            common_pb2.Series(name="cpu", timestamps_ms=[NOW, NOW - 1, NOW - 2], values=[1.0, 2.0]),
            "values",
            3,
            "has 2 values for 3 timestamps_ms",
            id="fewer-values",
        ),
        pytest.param(
            common_pb2.Series(name="cpu", timestamps_ms=[NOW], values=[1.0, 2.0]),
            "values",
            2,
            "has 2 values for 1 timestamps_ms",
            id="more-values",
        ),
        pytest.param(
            common_pb2.Series(name="", timestamps_ms=[NOW, NOW - 1], values=[1.0, 2.0]),
            "name",
            2,
            "must not be empty",
            id="empty-name",
        ),
        pytest.param(
            common_pb2.Series(name="cpu", labels={"a b": "x"}, timestamps_ms=[NOW], values=[1.0]),
            "labels.a b",
            1,
            "must match",
            id="bad-label-key",
        ),
        pytest.param(
            common_pb2.Series(
                name="cpu", labels={f"k{i}": "v" for i in range(70)}, timestamps_ms=[NOW], values=[1.0]
            ),
            "labels",
            1,
            "has 70 labels; at most 64",
            id="70-labels",
        ),
        pytest.param(
            common_pb2.Series(
                name="cpu", labels={"k": "v" * 2000}, timestamps_ms=[NOW] * 3, values=[1.0] * 3
            ),
            "labels.k",
            3,
            "longer than 1024 bytes",
            id="long-label-value",
        ),
    ],
)
def test_a_bad_series_is_rejected_whole_naming_the_series(series, field, rejected, reason):
    good = common_pb2.Series(name="cpu", labels=GOOD_LABELS, timestamps_ms=[NOW - 1, NOW], values=[1.0, 2.0])
    batch = validate(_request(series=[good, series]), now_ms=NOW)

    assert (batch.accepted, batch.rejected) == (2, rejected)
    assert _violations(batch) == [(1, f"series[1].{field}")]
    assert reason in batch.errors[0].reason
    assert [s.key for s in batch.series] == [SeriesKey.of("cpu", GOOD_LABELS)]


def test_a_fully_valid_series_keeps_its_message_and_a_partial_one_is_filtered():
    whole = common_pb2.Series(
        name="cpu", labels=GOOD_LABELS, timestamps_ms=[NOW - 2, NOW - 1], values=[1.0, 2.0]
    )
    partial = common_pb2.Series(
        name="cpu",
        labels={"service_name": "db"},
        timestamps_ms=[NOW - 2, -1, NOW - 1],
        values=[5.0, 6.0, 7.0],
    )
    request = _request(series=[whole, partial])
    batch = validate(request, now_ms=NOW)

    kept, filtered = batch.series
    assert kept.message is not None and kept.message == request.series[0]
    assert (kept.ts.tolist(), kept.values.tolist()) == ([NOW - 2, NOW - 1], [1.0, 2.0])
    assert filtered.message is None
    assert (filtered.ts.tolist(), filtered.values.tolist()) == ([NOW - 2, NOW - 1], [5.0, 7.0])
    assert (batch.accepted, batch.rejected) == (4, 1)


def test_a_series_with_every_point_rejected_stores_nothing():
    series = common_pb2.Series(name="cpu", timestamps_ms=[NOW, NOW], values=[math.nan, math.inf])
    batch = validate(_request(series=[series]), now_ms=NOW)
    assert (batch.accepted, batch.rejected, batch.series) == (0, 2, [])


# ---- the whole request ----------------------------------------------------------------------


def test_rows_and_columns_in_one_request_are_counted_together():
    request = _request(
        points=[_point(1.0), _point(math.nan), _point(name="")],
        series=[common_pb2.Series(name="mem", timestamps_ms=[NOW, -1, NOW - 1], values=[1.0, 2.0, 3.0])],
        datasource="tsbs",
    )
    batch = validate(request, now_ms=NOW)
    assert (batch.datasource, batch.accepted, batch.rejected) == ("tsbs", 3, 3)
    assert sorted(_violations(batch)) == [
        (0, "series[0].timestamps_ms[1]"),
        (1, "points[1].value"),
        (2, "points[2].name"),
    ]


@pytest.mark.parametrize("name", ["../etc", "a/b", "has space", "9starts_with_digit", "x" * 129, "tab\t"])
def test_a_bad_datasource_rejects_the_whole_request(name):
    with pytest.raises(InvalidArgument) as err:
        validate(_request([_point()], datasource=name), now_ms=NOW)
    assert err.value.field == "datasource"
    assert err.value.message.startswith("datasource: ")


@pytest.mark.parametrize("name", ["platform_metrics", "tsbs", "a.b-c_d", "_x", "x" * 128])
def test_good_datasource_names_are_kept(name):
    assert validate(_request([_point()], datasource=name), now_ms=NOW).datasource == name


def test_the_error_list_is_bounded_but_the_counts_are_exact():
    points = [_point(math.nan) if i % 2 else _point(timestamp_ms=NOW - i) for i in range(300)]
    columns = common_pb2.Series(
        name="cpu", timestamps_ms=[NOW + 2 * DAY_MS] * 120 + [NOW] * 5, values=[1.0] * 125
    )
    bad_series = [common_pb2.Series(name="", timestamps_ms=[NOW], values=[1.0]) for _ in range(30)]
    batch = validate(_request(points, [columns, *bad_series]), now_ms=NOW)

    assert batch.accepted == 150 + 5
    assert batch.rejected == 150 + 120 + 30
    assert len(batch.errors) == 100
    # Series are checked first: the list fills with the first 100 of their rejections.
    assert [e.field for e in batch.errors] == [f"series[0].timestamps_ms[{j}]" for j in range(100)]


# ---- edge cases found while testing -------------------------------------------------------


def test_a_series_without_points_stores_nothing():
    request = _request(series=[common_pb2.Series(name="cpu", labels=GOOD_LABELS)])
    batch = validate(request, now_ms=NOW)
    assert (batch.accepted, batch.rejected) == (0, 0)
    assert batch.series == []


def test_a_time_a_fraction_of_a_millisecond_before_1970_is_rejected():
    batch = validate(_request([_point(timestamp="1969-12-31T23:59:59.9999Z")]), now_ms=NOW)
    assert (batch.accepted, batch.rejected) == (0, 1)
    assert _violations(batch) == [(0, "points[0].timestamp")]


def test_known_label_keys_still_have_their_values_and_the_other_keys_checked():
    known = KnownGoodSeries()
    assert validate(_request([_point(labels={"zone": "a"})]), now_ms=NOW, known=known).accepted == 1
    later = validate(
        _request(
            [
                _point(labels={"zone": "b" * 1025}),  # a key seen before, a value too long
                _point(labels={"zone": "c", "9bad": "x"}),  # a key seen before beside a bad one
                _point(labels={"zone": "\U0001d11e" * 256}),  # 1,024 bytes in 256 characters: fits
                _point(labels={"zone": "\U0001d11e" * 257}),  # 1,028 bytes
            ]
        ),
        now_ms=NOW,
        known=known,
    )
    assert later.accepted == 1
    assert [(e.field, e.reason) for e in later.errors] == [
        ("points[0].labels.zone", "is longer than 1024 bytes"),
        ("points[1].labels.9bad", "label keys must match [a-zA-Z_][a-zA-Z0-9_]*"),
        ("points[3].labels.zone", "is longer than 1024 bytes"),
    ]
