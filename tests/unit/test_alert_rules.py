"""The seed's alert rules on fed self-metric samples: counters read like Prometheus' increase()
(resets counted from zero), the histogram p99, the idle cache, the anomaly baseline, gauges."""

from __future__ import annotations

import math

import pytest

from libs.config import load_settings
from services.monitoring.alert_rules import (
    SelfSeries,
    histogram_quantile,
    increase,
    latest,
    seed_rules,
)

NOW = 1_800_000_000_000
S = 1000
WINDOW = 300 * S
LE = ("0.001", "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1.0", "2.5", "5.0", "10.0", "+Inf")


def rules(**overrides):
    return {r.id: r for r in seed_rules(load_settings(**overrides)).rules}


def every_15s(values, end=NOW):
    """Samples every 15 s, the last at `end` (all inside the window when there are few)."""
    return [(end - 15 * S * (len(values) - 1 - i), float(v)) for i, v in enumerate(values)]


def then_now(before, now):
    """A sample before the window and one inside it."""
    return [(NOW - 400 * S, float(before)), (NOW - 10 * S, float(now))]


# ---- increase ---------------------------------------------------------------------------------
def test_increase_is_the_difference_from_the_last_sample_before_the_window():
    points = [(NOW - 400 * S, 10.0), (NOW - 200 * S, 14.0), (NOW - 100 * S, 17.0)]
    assert increase(points, NOW - WINDOW, NOW) == 7.0


def test_a_counter_reset_counts_from_zero_never_negatively():
    # 100 before the window, 130, then the process restarts: 5, 9.
    points = [(NOW - 400 * S, 100.0), (NOW - 250 * S, 130.0), (NOW - 150 * S, 5.0), (NOW - 50 * S, 9.0)]
    assert increase(points, NOW - WINDOW, NOW) == 30 + 5 + 4


def test_a_series_created_inside_the_window_counts_from_zero():
    assert increase([(NOW - 100 * S, 1.0)], NOW - WINDOW, NOW) == 1.0
    assert increase([(NOW - 100 * S, 1.0), (NOW - 50 * S, 3.0)], NOW - WINDOW, NOW) == 3.0


def test_no_sample_in_the_window_is_no_data_not_zero():
    assert increase([(NOW - 400 * S, 3.0)], NOW - WINDOW, NOW) is None
    assert increase([], NOW - WINDOW, NOW) is None
    assert latest([(NOW - 400 * S, 3.0)], NOW - WINDOW, NOW) is None


def test_samples_after_the_end_are_not_counted():
    points = [(NOW - 100 * S, 1.0), (NOW + 10 * S, 50.0)]
    assert increase(points, NOW - WINDOW, NOW) == 1.0
    assert latest(points, NOW - WINDOW, NOW) == 1.0


# ---- histogram_quantile -----------------------------------------------------------------------
def test_histogram_quantile_interpolates_inside_the_bucket_like_prometheus():
    buckets = [(0.1, 10.0), (0.5, 20.0), (math.inf, 20.0)]
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.1)
    assert histogram_quantile(0.99, buckets) == pytest.approx(0.1 + 0.4 * 9.8 / 10)
    assert histogram_quantile(0.25, buckets) == pytest.approx(0.05)  # first bucket starts at 0


def test_a_rank_in_the_inf_bucket_is_the_highest_finite_bound():
    assert histogram_quantile(0.99, [(1.0, 0.0), (5.0, 1.0), (math.inf, 100.0)]) == 5.0


def test_a_histogram_without_observations_or_inf_has_no_quantile():
    assert histogram_quantile(0.99, [(1.0, 0.0), (math.inf, 0.0)]) is None
    assert histogram_quantile(0.99, [(1.0, 3.0)]) is None
    assert histogram_quantile(0.99, []) is None


# ---- latency ----------------------------------------------------------------------------------
def histogram(engine, mode, counts_by_le, instance="all"):
    """One bucket series per `le`: its cumulative count before the window and now."""
    return [
        SelfSeries(
            "analytics_query_duration_seconds_bucket",
            {"engine": engine, "mode": mode, "le": le, "instance": instance},
            then_now(*values),
        )
        for le, values in counts_by_le.items()
    ]


