"""The `auto` detector: the default method and the one that scores the live stream.

A robust ensemble, computed point by point by one numba kernel (`auto_kernels.py`, imported at the
first score) over windows counted in points. Each component gives a deviation in band half-widths
(1 on its edge); a point's deviation is the largest, and its score ``1 - 2 ** -(deviation ** 2)``
as in `base.score_from_deviation`.

- **point** (spikes, dips): distance from the expected value in 3 robust sigmas. The series' traits
  on its long window (the last `LONG_WINDOW` = 512 points) choose the model: a *level* model
  (expected = the window's median, sigma from its quartiles) for a stationary series, or a *local*
  model (expected = a robust local-trend forecast from the last `PREDICTOR_SPAN` points plus the
  window's median forecast error, sigma from the quartiles of those errors) for a drifting, smooth
  seasonal or wandering one: whichever band is narrower, i.e. the model that predicts the series
  better. A side of the band whose 2 % tail lies further out than a normal tail would stretches
  with it (a spiky or skewed series keeps its usual tail inside), and sigma is floored by the value
  resolution (the step to the nearest other common value, for flat or discrete series), by 1e-6 of
  |median| and by 1e-12, so a constant series scores 0 and any jump off it scores high.
- **drift** (level shifts, slow ramps): the mean of the last `SHORT_WINDOW` = 24 points against the
  means of the window's earlier stretches of 24, beyond `DRIFT_EDGE` = 4 times their spread (the
  series' own wander at that scale, whatever its autocorrelation, and never below i.i.d. noise's)
  and beyond every level those stretches held at least `SEEN_AFTER` = 128 points earlier (a slow
  ramp's own recent past must not excuse it). A memory leak of 30 units over 3 hours on noise of
  sigma 1.5, sampled every 10 s, crosses the band edge about 55 points (9 minutes) in; its score
  peaks near the default threshold, so at the default it is flagged in most but not all cases.
- **variance**: the mean absolute step between neighbours over the last 24 points against the
  earlier stretches' on a log scale, beyond `VARIANCE_EDGE` = 4 times their spread (at least a
  doubling) or, quieter, `VARIANCE_DOWN_EDGE` = 6 times (at least a fourfold drop: a stuck sensor).

The drift and variance spreads rest on few independent stretches, so their edges are Student t
quantiles for that many: wide while the window fills, about 4.9 spreads once it is full. There is no
seasonal component: 512 points hold two daily cycles only at 6-minute spacing or slower, and the
local model follows smooth cycles; a sharp daily pattern is flagged at its steps.

`expected`, `lower` and `upper` report the point component's band, so a point inside its band may
still score high when the drift or variance component flags it.

Warm-up: the first `WARMUP_POINTS` = 48 points of a series score 0 with a NaN band. NaN and infinite
values score 0 with a NaN band and leave the state as it was.

State (`AutoState`): one float64 array of `STATE_FLOATS` = 1,513 numbers (12,104 bytes; `nbytes`
12,112 with the last timestamp) holding the last `MEMORY_POINTS` = 512 values in order, the same
values sorted and the window's forecast errors sorted. It is a function of the last MEMORY_POINTS
finite values only (counts saturate, nothing decays or accumulates across points, every sum is taken
afresh from the window), so replaying them into a fresh state gives a bit-identical state, and any
chunking of a series gives bit-identical scores. Per point the kernel moves and reads O(window)
numbers and reads quantiles from the sorted windows in O(1).
"""

from __future__ import annotations

import struct

import numpy as np

from services.ml.detectors.base import (
    FloatArray,
    IntArray,
    Scores,
    TooShort,
)

LONG_WINDOW = 512
"""Points of the long window: the reference distribution of values and of forecast errors."""
SHORT_WINDOW = 24
"""Points of the short windows that the drift and variance components compare with the long one."""
BLOCK = 8
"""Points per block of the local forecast: the median of the last block plus a limited slope."""
PREDICTOR_SPAN = 3 * BLOCK
"""Earlier points the local forecast needs."""
MEMORY_POINTS = LONG_WINDOW
"""The state is a function of this many last (finite) points."""
WARMUP_POINTS = 48
"""Points of a new series that score 0: the forecast needs `PREDICTOR_SPAN` points, and its errors
and the window's quantiles as many again before they mean anything."""
MIN_POINTS = WARMUP_POINTS + 1
"""The shortest series `detect` accepts."""

