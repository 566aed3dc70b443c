"""The result cache in an Apache Ignite cluster, through the thin client (pyignite), shared by every
query-router replica: the same interface and semantics as the in-process `TtlCache`.

- One Ignite cache per namespace (`analytics.<namespace>`) with that namespace's expiry policy
  (`namespace_ttls`), and each put carries its own TTL as a per-entry expiry policy. The caches
  live in the node's `analytics-cache` data region, whose size bounds them (Ignite evicts pages).
- Invalidation across replicas: every write (`invalidate`) takes the next number of a shared write
  sequence (compare-and-set on `analytics.writes["seq"]`) and records its (tenant, datasource,
  span) under that number. An entry keeps the sequence number up to which it is known valid; a
  `get` reads the sequence and checks the records after the entry's number against its scope
  (a missing or forgotten record counts as touching it). `mark` is the sequence number, and
  `put(..., mark=)` refuses an answer a write after the mark touched, on whichever replica.
- Values are protobuf messages, kept as their bytes in an envelope (libs/cache_codec.py).
- Down: every call is bounded by IGNITE_TIMEOUT_SECONDS. A failed call counts an engine connection
  failure, logs, and makes the cache a miss (and puts no-ops) for a pause (`retry_seconds`, doubled
  after each failure in a row up to `max_retry_seconds`), after which the next call reconnects. Writes recorded while Ignite was unreachable are kept (merged per tenant and
  datasource) and recorded when it is back, so no replica serves an answer they made stale.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Hashable, Iterable, Mapping
from datetime import timedelta
from typing import Any, TypeVar

from google.protobuf.message import Message
from pyignite import Client
from pyignite.cache import Cache
from pyignite.datatypes import ByteArrayObject, ExpiryPolicy, LongObject, String
from pyignite.datatypes.prop_codes import PROP_DATA_REGION_NAME, PROP_EXPIRY_POLICY, PROP_NAME
from pyignite.exceptions import CacheError, ClusterError, ParseError, ReconnectError

from libs.cache import RECENT_WRITES, Scope, touches
from libs.cache_codec import decode_entry, decode_write, encode_entry, encode_write, key_digest
from libs.config import Settings
from libs.errors import connection_failure

log = logging.getLogger(__name__)

ENGINE = "ignite"
CACHE_PREFIX = "analytics."
WRITES_CACHE = "analytics.writes"
SEQ_KEY = "seq"
DATA_REGION = "analytics-cache"
"""The node's data region the caches live in (scripts/ignite/src/IgniteNode.java defines it)."""
MAX_VALUE_BYTES = 4 * 1024 * 1024
"""Answers larger than this are not shared: moving them would cost more than computing them."""
REFRESH_AFTER = 16
"""A hit that had to check this many write records moves its entry's number up, so the next hit
checks only the writes after it."""
CAS_ATTEMPTS = 1000
SETUP_TIMEOUT = 10.0
"""Bound on creating the caches when connecting (a cluster-wide change, slower than a get)."""
# What a lost, refused, timed-out or restarted node raises (socket errors are OSError).
IGNITE_ERRORS = (OSError, ReconnectError, CacheError, ClusterError, ParseError)

T = TypeVar("T")


def namespace_ttls(settings: Settings) -> dict[str, float]:
    """Each namespace's expiry policy in seconds: the query TTL for user queries (`query`) and the
    service's own (`self`), dashboards (`dashboard`), ML predictions and forecasts (`ml`,
    `ml.maintenance`). Anomalies are not cached entries: they are stored, permanently."""
    return {
        "query": settings.query_cache_ttl_seconds,
        "self": settings.query_cache_ttl_seconds,
        "dashboard": settings.dashboard_cache_ttl_seconds,
        "ml": settings.ml_cache_ttl_seconds,
        "ml.maintenance": settings.ml_cache_ttl_seconds,
    }


def _expiry(seconds: float) -> timedelta:
    # Ignite counts whole milliseconds; 0 would mean "expire at once" for a positive TTL.
    return timedelta(milliseconds=max(1, round(seconds * 1000)))


