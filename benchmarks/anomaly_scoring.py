"""Metrics of the anomaly benchmark: point-wise counts, detection delay, and the NAB score.

Inputs are per-series boolean arrays, `labels` (ground truth) and `flags` (score >= threshold),
aligned with the series' timestamps. Results are kept per series (`SeriesResult`) so that any set
of series can be totalled (`Totals`) afterwards.

The NAB score follows Lavin & Ahmad 2015 ("Evaluating Real-time Anomaly Detection Algorithms - the
Numenta Anomaly Benchmark") as implemented in NAB's `labeler.py` and `sweeper.py`:

- Windows: each labelled anomaly gets a window of ``int(0.1 * n / anomalies)`` points centred on
  it. Our labels are intervals, so an interval shorter than that is extended equally on both sides
  to that length, and a longer one is its own window. Windows are clipped to the series, windows
  starting inside the probationary period are dropped, overlapping windows are merged.
- Probationary period: the first ``min(floor(0.15 n), 0.15 * 5000)`` points (NAB caps it at 750)
  are not scored at all.
- Each flagged point inside window [L, R] (W points) is worth ``A_tp * sigma(y) / sigma(-1)`` with
  ``y = -(R - i + 1) / W`` (-1 at the window start, near 0 at its end) and
  ``sigma(y) = 2 / (1 + exp(5 y)) - 1``; only the best, i.e. the first, detection of a window
  counts. A window without a detection costs ``A_fn``.
- A flagged point outside every window costs ``A_fp * sigma(y)`` with y its distance past the
  previous window's end in window widths (``|i - R_prev| / (W_prev - 1)``), or the full ``A_fp``
  before the first window: a flag just after a window is hardly punished, a distant one fully.
- Normalised per data set: ``100 * (raw - null) / (perfect - null)`` with null = no flags at all
  (``-A_fn`` per window) and perfect = one flag at each window's start (``A_tp`` per window).

The paper writes the standard profile as A_tp = 1, A_fp = -0.11, A_fn = -1; NAB's code keeps the
weights positive and applies the signs itself, as `CostProfile` does.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

BoolArray = npt.NDArray[np.bool_]
IntArray = npt.NDArray[np.int64]

NAB_WINDOW_FRACTION = 0.1
"""Total window length as a fraction of the series, shared by its anomalies."""
NAB_PROBATION_FRACTION = 0.15
NAB_PROBATION_CAP = 0.15 * 5000
"""NAB's probationary period: 15 % of the series, at most 750 points."""


@dataclass(frozen=True)
class CostProfile:
    """NAB weights, kept positive as in NAB's code: a detection earns `tp`, a miss costs `fn`."""

    tp: float = 1.0
    fp: float = 0.11
    fn: float = 1.0


STANDARD = CostProfile()