def cumulative(before: int, after: int, slow_from: str):
    """Buckets whose count goes from `before` to `after` for every le >= slow_from."""
    start = LE.index(slow_from)
    return {le: [before if i >= start else 0, after if i >= start else 0] for i, le in enumerate(LE)}


def test_slow_batch_query_fires_per_engine_on_the_p99_of_the_window():
    series = histogram("duckdb", "batch", cumulative(0, 40, "10.0")) + histogram(
        "hot", "batch", cumulative(0, 40, "0.01")
    )
    findings = rules()["SlowBatchQuery"].evaluate(series, NOW)
    assert [dict(f.labels)["engine"] for f in findings] == ["duckdb"]
    f = findings[0]
    assert dict(f.labels) == {"engine": "duckdb", "mode": "batch", "instance": "all"}
    assert 5.0 < f.value <= 10.0 and f.threshold == 5.0
    assert "p99 batch query time" in f.summary and "above 5 s" in f.summary


def test_slow_realtime_query_uses_its_own_threshold():
    series = histogram("hot", "realtime", cumulative(0, 40, "1.0"))
    (f,) = rules()["SlowRealtimeQuery"].evaluate(series, NOW)
    assert f.threshold == 0.5 and 0.5 < f.value <= 1.0
    assert rules(alert_realtime_query_seconds=2)["SlowRealtimeQuery"].evaluate(series, NOW) == []


def test_old_slow_queries_outside_the_window_do_not_count():
    # 40 slow queries long ago, then 100 fast ones inside the window.
    by_le = {le: [0, 40, 40] if LE.index(le) >= LE.index("10.0") else [0, 0, 0] for le in LE}
    for i, le in enumerate(LE):
        if i >= LE.index("0.01"):
            by_le[le][2] += 100
    series = [
        SelfSeries(
            "analytics_query_duration_seconds_bucket",
            {"engine": "duckdb", "mode": "batch", "le": le, "instance": "all"},
            [(NOW - 900 * S, v[0]), (NOW - 600 * S, v[1]), (NOW - 10 * S, v[2])],
        )
        for le, v in by_le.items()
    ]
    assert rules()["SlowBatchQuery"].evaluate(series, NOW) == []


def test_a_restart_inside_the_window_gives_the_quantile_of_what_really_happened():
    # Before the restart 1000 fast queries; after it the counters start over with 10 slow ones.
    by_le = {}
    for i, le in enumerate(LE):
        fast = 1000 if i >= LE.index("0.01") else 0
        slow = 10 if i >= LE.index("10.0") else 0
        by_le[le] = [(NOW - 400 * S, fast), (NOW - 200 * S, fast), (NOW - 100 * S, slow)]
    series = [
        SelfSeries(
            "analytics_query_duration_seconds_bucket",
            {"engine": "duckdb", "mode": "batch", "le": le, "instance": "all"},
            points,
        )
        for le, points in by_le.items()
    ]
    (f,) = rules()["SlowBatchQuery"].evaluate(series, NOW)
    assert f.value > 5  # the 10 slow queries, not a negative increase hiding them


def test_no_queries_in_the_window_is_no_alert():
    series = histogram("duckdb", "batch", cumulative(40, 40, "10.0"))
    assert rules()["SlowBatchQuery"].evaluate(series, NOW) == []


# ---- cache ------------------------------------------------------------------------------------
def cache(namespace, hits, misses, instance="all"):
    return [
        SelfSeries(
            "analytics_cache_requests_total",
            {"namespace": namespace, "result": result, "instance": instance},
            then_now(*values),
        )
        for result, values in (("hit", hits), ("miss", misses))
    ]


def test_low_cache_hit_rate_fires_below_the_ratio():
    (f,) = rules()["LowCacheHitRate"].evaluate(cache("query", [0, 30], [0, 70]), NOW)
    assert dict(f.labels) == {"namespace": "query", "instance": "all"}
    assert f.value == pytest.approx(0.3) and f.threshold == 0.7
    assert "30.0%" in f.summary and "100 lookups" in f.summary


