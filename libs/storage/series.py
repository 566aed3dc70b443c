"""Series identity and the series catalog of one (tenant, datasource).

A series is (metric name, sorted labels); its id is a stable 64-bit hash, so the same series gets
the same id in every process and after every restart.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

LabelSet = tuple[tuple[str, str], ...]


def series_id(metric: str, labels: Mapping[str, str] | LabelSet) -> int:
    """Stable unsigned 64-bit id of a series (blake2b of the metric and its sorted labels)."""
    items = sorted(labels.items()) if isinstance(labels, Mapping) else labels
    text = metric + "".join(f"\x00{k}\x01{v}" for k, v in items)
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


@dataclass(frozen=True)
class SeriesKey:
    """A series: its metric and its labels, sorted by key."""

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


@dataclass
class SeriesCatalog:
    """Every series of one (tenant, datasource), with indexes by metric and by label."""

    by_id: dict[int, SeriesKey] = field(default_factory=dict)
    by_metric: dict[str, set[int]] = field(default_factory=dict)
    label_values: dict[str, dict[str, set[int]]] = field(default_factory=dict)
    unsaved: list[int] = field(default_factory=list)

    def add(self, sid: int, key: SeriesKey, saved: bool = False) -> None:
        """Register a series; new ones are remembered until the next segment flush saves them."""
        if sid in self.by_id:
            return
        self.by_id[sid] = key
        self.by_metric.setdefault(key.metric, set()).add(sid)
        for k, v in key.labels:
            self.label_values.setdefault(k, {}).setdefault(v, set()).add(sid)
        if not saved:
            self.unsaved.append(sid)

    def label_keys(self, sids: Iterable[int]) -> set[str]:
        """Every label key that at least one of `sids` carries."""
        keys: set[str] = set()
        for sid in sids:
            keys.update(k for k, _ in self.by_id[sid].labels)
        return keys

    def select(
        self, metrics: Iterable[str], matchers: Iterable[tuple[str, str, tuple[str, ...]]]
    ) -> list[int]:
        """Series ids of `metrics` whose labels satisfy every (label, op, values) matcher.

        Operators: "=" and "!=" (a missing label equals ""), "in", and "regex" (anchored, as in
        PromQL).
        """
        chosen: set[int] = set()
        for metric in metrics:
            chosen |= self.by_metric.get(metric, set())
        for label, op, values in matchers:
            if op in ("=", "in") and "" not in values:
                # Equality on a present value: intersect with the label index.
                index = self.label_values.get(label, {})
                chosen &= set().union(*(index.get(v, set()) for v in values))
            else:
                chosen = {
                    sid for sid in chosen if _matches(self.by_id[sid].label_map.get(label, ""), op, values)
                }
        return sorted(chosen)


def _matches(actual: str, op: str, values: tuple[str, ...]) -> bool:
    if op == "=":
        return actual == values[0]
    if op == "!=":
        return actual != values[0]
    if op == "in":
        return actual in values
    return re.fullmatch(values[0], actual) is not None
