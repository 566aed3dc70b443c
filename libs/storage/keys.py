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
    if not len(ts) or not len(other_ts):
        return np.zeros(len(ts), dtype=bool)
    return np.isin(_keys(series_ids, ts), _keys(other_ids, other_ts))


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
