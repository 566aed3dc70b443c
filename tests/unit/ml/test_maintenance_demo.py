"""The demo's degrading machines: deterministic, each life ends in one failure point, sensors drift
with wear, and their histories train a useful model."""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from services.demo.machines import FAILURE_METRIC, SENSORS, DegradingMachines
from services.demo.simulation import DAY_MS
from services.ml.maintenance import model as rul
from services.ml.maintenance.history import SECONDS, EntityHistory

STEP = 60_000
START = 20_000 * DAY_MS


def _by_entity(batches):
    out = defaultdict(dict)
    for b in batches:
        out[b.labels["entity_id"]][b.name] = b
    return out


def test_windows_are_deterministic_and_split_freely() -> None:
    machines = DegradingMachines(seed=7, step_ms=STEP)
    whole = _by_entity(machines.window(START, START + DAY_MS))
    halves = machines.window(START, START + DAY_MS // 3) + machines.window(
        START + DAY_MS // 3, START + DAY_MS
    )
    for entity, metrics in whole.items():
        for name, batch in metrics.items():
            parts = [b for b in halves if b.labels["entity_id"] == entity and b.name == name]
            assert np.array_equal(np.concatenate([p.values for p in parts]), batch.values)


def test_every_life_fails_once_at_its_end_and_wears_out() -> None:
    lives = _by_entity(DegradingMachines(seed=7, step_ms=STEP).window(START, START + DAY_MS))
    assert len(lives) == 4 * 5
    for metrics in lives.values():
        failure = metrics[FAILURE_METRIC]
        vibration = metrics["machine_vibration"]
        assert failure.timestamps_ms.tolist() == [vibration.timestamps_ms[-1]]
        assert vibration.values[-10:].mean() > vibration.values[:10].mean() + 2.0


def test_their_histories_train_a_model_that_reads_wear() -> None:
    lives = _by_entity(DegradingMachines(seed=7, step_ms=STEP).window(START, START + 2 * DAY_MS))
    histories = [
        EntityHistory(
            entity,
            m["machine_vibration"].timestamps_ms,
            SENSORS,
            np.column_stack([m[s].values for s in SENSORS]),
            SECONDS,
            int(m[FAILURE_METRIC].timestamps_ms[0]),
        )
        for entity, m in lives.items()
    ]
    fitted = rul.fit(histories)
    assert set(fitted.sensors) == set(SENSORS)
    # Constant predictions would score about cap / 3; wear is readable to a small share of the cap.
    assert fitted.cv_rmse < 0.15 * fitted.cap
