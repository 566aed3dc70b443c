"""Synthetic run-to-failure units for the maintenance tests: two sensors drift as wear grows
(one up, one down), one is constant and one is noise unrelated to wear."""

from __future__ import annotations

import numpy as np

from services.ml.maintenance.history import CYCLES, EntityHistory

SENSORS = ("constant", "noise", "pressure", "temperature")


def unit(i: int, rng: np.random.Generator, life: int | None = None) -> EntityHistory:
    """One unit that fails at its last cycle; wear grows exponentially towards the end."""
    life = life or int(rng.integers(100, 200))
    cycles = np.arange(1, life + 1)
    wear = np.exp(4.0 * cycles / life) / np.exp(4.0)  # ~0 when new, 1 at failure
    values = np.column_stack(
        [
            np.full(life, 7.0),
            rng.normal(0, 1, life),
            10.0 - 4.0 * wear + rng.normal(0, 0.15, life),
            50.0 + 8.0 * wear + rng.normal(0, 0.3, life),
        ]
    )
    return EntityHistory(f"unit-{i}", cycles.astype(np.int64), SENSORS, values, CYCLES, int(life))


def units(n: int, seed: int) -> list[EntityHistory]:
    """`n` synthetic units."""
    rng = np.random.default_rng(seed)
    return [unit(i, rng) for i in range(n)]
