"""The alert store: every alert state transition, kept forever, and each alert's current state.

One file, `<data_dir>/monitoring/alerts.sqlite3`, in WAL mode with synchronous=FULL: transitions are
fsynced before `record` returns, so the history Alertmanager's users keep asking for survives a
crash, and a restart reloads the current states (a firing alert keeps firing, its active_since kept).
The schema carries a version (`PRAGMA user_version`); a file written by a newer version is refused
rather than misread. Methods are synchronous (the engine calls them from a worker thread) and
serialised on one connection.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from libs.sqlite_db import SqliteDb
from services.monitoring.alert_rules import Labels

SCHEMA_VERSION = 1
PENDING, FIRING, RESOLVED, INACTIVE = "pending", "firing", "resolved", "inactive"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS current_alerts (
    rule_id TEXT NOT NULL, labels TEXT NOT NULL, name TEXT NOT NULL, state TEXT NOT NULL,
    severity TEXT NOT NULL, summary TEXT NOT NULL, value REAL NOT NULL, threshold REAL NOT NULL,
    active_since_ms INTEGER NOT NULL, timestamp_ms INTEGER NOT NULL,
    PRIMARY KEY (rule_id, labels)
);
CREATE TABLE IF NOT EXISTS transitions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    rule_id TEXT NOT NULL, labels TEXT NOT NULL, name TEXT NOT NULL, from_state TEXT NOT NULL,
    state TEXT NOT NULL, severity TEXT NOT NULL, summary TEXT NOT NULL, value REAL NOT NULL,
    threshold REAL NOT NULL, active_since_ms INTEGER NOT NULL, timestamp_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS transitions_by_time ON transitions (timestamp_ms);
CREATE INDEX IF NOT EXISTS transitions_by_name ON transitions (name, timestamp_ms);
"""
_COLUMNS = "rule_id, labels, name, state, severity, summary, value, threshold, active_since_ms, timestamp_ms"


@dataclass(frozen=True)
class AlertRecord:
    """One alert (a rule and a label set) in one state."""

    rule_id: str
    name: str
    labels: Labels
    state: str
    severity: str
    summary: str
    value: float
    threshold: float
    active_since_ms: int
    """When the condition became true."""
    timestamp_ms: int
    """When the state last changed."""


@dataclass(frozen=True)
class Transition:
    """A change of an alert's state: the alert after it, and the state before."""

    alert: AlertRecord
    from_state: str
    id: int = 0
    """Assigned by the store."""


def store_path(data_dir: Path) -> Path:
    """Where the monitoring service keeps its alerts."""
    return data_dir / "monitoring" / "alerts.sqlite3"


def _labels_json(labels: Labels) -> str:
    return json.dumps(dict(labels), sort_keys=True, separators=(",", ":"))


def _row_values(a: AlertRecord) -> tuple[object, ...]:
    return (
        a.rule_id,
        _labels_json(a.labels),
        a.name,
        a.state,
        a.severity,
        a.summary,
        a.value,
        a.threshold,
        a.active_since_ms,
        a.timestamp_ms,
    )


def _record(row: sqlite3.Row) -> AlertRecord:
    return AlertRecord(
        rule_id=row["rule_id"],
        name=row["name"],
        labels=tuple(sorted(json.loads(row["labels"]).items())),
        state=row["state"],
        severity=row["severity"],
        summary=row["summary"],
        value=row["value"],
        threshold=row["threshold"],
        active_since_ms=row["active_since_ms"],
        timestamp_ms=row["timestamp_ms"],
    )


class AlertStore:
    """Durable alert history and current states."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.db = SqliteDb(path, _SCHEMA, SCHEMA_VERSION, "alert store")

    def open(self) -> None:
        """Open the database file, creating or upgrading its schema."""
        self.db.open()

    def close(self) -> None:
        """Close the database; the store can be opened again."""
        self.db.close()

    def record(self, transitions: Sequence[Transition]) -> list[Transition]:
        """Append transitions to the history and apply them to the current states in one
        transaction, committed before returning; returns them with their ids."""
        if not transitions:
            return []
        out = []
        with self.db.transaction(write=True) as db:
            for t in transitions:
                a = t.alert
                cursor = db.execute(
                    f"INSERT INTO transitions ({_COLUMNS}, from_state) VALUES ({', '.join('?' * 11)})",
                    (*_row_values(a), t.from_state),
                )
                if a.state == INACTIVE:
                    # A pending alert that never fired leaves the current states (and stays in history).
                    db.execute(
                        "DELETE FROM current_alerts WHERE rule_id = ? AND labels = ?",
                        (a.rule_id, _labels_json(a.labels)),
                    )
                else:
                    db.execute(
                        f"INSERT OR REPLACE INTO current_alerts ({_COLUMNS}) VALUES ({', '.join('?' * 10)})",
                        _row_values(a),
                    )
                out.append(Transition(a, t.from_state, int(cursor.lastrowid)))
        return out

    def current(self) -> list[AlertRecord]:
        """Every alert's current state: pending, firing or resolved."""
        with self.db.transaction() as db:
            rows = db.execute(f"SELECT {_COLUMNS} FROM current_alerts ORDER BY rule_id, labels").fetchall()
        return [_record(row) for row in rows]

    def history(
        self,
        since_ms: int,
        *,
        name: str = "",
        severity: str = "",
        states: Sequence[str] = (),
        limit: int = 100,
    ) -> list[Transition]:
        """Transitions at or after `since_ms`, newest first, filtered by alert name, severity and the
        state they led to."""
        where, params = ["timestamp_ms >= ?"], [since_ms]
        if name:
            where.append("name = ?")
            params.append(name)
        if severity:
            where.append("severity = ?")
            params.append(severity)
        if states:
            where.append(f"state IN ({', '.join('?' * len(states))})")
            params.extend(states)
        sql = (
            f"SELECT id, from_state, {_COLUMNS} FROM transitions WHERE {' AND '.join(where)} "
            "ORDER BY timestamp_ms DESC, id DESC LIMIT ?"
        )
        with self.db.transaction() as db:
            rows = db.execute(sql, (*params, limit)).fetchall()
        return [Transition(_record(row), row["from_state"], row["id"]) for row in rows]
