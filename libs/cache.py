"""The result cache's interface (`ResultCache`) and its in-process implementation (`TtlCache`, the
default): TTL per namespace, hit and miss counts, invalidation by the data a write touches, and no
caching of an answer a concurrent write overtook (`mark` before computing, `put(..., mark=)`
after). Keys are built by callers from the tenant and the normalised request. The Apache Ignite
implementation, shared by every replica, is libs/cache_ignite.py."""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

# The time span of data a cached answer was computed from: (tenant, datasource, start_ms, end_ms).
Scope = tuple[str, str, int, int]
# The datasource of a scope that any write of the tenant touches (SQL reads every datasource).
ALL_DATASOURCES = "*"
# Writes remembered for `put(..., mark=)`; a mark older than these refuses the put (conservative).
RECENT_WRITES = 4096


def touches(
    unwatched: frozenset[str], tenant: str, datasource: str, min_ts: int, max_ts: int, scope: Scope
) -> bool:
    """Whether a write of [min_ts, max_ts] to `datasource` touches an answer computed over `scope`.
    Writes to `unwatched` datasources touch only answers computed from them, not SQL's (every datasource)."""
    touched = (datasource,) if datasource in unwatched else (datasource, ALL_DATASOURCES)
    return scope[0] == tenant and scope[1] in touched and scope[2] <= max_ts and scope[3] > min_ts


class ResultCache(Protocol):
    """What the services use of a result cache (in-process `TtlCache` or `IgniteCache`)."""

    hits: dict[str, int]
    misses: dict[str, int]

    def get(self, namespace: str, key: Hashable) -> Any | None: ...

    def mark(self) -> int: ...

    def put(
        self,
        namespace: str,
        key: Hashable,
        value: Any,
        ttl: float,
        scope: Scope | None = None,
        mark: int | None = None,
    ) -> None: ...

    def invalidate(self, tenant: str, datasource: str, min_ts: int, max_ts: int) -> int: ...

    def hit_rate(self, namespace: str) -> float | None: ...

    def unavailable(self) -> dict[str, str]: ...

    def close(self) -> None: ...


@dataclass
class _Entry:
    value: Any
    expires: float
    scope: Scope | None


class TtlCache:
    """A bounded map whose entries expire after their TTL and die when a write touches their data."""

    def __init__(
        self,
        max_entries: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
        unwatched_datasources: Iterable[str] = (),
    ) -> None:
        self.max_entries = max_entries
        # Writes to these datasources drop only answers computed from them, not the answers that
        # read every datasource (SQL): the service's own metrics, written every few seconds,
        # would otherwise empty the SQL cache each time. Those answers then live their TTL out.
        self.unwatched_datasources = frozenset(unwatched_datasources)
        self._clock = clock
        self._entries: OrderedDict[tuple[str, Hashable], _Entry] = OrderedDict()
        self.hits: dict[str, int] = {}
        self.misses: dict[str, int] = {}
        self._writes = 0
        self._recent: deque[tuple[int, str, str, int, int]] = deque(maxlen=RECENT_WRITES)

    def get(self, namespace: str, key: Hashable) -> Any | None:
        """The cached value, or None when absent or older than its TTL (counted either way)."""
        entry = self._entries.get((namespace, key))
        if entry is None or entry.expires <= self._clock():
            if entry is not None:
                del self._entries[(namespace, key)]
            self.misses[namespace] = self.misses.get(namespace, 0) + 1
            return None
        self.hits[namespace] = self.hits.get(namespace, 0) + 1
        return entry.value

    def mark(self) -> int:
        """A point in the sequence of writes: take it before computing an answer, give it to `put`."""
        return self._writes

    def put(
        self,
        namespace: str,
        key: Hashable,
        value: Any,
        ttl: float,
        scope: Scope | None = None,
        mark: int | None = None,
    ) -> None:
        """Cache `value` for `ttl` seconds (a TTL of 0 caches nothing). With `mark` (taken before the
        answer was computed), an answer whose data a write touched in the meantime is not cached:
        it may lack that write's points, and the write's invalidation has already run."""
        if ttl <= 0:
            return
        if mark is not None and scope is not None and self._written_since(mark, scope):
            return
        self._entries[(namespace, key)] = _Entry(value, self._clock() + ttl, scope)
        self._entries.move_to_end((namespace, key))
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def _touches(self, tenant: str, datasource: str, min_ts: int, max_ts: int, scope: Scope) -> bool:
        return touches(self.unwatched_datasources, tenant, datasource, min_ts, max_ts, scope)

    def _written_since(self, mark: int, scope: Scope) -> bool:
        if mark == self._writes:
            return False
        if not self._recent or self._recent[0][0] > mark + 1:
            return True  # the writes after `mark` are no longer all remembered
        return any(n > mark and self._touches(t, d, lo, hi, scope) for n, t, d, lo, hi in self._recent)

    def invalidate(self, tenant: str, datasource: str, min_ts: int, max_ts: int) -> int:
        """Drop entries computed from data of [min_ts, max_ts] in this datasource; returns how many."""
        self._writes += 1
        self._recent.append((self._writes, tenant, datasource, min_ts, max_ts))
        doomed = [
            key
            for key, entry in self._entries.items()
            if entry.scope is not None and self._touches(tenant, datasource, min_ts, max_ts, entry.scope)
        ]
        for key in doomed:
            del self._entries[key]
        return len(doomed)

    def hit_rate(self, namespace: str) -> float | None:
        """Hits over lookups for a namespace, or None before the first lookup."""
        total = self.hits.get(namespace, 0) + self.misses.get(namespace, 0)
        return None if total == 0 else self.hits.get(namespace, 0) / total

    def unavailable(self) -> dict[str, str]:
        """Engines this cache could not reach on its last call, with why: none, it is in-process."""
        return {}

    def close(self) -> None:
        """Nothing to release: the entries go with the process."""

    def __len__(self) -> int:
        return len(self._entries)
