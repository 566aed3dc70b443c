"""The detector registry: which methods exist, how many points each needs, and the two entry points
the service calls, `detect` (one series) and `detect_entity` (one entity's aligned series).

Every method is causal (the score of point i depends only on points 0..i), so scoring a stored
history gives what a live stream would have said. The methods that fit a model refit it on the
same fixed schedule of prefix lengths (`refit_points`), never on a share of the whole series:
a share would move with the series' length and let later points change earlier scores.

Importing this module is cheap: each method's module, and the libraries behind it (pandas,
statsmodels, pyod, river, prophet), is imported when the method is first used.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator

import numpy as np

from services.ml.detectors.base import FloatArray, IntArray, Scores, TooShort

METHODS = ("auto", "zscore", "mad", "seasonal", "isolation_forest", "holt_winters", "prophet", "online")

FIRST_FIT = 100
"""Points the model-fitting methods (isolation_forest, holt_winters, prophet) see before their first
fit; the points before it are their warm-up."""
REFIT_EVERY = 1000
"""Once the fitted prefix has doubled up to this size, the models are refitted every this many points."""

MIN_POINTS: dict[str, int] = {
    "auto": 49,  # auto.MIN_POINTS (its 48-point warm-up + 1), which auto.detect checks too
    "zscore": 30,
    "mad": 30,
    "seasonal": 30,
    "isolation_forest": FIRST_FIT + 20,
    "holt_winters": FIRST_FIT + 20,
    "prophet": FIRST_FIT + 20,
    "online": 400,
}
"""The least number of points each method accepts; a shorter series raises `TooShort`."""

_MODULES = {
    "zscore": ("rolling", "zscore"),
    "mad": ("rolling", "mad"),
    "seasonal": ("seasonal", "detect"),
    "isolation_forest": ("iforest", "detect"),
    "holt_winters": ("holtwinters", "detect"),
    "prophet": ("prophet_detector", "detect"),
    "online": ("online", "detect"),
    "auto": ("auto", "detect"),
}


def refit_points(n: int, first: int = FIRST_FIT, every: int = REFIT_EVERY) -> list[int]:
    """The prefix lengths at which a model-fitting method (re)fits, below `n`: `first`, doubling
    until `every`, then every `every` points. The model fitted on points [0, p) scores the points
    from p to the next refit, so the schedule depends on the position only, not on `n`."""
    return list(_refit_points(n, first, every))


def segments(n: int, first: int = FIRST_FIT, every: int = REFIT_EVERY) -> list[tuple[int, int]]:
    """The [start, stop) ranges of `n` points that one fitted model scores (see `refit_points`)."""
    starts = refit_points(n, first, every)
    return list(zip(starts, [*starts[1:], n] if starts else [], strict=True))


def _refit_points(n: int, first: int, every: int) -> Iterator[int]:
    point = first
    while point < n:
        yield point
        point = min(2 * point, point + every) if point < every else point + every


def detect(method: str, ts: IntArray, values: FloatArray) -> Scores:
    """Score one series (`ts` epoch ms ascending, possibly irregular) with `method`, causally."""
    # auto scores NaN and infinite values 0 itself; the other methods need finite values.
    ts, values = _checked_series(ts, values, finite=method != "auto")
    _check_length(method, len(values))
    module, name = _MODULES[method]
    function = getattr(importlib.import_module(f"services.ml.detectors.{module}"), name)
    return function(ts, values)


def detect_entity(method: str, ts: IntArray, matrix: FloatArray, names: list[str]) -> Scores:
    """Score one entity's k aligned series (`matrix` of shape (n, k), one column per name).

    isolation_forest scores the rows as vectors; every other method scores each column alone and
    a row's score is its highest column score. `contributions` holds each column's share.
    """
    matrix = np.asarray(matrix, dtype=np.float64)
    if matrix.ndim != 2 or matrix.shape[1] != len(names) or matrix.shape[1] == 0:
        raise ValueError(f"matrix must have shape (n, {len(names)}), one column per name; got {matrix.shape}")
    ts, _ = _checked_series(ts, matrix[:, 0], finite=False)
    if not np.isfinite(matrix).all():
        raise ValueError("matrix holds NaN or infinite values")
    _check_length(method, len(ts))
    if method == "isolation_forest":
        from services.ml.detectors import iforest

        return iforest.detect_matrix(matrix)
    columns = [detect(method, ts, matrix[:, j]) for j in range(matrix.shape[1])]
    per_column = np.column_stack([c.score for c in columns])
    total = per_column.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        contributions = np.where(total > 0, per_column / total, 0.0)
    return Scores(
        score=per_column.max(axis=1),
        expected=np.column_stack([c.expected for c in columns]),
        lower=np.column_stack([c.lower for c in columns]),
        upper=np.column_stack([c.upper for c in columns]),
        warmup=min(c.warmup for c in columns),
        contributions=contributions,
    )


def _checked_series(ts: IntArray, values: FloatArray, finite: bool = True) -> tuple[IntArray, FloatArray]:
    ts = np.asarray(ts, dtype=np.int64)
    values = np.asarray(values, dtype=np.float64)
    if ts.ndim != 1 or ts.shape != values.shape:
        raise ValueError(f"ts and values must be 1-D and of one length; got {ts.shape} and {values.shape}")
    if len(ts) > 1 and (np.diff(ts) < 0).any():
        raise ValueError("ts must be ascending")
    if finite and not np.isfinite(values).all():
        raise ValueError("values hold NaN or infinite values")
    return ts, values


def _check_length(method: str, n: int) -> None:
    if method not in METHODS:
        raise ValueError(f"{method!r} is not a method; use one of {', '.join(METHODS)}")
    if n < MIN_POINTS[method]:
        raise TooShort(method, MIN_POINTS[method], n)
