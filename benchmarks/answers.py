"""Normalised query answers and how two answers differ, to check that systems agree."""

from __future__ import annotations

import math
from dataclasses import dataclass

# A metrics-API answer: (metric, group value) -> {bucket start ms: value}.
SeriesAnswer = dict[tuple[str, str], dict[int, float]]
# A SQL answer: rows of plain Python values.
RowsAnswer = list[tuple[object, ...]]
Answer = SeriesAnswer | RowsAnswer


@dataclass(frozen=True)
class Diff:
    """How far apart two answers are."""

    compared: int  # values compared
    max_abs_diff: float
    only_left: int  # cells (series buckets or rows) only the first answer has
    only_right: int

    @property
    def agree(self) -> bool:
        """Same cells, values within 1e-9 (aggregation order changes the last bits of an avg)."""
        return self.only_left == 0 and self.only_right == 0 and self.max_abs_diff <= 1e-9


def _num(v: object) -> float | None:
    if isinstance(v, bool) or v is None:
        return None
    if isinstance(v, int | float):
        return float(v)
    return None


def diff(left: Answer, right: Answer) -> Diff:
    """Compare two answers of the same kind cell by cell."""
    if isinstance(left, dict) and isinstance(right, dict):
        compared, worst, only_l, only_r = 0, 0.0, 0, 0
        for key in left.keys() | right.keys():
            a, b = left.get(key, {}), right.get(key, {})
            only_l += len(a.keys() - b.keys())
            only_r += len(b.keys() - a.keys())
            for ts in a.keys() & b.keys():
                compared += 1
                worst = max(worst, _abs_diff(a[ts], b[ts]))
        return Diff(compared, worst, only_l, only_r)
    if isinstance(left, list) and isinstance(right, list):
        compared, worst = 0, 0.0
        for ra, rb in zip(left, right, strict=False):
            for va, vb in zip(ra, rb, strict=False):
                na, nb = _num(va), _num(vb)
                if na is not None and nb is not None:
                    compared += 1
                    worst = max(worst, _abs_diff(na, nb))
                elif va != vb:
                    worst = math.inf
        return Diff(compared, worst, max(0, len(left) - len(right)), max(0, len(right) - len(left)))
    raise TypeError("answers of different kinds")


def _abs_diff(a: float, b: float) -> float:
    if math.isnan(a) and math.isnan(b):
        return 0.0
    return abs(a - b)
