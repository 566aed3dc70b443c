"""Per-tenant limits: request rate (a token bucket per tenant) and concurrent work (queries, streams).

No gRPC here: the interceptor and the ws bridge ask these objects and turn a refusal into 429
(RESOURCE_EXHAUSTED) with `Retry-After`. One tenant at its limit never slows another: each tenant
has its own bucket and its own count. State is bounded: buckets of tenants idle long enough to be
full again are dropped (a full bucket is what a new tenant gets anyway).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from libs.errors import ResourceExhausted


class Throttled(ResourceExhausted):
    """A tenant is over a limit; `retry_after` says in how many whole seconds to try again."""

    def __init__(self, reason: str, retry_after: int, field: str | None = None) -> None:
        self.retry_after = retry_after
        super().__init__(reason, field)

    def __reduce__(self) -> tuple[type[Throttled], tuple[str, int, str | None]]:  # type: ignore[override]
        return type(self), (self.reason, self.retry_after, self.field)


@dataclass
class _Bucket:
    tokens: float
    at: float


class RateLimiter:
    """`rate` requests a second per tenant, bursts up to `burst`; rate 0 means no limit."""

    def __init__(
        self,
        rate: float,
        burst: int,
        clock: Callable[[], float] = time.monotonic,
        on_refusal: Callable[[str], None] = lambda limit: None,
    ) -> None:
        self.rate = rate
        self.burst = max(burst, 1)
        self.clock = clock
        self.on_refusal = on_refusal
        self._buckets: dict[str, _Bucket] = {}

    def wait_needed(self, tenant: str) -> float:
        """Take one request's token: 0.0 when allowed, else the seconds until a token is there."""
        if self.rate <= 0:
            return 0.0
        now = self.clock()
        bucket = self._buckets.get(tenant)
        if bucket is None:
            bucket = self._buckets[tenant] = _Bucket(float(self.burst), now)
            self._forget_idle(now)
        bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.at) * self.rate)
        bucket.at = now
        if bucket.tokens >= 1:
            bucket.tokens -= 1
            return 0.0
        return (1 - bucket.tokens) / self.rate

    def check(self, tenant: str) -> None:
        """Raise Throttled when `tenant` is over its rate."""
        wait = self.wait_needed(tenant)
        if wait > 0:
            self.on_refusal("rate")
            raise Throttled(
                f"tenant {tenant!r} is over its {self.rate:g} requests/s (TENANT_RATE_LIMIT)",
                retry_after=max(1, math.ceil(wait)),
            )

    def _forget_idle(self, now: float) -> None:
        # Run when a tenant is added, so the dict never outgrows the tenants active lately.
        full_after = self.burst / self.rate
        for tenant in [t for t, b in self._buckets.items() if now - b.at > full_after]:
            del self._buckets[tenant]


class ConcurrencyLimiter:
    """At most `limit` at once per tenant (0: no limit); `what` names the work in refusals."""

    def __init__(
        self, limit: int, what: str, setting: str, on_refusal: Callable[[str], None] = lambda limit: None
    ) -> None:
        self.limit = limit
        self.what = what
        self.setting = setting
        self.on_refusal = on_refusal
        self._running: dict[str, int] = {}

    def running(self, tenant: str) -> int:
        return self._running.get(tenant, 0)

    def enter(self, tenant: str) -> None:
        """Count one more for `tenant`, or raise Throttled when it already has `limit`."""
        if self.limit and self.running(tenant) >= self.limit:
            self.on_refusal(self.what)
            raise Throttled(
                f"tenant {tenant!r} already has {self.limit} {self.what} running ({self.setting})",
                retry_after=1,
            )
        self._running[tenant] = self.running(tenant) + 1

    def leave(self, tenant: str) -> None:
        left = self.running(tenant) - 1
        if left > 0:
            self._running[tenant] = left
        else:
            self._running.pop(tenant, None)

    @contextmanager
    def slot(self, tenant: str) -> Iterator[None]:
        """enter() for the block's length."""
        self.enter(tenant)
        try:
            yield
        finally:
            self.leave(tenant)


QUERY_METHODS = frozenset(
    {"/platformq.analytics.v1.QueryService/Query", "/platformq.analytics.v1.QueryService/QueryTimeseries"}
)
STREAM_METHODS = frozenset({"/platformq.analytics.v1.RealtimeService/Subscribe"})


@dataclass
class TenantLimits:
    """The per-tenant limits of one process, shared by its gRPC server and its ws bridge."""

    rate: RateLimiter
    queries: ConcurrencyLimiter
    streams: ConcurrencyLimiter

    @classmethod
    def of(
        cls,
        rate: float,
        burst: int,
        max_queries: int,
        max_streams: int,
        on_refusal: Callable[[str], None] = lambda limit: None,
    ) -> TenantLimits:
        """From TENANT_RATE_LIMIT, TENANT_RATE_BURST, TENANT_MAX_CONCURRENT_QUERIES, TENANT_MAX_STREAMS;
        `on_refusal(limit)` is called for each refusal ("rate", "queries", "live streams")."""
        return cls(
            RateLimiter(rate, burst, on_refusal=on_refusal),
            ConcurrencyLimiter(max_queries, "queries", "TENANT_MAX_CONCURRENT_QUERIES", on_refusal),
            ConcurrencyLimiter(max_streams, "live streams", "TENANT_MAX_STREAMS", on_refusal),
        )

    def slots_for(self, method: str) -> ConcurrencyLimiter | None:
        """The concurrency limit a gRPC method counts against, if any."""
        if method in QUERY_METHODS:
            return self.queries
        if method in STREAM_METHODS:
            return self.streams
        return None