SIGMAS = 3.0
"""The point band edge, in robust sigmas."""
DRIFT_EDGE = 4.0
"""The drift edge, in spreads of the window's stretch means (before the small-sample widening)."""
TRIM = 0.1
SEEN_AFTER = 128
"""A level counts as already held (no drift) only when the window held it at least this many points
before the stretch under test: a slow ramp's own recent past must not excuse it."""
"""Share of the drift's reference stretches, farthest from the median, that its spread leaves out."""
STEP_CLIP = 4.0
"""Steps between neighbours are winsorised at this many sigmas (times sqrt 2) for the variance."""
VARIANCE_EDGE = 4.0
"""The variance edge for a louder stretch, in the window's own spread of such stretches (log scale)."""
VARIANCE_DOWN_EDGE = 6.0
"""The variance edge for a quieter stretch (e.g. a stuck sensor): quiet spells are seldom faults."""
MAX_STRETCH = 2.0
"""The most a heavy tail stretches a side's sigma beyond its 2 % quantile's estimate."""
RELATIVE_FLOOR = 1e-6
"""Sigma is at least this share of |median|: noise this small never alarms."""
ABSOLUTE_FLOOR = 1e-12

# Layout of the state array.
_COUNT = 0
_RING = 1
_SORTED = _RING + LONG_WINDOW
_ERRORS = _SORTED + LONG_WINDOW
_ERRORS_SIZE = LONG_WINDOW - PREDICTOR_SPAN
STATE_FLOATS = _ERRORS + _ERRORS_SIZE
"""Length of the state array."""

_BLOCKS = LONG_WINDOW // BLOCK

_MAGIC = b"AUT1"
_HEADER = struct.Struct("<4sBq")  # magic, has last_ts, last_ts


class AutoState:
    """One series' state: `buf` (float64, `STATE_FLOATS` long; see the module docstring) and the
    last scored timestamp. `nbytes` is 12,112 bytes for every series."""

    __slots__ = ("buf", "last_ts")

    def __init__(self, buf: FloatArray, last_ts: int | None = None) -> None:
        if buf.dtype != np.float64 or buf.shape != (STATE_FLOATS,) or not buf.flags.c_contiguous:
            raise ValueError(f"an auto state is a contiguous float64 array of {STATE_FLOATS} numbers")
        self.buf = buf
        self.last_ts = last_ts

    @classmethod
    def new(cls) -> AutoState:
        """The state of a series that has seen nothing."""
        return cls(np.zeros(STATE_FLOATS))

    @property
    def count(self) -> int:
        """Points held (at most `MEMORY_POINTS`)."""
        return int(self.buf[_COUNT])

    @property
    def nbytes(self) -> int:
        """The state's size in bytes."""
        return self.buf.nbytes + 8

    def to_bytes(self) -> bytes:
        """A checkpoint that `from_bytes` restores exactly."""
        has_ts = self.last_ts is not None
        return _HEADER.pack(_MAGIC, has_ts, self.last_ts if has_ts else 0) + self.buf.tobytes()

    @classmethod
    def from_bytes(cls, data: bytes) -> AutoState:
        """The state that `to_bytes` wrote."""
        if len(data) != _HEADER.size + 8 * STATE_FLOATS:
            raise ValueError(
                f"an auto state checkpoint is {_HEADER.size + 8 * STATE_FLOATS} bytes, got {len(data)}"
            )
        magic, has_ts, last_ts = _HEADER.unpack_from(data)
        if magic != _MAGIC:
            raise ValueError("not an auto state checkpoint")
        buf = np.frombuffer(data, dtype=np.float64, offset=_HEADER.size).copy()
        return cls(buf, last_ts if has_ts else None)


def score_chunk(state: AutoState, ts: IntArray, values: FloatArray) -> Scores:
    """Score the next points of a series and advance `state` over them (in place). `warmup` counts
    this chunk's points that fell in the series' warm-up. Cheap enough to call per point."""
    values = np.ascontiguousarray(values, dtype=np.float64)
    n = len(values)
    if len(ts) != n or values.ndim != 1:
        raise ValueError(
            f"ts and values must be 1-D and of one length; got {np.shape(ts)} and {values.shape}"
        )
    out = np.empty((5, n))
    from services.ml.detectors.auto_kernels import score_kernel  # numba loads at the first score

    warmup = score_kernel(state.buf, values, out)
    if n:
        state.last_ts = int(ts[-1])
    return Scores(out[0], out[1], out[2], out[3], warmup, reasons=out[4].astype(np.int8))


def detect(ts: IntArray, values: FloatArray) -> Scores:
    """Score a whole series from a fresh state (stored or inline series)."""
    if len(values) < MIN_POINTS:
        raise TooShort("auto", MIN_POINTS, len(values))
    return score_chunk(AutoState.new(), ts, values)
