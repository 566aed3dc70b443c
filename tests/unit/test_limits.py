"""Per-tenant limits: a token bucket per tenant and concurrent slots per tenant."""

from __future__ import annotations

import pytest

from libs.limits import ConcurrencyLimiter, RateLimiter, Throttled
from tests.helpers import ManualClock


def test_a_tenant_gets_its_burst_then_its_rate_and_others_are_unaffected():
    clock = ManualClock(100)
    limiter = RateLimiter(rate=2, burst=3, clock=clock)
    assert [limiter.wait_needed("a") for _ in range(3)] == [0, 0, 0]
    assert limiter.wait_needed("a") == pytest.approx(0.5)
    assert limiter.wait_needed("b") == 0  # another tenant has its own bucket
    clock.now += 0.5
    assert limiter.wait_needed("a") == 0
    with pytest.raises(Throttled) as refused:
        limiter.check("a")
    assert refused.value.retry_after == 1 and "tenant 'a'" in refused.value.message


def test_rate_zero_is_no_limit():
    limiter = RateLimiter(rate=0, burst=1)
    assert all(limiter.wait_needed("a") == 0 for _ in range(1000))


def test_idle_tenants_are_forgotten():
    clock = ManualClock(100)
    limiter = RateLimiter(rate=10, burst=10, clock=clock)
    for tenant in range(100):
        limiter.wait_needed(f"t{tenant}")
    clock.now += 5  # every bucket is full again
    limiter.wait_needed("new")
    assert len(limiter._buckets) == 1


def test_concurrent_slots_per_tenant():
    limiter = ConcurrencyLimiter(2, "queries", "TENANT_MAX_CONCURRENT_QUERIES")
    with limiter.slot("a"), limiter.slot("a"):
        with pytest.raises(Throttled) as refused:
            limiter.enter("a")
        assert "already has 2 queries running (TENANT_MAX_CONCURRENT_QUERIES)" in refused.value.message
        with limiter.slot("b"):
            assert limiter.running("b") == 1
    assert limiter.running("a") == 0
    with pytest.raises(ValueError), limiter.slot("a"):
        raise ValueError("the work failed")
    assert limiter.running("a") == 0
    unlimited = ConcurrencyLimiter(0, "streams", "TENANT_MAX_STREAMS")
    for _ in range(100):
        unlimited.enter("a")