class IgniteCache:
    """A result cache kept in Ignite and shared by every process that points at the same cluster."""

    def __init__(
        self,
        host: str,
        port: int,
        timeout: float,
        ttls: Mapping[str, float],
        unwatched_datasources: Iterable[str] = (),
        on_unreachable: Callable[[], None] | None = None,
        retry_seconds: float = 1.0,
        max_retry_seconds: float = 8.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not host:
            raise ValueError("IGNITE_HOST is empty: the Ignite cache needs a host")
        if timeout <= 0:
            raise ValueError(f"IGNITE_TIMEOUT_SECONDS must be positive, got {timeout}")
        self.address = (host, port)
        self.timeout = timeout
        self.ttls = dict(ttls)
        self.unwatched_datasources = frozenset(unwatched_datasources)
        self.retry_seconds = retry_seconds
        # A frozen node costs a timeout per attempt, blocking its caller: attempts back off.
        self.max_retry_seconds = max_retry_seconds
        self._pause = retry_seconds
        self.hits: dict[str, int] = {}
        self.misses: dict[str, int] = {}
        self._on_unreachable = on_unreachable
        self._clock = clock
        self._client: Client | None = None
        self._caches: dict[str, Cache] = {}
        self._down_until = 0.0
        self._reason: str | None = None
        # Writes not yet recorded in Ignite (it was unreachable): (tenant, datasource) -> span.
        self._pending: dict[tuple[str, str], tuple[int, int]] = {}
        # pyignite's client is not thread-safe; calls come from the event loop and worker threads.
        self._lock = threading.Lock()

    # ---- the cache interface ---------------------------------------------------------------
    def get(self, namespace: str, key: Hashable) -> Any | None:
        """The cached message, or None when absent, expired, made stale by a write, or Ignite is
        unreachable (counted as a miss either way)."""
        digest = key_digest(namespace, key)
        value = self._call(lambda: self._get(namespace, digest), None)
        counts = self.misses if value is None else self.hits
        counts[namespace] = counts.get(namespace, 0) + 1
        return value

    def mark(self) -> int:
        """The shared write sequence now (-1 when Ignite is unreachable: a put with it is refused)."""
        return self._call(self._sequence, -1)

    def put(
        self,
        namespace: str,
        key: Hashable,
        value: Any,
        ttl: float,
        scope: Scope | None = None,
        mark: int | None = None,
    ) -> None:
        """Cache the message `value` for `ttl` seconds (0 caches nothing); with `mark`, not if a
        write after the mark touched `scope` (on any replica). A no-op while Ignite is unreachable."""
        if ttl <= 0:
            return
        if not isinstance(value, Message):
            raise TypeError(
                f"the Ignite cache keeps protobuf messages only; namespace {namespace!r} was given a "
                f"{type(value).__name__}"
            )
        digest = key_digest(namespace, key)
        self._call(lambda: self._put(namespace, digest, value, ttl, scope, mark), None)

    def invalidate(self, tenant: str, datasource: str, min_ts: int, max_ts: int) -> int:
        """Record a write of [min_ts, max_ts] to the datasource for every replica. Entries it touches
        are dropped by the next `get` that finds them, so this returns 0 (none dropped now)."""
        if not self._call(lambda: self._record_write(tenant, datasource, min_ts, max_ts), False):
            with self._lock:
                lo, hi = self._pending.get((tenant, datasource), (min_ts, max_ts))
                self._pending[(tenant, datasource)] = (min(lo, min_ts), max(hi, max_ts))
        return 0

    def hit_rate(self, namespace: str) -> float | None:
        """Hits over lookups of this process for a namespace, or None before the first lookup."""
        total = self.hits.get(namespace, 0) + self.misses.get(namespace, 0)
        return None if total == 0 else self.hits.get(namespace, 0) / total

    def unavailable(self) -> dict[str, str]:
        """{"ignite": why} while Ignite is unreachable (answers are then computed, not cached)."""
        reason = self._reason
        return {} if reason is None else {ENGINE: reason}

    def pending_writes(self) -> dict[tuple[str, str], tuple[int, int]]:
        """Writes not yet recorded in Ignite (it was unreachable), per (tenant, datasource): their span."""
        with self._lock:
            return dict(self._pending)

    def close(self) -> None:
        """Close the connection (a later call would open it again)."""
        with self._lock:
            self._disconnect()

    def __len__(self) -> int:
        """Entries in the namespace caches (0 while Ignite is unreachable)."""
        return self._call(lambda: sum(self._cache(ns).get_size() for ns in self.ttls), 0)

    # ---- inside the lock, connected ----------------------------------------------------------
    def _get(self, namespace: str, digest: str) -> Message | None:
        cache = self._cache(namespace)
        raw = cache.get(digest)
        if raw is None:
            return None
        try:
            entry = decode_entry(raw)
        except ValueError as exc:
            log.warning("dropping an unreadable %s cache entry: %s", namespace, exc)
            cache.remove_if_equals(digest, raw, sample_hint=ByteArrayObject)
            return None
        if entry.expires_at <= self._clock():
            return None
        if entry.scope is not None:
            now = self._sequence()
            if now != entry.seq:
                if self._written_since(entry.seq, now, entry.scope):
                    # Only this version: a newer answer another replica put stays.
                    cache.remove_if_equals(digest, raw, sample_hint=ByteArrayObject)
                    return None
                remaining = entry.expires_at - self._clock()
                if now - entry.seq >= REFRESH_AFTER and remaining > 0:
                    fresher = encode_entry(entry.value, entry.scope, now, entry.expires_at)
                    cache.with_expire_policy(
                        create=_expiry(remaining), update=_expiry(remaining)
                    ).replace_if_equals(
                        digest, raw, fresher, sample_hint=ByteArrayObject, value_hint=ByteArrayObject
                    )
        return entry.value

    def _put(
        self, namespace: str, digest: str, value: Message, ttl: float, scope: Scope | None, mark: int | None
    ) -> None:
        now = 0
        if scope is not None:
            now = self._sequence()
            if mark is not None and self._written_since(mark, now, scope):
                return
        raw = encode_entry(value, scope, now, self._clock() + ttl)
        if len(raw) > MAX_VALUE_BYTES:
            return
        expiring = self._cache(namespace).with_expire_policy(create=_expiry(ttl), update=_expiry(ttl))
        expiring.put(digest, raw, key_hint=String, value_hint=ByteArrayObject)

    def _sequence(self) -> int:
        found = self._cache(None).get(SEQ_KEY)
        return 0 if found is None else int(found)

    def _written_since(self, since: int, now: int, scope: Scope) -> bool:
        """Whether a write numbered in (since, now] touched `scope`; True when that is unknown."""
        if since == now:
            return False
        if since < 0 or now < since or now - since > RECENT_WRITES:
            return True  # a mark taken while unreachable, a restarted sequence, or records forgotten
        keys = [f"w:{n}" for n in range(since + 1, now + 1)]
        records = self._cache(None).get_all(keys)
        if len(records) < len(keys):
            return True  # a record not yet written (its writer is between the two calls) or lost
        for raw in records.values():
            try:
                tenant, datasource, lo, hi = decode_write(raw)
            except ValueError:
                return True
            if touches(self.unwatched_datasources, tenant, datasource, lo, hi, scope):
                return True
        return False

    def _record_write(self, tenant: str, datasource: str, min_ts: int, max_ts: int) -> bool:
        writes = self._cache(None)
        for _ in range(CAS_ATTEMPTS):
            current = writes.get(SEQ_KEY)
            if current is None:
                taken = writes.put_if_absent(SEQ_KEY, 1, key_hint=String, value_hint=LongObject)
                number = 1
            else:
                number = int(current) + 1
                taken = writes.replace_if_equals(
                    SEQ_KEY, current, number, key_hint=String, sample_hint=LongObject, value_hint=LongObject
                )
            if taken:
                break
        else:
            raise CacheError(f"could not take a write number in {CAS_ATTEMPTS} attempts")
        writes.put(
            f"w:{number}",
            encode_write(tenant, datasource, min_ts, max_ts),
            key_hint=String,
            value_hint=ByteArrayObject,
        )
        if number > RECENT_WRITES:
            writes.remove_key(f"w:{number - RECENT_WRITES}", key_hint=String)
        return True

    def _cache(self, namespace: str | None) -> Cache:
        """The Ignite cache of a namespace (None: the write log). Those of `ttls` were created on
        connecting; another is created now, under the short timeout."""
        name = WRITES_CACHE if namespace is None else CACHE_PREFIX + namespace
        cache = self._caches.get(name)
        if cache is None:
            self._create(self._client, namespace)
            cache = self._caches[name] = self._client.get_cache(name)
        return cache

    def _create(self, client: Client, namespace: str | None) -> None:
        """Create a namespace's cache (None: the write log) with its expiry policy, if it is missing."""
        name = WRITES_CACHE if namespace is None else CACHE_PREFIX + namespace
        config: dict[int, object] = {PROP_NAME: name, PROP_DATA_REGION_NAME: DATA_REGION}
        ttl = self.ttls.get(namespace) if namespace is not None else None
        if ttl:
            config[PROP_EXPIRY_POLICY] = ExpiryPolicy(create=_expiry(ttl), update=_expiry(ttl))
        client.get_or_create_cache(config)

    # ---- connection --------------------------------------------------------------------------
    def _call(self, operation: Callable[[], T], unreachable: T) -> T:
        """Run `operation` on a live connection, opening it first if needed; `unreachable` when
        Ignite cannot be reached (then not again before the pause has passed)."""
        with self._lock:
            if self._client is None:
                if time.monotonic() < self._down_until:
                    return unreachable
                try:
                    self._connect()
                except IGNITE_ERRORS as exc:
                    self._failed(exc)
                    return unreachable
            try:
                return operation()
            except IGNITE_ERRORS as exc:
                self._failed(exc)
                return unreachable

    def _connect(self) -> None:
        client = Client(timeout=self.timeout, handshake_timeout=self.timeout, partition_aware=False)
        client.connect(*self.address)
        # Creating a cache is a cluster-wide change that can take seconds on a busy node: done once
        # per connection (a restarted node has none of them), on a client with a longer timeout.
        setup = Client(
            timeout=max(self.timeout, SETUP_TIMEOUT), handshake_timeout=self.timeout, partition_aware=False
        )
        try:
            setup.connect(*self.address)
            for namespace in [None, *self.ttls]:
                self._create(setup, namespace)
        except IGNITE_ERRORS:
            client.close()
            raise
        finally:
            setup.close()
        self._client = client
        self._caches = {
            name: client.get_cache(name) for name in [WRITES_CACHE, *(CACHE_PREFIX + ns for ns in self.ttls)]
        }
        for (tenant, datasource), (lo, hi) in list(self._pending.items()):
            self._record_write(tenant, datasource, lo, hi)
            del self._pending[(tenant, datasource)]
        if self._reason is not None:
            log.info("Ignite at %s:%d is reachable again; the result cache is shared again", *self.address)
        self._reason = None
        self._pause = self.retry_seconds

    def _failed(self, exc: BaseException) -> None:
        self._disconnect()
        pause = min(max(self._pause, self.retry_seconds), self.max_retry_seconds)
        self._down_until = time.monotonic() + pause
        self._pause = pause * 2
        self._reason = f"unreachable: {connection_failure(exc)}; answer computed, not cached"
        log.warning(
            "result cache: Ignite at %s:%s unreachable (%s: %s); retrying in %.1f s",
            *self.address,
            type(exc).__name__,
            exc,
            pause,
        )
        if self._on_unreachable is not None:
            self._on_unreachable()

    def _disconnect(self) -> None:
        if self._client is not None:
            with contextlib.suppress(OSError):  # the socket is gone already
                self._client.close()
            self._client = None
        self._caches.clear()
