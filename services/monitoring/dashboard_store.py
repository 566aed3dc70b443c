"""The dashboard store: users' dashboards in SQLite, `<data_dir>/monitoring/dashboards.sqlite3`.

WAL mode with synchronous=FULL, so a created or updated dashboard is on disk before the call
returns; several processes (monitoring replicas) may share the file and wait for each other's
writes (busy_timeout). The schema version is SQLite's `user_version`: a file written by a newer
version of the service is refused rather than misread. A dashboard's config is kept as the JSON of
its DashboardConfig message (proto field names), so new config fields need no migration.
"""

from __future__ import annotations

import sqlite3
import uuid
from pathlib import Path

from google.protobuf import json_format

from libs.sqlite_db import SqliteDb
from platformq.analytics.v1 import monitoring_service_pb2 as pb

SCHEMA_VERSION = 1

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS dashboards (
        id TEXT PRIMARY KEY,
        tenant TEXT NOT NULL,
        name TEXT NOT NULL,
        type TEXT NOT NULL,
        config TEXT NOT NULL,
        refresh_interval INTEGER NOT NULL,
        created_at_ms INTEGER NOT NULL,
        updated_at_ms INTEGER NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS dashboards_by_type ON dashboards (tenant, type, updated_at_ms)",
)


def store_path(data_dir: Path) -> Path:
    """Where the service keeps its dashboards."""
    return data_dir / "monitoring" / "dashboards.sqlite3"


def new_id() -> str:
    """A fresh dashboard id: 32 hex digits (safe in URLs and bus topic names)."""
    return uuid.uuid4().hex


def _row_to_dashboard(row: sqlite3.Row) -> pb.Dashboard:
    dashboard = pb.Dashboard(
        id=row["id"],
        name=row["name"],
        type=row["type"],
        refresh_interval=row["refresh_interval"],
        created_at_ms=row["created_at_ms"],
        updated_at_ms=row["updated_at_ms"],
    )
    dashboard.config.SetInParent()  # present even when empty, as it was created
    json_format.Parse(row["config"], dashboard.config, ignore_unknown_fields=True)
    return dashboard


def _config_json(config: pb.DashboardConfig) -> str:
    return json_format.MessageToJson(config, preserving_proto_field_name=True, indent=None, sort_keys=True)


class DashboardStore:
    """Durable CRUD of dashboards; synchronous (callers use a worker thread), one connection
    serialised by a lock."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.db = SqliteDb(path, ";".join(_SCHEMA), SCHEMA_VERSION, "dashboard store")

    def open(self) -> None:
        """Open the database file, creating or upgrading its schema."""
        self.db.open()

    def close(self) -> None:
        """Close the database; the store can be opened again."""
        self.db.close()

    def create(self, tenant: str, dashboard: pb.Dashboard, now_ms: int) -> pb.Dashboard:
        """Store a new dashboard under a fresh id; returns it as stored."""
        stored = pb.Dashboard()
        stored.CopyFrom(dashboard)
        stored.id, stored.created_at_ms, stored.updated_at_ms, stored.builtin = (
            new_id(),
            now_ms,
            now_ms,
            False,
        )
        with self.db.transaction(write=True) as db:
            db.execute(
                "INSERT INTO dashboards VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    stored.id,
                    tenant,
                    stored.name,
                    stored.type,
                    _config_json(stored.config),
                    stored.refresh_interval,
                    now_ms,
                    now_ms,
                ),
            )
        return stored

    def get(self, tenant: str, dashboard_id: str) -> pb.Dashboard | None:
        """The dashboard with this id, or None."""
        with self.db.transaction() as db:
            row = db.execute(
                "SELECT * FROM dashboards WHERE tenant = ? AND id = ?", (tenant, dashboard_id)
            ).fetchone()
        return None if row is None else _row_to_dashboard(row)

    def latest_of_type(self, tenant: str, dashboard_type: str) -> pb.Dashboard | None:
        """The most recently updated dashboard of a type, or None."""
        with self.db.transaction() as db:
            row = db.execute(
                "SELECT * FROM dashboards WHERE tenant = ? AND type = ? ORDER BY updated_at_ms DESC, id LIMIT 1",
                (tenant, dashboard_type),
            ).fetchone()
        return None if row is None else _row_to_dashboard(row)

    def list(self, tenant: str, dashboard_type: str = "") -> list[pb.Dashboard]:
        """Every dashboard of the tenant (of one type when given), oldest first."""
        sql = "SELECT * FROM dashboards WHERE tenant = ?"
        params: tuple[str, ...] = (tenant,)
        if dashboard_type:
            sql, params = sql + " AND type = ?", (tenant, dashboard_type)
        with self.db.transaction() as db:
            rows = db.execute(sql + " ORDER BY created_at_ms, id", params).fetchall()
        return [_row_to_dashboard(row) for row in rows]

    def update(self, tenant: str, dashboard: pb.Dashboard, now_ms: int) -> pb.Dashboard | None:
        """Replace name, type, config and refresh interval of a stored dashboard; None if unknown."""
        with self.db.transaction(write=True) as db:
            row = db.execute(
                "SELECT * FROM dashboards WHERE tenant = ? AND id = ?", (tenant, dashboard.id)
            ).fetchone()
            if row is None:
                return None
            # updated_at_ms only moves forward, so the cache key of the old version never comes back.
            updated = max(now_ms, row["updated_at_ms"] + 1)
            db.execute(
                "UPDATE dashboards SET name = ?, type = ?, config = ?, refresh_interval = ?, updated_at_ms = ? "
                "WHERE tenant = ? AND id = ?",
                (
                    dashboard.name,
                    dashboard.type,
                    _config_json(dashboard.config),
                    dashboard.refresh_interval,
                    updated,
                    tenant,
                    dashboard.id,
                ),
            )
            row = db.execute(
                "SELECT * FROM dashboards WHERE tenant = ? AND id = ?", (tenant, dashboard.id)
            ).fetchone()
        return _row_to_dashboard(row)

    def delete(self, tenant: str, dashboard_id: str) -> bool:
        """Remove a dashboard; False when there was none with this id."""
        with self.db.transaction(write=True) as db:
            cursor = db.execute("DELETE FROM dashboards WHERE tenant = ? AND id = ?", (tenant, dashboard_id))
        return cursor.rowcount > 0
