"""The in-process result cache: TTL per namespace, hit and miss counts, invalidation by the data
a write touches. Keys are built by callers from the tenant and the normalised request."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from typing import Any

# The time span of data a cached answer was computed from: (tenant, datasource, start_ms, end_ms).
Scope = tuple[str, str, int, int]
# The datasource of a scope that any write of the tenant touches (SQL reads every datasource).
ALL_DATASOURCES = "*"


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

    def put(self, namespace: str, key: Hashable, value: Any, ttl: float, scope: Scope | None = None) -> None:
        """Cache `value` for `ttl` seconds (a TTL of 0 caches nothing)."""
        if ttl <= 0:
            return
        self._entries[(namespace, key)] = _Entry(value, self._clock() + ttl, scope)
        self._entries.move_to_end((namespace, key))
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def invalidate(self, tenant: str, datasource: str, min_ts: int, max_ts: int) -> int:
        """Drop entries computed from data of [min_ts, max_ts] in this datasource; returns how many."""
        touched = (datasource,) if datasource in self.unwatched_datasources else (datasource, ALL_DATASOURCES)
        doomed = [
            key
            for key, entry in self._entries.items()
            if entry.scope is not None
            and entry.scope[0] == tenant
            and entry.scope[1] in touched
            and entry.scope[2] <= max_ts
            and entry.scope[3] > min_ts
        ]
        for key in doomed:
            del self._entries[key]
        return len(doomed)

    def hit_rate(self, namespace: str) -> float | None:
        """Hits over lookups for a namespace, or None before the first lookup."""
        total = self.hits.get(namespace, 0) + self.misses.get(namespace, 0)
        return None if total == 0 else self.hits.get(namespace, 0) / total

    def __len__(self) -> int:
        return len(self._entries)
