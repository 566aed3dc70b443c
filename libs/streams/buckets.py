"""Live buckets of a metrics stream with a step: points are folded per series into the bucket
they fall in (buckets start at multiples of the step since the epoch, as queries align them);
a bucket closes, and is emitted once, when a later point of its series arrives or when wall
time passes its end plus one step. Points older than the open bucket arrived too late and are
counted, not emitted."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

Labels = tuple[tuple[str, str], ...]
Closed = list[tuple[int, float]]


@dataclass(slots=True)
class _Open:
    start: int
    acc: float
    count: int
    last_ts: int


def _fold(bucket: _Open, aggregation: str, ts: int, value: float) -> None:
    bucket.count += 1
    if aggregation in ("avg", "sum"):
        bucket.acc += value
    elif aggregation == "min":
        bucket.acc = min(bucket.acc, value)
    elif aggregation == "max":
        bucket.acc = max(bucket.acc, value)
    elif aggregation == "last" and ts >= bucket.last_ts:
        bucket.acc = value
    bucket.last_ts = max(bucket.last_ts, ts)


def _value(bucket: _Open, aggregation: str) -> float:
    if aggregation == "avg":
        return bucket.acc / bucket.count
    if aggregation == "count":
        return float(bucket.count)
    return bucket.acc


class Bucketer:
    """Open buckets of every series of one stream (bounded: a series whose bucket closed by wall
    time and that stays silent for `forget_after_ms` is forgotten)."""

    def __init__(self, step_ms: int, aggregation: str, forget_after_ms: int = 600_000) -> None:
        self.step_ms = step_ms
        self.aggregation = aggregation
        self.forget_after_ms = max(forget_after_ms, 2 * step_ms)
        self._open: dict[Labels, _Open] = {}
        # End of the newest bucket each series has emitted: points before it are late.
        self._closed_until: dict[Labels, int] = {}
        self.late_points = 0

    def __len__(self) -> int:
        return len(self._open) + len(self._closed_until)

    def add(self, labels: Labels, timestamps: Sequence[int], values: Sequence[float]) -> Closed:
        """Fold one series' new points in; returns the buckets they closed, oldest first."""
        step, aggregation = self.step_ms, self.aggregation
        closed: Closed = []
        bucket = self._open.get(labels)
        floor = self._closed_until.get(labels, 0)
        for ts, value in zip(timestamps, values, strict=True):
            start = ts - ts % step
            if bucket is not None and start != bucket.start:
                if start < bucket.start:
                    self.late_points += 1
                    continue
                closed.append((bucket.start, _value(bucket, aggregation)))
                floor = bucket.start + step
                bucket = None
            if bucket is None:
                if start < floor:
                    self.late_points += 1
                    continue
                initial = 0.0 if aggregation in ("avg", "sum", "count") else value
                bucket = _Open(start, initial, 0, ts)
            _fold(bucket, aggregation, ts, value)
        if bucket is not None:
            self._open[labels] = bucket
        if floor:
            self._closed_until[labels] = floor
        return closed

    def expire(self, now_ms: int) -> dict[Labels, Closed]:
        """Close the buckets whose end plus one step has passed on the wall clock; forget series
        silent for long."""
        step = self.step_ms
        out: dict[Labels, Closed] = {}
        for labels, bucket in list(self._open.items()):
            if bucket.start + 2 * step <= now_ms:
                out[labels] = [(bucket.start, _value(bucket, self.aggregation))]
                self._closed_until[labels] = bucket.start + step
                del self._open[labels]
        horizon = now_ms - self.forget_after_ms
        for labels, until in list(self._closed_until.items()):
            if until < horizon and labels not in self._open:
                del self._closed_until[labels]
        return out
