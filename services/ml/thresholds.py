"""Per-series thresholds from feedback.

Rule: a series whose anomalies were marked false positive more often than true positive gets a
stricter threshold: with n = false positives - true positives (when above 0), the distance from
the threshold to 1 shrinks by a factor 0.7 per n: ``1 - (1 - threshold) * 0.7 ** n``. At the
default sensitivity (threshold 0.69) one net false positive raises it to 0.78, two to 0.85,
three to 0.89. True positives earn the strictness back; no feedback changes nothing.
"""

from __future__ import annotations

from services.ml.detectors.base import threshold_for

FALSE_POSITIVE_FACTOR = 0.7


def series_threshold(sensitivity: float, true_positive: int, false_positive: int) -> float:
    """The threshold a series gets at `sensitivity` after its feedback."""
    net = max(0, false_positive - true_positive)
    return 1.0 - (1.0 - threshold_for(sensitivity)) * FALSE_POSITIVE_FACTOR**net
