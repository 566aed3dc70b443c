import pytest
from google.protobuf import json_format

from libs.errors import InvalidArgument
from platformq.analytics.v1 import query_service_pb2 as pb
from services.query_router.spec import query_from_proto, timeseries_from_proto

SEED_QUERY = {
    "metrics": ["cpu_usage", "memory_usage"],
    "time_range": "1h",
    "group_by": ["service_name"],
    "mode": "auto",
}
SEED_TIMESERIES = {
    "datasource": "platform_metrics",
    "metrics": ["request_rate", "error_rate"],
    "intervals": ["2024-01-01/2024-01-02"],
    "granularity": "hour",
}


def _query(body: dict) -> pb.QueryRequest:
    return json_format.ParseDict(body, pb.QueryRequest())


def test_seed_query_is_accepted_verbatim():
    spec = query_from_proto(_query(SEED_QUERY))
    assert spec.metrics == ("cpu_usage", "memory_usage")
    assert spec.lookback_ms == 3_600_000
    assert spec.group_by == ("service_name",)
    assert spec.mode == "auto"
    assert spec.aggregation == "avg"
    assert spec.datasource == "platform_metrics"


def test_seed_timeseries_is_accepted_verbatim():
    spec = timeseries_from_proto(json_format.ParseDict(SEED_TIMESERIES, pb.QueryTimeseriesRequest()))
    assert spec.granularity_ms == 3_600_000
    assert spec.intervals == ((1_704_067_200_000, 1_704_153_600_000),)


@pytest.mark.parametrize(
    ("body", "field", "reason"),
    [
        ({**SEED_QUERY, "mode": "fast"}, "mode", "'fast' is not allowed"),
        ({**SEED_QUERY, "aggregation": "median"}, "aggregation", "'median' is not allowed"),
        ({"metrics": []}, "metrics", "at least one metric"),
        ({"metrics": [""]}, "metrics[0]", "must not be empty"),
        ({**SEED_QUERY, "group_by": ["service-name"]}, "group_by[0]", "must match"),
        ({**SEED_QUERY, "time_range": "soon"}, "time_range", "not a duration"),
        (
            {"metrics": ["a"], "start": "2024-01-02T00:00:00Z", "end": "2024-01-01T00:00:00Z"},
            "end",
            "after start",
        ),
        (
            {"metrics": ["a"], "filters": [{"label": "x", "op": "like", "value": "y"}]},
            "filters[0].op",
            "'like'",
        ),
        (
            {"metrics": ["a"], "filters": [{"label": "x", "op": "regex", "value": "("}]},
            "filters[0].value",
            "regular",
        ),
        ({"metrics": ["a"], "filters": [{"label": "x", "op": "in"}]}, "filters[0].values", "at least one"),
        ({"metrics": ["a"], "limit": -1}, "limit", "negative"),
        ({"metrics": ["a"], "sql": "SELECT 1"}, "sql", "not both"),
    ],
)
def test_bad_queries_name_field_and_reason(body, field, reason):
    with pytest.raises(InvalidArgument) as err:
        query_from_proto(_query(body))
    assert err.value.field == field
    assert reason in err.value.reason


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"granularity": "fortnight"}, "granularity"),
        ({"intervals": []}, "intervals"),
        ({"intervals": ["2024-01-02/2024-01-01"]}, "intervals[0]"),
        ({"aggregations": [{"type": "median", "metric": "x"}]}, "aggregations[0].type"),
    ],
)
def test_bad_timeseries_name_field(change, field):
    with pytest.raises(InvalidArgument) as err:
        timeseries_from_proto(
            json_format.ParseDict({**SEED_TIMESERIES, **change}, pb.QueryTimeseriesRequest())
        )
    assert err.value.field == field


def test_iso_granularity_and_params():
    spec = timeseries_from_proto(
        json_format.ParseDict({**SEED_TIMESERIES, "granularity": "PT5M"}, pb.QueryTimeseriesRequest())
    )
    assert spec.granularity_ms == 300_000
    q = query_from_proto(_query({"sql": "SELECT ?", "params": [1, "a", True, None]}))
    assert q.params == (1, "a", True, None)
    assert type(q.params[0]) is int
    assert query_from_proto(_query({"sql": "SELECT ?", "params": [1.5, 1795852800000]})).params == (
        1.5,
        1795852800000,
    )
