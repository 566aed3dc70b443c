"""The numba kernels of the `auto` detector; `auto.py` holds the model's description, its
parameters and the state's layout. A module of their own so that numba, LLVM and SciPy (about
130 MB resident and a second to import) load at a process's first score, not with the ml service:
a process that never scores (ANOMALY_STREAM=0 and no detection asked) does without them."""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from services.ml.detectors.auto import (
    _BLOCKS,
    _COUNT,
    _ERRORS,
    _ERRORS_SIZE,
    _RING,
    _SORTED,
    ABSOLUTE_FLOOR,
    BLOCK,
    DRIFT_EDGE,
    LONG_WINDOW,
    MAX_STRETCH,
    PREDICTOR_SPAN,
    RELATIVE_FLOOR,
    SEEN_AFTER,
    SHORT_WINDOW,
    SIGMAS,
    STEP_CLIP,
    TRIM,
    VARIANCE_DOWN_EDGE,
    VARIANCE_EDGE,
    WARMUP_POINTS,
)
from services.ml.detectors.base import REASON_LEVEL_SHIFT, REASON_VALUE, REASON_VARIANCE, FloatArray


@njit(cache=True, nogil=True)
def score_kernel(buf: FloatArray, values: FloatArray, out: FloatArray) -> int:
    scratch = np.empty(3 * _BLOCKS)
    warmup = 0
    for i in range(values.shape[0]):
        x = values[i]
        if not math.isfinite(x):
            out[0, i] = out[4, i] = 0.0
            out[1, i] = out[2, i] = out[3, i] = np.nan
            if buf[_COUNT] < WARMUP_POINTS:
                warmup += 1
            continue
        if not _step(buf, x + 0.0, out, i, scratch):  # + 0.0 turns -0.0 into 0.0
            warmup += 1
    return warmup


@njit(cache=True, nogil=True)
def _step(buf: FloatArray, x: float, out: FloatArray, i: int, scratch: FloatArray) -> bool:
    """Score `x` against the state, then add it; False while in warm-up."""
    n = int(buf[_COUNT])
    ring = buf[_RING : _RING + LONG_WINDOW]
    ordered = buf[_SORTED : _SORTED + LONG_WINDOW]
    errors = buf[_ERRORS : _ERRORS + _ERRORS_SIZE]

    forecast = 0.0
    error = 0.0
    n_errors = max(0, n - PREDICTOR_SPAN)
    if n >= PREDICTOR_SPAN:
        forecast = _forecast(ring, n)
        error = (x - forecast) + 0.0

    scored = n >= WARMUP_POINTS
    if scored:
        _score_point(ring, ordered, errors, n, x, forecast, out, i, scratch)
    else:
        out[0, i] = out[4, i] = 0.0
        out[1, i] = out[2, i] = out[3, i] = np.nan

    if n < LONG_WINDOW:
        ring[n] = x
        _insert_sorted(ordered, n, x)
        if n >= PREDICTOR_SPAN:
            _insert_sorted(errors, n_errors, error)
        buf[_COUNT] = n + 1
    else:
        # The oldest value leaves, and with it the error of the first point it helped forecast.
        old_error = (ring[PREDICTOR_SPAN] - _forecast(ring, PREDICTOR_SPAN)) + 0.0
        _replace_sorted(errors, _ERRORS_SIZE, old_error, error)
        _replace_sorted(ordered, LONG_WINDOW, ring[0], x)
        _shift_in(ring, LONG_WINDOW, x)
    return scored


