"""The maintenance store in DATA_DIR: each entity's readings (the seed request appends to them)
and the registered version of each trained model, so a restart loads the same model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from libs.sqlite_db import SqliteDb
from services.ml.maintenance.history import CYCLES, EntityHistory

SCHEMA = """
CREATE TABLE IF NOT EXISTS readings (
    tenant TEXT NOT NULL,
    entity_id TEXT NOT NULL,
    step INTEGER NOT NULL,
    sensors TEXT NOT NULL,
    PRIMARY KEY (tenant, entity_id, step)
);
CREATE TABLE IF NOT EXISTS models (
    tenant TEXT NOT NULL,
    name TEXT NOT NULL,
    version TEXT NOT NULL,
    trained_at_ms INTEGER NOT NULL,
    PRIMARY KEY (tenant, name)
);
"""
VERSION = 1
MAX_READINGS = 5000
"""Readings kept per entity; older ones go (features look back far less)."""


def store_path(data_dir: Path) -> Path:
    """Where the maintenance store lives."""
    return data_dir / "ml" / "maintenance.db"


class MaintenanceStore:
    """Entities' readings and the current version of each model (blocking: call from a thread)."""

    def __init__(self, path: Path) -> None:
        self.db = SqliteDb(path, SCHEMA, VERSION, "maintenance")

    def open(self) -> None:
        """Open (or create) the file."""
        self.db.open()

    def close(self) -> None:
        """Close the file."""
        self.db.close()

    def append(self, tenant: str, entity_id: str, step: int | None, sensors: dict[str, float]) -> int:
        """Store one reading at `step` (default: one after the last); the same step replaces it.
        Returns the step used."""
        with self.db.transaction(write=True) as conn:
            if step is None:
                row = conn.execute(
                    "SELECT MAX(step) FROM readings WHERE tenant = ? AND entity_id = ?", (tenant, entity_id)
                ).fetchone()
                step = (row[0] or 0) + 1
            conn.execute(
                "INSERT OR REPLACE INTO readings (tenant, entity_id, step, sensors) VALUES (?, ?, ?, ?)",
                (tenant, entity_id, step, json.dumps(sensors, sort_keys=True)),
            )
            conn.execute(
                "DELETE FROM readings WHERE tenant = ? AND entity_id = ? AND step <= ("
                " SELECT step FROM readings WHERE tenant = ? AND entity_id = ?"
                " ORDER BY step DESC LIMIT 1 OFFSET ?)",
                (tenant, entity_id, tenant, entity_id, MAX_READINGS),
            )
        return step

    def history(
        self, tenant: str, entity_id: str, sensors: tuple[str, ...], unit: str = CYCLES
    ) -> EntityHistory | None:
        """The entity's readings of `sensors` (readings lacking one are skipped), or None."""
        with self.db.transaction() as conn:
            rows = conn.execute(
                "SELECT step, sensors FROM readings WHERE tenant = ? AND entity_id = ? ORDER BY step",
                (tenant, entity_id),
            ).fetchall()
        steps, values = [], []
        for row in rows:
            reading = json.loads(row["sensors"])
            if all(s in reading for s in sensors):
                steps.append(row["step"])
                values.append([reading[s] for s in sensors])
        if not steps:
            return None
        return EntityHistory(
            entity_id, np.array(steps, dtype=np.int64), sensors, np.array(values, dtype=np.float64), unit
        )

    def set_model(self, tenant: str, name: str, version: str, now_ms: int) -> None:
        """Record `version` as the model `name` answers with."""
        with self.db.transaction(write=True) as conn:
            conn.execute(
                "INSERT OR REPLACE INTO models (tenant, name, version, trained_at_ms) VALUES (?, ?, ?, ?)",
                (tenant, name, version, now_ms),
            )

    def model_version(self, tenant: str, name: str) -> str | None:
        """The version of model `name`, or None before it is trained."""
        with self.db.transaction() as conn:
            row = conn.execute(
                "SELECT version FROM models WHERE tenant = ? AND name = ?", (tenant, name)
            ).fetchone()
        return row["version"] if row else None
