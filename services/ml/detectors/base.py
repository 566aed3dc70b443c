"""What every detector returns, and the one mapping from deviation to score and from sensitivity
to threshold, so scores mean the same whatever the method.

Every detector is causal: the score of point i depends only on points 0..i. A detector states its
`expected` value and band [`lower`, `upper`] for each point; the band edge is where a point starts
to look anomalous (about 3 robust standard deviations for the statistical methods). A point's
deviation is how many band half-widths it lies from `expected`, and its score is
``1 - 2 ** -(deviation ** 2)``: 0 on the expected value, 0.5 on the band edge, 0.94 at two band
widths, always in [0, 1].

`sensitivity` s in (0, 1) sets the threshold through a deviation ``1 + 6 * (1 - s)``: at s near 1
the band edge itself (score 0.5), at the seed's 0.95 1.3 band half-widths (about 4 robust sigma,
score 0.69), at 0.9 1.6, at 0.5 4. The default sits where one false alarm costs more than a late
detection: on SKAB and on the demo's incidents, NAB-style scores peak around score 0.7 for every
method, and an alert that fires on 3-sigma noise fires every few hundred points.

An anomaly is the onset of an episode: a point at or above the threshold with no other such point
in the `EPISODE_GAP` points before it. The points after it in the episode keep their scores but
are not reported again, so a two-hour incident is one anomaly, not seven hundred.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

DEFAULT_SENSITIVITY = 0.95
REASONS = ("value", "level_shift", "variance")
"""What made a point anomalous, by code: its value against its band, a shift of the recent level,
or a change of the recent variance (only `auto` tells the last two apart; the others say value)."""
REASON_VALUE, REASON_LEVEL_SHIFT, REASON_VARIANCE = 0, 1, 2
EPISODE_GAP = 12
"""Points at or above the threshold less than this many points apart belong to one episode."""


@dataclass
class Scores:
    """Per-point causal scores of one series (or one entity's aligned series).

    `score` has shape (n,). For a univariate detector `expected`, `lower`, `upper` have shape (n,);
    for a multivariate one they have shape (n, k), one column per input series, and
    `contributions` (n, k) holds each series' share of the point's score (rows sum to 1 where
    the score is above 0). The first `warmup` points are not scored: score 0, band NaN.
    """

    score: FloatArray
    expected: FloatArray
    lower: FloatArray
    upper: FloatArray
    warmup: int
    contributions: FloatArray | None = None
    reasons: npt.NDArray[np.int8] | None = None
    """Per point, the index in `REASONS` of what decided its score; None means value throughout."""


class TooShort(ValueError):
    """The series has fewer points than the method needs; `minimum` says how many."""

    def __init__(self, method: str, minimum: int, got: int) -> None:
        self.method = method
        self.minimum = minimum
        self.got = got
        super().__init__(f"{method} needs at least {minimum} points, got {got}")


def deviation(values: FloatArray, expected: FloatArray, lower: FloatArray, upper: FloatArray) -> FloatArray:
    """How many band half-widths each value lies from its expected value (0 where unknown)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        above = (values - expected) / (upper - expected)
        below = (expected - values) / (expected - lower)
        dev = np.where(values >= expected, above, below)
    return np.nan_to_num(np.maximum(dev, 0.0), nan=0.0, posinf=1e6)


def explained_deviation(
    values: FloatArray, expected: FloatArray, lower: FloatArray, upper: FloatArray, score: FloatArray
) -> FloatArray:
    """The deviation an anomaly reports: the larger of the value's own (against its band) and the
    one its score stands for, which is larger when another part of a detector fired (a level shift
    or a variance change whose points stay inside the value band)."""
    # A score of 1.0 says only "beyond about 7.3": 1 - 2^-(d^2) rounds to 1 from there on.
    from_score = np.sqrt(-np.log2(np.maximum(1.0 - np.asarray(score, dtype=np.float64), 2.0**-53)))
    return np.maximum(deviation(values, expected, lower, upper), from_score)


def score_from_deviation(dev: FloatArray) -> FloatArray:
    """Deviation (band half-widths) to a score in [0, 1]: 0.5 on the band edge."""
    dev = np.nan_to_num(np.asarray(dev, dtype=np.float64), nan=0.0, posinf=1e6)
    return 1.0 - np.exp2(-(np.minimum(dev, 1e3) ** 2))


def reason_at(scores: Scores, i: int) -> str:
    """What decided point i's score, by name."""
    return REASONS[0] if scores.reasons is None else REASONS[int(scores.reasons[i])]


def threshold_for(sensitivity: float) -> float:
    """The score at and above which a point is anomalous, for a sensitivity in (0, 1)."""
    return float(score_from_deviation(np.array([1.0 + 6.0 * (1.0 - sensitivity)]))[0])


def onsets(score: FloatArray, threshold: float, since_above: int = EPISODE_GAP + 1) -> tuple[np.ndarray, int]:
    """Which points start an episode, and the points since the last one at or above the threshold
    after them (`since_above` carries it from the previous chunk of the series, so any chunking
    gives the same onsets)."""
    above = np.flatnonzero(np.asarray(score) >= threshold)
    flags = np.zeros(len(score), dtype=bool)
    if not above.size:
        return flags, min(since_above + len(score), EPISODE_GAP + 1)
    previous = np.concatenate([[-since_above], above[:-1]])
    flags[above[above - previous > EPISODE_GAP]] = True
    return flags, min(len(score) - int(above[-1]), EPISODE_GAP + 1)
