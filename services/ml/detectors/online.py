"""Online detector: river's Half-Space Trees behind a running min-max scaler, scoring each point
before learning it, on the features {value, change from the previous value}.

It is the one detector that learns point by point with constant memory, so the streaming service
can keep an `OnlineSeriesModel` per series and feed it as points arrive. The trees' raw scores
have no fixed scale, so each is calibrated on the trees' own earlier scores (the last
`CALIBRATION_WINDOW`): deviation = (s - median) / (99.7th percentile - median), so a point scoring
as high as the top 0.3 % of recent points lies on the band edge. The trees separate an anomaly
from the normal points by little, so the reference must not fill up with anomalies: a score past
the edge joins it as the edge, unless such scores have become common. The band shown is the rolling
median +- 3 robust sigma of the previous values (as `mad`): a guide, while the score is the trees'.
A series that has never varied gives the scaler no range, so a first jump off it is not seen.
"""

from __future__ import annotations

import bisect
from collections import deque

import numpy as np

from services.ml.detectors.base import FloatArray, IntArray, Scores, score_from_deviation
from services.ml.detectors.rolling import SIGMAS, WINDOW, floor_sigma, rolling_median_sigma

HST_WINDOW = 250
"""Half-Space Trees' reference window; its first window only learns."""
N_TREES = 50
HEIGHT = 4
"""Shallow trees: HST stops descending where a node holds under a tenth of the window, so deeper
levels are rarely reached; more trees make the score less noisy."""
SEED = 42
CALIBRATION_WINDOW = 2000
CALIBRATION_MIN = 100
"""Scores of the trees needed before the first calibrated score."""
WARMUP = HST_WINDOW + CALIBRATION_MIN
EDGE_QUANTILE = 0.997
MIN_SPREAD = 0.02
"""Least distance (in the trees' 0..1 score) from the median score to the edge: a series that has
been constant has all its scores equal, and any wobble would otherwise be anomalous."""
REGIME_SHARE = 0.05
"""Beyond the edge on more than this share of the last `HST_WINDOW` points, scores are a new normal."""


def detect(ts: IntArray, values: FloatArray) -> Scores:
    """Score a whole series with a fresh model."""
    return OnlineSeriesModel().score_and_learn(ts, values)


class OnlineSeriesModel:
    """One series' online model; calls in chunks give the same scores as one call."""

    def __init__(self) -> None:
        from river import anomaly, compose, preprocessing

        self.model = compose.Pipeline(
            preprocessing.MinMaxScaler(),
            anomaly.HalfSpaceTrees(n_trees=N_TREES, height=HEIGHT, window_size=HST_WINDOW, seed=SEED),
        )
        self.seen = 0
        self.previous: float | None = None
        self.recent_values = np.empty(0)
        self.reference = ScoreReference(CALIBRATION_WINDOW)
        self.recent_beyond: deque[bool] = deque(maxlen=HST_WINDOW)

    def score_and_learn(self, ts: IntArray, values: FloatArray) -> Scores:
        """Score each new point (before learning it), then learn it."""
        values = np.asarray(values, dtype=np.float64)
        n = len(values)
        score = np.zeros(n)
        for i, value in enumerate(values.tolist()):
            x = {"x": value, "dx": 0.0 if self.previous is None else value - self.previous}
            if self.seen + i >= HST_WINDOW:  # the trees' first window only learns
                score[i] = self._calibrated(self.model.score_one(x))
            self.model.learn_one(x)
            self.previous = value

        window = np.concatenate([self.recent_values, values])
        median, sigma = rolling_median_sigma(window, WINDOW, 1)
        median, sigma = median[len(self.recent_values) :], sigma[len(self.recent_values) :]
        sigma = floor_sigma(sigma, median)
        warmup = max(0, min(n, WARMUP - self.seen))
        median[:warmup] = np.nan
        self.seen += n
        self.recent_values = window[-WINDOW:]
        return Scores(score, median, median - SIGMAS * sigma, median + SIGMAS * sigma, warmup)

    def _calibrated(self, raw: float) -> float:
        """The trees' score as a contract score, judged against their earlier scores."""
        ref = self.reference
        if len(ref) < CALIBRATION_MIN:
            ref.add(raw)
            return 0.0
        centre = ref.quantile(0.5)
        edge = centre + max(ref.quantile(EDGE_QUANTILE) - centre, MIN_SPREAD)
        dev = max(0.0, (raw - centre) / (edge - centre))
        beyond = dev >= 1.0
        # An isolated anomaly joins the reference as the edge, so a few of them cannot lift the edge
        # over the next one; once they are common (a new regime) they join as they are.
        common = self.recent_beyond.count(True) > REGIME_SHARE * HST_WINDOW
        ref.add(edge if beyond and not common else raw)
        self.recent_beyond.append(beyond)
        return float(score_from_deviation(np.array([dev]))[0])


class ScoreReference:
    """The last `size` scores, kept sorted for quantiles."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.ordered: list[float] = []
        self.arrivals: deque[float] = deque()

    def __len__(self) -> int:
        return len(self.ordered)

    def add(self, value: float) -> None:
        bisect.insort(self.ordered, value)
        self.arrivals.append(value)
        if len(self.arrivals) > self.size:
            del self.ordered[bisect.bisect_left(self.ordered, self.arrivals.popleft())]

    def quantile(self, q: float) -> float:
        """Linear interpolation between order statistics (numpy's default)."""
        position = q * (len(self.ordered) - 1)
        low = int(position)
        high = min(low + 1, len(self.ordered) - 1)
        return self.ordered[low] + (self.ordered[high] - self.ordered[low]) * (position - low)
