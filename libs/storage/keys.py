"""Keys: a series' (`SeriesKey`, its id `series_id`) and vectorised operations on point keys (series
id, timestamp): membership and last-write-wins. Light (numpy only): the REST body worker processes
import it without the rest of the store."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import NamedTuple

import numpy as np

LabelSet = tuple[tuple[str, str], ...]


def series_id(metric: str, labels: Mapping[str, str] | LabelSet) -> int:
    """Stable unsigned 64-bit id of a series (blake2b of the metric and its sorted labels)."""
    # A LabelSet (tuple) is already sorted; checking for it first skips a slow ABC isinstance.
    items = labels if isinstance(labels, tuple) else sorted(labels.items())
    text = metric + "".join([f"\x00{k}\x01{v}" for k, v in items])
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


class SeriesKey(NamedTuple):
    """A series: its metric and its labels, sorted by key (a named tuple: small and quick to build,
    as the catalog builds keys on demand)."""

    metric: str
    labels: LabelSet

    @classmethod
    def of(cls, metric: str, labels: Mapping[str, str]) -> SeriesKey:
        """Build a key from a label mapping."""
        return cls(metric, tuple(sorted(labels.items())))

    @property
    def label_map(self) -> dict[str, str]:
        """The labels as a dict."""
        return dict(self.labels)


_KEY = np.dtype([("sid", np.uint64), ("ts", np.int64)])


def _keys(series_ids: np.ndarray, ts: np.ndarray) -> np.ndarray:
    out = np.empty(len(ts), dtype=_KEY)
    out["sid"] = series_ids
    out["ts"] = ts
    return out


def keys_in(
    series_ids: np.ndarray, ts: np.ndarray, other_ids: np.ndarray, other_ts: np.ndarray
) -> np.ndarray:
    """Boolean mask over the first keys: True where (series id, ts) is also among the other keys."""
    found = np.zeros(len(ts), dtype=bool)
    if not len(ts) or not len(other_ts):
        return found
    # Only keys within the other side's time range can match (a batch against a day's file).
    near = np.flatnonzero((ts >= other_ts.min()) & (ts <= other_ts.max()))
    other_near = (other_ts >= ts.min()) & (other_ts <= ts.max())
    if not len(near) or not other_near.any():
        return found
    series_ids, ts = series_ids[near], ts[near]
    other_ids, other_ts = other_ids[other_near], other_ts[other_near]
    # Each key as one int64 (the series' number among the smaller side's series, then the time),
    # found by a binary search in the other side's sorted keys: a sort of integers, where a sort
    # of (series id, ts) records cost ten times as much.
    known = np.unique(series_ids if len(series_ids) <= len(other_ids) else other_ids)
    lo = min(int(ts.min()), int(other_ts.min()))
    span = max(int(ts.max()), int(other_ts.max())) - lo + 1
    if len(known) * span >= 2**63:
        found[near] = np.isin(_keys(series_ids, ts), _keys(other_ids, other_ts))
        return found
    code, has = _codes(known, series_ids)
    other_code, other_has = _codes(known, other_ids)
    others = np.sort(other_code[other_has] * span + (other_ts[other_has] - lo))
    if len(others):
        mine = code * span + (ts - lo)
        at = np.minimum(np.searchsorted(others, mine), len(others) - 1)
        found[near] = has & (others[at] == mine)
    return found


def _codes(known: np.ndarray, series_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each id's position in `known` (sorted, distinct) as int64, and whether it is there."""
    at = np.minimum(np.searchsorted(known, series_ids), len(known) - 1)
    return at.astype(np.int64), known[at] == series_ids


def ids_in(series_ids: np.ndarray, known: np.ndarray) -> np.ndarray:
    """Boolean mask: True where the id is in `known` (sorted, distinct: `np.unique`'s answer); a
    binary search each, where np.isin sorts both sides on every call."""
    if not len(known):
        return np.zeros(len(series_ids), dtype=bool)
    return _codes(known, series_ids)[1]


def last_wins(series_ids: np.ndarray, ts: np.ndarray) -> np.ndarray:
    """Indexes that keep, for each (series id, ts), only its last occurrence, sorted by key."""
    # Stable sorts throughout: equal keys keep their arrival order. Points mostly arrive in time
    # order within each series, so a sort by series alone already orders them by key; where a
    # series goes back in time, they are sorted again by (series, ts), which costs little over
    # series already in order.
    order = np.argsort(series_ids, kind="stable")
    sid, t = series_ids[order], ts[order]
    same = sid[1:] == sid[:-1]
    if (same & (t[1:] < t[:-1])).any():
        order = order[np.lexsort((t, sid))]
        sid, t = series_ids[order], ts[order]
        same = sid[1:] == sid[:-1]
    last = np.ones(len(order), dtype=bool)
    last[:-1] = ~same | (t[1:] != t[:-1])
    return order[last]
