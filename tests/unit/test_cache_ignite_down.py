"""The Ignite cache with no Ignite listening (no server needed): the service keeps answering as
with a cold cache, says so, counts it, keeps the writes to record later; and the settings choose it."""

from __future__ import annotations

import pytest

from libs.cache import TtlCache
from libs.cache_ignite import IgniteCache, namespace_ttls
from libs.config import ConfigError, load_settings
from libs.selfmetrics import SELF_CACHE_NAMESPACE
from platformq.analytics.v1 import query_service_pb2 as pb
from services.context import ServiceContext
from services.ml.anomalies import ML_CACHE
from services.ml.maintenance.component import CACHE_NAMESPACE as MAINTENANCE_CACHE
from services.monitoring.dashboards import DASHBOARD_CACHE
from services.query_router.core import QUERY_CACHE
from tests.helpers import free_port


def unreachable(**knobs) -> tuple[IgniteCache, list[int]]:
    failures: list[int] = []
    cache = IgniteCache(
        "127.0.0.1", free_port(), 0.5, {"query": 60.0}, on_unreachable=lambda: failures.append(1), **knobs
    )
    return cache, failures


def test_an_unreachable_ignite_is_a_miss_a_no_op_put_and_a_counted_reported_failure():
    cache, failures = unreachable()
    assert cache.get("query", ("t", "k")) is None
    assert cache.misses == {"query": 1} and cache.hits == {}
    assert failures == [1]
    reason = cache.unavailable()["ignite"]
    assert "unreachable" in reason and "answer computed, not cached" in reason
    cache.put("query", ("t", "k"), pb.QueryResponse(), 60, scope=("t", "ds", 0, 1), mark=cache.mark())
    assert cache.mark() == -1 and len(cache) == 0
    # Within the retry pause nothing is tried again, so a dead node costs one timeout per pause.
    assert failures == [1]


def test_writes_made_while_unreachable_are_kept_merged_per_datasource():
    cache, _ = unreachable(retry_seconds=60)
    cache.invalidate("t", "ds", 10, 20)
    cache.invalidate("t", "ds", 5, 12)
    cache.invalidate("t", "other", 1, 1)
    assert cache.invalidate("u", "ds", 0, 0) == 0
    assert cache.pending_writes() == {("t", "ds"): (5, 20), ("t", "other"): (1, 1), ("u", "ds"): (0, 0)}


def test_bad_settings_and_values_are_refused_by_name():
    with pytest.raises(ValueError, match="IGNITE_HOST is empty"):
        IgniteCache("", 10800, 1.0, {})
    with pytest.raises(ValueError, match="IGNITE_TIMEOUT_SECONDS must be positive"):
        IgniteCache("h", 10800, 0, {})
    cache, _ = unreachable()
    with pytest.raises(TypeError, match="namespace 'query' was given a str"):
        cache.put("query", "k", "text", 60)


def test_the_expiry_table_names_every_namespace_the_services_cache_in(tmp_path):
    settings = load_settings(
        data_dir=tmp_path,
        query_cache_ttl_seconds=42,
        dashboard_cache_ttl_seconds=30,
        ml_cache_ttl_seconds=300,
    )
    ttls = namespace_ttls(settings)
    assert set(ttls) == {QUERY_CACHE, SELF_CACHE_NAMESPACE, DASHBOARD_CACHE, ML_CACHE, MAINTENANCE_CACHE}
    assert (ttls[QUERY_CACHE], ttls[DASHBOARD_CACHE], ttls[ML_CACHE]) == (42, 30, 300)


def test_ignite_host_chooses_the_shared_cache_and_its_absence_the_in_process_one(tmp_path):
    assert isinstance(ServiceContext(load_settings(data_dir=tmp_path)).cache, TtlCache)
    shared = ServiceContext(
        load_settings(data_dir=tmp_path, ignite_host="127.0.0.1", ignite_port=free_port())
    )
    assert isinstance(shared.cache, IgniteCache)
    # Unreachable: counted under engine "ignite" in the process's own metrics.
    assert shared.cache.get("query", "k") is None
    count = shared.metrics.registry.get_sample_value(
        "analytics_engine_connection_failures_total", {"engine": "ignite"}
    )
    assert count == 1
    with pytest.raises(ConfigError, match="IGNITE_TIMEOUT_SECONDS"):
        load_settings(data_dir=tmp_path, ignite_timeout_seconds=0)
