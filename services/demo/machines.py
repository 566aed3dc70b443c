"""Degrading machines for the demo: a few machines whose sensors drift as they wear, that fail and
are replaced, so `make up` has run-to-failure histories to train predictive maintenance on.

Pure generation, no I/O, and like `simulation` a function of (seed, timestamp) alone. Each of the
`MACHINES` slots runs `LIVES_PER_DAY` lives a UTC day, with lengths drawn per (seed, slot, day)
that fill the day exactly; a life is one entity (label ``entity_id`` = ``<machine>-<day>-<life>``,
label ``machine``). Wear w goes from 0 to 1 over a life and damage exp(3w) / e^3 drives the sensors:

- ``machine_vibration`` (mm/s) 2 + 3 x damage, ``machine_temperature`` (C) 60 + 25 x damage,
  ``machine_pressure`` (bar) 5 - 1.5 x damage, each with bounded noise;
- ``machine_failure`` has one point, value 1, at the last step of each life: the failure, which
  TrainMaintenance's ``failure_metric`` reads.
"""

from __future__ import annotations

import numpy as np

from services.demo.simulation import DAY_MS, SeriesBatch, _jitter

MACHINES = ("press-1", "press-2", "lathe-1", "lathe-2")
LIVES_PER_DAY = 5
SENSORS = ("machine_vibration", "machine_temperature", "machine_pressure")
FAILURE_METRIC = "machine_failure"
_STREAM = 2


class DegradingMachines:
    """The machines' series over any window; same interface as `SimulatedPlatform.window`."""

    def __init__(self, seed: int = 7, step_ms: int = 10_000) -> None:
        self.seed = seed
        self.step_ms = step_ms

    def series_keys(self) -> list[tuple[str, dict[str, str]]]:
        """(metric, labels) per machine slot and metric (entity_id changes with each life)."""
        return [(m, {"machine": slot}) for slot in MACHINES for m in (*SENSORS, FAILURE_METRIC)]

    def lives(self, slot: int, day: int) -> np.ndarray:
        """Start times (ms) of the slot's lives on `day` (days since the epoch), plus the day's end."""
        rng = np.random.default_rng([self.seed, _STREAM, slot, day])
        weights = rng.uniform(0.6, 1.4, LIVES_PER_DAY)
        cuts = np.concatenate([[0.0], np.cumsum(weights) / weights.sum()])
        starts = day * DAY_MS + np.round(cuts * DAY_MS / self.step_ms).astype(np.int64) * self.step_ms
        return starts

    def window(self, start_ms: int, end_ms: int) -> list[SeriesBatch]:
        """Every machine's points at the multiples of step_ms in [start_ms, end_ms), one batch per
        (life, metric); the failure batch only for lives that end inside the window."""
        first = -(-start_ms // self.step_ms) * self.step_ms
        if first >= end_ms:
            return []
        ts = np.arange(first, end_ms, self.step_ms, dtype=np.int64)
        batches = []
        for slot, name in enumerate(MACHINES):
            for day in range(int(ts[0] // DAY_MS), int(ts[-1] // DAY_MS) + 1):
                starts = self.lives(slot, day)
                for life in range(LIVES_PER_DAY):
                    begin, end = int(starts[life]), int(starts[life + 1])
                    # The failure is the life's last step; the replacement starts at `end`.
                    mask = (ts >= begin) & (ts < end)
                    if not mask.any():
                        continue
                    t = ts[mask]
                    wear = (t - begin) / max(1, end - self.step_ms - begin)
                    damage = np.exp(3.0 * wear) / np.exp(3.0)
                    key = (self.seed * 1_000_003 + slot * 101 + 7) & 0xFFFFFFFF
                    labels = {"entity_id": f"{name}-{day}-{life + 1}", "machine": name}
                    values = {
                        "machine_vibration": 2.0 + 3.0 * damage + 0.15 * _jitter(key, t),
                        "machine_temperature": 60.0 + 25.0 * damage + 0.8 * _jitter(key + 1, t),
                        "machine_pressure": 5.0 - 1.5 * damage + 0.05 * _jitter(key + 2, t),
                    }
                    batches += [SeriesBatch(m, labels, t, values[m]) for m in SENSORS]
                    last = end - self.step_ms
                    if t[-1] == last:
                        batches.append(SeriesBatch(FAILURE_METRIC, labels, t[-1:], np.ones(1)))
        return batches
