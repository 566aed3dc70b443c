"""What every detector returns, and the one mapping from deviation to score and from sensitivity
to threshold, so scores mean the same whatever the method.

Every detector is causal: the score of point i depends only on points 0..i. A detector states its
`expected` value and band [`lower`, `upper`] for each point; the band edge is where a point starts
to look anomalous (about 3 robust standard deviations for the statistical methods). A point's
deviation is how many band half-widths it lies from `expected`, and its score is
``1 - 2 ** -(deviation ** 2)``: 0 on the expected value, 0.5 on the band edge, 0.94 at two band
widths, always in [0, 1].

`sensitivity` s in (0, 1) flags a point when its score is at least ``1 - s / 2``: at the seed's
0.95 that is just outside the band (deviation 1.04), at 0.5 at deviation 1.5 (score 0.75).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

DEFAULT_SENSITIVITY = 0.95


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


def score_from_deviation(dev: FloatArray) -> FloatArray:
    """Deviation (band half-widths) to a score in [0, 1]: 0.5 on the band edge."""
    dev = np.nan_to_num(np.asarray(dev, dtype=np.float64), nan=0.0, posinf=1e6)
    return 1.0 - np.exp2(-(np.minimum(dev, 1e3) ** 2))


def threshold_for(sensitivity: float) -> float:
    """The score at and above which a point is anomalous, for a sensitivity in (0, 1)."""
    return 1.0 - sensitivity / 2.0