def test_an_idle_cache_raises_no_alert():
    # 3 lookups, all misses: a hit rate of 0 that means nothing.
    assert rules()["LowCacheHitRate"].evaluate(cache("query", [0, 0], [0, 3]), NOW) == []
    assert rules()["LowCacheHitRate"].evaluate(cache("query", [5, 5], [9, 9]), NOW) == []


def test_a_good_hit_rate_raises_no_alert():
    assert rules()["LowCacheHitRate"].evaluate(cache("dashboard", [0, 90], [0, 10]), NOW) == []


def test_a_cache_counter_reset_is_not_a_negative_hit_count():
    # hits 500 -> restart -> 80; misses 100 -> restart -> 20: 80 hits, 20 misses since the restart.
    assert rules()["LowCacheHitRate"].evaluate(cache("query", [500, 80], [100, 20]), NOW) == []
    (f,) = rules()["LowCacheHitRate"].evaluate(cache("query", [500, 10], [100, 90]), NOW)
    assert f.value == pytest.approx(0.1)


# ---- anomaly rate -----------------------------------------------------------------------------
def anomalies(values_every_5m, datasource="platform_metrics", method="auto", instance="all"):
    """Cumulative anomaly counts every 5 minutes, the last at NOW."""
    points = [
        (NOW - 300 * S * (len(values_every_5m) - 1 - i), float(v)) for i, v in enumerate(values_every_5m)
    ]
    return SelfSeries(
        "analytics_anomalies_detected_total",
        {"method": method, "datasource": datasource, "instance": instance},
        points,
    )


HOUR_AGO = NOW - 3600 * S - WINDOW


def test_an_anomaly_spike_over_three_times_the_baseline_fires():
    # 2 per 5 minutes for the baseline hour, then 20 in the window.
    steady = [2 * i for i in range(14)]
    series = [anomalies([*steady, steady[-1] + 20])]
    rule = rules()["AnomalyRateSpike"]
    assert rule.needs_history_start(series, NOW)
    (f,) = rule.evaluate(series, NOW, HOUR_AGO - WINDOW)
    assert dict(f.labels) == {"datasource": "platform_metrics"}
    assert f.value == 20 and f.threshold == pytest.approx(3 * 2)


def test_anomalies_at_the_usual_rate_raise_no_alert():
    steady = [4 * i for i in range(15)]
    assert rules()["AnomalyRateSpike"].evaluate([anomalies(steady)], NOW, HOUR_AGO) == []


def test_a_spike_needs_the_minimum_count():
    series = [anomalies([0] * 14 + [3])]
    rule = rules()["AnomalyRateSpike"]
    assert not rule.needs_history_start(series, NOW)
    assert rule.evaluate(series, NOW, HOUR_AGO) == []
    assert rules(alert_anomaly_min_count=3)["AnomalyRateSpike"].evaluate(series, NOW, HOUR_AGO)


def test_methods_and_replicas_are_summed_per_datasource():
    series = [
        anomalies([0] * 14 + [3], method="auto", instance="ml-1"),
        anomalies([0] * 14 + [3], method="zscore", instance="ml-2"),
        anomalies([0] * 14 + [3], datasource="lab"),
    ]
    (f,) = rules()["AnomalyRateSpike"].evaluate(series, NOW, HOUR_AGO)
    assert dict(f.labels) == {"datasource": "platform_metrics"} and f.value == 6


def test_a_first_burst_of_anomalies_counts_against_a_known_empty_baseline():
    # The series is new (created by the first anomaly) but self-metrics go back over an hour.
    series = [
        SelfSeries("analytics_anomalies_detected_total", {"datasource": "d", "method": "auto"}, [(NOW, 12.0)])
    ]
    (f,) = rules()["AnomalyRateSpike"].evaluate(series, NOW, HOUR_AGO)
    assert f.value == 12


