"""One entity's readings as arrays: the shape every maintenance step (training, features,
prediction) works on, and the parser of NASA C-MAPSS files."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from services.ml.detectors.base import FloatArray, IntArray

CYCLES = "cycles"
SECONDS = "seconds"


@dataclass(frozen=True)
class EntityHistory:
    """An entity's readings, oldest first: `steps` are cycles (unit "cycles") or Unix ms (unit
    "seconds"); `values[i, j]` is sensor `sensors[j]` at step i; `failure_at` is the step of its
    failure (training histories) or None (histories to predict from)."""

    entity_id: str
    steps: IntArray
    sensors: tuple[str, ...]
    values: FloatArray
    unit: str = CYCLES
    failure_at: int | None = None

    def columns(self, sensors: tuple[str, ...]) -> FloatArray:
        """The values of `sensors`, in that order (every one must be present)."""
        index = {name: j for j, name in enumerate(self.sensors)}
        return self.values[:, [index[s] for s in sensors]]

    def remaining(self) -> FloatArray:
        """Remaining useful life at every step, in the history's unit (training histories)."""
        if self.failure_at is None:
            raise ValueError(f"{self.entity_id} has no failure")
        left = (self.failure_at - self.steps).astype(np.float64)
        return left / 1000.0 if self.unit == SECONDS else left

    def ages(self) -> FloatArray:
        """Time since the first reading at every step, in the history's unit."""
        age = (self.steps - self.steps[0]).astype(np.float64)
        return age / 1000.0 if self.unit == SECONDS else age

    def truncated(self, n: int) -> EntityHistory:
        """The first `n` readings, without a failure: what was known at that point."""
        return EntityHistory(self.entity_id, self.steps[:n], self.sensors, self.values[:n], self.unit)


CMAPSS_SENSORS = tuple([f"setting_{i}" for i in range(1, 4)] + [f"sensor_{i}" for i in range(1, 22)])


def read_cmapss(path: Path) -> list[EntityHistory]:
    """A C-MAPSS file (unit, cycle, 3 settings, 21 sensors per row), one history per unit; in a
    training file every unit runs to failure at its last cycle."""
    data = np.loadtxt(path)
    out = []
    for unit in np.unique(data[:, 0]).astype(int):
        rows = data[data[:, 0] == unit]
        steps = rows[:, 1].astype(np.int64)
        out.append(EntityHistory(f"unit-{unit}", steps, CMAPSS_SENSORS, rows[:, 2:], CYCLES, int(steps[-1])))
    return out
