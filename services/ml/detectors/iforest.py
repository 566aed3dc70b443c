"""Isolation forest detector (pyod's `IForest`): a point is anomalous when few random splits set it
apart from the points the forest was fitted on.

It needs no model of the series' shape and scores several metrics of one entity as one vector,
which catches combinations that no single metric shows. The forest is fitted on the points before
each refit point (`segments`, at most `TRAIN_MAX` of them) and scores the points up to the next
one. Its raw scores are calibrated on its own training scores: a point scoring at the training
99.7th percentile lies on the band edge (deviation 1). A forest cannot tell how far past the
training range a point lies (it lands in the leaf of the most extreme training points), so each
metric's band, the central 99.7 % of its training values, counts as well: the deviation is the
larger of the forest's and the metrics' own. A metric's contribution is how much the raw score
drops when that metric is set to its training median (or its share of the band deviations, when
those decide). A single series is scored on [value, change from the previous value].
"""

from __future__ import annotations

import numpy as np

from services.ml.detectors import segments
from services.ml.detectors.base import FloatArray, IntArray, Scores, deviation, score_from_deviation
from services.ml.detectors.rolling import MAD_TO_SIGMA, SIGMAS, floor_sigma

TRAIN_MAX = 2000
N_ESTIMATORS = 100
RANDOM_STATE = 0
EDGE_QUANTILE = 0.997
"""Training-score quantile placed on the band edge."""
BAND_QUANTILE = 0.9985
"""A metric's band is its training values' central 99.7 % (median +- 3 sigma for normal data, and
it follows a skewed metric where median +- 3 robust sigma would cut its long tail)."""


def detect(ts: IntArray, values: FloatArray) -> Scores:
    """Score one series on its value and its change from the previous value."""
    change = np.diff(values, prepend=values[:1])
    scores = detect_matrix(np.column_stack([values, change]), metrics=1, explain=False)
    return Scores(
        score=scores.score,
        expected=scores.expected[:, 0],
        lower=scores.lower[:, 0],
        upper=scores.upper[:, 0],
        warmup=scores.warmup,
    )


def detect_matrix(matrix: FloatArray, metrics: int | None = None, explain: bool = True) -> Scores:
    """Score the rows of `matrix` (n, k) as vectors. The first `metrics` columns (all by default)
    are metrics whose own band counts too; `explain` adds each column's contribution."""
    from pyod.models.iforest import IForest

    n, k = matrix.shape
    metrics = k if metrics is None else metrics
    score = np.zeros(n)
    expected, lower, upper = (np.full((n, k), np.nan) for _ in range(3))
    contributions = np.zeros((n, k))
    parts = segments(n)
    for start, stop in parts:
        train, rows = matrix[max(0, start - TRAIN_MAX) : start], matrix[start:stop]
        forest = IForest(n_estimators=N_ESTIMATORS, random_state=RANDOM_STATE).fit(train)
        centre = np.median(forest.decision_scores_)
        spread = max(np.quantile(forest.decision_scores_, EDGE_QUANTILE) - centre, 1e-12)
        raw = forest.decision_function(rows)
        forest_dev = np.maximum((raw - centre) / spread, 0.0)

        median = np.median(train, axis=0)
        least = SIGMAS * floor_sigma(np.zeros(k), median)  # a constant metric still has a band
        low, high = np.quantile(train, [1 - BAND_QUANTILE, BAND_QUANTILE], axis=0)
        low, high = np.minimum(low, median - least), np.maximum(high, median + least)
        expected[start:stop], lower[start:stop], upper[start:stop] = median, low, high
        band_dev = np.zeros_like(rows)
        band_dev[:, :metrics] = deviation(rows[:, :metrics], median[:metrics], low[:metrics], high[:metrics])
        score[start:stop] = score_from_deviation(np.maximum(forest_dev, band_dev.max(axis=1)))
        if explain:
            sigma = floor_sigma(MAD_TO_SIGMA * np.median(np.abs(train - median), axis=0), median)
            shares = _forest_shares(forest, rows, raw, median, sigma)
            by_band = (band_dev.max(axis=1) > forest_dev)[:, None]
            contributions[start:stop] = np.where(
                by_band, band_dev / np.maximum(band_dev.sum(1, keepdims=True), 1e-300), shares
            )
    return Scores(
        score, expected, lower, upper, parts[0][0] if parts else n, contributions if explain else None
    )


def _forest_shares(
    forest, rows: FloatArray, raw: FloatArray, median: FloatArray, sigma: FloatArray
) -> FloatArray:
    """Each column's share of the raw score: the drop when it is set to its training median
    (robust z shares where no single column lowers the score)."""
    drops = np.empty_like(rows)
    for j in range(rows.shape[1]):
        typical = rows.copy()
        typical[:, j] = median[j]
        drops[:, j] = np.maximum(raw - forest.decision_function(typical), 0.0)
    z = np.abs(rows - median) / sigma
    shares = np.where(drops.sum(axis=1, keepdims=True) > 0, drops, z)
    total = shares.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(total > 0, shares / total, 1.0 / rows.shape[1])
