"""The pieces of the stream hub on their own: live buckets, the analytics diff, parameter parsing
(query string and SubscribeRequest) and cursors."""

from __future__ import annotations

import pytest

from libs.errors import InvalidArgument
from libs.streams import Cursor, parse_subscription, request_from_params
from libs.streams.analytics import answer_of, changes, whole
from libs.streams.buckets import Bucketer
from platformq.analytics.v1 import common_pb2, query_service_pb2
from platformq.analytics.v1 import realtime_service_pb2 as pb

T0 = 1_795_000_000_000  # a multiple of 10 s
H1 = (("host", "h1"),)


@pytest.mark.parametrize(
    ("aggregation", "expected"),
    [("avg", 2.0), ("sum", 6.0), ("min", 1.0), ("max", 3.0), ("count", 3.0), ("last", 3.0)],
)
def test_a_bucket_is_aggregated_and_closed_by_a_later_point_of_its_series(aggregation, expected):
    buckets = Bucketer(10_000, aggregation)
    # Out of order inside the bucket: "last" is the latest timestamp's value, not the latest arrival's.
    assert buckets.add(H1, [T0, T0 + 9_000, T0 + 4_000], [1.0, 3.0, 2.0]) == []
    assert buckets.add(H1, [T0 + 10_000], [50.0]) == [(T0, expected)]


def test_series_have_their_own_buckets_and_a_jump_closes_only_the_open_one():
    buckets = Bucketer(10_000, "sum")
    buckets.add(H1, [T0], [1.0])
    buckets.add((("host", "h2"),), [T0], [5.0])
    assert buckets.add(H1, [T0 + 35_000], [2.0]) == [(T0, 1.0)]  # empty buckets in between send nothing
    assert buckets.add((("host", "h2"),), [T0 + 10_000], [1.0]) == [(T0, 5.0)]


def test_buckets_close_by_wall_time_one_step_after_their_end_and_late_points_are_not_sent():
    buckets = Bucketer(10_000, "max")
    buckets.add(H1, [T0 + 1_000, T0 + 2_000], [4.0, 7.0])
    assert buckets.expire(T0 + 19_999) == {}
    assert buckets.expire(T0 + 20_000) == {H1: [(T0, 7.0)]}
    assert buckets.add(H1, [T0 + 5_000], [99.0]) == []  # its bucket was already sent
    assert buckets.late_points == 1
    buckets.add(H1, [T0 + 30_000], [1.0])
    assert buckets.add(H1, [T0 + 25_000], [3.0]) == [] and buckets.late_points == 2


def test_silent_series_are_forgotten():
    buckets = Bucketer(10_000, "avg", forget_after_ms=60_000)
    buckets.add(H1, [T0], [1.0])
    buckets.expire(T0 + 20_000)
    assert len(buckets) == 1
    buckets.expire(T0 + 10_000 + 60_001)
    assert len(buckets) == 0


def _reply(*series: tuple[str, dict, list[tuple[int, float]]]) -> query_service_pb2.QueryResponse:
    reply = query_service_pb2.QueryResponse()
    for metric, group, points in series:
        reply.series.append(
            common_pb2.SeriesResult(
                metric=metric,
                group=group,
                aggregation="avg",
                points=[common_pb2.DataPoint(timestamp_ms=t, value=v) for t, v in points],
            )
        )
    return reply


def test_the_analytics_diff_keeps_only_new_and_changed_points_and_new_series():
    old = answer_of(_reply(("cpu", {"s": "a"}, [(T0, 1.0), (T0 + 60_000, 2.0)])))
    new = answer_of(
        _reply(
            ("cpu", {"s": "a"}, [(T0 + 60_000, 2.5), (T0 + 120_000, 3.0)]),  # T0 slid out: not news
            ("cpu", {"s": "b"}, [(T0, 9.0)]),
        )
    )
    assert changes(old, new) == [
        {
            "metric": "cpu",
            "group": {"s": "a"},
            "aggregation": "avg",
            "points": [
                {"timestamp_ms": str(T0 + 60_000), "value": 2.5},
                {"timestamp_ms": str(T0 + 120_000), "value": 3.0},
            ],
        },
        {
            "metric": "cpu",
            "group": {"s": "b"},
            "aggregation": "avg",
            "points": [{"timestamp_ms": str(T0), "value": 9.0}],
        },
    ]
    assert changes(new, new) == []
    assert len(whole(new)) == 2


