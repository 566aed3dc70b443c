"""Vectorised operations on point keys (series id, timestamp): membership and last-write-wins."""

from __future__ import annotations

import numpy as np

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
    order = np.lexsort((ts, series_ids))  # stable: equal keys keep their arrival order
    sid, t = series_ids[order], ts[order]
    last = np.ones(len(order), dtype=bool)
    last[:-1] = (sid[1:] != sid[:-1]) | (t[1:] != t[:-1])
    return order[last]
