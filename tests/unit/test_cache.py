from libs.cache import TtlCache
from tests.helpers import ManualClock


def test_entries_expire_after_their_ttl_and_hits_and_misses_are_counted():
    clock = ManualClock()
    cache = TtlCache(clock=clock)
    assert cache.get("query", "k") is None
    cache.put("query", "k", b"answer", ttl=60)
    clock.now = 59.9
    assert cache.get("query", "k") == b"answer"
    clock.now = 60.0
    assert cache.get("query", "k") is None  # never older than its TTL
    assert (cache.hits["query"], cache.misses["query"]) == (1, 2)
    assert cache.hit_rate("query") == 1 / 3
    assert cache.hit_rate("dashboard") is None


def test_namespaces_have_their_own_ttls_and_zero_caches_nothing():
    clock = ManualClock()
    cache = TtlCache(clock=clock)
    cache.put("dashboard", "k", 1, ttl=30)
    cache.put("ml", "k", 2, ttl=300)
    cache.put("query", "k", 3, ttl=0)
    clock.now = 31
    assert (cache.get("dashboard", "k"), cache.get("ml", "k"), cache.get("query", "k")) == (None, 2, None)


def test_a_write_invalidates_only_answers_over_its_data():
    cache = TtlCache()
    cache.put("query", "a", 1, ttl=60, scope=("default", "ds", 1000, 2000))
    cache.put("query", "b", 2, ttl=60, scope=("default", "ds", 5000, 6000))
    cache.put("query", "c", 3, ttl=60, scope=("default", "other", 1000, 2000))
    cache.put("query", "d", 4, ttl=60, scope=("tenant2", "ds", 1000, 2000))
    assert cache.invalidate("default", "ds", 1500, 1500) == 1
    assert [cache.get("query", k) for k in "abcd"] == [None, 2, 3, 4]


def test_the_oldest_entries_are_evicted_past_the_bound():
    cache = TtlCache(max_entries=2)
    for k in "abc":
        cache.put("query", k, k, ttl=60)
    assert len(cache) == 2
    assert cache.get("query", "a") is None
    assert cache.get("query", "c") == "c"


def test_an_all_datasources_scope_dies_with_any_write_of_its_tenant():
    cache = TtlCache()
    cache.put("query", "sql", 1, ttl=60, scope=("default", "*", -(2**63), 2**63))
    assert cache.invalidate("other", "ds", 0, 0) == 0
    assert cache.invalidate("default", "any_datasource", 5, 5) == 1


def test_an_answer_a_write_overtook_is_not_cached():
    """A query computed from data a concurrent ingest then changed must not outlive that ingest's
    invalidation in the cache (it would serve the answer without the new points for a TTL)."""
    cache = TtlCache()
    scope = ("default", "ds", 1000, 2000)
    mark = cache.mark()
    cache.invalidate("default", "ds", 1500, 1500)  # lands while the answer is being computed
    cache.put("query", "stale", 1, ttl=60, scope=scope, mark=mark)
    assert cache.get("query", "stale") is None
    mark = cache.mark()
    cache.invalidate("default", "ds", 5000, 6000)  # another time range: the answer stays valid
    cache.invalidate("default", "other", 1500, 1500)  # another datasource
    cache.put("query", "fresh", 2, ttl=60, scope=scope, mark=mark)
    assert cache.get("query", "fresh") == 2


def test_a_mark_older_than_the_remembered_writes_caches_nothing():
    from libs.cache import RECENT_WRITES

    cache = TtlCache()
    mark = cache.mark()
    for i in range(RECENT_WRITES + 1):
        cache.invalidate("default", "other", i, i)
    cache.put("query", "k", 1, ttl=60, scope=("default", "ds", 0, 10), mark=mark)
    assert cache.get("query", "k") is None