def test_a_browsers_access_token_is_not_a_label_filter():
    request = request_from_params("metrics", "cpu", [("access_token", "eyJ.x.y"), ("host", "h1")])
    assert dict(request.labels) == {"host": "h1"}
    assert "eyJ" not in str(request)


def test_query_string_parameters_and_label_filters():
    request = request_from_params(
        "metrics", "cpu", [("step", "1m"), ("aggregation", "max"), ("service_name", "auth"), ("host", "h1")]
    )
    spec = parse_subscription(request)
    assert (spec.step_ms, spec.aggregation, spec.datasource) == (60_000, "max", "platform_metrics")
    assert spec.labels == (("host", "h1"), ("service_name", "auth"))
    same = parse_subscription(
        request_from_params("metrics", "cpu", [("host", "h1"), ("service_name", "auth")])
    )
    assert same.key != spec.key  # a different step is another channel
    query = '{"metrics": ["cpu"], "time_range": "1h", "group_by": ["service_name"]}'
    analytics = parse_subscription(request_from_params("analytics", "mine", [("query", query)]))
    assert list(analytics.query.metrics) == ["cpu"] and analytics.query.datasource == "platform_metrics"


@pytest.mark.parametrize(
    ("stream_type", "params", "message"),
    [
        ("metrics", [("host", "a"), ("host", "b")], "host: given more than once"),
        ("metrics", [("step", "0s")], "step: '0s' is not a duration"),
        ("metrics", [("step", "500ms")], "step: '500ms' is outside 1s to 1d"),
        ("metrics", [("step", "1m"), ("aggregation", "p99")], "aggregation: 'p99' is not allowed"),
        ("metrics", [("datasource", "../etc")], "datasource: '../etc' must match"),
        ("metrics", [("since", "abc")], "since: 'abc' is not a cursor"),
        ("metrics", [("query", '{"metrics": ["x"]}')], "query: only analytics streams take a query"),
        ("anomalies", [("step", "1m")], "step: only metrics streams take it"),
        ("anomalies", [("datasource", "lab")], "datasource: only metrics streams take a datasource"),
        ("dashboard", [("host", "h1")], "host: dashboard streams take no label filters"),
        ("analytics", [("query", '{"metricz": ["x"]}')], "query: not a query body"),
        (
            "analytics",
            [("query", '{"sql": "SELECT 1"}')],
            "query.sql: analytics streams follow metrics queries",
        ),
        ("analytics", [("query", '{"metrics": ["x"], "explain": true}')], "query.explain:"),
        ("analytics", [("query", '{"time_range": "1h"}')], "query.metrics: give at least one metric"),
    ],
)
def test_bad_parameters_are_refused_naming_the_field(stream_type, params, message):
    with pytest.raises(InvalidArgument) as err:
        parse_subscription(request_from_params(stream_type, "x", params))
    assert err.value.message.startswith(message), err.value.message


def test_a_label_key_that_labels_cannot_have_is_refused():
    with pytest.raises(InvalidArgument, match=r"labels\.9lives: '9lives' is not a label key"):
        parse_subscription(
            pb.SubscribeRequest(stream_type="metrics", stream_id="cpu", labels={"9lives": "x"})
        )


def test_cursors_round_trip_and_name_their_hub_instance():
    cursor = Cursor("0123456789ab", 4096)
    assert Cursor.parse(str(cursor)) == cursor
    with pytest.raises(InvalidArgument):
        Cursor.parse("0123456789ab-")


def test_metric_routes_offer_a_series_only_to_channels_whose_filter_it_can_meet():
    from libs.streams.channels import FrameSequence, MetricRoutes, MetricsChannel

    def channel(**labels: str) -> MetricsChannel:
        spec = parse_subscription(pb.SubscribeRequest(stream_type="metrics", stream_id="cpu", labels=labels))
        return MetricsChannel(spec, FrameSequence("e"), 10, 60.0)

    everything = channel()
    per_service = {f"svc-{i}": channel(service_name=f"svc-{i}") for i in range(100)}
    per_host = channel(host="h-1", service_name="svc-7")  # first filter (sorted): host
    routes = MetricRoutes()
    for c in (everything, *per_service.values(), per_host):
        routes.add(c)
    offered = routes.candidates({"service_name": "svc-7", "host": "h-1"})
    assert set(offered) == {everything, per_service["svc-7"], per_host}
    assert set(routes.candidates({"service_name": "svc-7", "host": "h-2"})) == {
        everything,
        per_service["svc-7"],
    }
    assert routes.candidates({"region": "x"}) == [everything]
    for c in (everything, *per_service.values(), per_host):
        routes.remove(c)
    assert not routes and routes.by_label == {}
