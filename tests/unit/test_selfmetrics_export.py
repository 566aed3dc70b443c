"""Rendering for Prometheus: stored samples (match[]) and other instances' self-metrics in the text
exposition format, with exact timestamps, escaped names and the `datasource` label."""

from prometheus_client.parser import text_string_to_metric_families

from libs.selfmetrics import SelfMetrics, exposition
from platformq.analytics.v1 import query_service_pb2
from services.monitoring.exposition import (
    StoredSample,
    latest_sql,
    merge_self_samples,
    select,
    stored_families,
    stored_samples,
)
from services.monitoring.selectors import parse_selectors
from services.query_router.rows import encode_rows

TS = 1_795_000_000_123


def sample(
    metric: str, labels: dict[str, str], value: float, ts: int = TS, datasource: str = "platform_metrics"
):
    return StoredSample(datasource, metric, labels, ts, value)


def render(samples, *selectors: str) -> str:
    return exposition(stored_families(select(samples, parse_selectors(list(selectors))))).decode()


def test_the_newest_value_of_each_matching_series_is_rendered_with_its_timestamp():
    samples = [
        sample("cpu_usage", {"service_name": "auth"}, 42.5),
        sample("cpu_usage", {"service_name": "billing"}, 7.0, TS + 1),
        sample("memory_usage", {"service_name": "auth"}, 1.0),
    ]
    text = render(samples, 'cpu_usage{service_name=~"a.*"}', "memory_usage")
    assert text == (
        "# HELP cpu_usage Latest stored value (lookback 5m).\n"
        "# TYPE cpu_usage untyped\n"
        f'cpu_usage{{datasource="platform_metrics",service_name="auth"}} 42.5 {TS}\n'
        "# HELP memory_usage Latest stored value (lookback 5m).\n"
        "# TYPE memory_usage untyped\n"
        f'memory_usage{{datasource="platform_metrics",service_name="auth"}} 1.0 {TS}\n'
    )


def test_timestamps_survive_the_seconds_round_trip_exactly():
    stamps = [TS + i * 7919 for i in range(2000)]
    samples = [sample("x", {"i": str(i)}, 1.0, ts) for i, ts in enumerate(stamps)]
    parsed = next(iter(text_string_to_metric_families(render(samples, "x"))))
    assert sorted(round(s.timestamp * 1000) for s in parsed.samples) == stamps
    text = render(samples, "x")
    assert all(f" {ts}\n" in text for ts in stamps)


def test_names_are_escaped_and_matched_as_stored_or_as_exported():
    samples = [sample("cpu.usage", {"host": "h1"}, 3.0), sample("disk-io", {"datasource": "mine"}, 4.0)]
    assert 'cpu_usage{datasource="platform_metrics",host="h1"} 3.0' in render(samples, "cpu_usage")
    assert 'cpu_usage{datasource="platform_metrics",host="h1"} 3.0' in render(samples, '{"cpu.usage"}')
    # A stored label called datasource is kept as exported_datasource, like Prometheus' honor_labels=false.
    text = render(samples, '{exported_datasource="mine"}')
    assert 'disk_io{datasource="platform_metrics",exported_datasource="mine"} 4.0' in text


def test_the_datasource_label_selects_the_datasource():
    samples = [
        sample("temp", {"room": "a"}, 1.0, datasource="sensors"),
        sample("temp", {"room": "a"}, 2.0, datasource="lab"),
    ]
    assert render(samples, 'temp{datasource="lab"}').count("\ntemp{") == 1
    assert 'temp{datasource="lab",room="a"} 2.0' in render(samples, 'temp{datasource="lab"}')
    assert render(samples, "temp").count("\ntemp{") == 2
    assert render(samples, 'temp{datasource="nowhere"}') == ""


def test_two_names_that_escape_alike_leave_one_series_the_newer():
    samples = [sample("a.b", {}, 1.0, TS), sample("a_b", {}, 2.0, TS + 5)]
    assert render(samples, "a_b").endswith(f'a_b{{datasource="platform_metrics"}} 2.0 {TS + 5}\n')


def test_the_sql_reads_every_datasource_or_only_the_pinned_ones():
    assert "datasource IN" not in latest_sql(None)
    assert latest_sql(["a", "b"]).count("?") == 4  # since, until, and one per datasource


def test_query_router_rows_become_stored_samples():
    # The query-router encodes the `labels` STRUCT with null for the keys a series lacks.
    response = query_service_pb2.QueryResponse()
    response.MergeFromString(
        encode_rows(
            [
                ("platform_metrics", "cpu_usage", {"host": "h1", "pod": None}, TS, 0.5),
                ("platform_metrics", "up", {"host": None, "pod": None}, TS + 1, 1),
            ]
        )
    )
    assert stored_samples(response) == [
        sample("cpu_usage", {"host": "h1"}, 0.5),
        sample("up", {}, 1.0, TS + 1),
    ]


def test_other_instances_join_this_processs_families_in_one_block_each():
    metrics = SelfMetrics()
    metrics.query_duration.labels("hot", "realtime").observe(0.2)
    local = metrics.families({"instance": "monitoring", "replica": "h:4"})
    remote = {"engine": "duckdb", "mode": "batch", "instance": "query-router", "replica": "h:1"}
    # Stored rows come back in no particular order.
    buckets = [("10.0", 3), ("+Inf", 3), ("2.5", 2), ("0.001", 0), ("5.0", 3), ("0.5", 0), ("1.0", 0)]
    others = [
        StoredSample("analytics_self", "analytics_query_duration_seconds_bucket", {**remote, "le": le}, TS, n)
        for le, n in buckets
    ]
    others += [
        StoredSample("analytics_self", "analytics_query_duration_seconds_count", remote, TS, 3),
        StoredSample("analytics_self", "analytics_query_duration_seconds_sum", remote, TS, 7.5),
        StoredSample("analytics_self", "some_newer_metric", {"instance": "ml", "replica": "h:3"}, TS, 1),
    ]
    text = exposition(merge_self_samples(local, others)).decode()
    assert text.count("# TYPE analytics_query_duration_seconds histogram") == 1
    assert "# TYPE some_newer_metric untyped" in text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    histogram = families["analytics_query_duration_seconds"]
    assert {s.labels["instance"] for s in histogram.samples} == {"monitoring", "query-router"}
    bounds = [
        float(s.labels["le"])
        for s in histogram.samples
        if s.name.endswith("_bucket") and s.labels["instance"] == "query-router"
    ]
    assert bounds == sorted(bounds)  # by bound, not as text ("10.0" after "2.5")
    remote_count = [
        s for s in histogram.samples if s.name.endswith("_count") and s.labels["instance"] == "query-router"
    ]
    assert remote_count[0].value == 3 and round(remote_count[0].timestamp * 1000) == TS