def test_without_a_baseline_there_is_no_spike():
    series = [
        SelfSeries("analytics_anomalies_detected_total", {"datasource": "d", "method": "auto"}, [(NOW, 12.0)])
    ]
    rule = rules()["AnomalyRateSpike"]
    assert rule.evaluate(series, NOW, None) == []
    assert rule.evaluate(series, NOW, NOW - WINDOW - 60 * S) == []  # one minute of history is too little


def test_a_partly_known_baseline_is_scaled_to_what_it_covers():
    # Self-metrics exist for the last 10 minutes of the baseline: 4 anomalies there is 2 per 5 minutes.
    series = [anomalies([0, 4, 4 + 7])]
    history_start = NOW - WINDOW - 600 * S
    (f,) = rules(alert_anomaly_min_count=1)["AnomalyRateSpike"].evaluate(series, NOW, history_start)
    assert f.value == 7 and f.threshold == pytest.approx(6)
    series = [anomalies([0, 4, 4 + 6])]
    assert rules(alert_anomaly_min_count=1)["AnomalyRateSpike"].evaluate(series, NOW, history_start) == []


# ---- stream backlog and engine connections ----------------------------------------------------
def test_stream_backlog_fires_on_the_newest_backlog_or_lag():
    r = rules(alert_stream_backlog_bytes=1000, alert_stream_lag_seconds=5)
    backlog = [
        SelfSeries(
            "analytics_bus_backlog_bytes",
            {"subscription": "ml-anomaly", "instance": "all"},
            every_15s([10, 5000]),
        ),
        SelfSeries(
            "analytics_bus_backlog_bytes",
            {"subscription": "storage", "instance": "all"},
            every_15s([5000, 10]),
        ),
    ]
    (f,) = r["StreamBacklog:bytes"].evaluate(backlog, NOW)
    assert dict(f.labels)["subscription"] == "ml-anomaly" and f.value == 5000 and f.threshold == 1000
    lag = [
        SelfSeries("analytics_stream_lag_seconds", {"consumer": "storage", "instance": "all"}, every_15s([9]))
    ]
    (f,) = r["StreamBacklog:lag"].evaluate(lag, NOW)
    assert f.value == 9 and "lag" in f.summary and r["StreamBacklog:lag"].name == "StreamBacklog"


def test_a_stale_gauge_is_no_data():
    r = rules(alert_stream_backlog_bytes=1000)
    old = [SelfSeries("analytics_bus_backlog_bytes", {"subscription": "s"}, [(NOW - 400 * S, 1e9)])]
    assert r["StreamBacklog:bytes"].evaluate(old, NOW) == []


def test_engine_connection_failure_fires_on_any_increase_including_the_first():
    rule = rules()["EngineConnectionFailure"]
    first = SelfSeries(
        "analytics_engine_connection_failures_total",
        {"engine": "trino", "instance": "query-router"},
        [(NOW, 1.0)],
    )
    flat = SelfSeries("analytics_engine_connection_failures_total", {"engine": "druid"}, then_now(4, 4))
    restarted_clean = SelfSeries(
        "analytics_engine_connection_failures_total", {"engine": "hot"}, then_now(4, 0)
    )
    (f,) = rule.evaluate([first, flat, restarted_clean], NOW)
    assert dict(f.labels) == {"engine": "trino", "instance": "query-router"} and f.value == 1
    assert f.threshold == 0 and rule.severity == "critical"


def test_every_rule_is_listed_with_its_promql():
    for rule in seed_rules(load_settings()).rules:
        assert rule.expression and rule.promql and rule.severity in ("warning", "critical")
    assert {r.name for r in seed_rules(load_settings()).rules} == {
        "SlowBatchQuery",
        "SlowRealtimeQuery",
        "LowCacheHitRate",
        "AnomalyRateSpike",
        "StreamBacklog",
        "EngineConnectionFailure",
    }


def test_the_services_own_reads_of_its_metrics_raise_no_cache_alert():
    # namespace "self": the alert rules and dashboards reading analytics_self, not users' queries.
    assert rules()["LowCacheHitRate"].evaluate(cache("self", [0, 0], [0, 500]), NOW) == []