@njit(cache=True, nogil=True)
def _score_point(
    ring: FloatArray,
    ordered: FloatArray,
    errors: FloatArray,
    n: int,
    x: float,
    forecast: float,
    out: FloatArray,
    i: int,
    scratch: FloatArray,
) -> None:
    n_errors = n - PREDICTOR_SPAN
    median = _quantile(ordered, n, 0.5)
    floor = max(ABSOLUTE_FLOOR, RELATIVE_FLOOR * abs(median), _resolution(ordered, n))
    level_sigma, level_lo, level_hi = _sigmas(ordered, n, median, floor)
    bias = _quantile(errors, n_errors, 0.5)
    error_sigma, error_lo, error_hi = _sigmas(errors, n_errors, bias, floor)

    # Point: the model with the narrower band.
    if level_sigma <= error_sigma:
        expected, lower, upper = median, median - SIGMAS * level_lo, median + SIGMAS * level_hi
    else:
        expected = forecast + bias
        lower, upper = expected - SIGMAS * error_lo, expected + SIGMAS * error_hi
    dev = (x - expected) / (upper - expected) if x >= expected else (expected - x) / (expected - lower)
    reason = REASON_VALUE

    # Drift and variance compare the last SHORT_WINDOW points with earlier stretches of as many
    # points in the window, in the spread of those stretches: the series' own wander and unrest at
    # that scale, whatever its autocorrelation. That spread rests on few independent stretches, so
    # its edges are Student t quantiles (first-order Cornish-Fisher) for that many.
    dof = max((n - SHORT_WINDOW) / SHORT_WINDOW - 1.0, 0.25)

    clip = 4.0 * level_sigma
    step_clip = STEP_CLIP * math.sqrt(2.0) * min(level_sigma, error_sigma)
    levels = scratch[:_BLOCKS]
    steps = scratch[_BLOCKS : 2 * _BLOCKS]
    _block_sums(ring, n, median, clip, step_clip, levels, steps)
    per = SHORT_WINDOW // BLOCK

    # Drift: mean level (values winsorised, so a spike moves a mean little), no less than i.i.d.
    # noise's; a level the window has already held (a wandering or multi-modal series) is no drift.
    wander, highest, lowest = _level_spread(levels, n // BLOCK, scratch[2 * _BLOCKS :])
    if n // BLOCK >= 2 * per:  # an earlier stretch to compare with
        recent = _clipped(x - median, clip) - _clipped(ring[n - SHORT_WINDOW] - median, clip)
        for j in range(per):
            recent += levels[j]
        recent /= SHORT_WINDOW
        iid_error = level_sigma / math.sqrt(SHORT_WINDOW)
        seen = max(highest, 0.0) if recent >= 0.0 else max(-lowest, 0.0)
        edge = max(DRIFT_EDGE * iid_error, _t_edge(DRIFT_EDGE, dof) * wander, seen + max(wander, iid_error))
        if abs(recent) / edge > dev:
            dev = abs(recent) / edge
            reason = REASON_LEVEL_SHIFT

    # Variance: mean absolute step between neighbours (winsorised, so one spike or one level shift
    # barely moves it), on a log scale: at least a doubling, or a fourfold drop, of the usual.
    usual_steps, steps_sigma, stretches = _step_spread(steps, (n - 1) // BLOCK, scratch[2 * _BLOCKS :])
    if stretches > 0:
        recent_steps = min(abs(x - ring[n - 1]), step_clip) - min(
            abs(ring[n - SHORT_WINDOW] - ring[n - SHORT_WINDOW - 1]), step_clip
        )
        for j in range(per):
            recent_steps += steps[j]
        recent_steps /= SHORT_WINDOW
        # Floors: against a flat window one spike (two full steps in a stretch) is no unrest, and a
        # still stretch counts as a quarter of one full step.
        calm = 2.0 * step_clip / SHORT_WINDOW
        quiet = step_clip / (4.0 * SHORT_WINDOW)
        relative = steps_sigma / max(usual_steps, quiet)
        if recent_steps >= usual_steps:
            change = math.log(max(recent_steps, calm) / max(usual_steps, calm))
            edge = max(math.log(2.0), _t_edge(VARIANCE_EDGE, dof) * relative)
        else:
            change = math.log(max(usual_steps, quiet) / max(recent_steps, quiet))
            edge = max(math.log(4.0), _t_edge(VARIANCE_DOWN_EDGE, dof) * relative)
        if abs(change) / edge > dev:
            dev = abs(change) / edge
            reason = REASON_VARIANCE

    dev = min(dev, 1e3) if dev == dev else 0.0  # NaN (only from overflowing values): 0, as in base
    out[0, i] = 1.0 - 2.0 ** (-(dev * dev))
    out[4, i] = reason
    out[1, i] = expected
    out[2, i] = lower
    out[3, i] = upper


@njit(cache=True, nogil=True)
def _t_edge(z: float, dof: float) -> float:
    """The Student t quantile for the normal quantile z (Cornish-Fisher, first order)."""
    return z * (1.0 + (z * z + 1.0) / (4.0 * dof))


@njit(cache=True, nogil=True)
def _sigmas(ordered: FloatArray, n: int, median: float, floor: float) -> tuple[float, float, float]:
    """Robust sigma of a sorted window (quartiles; 5-95 % range if they coincide) and of each side,
    all at least `floor`. A side's sigma is read at its 2 % quantile and, where that lies further out
    than the quartile predicts for a normal tail, stretched by the same factor (at most MAX_STRETCH):
    a heavy tail gets a band that holds about as many of its points as 3 sigma of a normal one."""
    q25 = _quantile(ordered, n, 0.25)
    q75 = _quantile(ordered, n, 0.75)
    sigma = (q75 - q25) / 1.349
    if sigma <= 0.0:
        sigma = (_quantile(ordered, n, 0.95) - _quantile(ordered, n, 0.05)) / 3.29
    sigma = max(sigma, floor)
    lo = _side_sigma((median - q25) / 0.6745, (median - _quantile(ordered, n, 0.02)) / 2.054, floor)
    hi = _side_sigma((q75 - median) / 0.6745, (_quantile(ordered, n, 0.98) - median) / 2.054, floor)
    return sigma, lo, hi


@njit(cache=True, nogil=True)
def _side_sigma(quartile: float, tail: float, floor: float) -> float:
    quartile = max(quartile, floor)
    tail = max(tail, floor)
    if tail <= quartile:
        return quartile
    return tail * min(tail / quartile, MAX_STRETCH)


@njit(cache=True, nogil=True)
def _resolution(ordered: FloatArray, n: int) -> float:
    """The step from the median to the nearest other value within the 2-98 % range: the resolution
    of a discrete or quantised series, negligible for a continuous one; 0 if there is none."""
    mid = ordered[(n - 1) // 2]
    step = math.inf
    above = _search(ordered, n, mid, True)
    if above < n and ordered[above] <= _quantile(ordered, n, 0.98):
        step = ordered[above] - mid
    below = _search(ordered, n, mid, False) - 1
    if below >= 0 and ordered[below] >= _quantile(ordered, n, 0.02):
        step = min(step, mid - ordered[below])
    return step if step < math.inf else 0.0


@njit(cache=True, nogil=True)
def _block_sums(
    ring: FloatArray,
    n: int,
    center: float,
    clip: float,
    step_clip: float,
    levels: FloatArray,
    steps: FloatArray,
) -> None:
    """Per BLOCK of ring[:n], newest first: the sum of the values minus `center` winsorised at
    +- clip into `levels`, and the sum of |step| from the value before winsorised at step_clip into
    `steps` (blocks with a value before them only). Summed pairwise for a short dependency chain
    (BLOCK is 8, written out)."""
    for j in range(n // BLOCK):
        b = n - BLOCK * (j + 1)
        c0 = _clipped(ring[b] - center, clip)
        c1 = _clipped(ring[b + 1] - center, clip)
        c2 = _clipped(ring[b + 2] - center, clip)
        c3 = _clipped(ring[b + 3] - center, clip)
        c4 = _clipped(ring[b + 4] - center, clip)
        c5 = _clipped(ring[b + 5] - center, clip)
        c6 = _clipped(ring[b + 6] - center, clip)
        c7 = _clipped(ring[b + 7] - center, clip)
        levels[j] = ((c0 + c1) + (c2 + c3)) + ((c4 + c5) + (c6 + c7))
        if b > 0:
            d0 = min(abs(ring[b] - ring[b - 1]), step_clip)
            d1 = min(abs(ring[b + 1] - ring[b]), step_clip)
            d2 = min(abs(ring[b + 2] - ring[b + 1]), step_clip)
            d3 = min(abs(ring[b + 3] - ring[b + 2]), step_clip)
            d4 = min(abs(ring[b + 4] - ring[b + 3]), step_clip)
            d5 = min(abs(ring[b + 5] - ring[b + 4]), step_clip)
            d6 = min(abs(ring[b + 6] - ring[b + 5]), step_clip)
            d7 = min(abs(ring[b + 7] - ring[b + 6]), step_clip)
            steps[j] = ((d0 + d1) + (d2 + d3)) + ((d4 + d5) + (d6 + d7))


@njit(cache=True, nogil=True)
def _level_spread(sums: FloatArray, blocks: int, far: FloatArray) -> tuple[float, float, float]:
    """The drift's reference, from the level block sums: the means of SHORT_WINDOW consecutive
    values taken every BLOCK points back from the last SHORT_WINDOW points (left out: the reference
    must not hold the stretch under test). Returns their sigma from the mean absolute deviation about
    0, leaving out the `TRIM` share farthest out (the onset of a slow ramp must not widen its own
    reference), and their highest and lowest; zeros if there are none. `far` is scratch."""
    per = SHORT_WINDOW // BLOCK
    stretches = blocks - 2 * per + 1
    if stretches < 1:
        return 0.0, 0.0, 0.0
    trim = int(TRIM * stretches)
    far[: trim + 1] = -math.inf  # the trim + 1 largest |mean|, in descending order
    highest = -math.inf
    lowest = math.inf
    spread = 0.0
    for j in range(per, blocks - per + 1):
        total = 0.0
        for k in range(j, j + per):
            total += sums[k]
        mean = total / SHORT_WINDOW
        spread += abs(mean)
        _keep_largest(far, trim + 1, abs(mean))
        if j >= per + SEEN_AFTER // BLOCK:  # a level held a while ago, not the ramp just before
            highest = max(highest, mean)
            lowest = min(lowest, mean)
    for k in range(trim):
        spread -= far[k]
    return math.sqrt(0.5 * math.pi) * spread / (stretches - trim), highest, lowest


@njit(cache=True, nogil=True)
def _keep_largest(top: FloatArray, size: int, v: float) -> None:
    """Insert v into top[:size] (descending) if it is among its largest, dropping the last."""
    j = size - 1
    if v <= top[j]:
        return
    while j > 0 and top[j - 1] < v:
        top[j] = top[j - 1]
        j -= 1
    top[j] = v


@njit(cache=True, nogil=True)
def _step_spread(sums: FloatArray, blocks: int, means: FloatArray) -> tuple[float, float, int]:
    """The variance's reference, from the step block sums of the `blocks` newest blocks: the mean and
    sigma (from the mean absolute deviation) of the mean |step| over SHORT_WINDOW points, taken every
    BLOCK points back from the last SHORT_WINDOW points, and how many such stretches there are.
    `means` is scratch."""
    per = SHORT_WINDOW // BLOCK
    stretches = blocks - 2 * per + 1
    if stretches < 1:
        return 0.0, 0.0, 0
    usual = 0.0
    for j in range(stretches):
        total = 0.0
        for k in range(per + j, 2 * per + j):
            total += sums[k]
        means[j] = total / SHORT_WINDOW
        usual += means[j]
    usual /= stretches
    spread = 0.0
    for j in range(stretches):
        spread += abs(means[j] - usual)
    return usual, math.sqrt(0.5 * math.pi) * spread / stretches, stretches


@njit(cache=True, nogil=True)
def _clipped(v: float, clip: float) -> float:
    return min(max(v, -clip), clip)


@njit(cache=True, nogil=True)
def _forecast(ring: FloatArray, end: int) -> float:
    """Forecast of ring[end] from ring[end - PREDICTOR_SPAN:end]: the last block's median, moved
    on by the smaller of the last two block-to-block slopes (none if they disagree in sign), so a
    single outlier or a step does not make the forecast overshoot."""
    m0 = _median8(ring, end - 3 * BLOCK)
    m1 = _median8(ring, end - 2 * BLOCK)
    m2 = _median8(ring, end - BLOCK)
    d1 = m1 - m0
    d2 = m2 - m1
    if d1 * d2 <= 0.0:
        return m2
    slope = min(abs(d1), abs(d2)) / BLOCK
    return m2 + math.copysign(slope, d2) * (0.5 * (BLOCK + 1))


@njit(cache=True, nogil=True)
def _median8(a: FloatArray, start: int) -> float:
    """Median of a[start:start + 8] by an 8-input sorting network (19 branch-free exchanges)."""
    v0, v1, v2, v3 = a[start], a[start + 1], a[start + 2], a[start + 3]
    v4, v5, v6, v7 = a[start + 4], a[start + 5], a[start + 6], a[start + 7]
    v0, v2 = min(v0, v2), max(v0, v2)
    v1, v3 = min(v1, v3), max(v1, v3)
    v4, v6 = min(v4, v6), max(v4, v6)
    v5, v7 = min(v5, v7), max(v5, v7)
    v0, v4 = min(v0, v4), max(v0, v4)
    v1, v5 = min(v1, v5), max(v1, v5)
    v2, v6 = min(v2, v6), max(v2, v6)
    v3, v7 = min(v3, v7), max(v3, v7)
    v0, v1 = min(v0, v1), max(v0, v1)
    v2, v3 = min(v2, v3), max(v2, v3)
    v4, v5 = min(v4, v5), max(v4, v5)
    v6, v7 = min(v6, v7), max(v6, v7)
    v2, v4 = min(v2, v4), max(v2, v4)
    v3, v5 = min(v3, v5), max(v3, v5)
    v1, v4 = min(v1, v4), max(v1, v4)
    v3, v6 = min(v3, v6), max(v3, v6)
    v1, v2 = min(v1, v2), max(v1, v2)
    v3, v4 = min(v3, v4), max(v3, v4)
    v5, v6 = min(v5, v6), max(v5, v6)
    return 0.5 * (v3 + v4)


@njit(cache=True, nogil=True)
def _shift_in(a: FloatArray, n: int, v: float) -> None:
    """Drop a[0], move a[1:n] down one place and put v last (a loop: a slice copy would allocate)."""
    for k in range(n - 1):
        a[k] = a[k + 1]
    a[n - 1] = v


@njit(cache=True, nogil=True)
def _search(a: FloatArray, n: int, v: float, after: bool) -> int:
    """The first index of the sorted a[:n] holding a value > v (after) or >= v (not after)."""
    lo, hi = 0, n
    while lo < hi:
        mid = (lo + hi) // 2
        if a[mid] < v or (after and a[mid] == v):
            lo = mid + 1
        else:
            hi = mid
    return lo


@njit(cache=True, nogil=True)
def _quantile(ordered: FloatArray, n: int, p: float) -> float:
    pos = p * (n - 1)
    k = int(pos)
    if k + 1 >= n:
        return ordered[n - 1]
    return ordered[k] + (pos - k) * (ordered[k + 1] - ordered[k])


@njit(cache=True, nogil=True)
def _insert_sorted(a: FloatArray, n: int, v: float) -> None:
    """Insert v into the sorted a[:n] (a has room for n + 1)."""
    j = n
    while j > 0 and a[j - 1] > v:
        a[j] = a[j - 1]
        j -= 1
    a[j] = v


@njit(cache=True, nogil=True)
def _replace_sorted(a: FloatArray, n: int, old: float, new: float) -> None:
    """Remove one `old` from the sorted a[:n] and insert `new`, keeping it sorted."""
    j = _search(a, n, old, False)
    if new >= old:
        while j + 1 < n and a[j + 1] < new:
            a[j] = a[j + 1]
            j += 1
    else:
        while j > 0 and a[j - 1] > new:
            a[j] = a[j - 1]
            j -= 1
    a[j] = new