def scaled_sigmoid(y: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """NAB's sigma(y) = 2 / (1 + exp(5y)) - 1, and -1 from y = 3 on (NAB's cut-off)."""
    y = np.asarray(y, dtype=np.float64)
    with np.errstate(over="ignore"):
        s = 2.0 / (1.0 + np.exp(5.0 * y)) - 1.0
    return np.where(y >= 3.0, -1.0, s)


def intervals(labels: BoolArray) -> list[tuple[int, int]]:
    """Contiguous runs of True as (start, end) index pairs, end exclusive."""
    edges = np.flatnonzero(np.diff(np.concatenate(([0], labels.astype(np.int8), [0]))))
    return [(int(a), int(b)) for a, b in zip(edges[::2], edges[1::2], strict=True)]


def probation_length(n: int) -> int:
    """Points at the start of a series of n points that NAB does not score."""
    return int(min(math.floor(NAB_PROBATION_FRACTION * n), NAB_PROBATION_CAP))


def nab_windows(labels: BoolArray) -> list[tuple[int, int]]:
    """NAB anomaly windows [L, R] (inclusive indices) around the labelled intervals."""
    n = len(labels)
    runs = intervals(labels)
    if not runs:
        return []
    length = int(NAB_WINDOW_FRACTION * n / len(runs))
    probation = probation_length(n)
    windows: list[tuple[int, int]] = []
    for start, end in runs:
        grow = max(length - (end - start), 0)
        left = max(start - grow // 2, 0)
        right = min(end - 1 + (grow - grow // 2), n - 1)
        if left < probation:
            continue  # NAB drops a window that overlaps the probationary period
        if windows and left <= windows[-1][1]:
            windows[-1] = (windows[-1][0], max(right, windows[-1][1]))
        else:
            windows.append((left, right))
    return windows


@dataclass(frozen=True)
class NabParts:
    """One series' raw NAB score and how many windows it had (for the normalisation)."""

    raw: float
    windows: int
    detected_windows: int
    false_positives: int


def nab_score(labels: BoolArray, flags: BoolArray, profile: CostProfile = STANDARD) -> NabParts:
    """Raw NAB score of one series (see the module docstring)."""
    n = len(labels)
    windows = nab_windows(labels)
    probation = probation_length(n)
    max_tp = float(scaled_sigmoid(-1.0))
    flagged = np.flatnonzero(flags)
    flagged = flagged[flagged >= probation]

    raw = 0.0
    detected = 0
    inside = np.zeros(n, dtype=bool)
    for left, right in windows:
        inside[left : right + 1] = True
        hits = flagged[(flagged >= left) & (flagged <= right)]
        if len(hits) == 0:
            raw -= profile.fn
            continue
        width = right - left + 1
        first = int(hits[0])
        raw += profile.tp * float(scaled_sigmoid(-(right - first + 1) / width)) / max_tp
        detected += 1

    outside = flagged[~inside[flagged]]
    if len(outside):
        rights = np.array([r for _, r in windows], dtype=np.int64)
        widths = np.array([right - left + 1 for left, right in windows], dtype=np.float64)
        prev = np.searchsorted(rights, outside, side="left") - 1  # last window ending before the point
        position = np.full(len(outside), 3.0)
        has_prev = prev >= 0
        if has_prev.any():
            p = prev[has_prev]
            # NAB divides by (width - 1); a one-point window would divide by zero, so floor it at 1.
            position[has_prev] = np.abs(outside[has_prev] - rights[p]) / np.maximum(widths[p] - 1, 1.0)
        raw += profile.fp * float(scaled_sigmoid(position).sum())
    return NabParts(raw=raw, windows=len(windows), detected_windows=detected, false_positives=len(outside))


def nab_normalised(raw: float, windows: int, profile: CostProfile = STANDARD) -> float | None:
    """100 * (raw - null) / (perfect - null) over a data set's summed raw score and window count."""
    if windows == 0:
        return None
    null = -profile.fn * windows
    perfect = profile.tp * windows
    return 100.0 * (raw - null) / (perfect - null)


def detection_delays(timestamps_ms: IntArray, labels: BoolArray, flags: BoolArray) -> list[float | None]:
    """Per labelled interval: seconds from its start to its first flag, None if never flagged."""
    delays: list[float | None] = []
    for start, end in intervals(labels):
        hits = np.flatnonzero(flags[start:end])
        delays.append(
            None if len(hits) == 0 else (timestamps_ms[start + hits[0]] - timestamps_ms[start]) / 1000
        )
    return delays


@dataclass
class SeriesResult:
    """Everything the totals need from one scored series."""

    name: str
    points: int
    tp: int
    fp: int
    fn: int
    delays: list[float | None]
    nab: NabParts
    warmup: int
    seconds: float
    values: int
    """Values the detector read: points x channels for an entity."""
    error: str | None = None


def score_series(
    name: str,
    timestamps_ms: IntArray,
    labels: BoolArray,
    flags: BoolArray,
    *,
    warmup: int,
    seconds: float,
    values: int,
    profile: CostProfile = STANDARD,
    error: str | None = None,
    reported: BoolArray | None = None,
) -> SeriesResult:
    """Point counts and delays of one series' flags (points at or above the threshold), and the
    NAB parts of the anomalies reported (`reported`: episode onsets; the flags when not given)."""
    labels = np.asarray(labels, dtype=bool)
    flags = np.asarray(flags, dtype=bool)
    reported = flags if reported is None else np.asarray(reported, dtype=bool)
    return SeriesResult(
        name=name,
        points=len(labels),
        tp=int(np.sum(labels & flags)),
        fp=int(np.sum(~labels & flags)),
        fn=int(np.sum(labels & ~flags)),
        delays=detection_delays(timestamps_ms, labels, flags),
        nab=nab_score(labels, reported, profile),
        warmup=warmup,
        seconds=seconds,
        values=values,
        error=error,
    )


def _ratio(a: float, b: float) -> float | None:
    return a / b if b else None


@dataclass
class Totals:
    """Metrics pooled over a set of series."""

    series: int = 0
    points: int = 0
    tp: int = 0
    fp: int = 0
    fn: int = 0
    intervals: int = 0
    delays: list[float] = field(default_factory=list)
    nab_raw: float = 0.0
    nab_windows: int = 0
    nab_detected: int = 0
    warmup_points: int = 0
    seconds: float = 0.0
    values: int = 0
    errors: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, results: Iterable[SeriesResult]) -> Totals:
        """Pool the series results."""
        t = cls()
        for r in results:
            t.series += 1
            t.points += r.points
            t.tp, t.fp, t.fn = t.tp + r.tp, t.fp + r.fp, t.fn + r.fn
            t.intervals += len(r.delays)
            t.delays += [d for d in r.delays if d is not None]
            t.nab_raw += r.nab.raw
            t.nab_windows += r.nab.windows
            t.nab_detected += r.nab.detected_windows
            t.warmup_points += r.warmup
            t.seconds += r.seconds
            t.values += r.values
            if r.error:
                t.errors.append(f"{r.name}: {r.error}")
        return t

    def summary(self, profile: CostProfile = STANDARD) -> dict[str, float | int | list[str] | None]:
        """The reported figures, JSON-ready."""
        precision = _ratio(self.tp, self.tp + self.fp)
        recall = _ratio(self.tp, self.tp + self.fn)
        f1 = (
            2 * precision * recall / (precision + recall)
            if precision is not None and recall is not None and precision + recall > 0
            else (0.0 if recall is not None else None)
        )
        return {
            "series": self.series,
            "points": self.points,
            "tp": self.tp,
            "fp": self.fp,
            "fn": self.fn,
            "precision": precision,
            "recall": recall,
            "f1": f1,
            "intervals": self.intervals,
            "intervals_detected": len(self.delays),
            "mean_delay_s": float(np.mean(self.delays)) if self.delays else None,
            "median_delay_s": float(np.median(self.delays)) if self.delays else None,
            "nab_raw": self.nab_raw,
            "nab_windows": self.nab_windows,
            "nab_windows_detected": self.nab_detected,
            "nab_score": nab_normalised(self.nab_raw, self.nab_windows, profile),
            "warmup_points": self.warmup_points,
            "seconds": self.seconds,
            "values": self.values,
            "values_per_s": _ratio(self.values, self.seconds),
            "errors": self.errors,
        }


def event_delay(timestamps_ms: IntArray, flags: BoolArray, start_ms: int, end_ms: int) -> float | None:
    """Seconds from `start_ms` to the first flag in [start_ms, end_ms), None if there is none."""
    inside = np.flatnonzero(flags & (timestamps_ms >= start_ms) & (timestamps_ms < end_ms))
    return None if len(inside) == 0 else (int(timestamps_ms[inside[0]]) - start_ms) / 1000
