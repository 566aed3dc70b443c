"""The dashboard store: SQLite CRUD, durability across reopen, schema version."""

from __future__ import annotations

import sqlite3

import pytest

from platformq.analytics.v1 import monitoring_service_pb2 as pb
from services.monitoring.dashboard_store import SCHEMA_VERSION, DashboardStore, store_path


def board(name: str = "Service Performance", kind: str = "service-metrics", **config) -> pb.Dashboard:
    return pb.Dashboard(name=name, type=kind, config=pb.DashboardConfig(**config), refresh_interval=30)


@pytest.fixture
def store(tmp_path):
    s = DashboardStore(store_path(tmp_path))
    s.open()
    yield s
    s.close()


def test_create_get_list_and_delete(store):
    created = store.create("default", board(services=["auth-service"], time_range="24h"), 1000)
    assert len(created.id) == 32 and (created.created_at_ms, created.updated_at_ms) == (1000, 1000)
    assert not created.builtin
    got = store.get("default", created.id)
    assert got == created
    assert list(got.config.services) == ["auth-service"] and got.config.time_range == "24h"
    other = store.create("default", board("Sims", "simulation"), 2000)
    assert [d.id for d in store.list("default")] == [created.id, other.id]
    assert [d.id for d in store.list("default", "simulation")] == [other.id]
    assert store.list("other-tenant") == [] and store.get("other-tenant", created.id) is None
    assert store.delete("default", created.id) is True
    assert store.delete("default", created.id) is False
    assert store.get("default", created.id) is None


def test_update_replaces_the_dashboard_and_moves_updated_at_forward(store):
    created = store.create("default", board(metrics=["cpu_usage"]), 5000)
    changed = board("Renamed", "platform-overview", metrics=["error_rate"])
    changed.id = created.id
    updated = store.update("default", changed, 5000)  # same millisecond: still a newer version
    assert (updated.name, updated.type, list(updated.config.metrics)) == (
        "Renamed",
        "platform-overview",
        ["error_rate"],
    )
    assert updated.created_at_ms == 5000 and updated.updated_at_ms == 5001
    missing = board()
    missing.id = "nope"
    assert store.update("default", missing, 6000) is None


def test_latest_of_type_is_the_most_recently_updated(store):
    first = store.create("default", board("first"), 1000)
    store.create("default", board("second"), 2000)
    assert store.latest_of_type("default", "service-metrics").name == "second"
    first.name = "first, edited"
    store.update("default", first, 3000)
    assert store.latest_of_type("default", "service-metrics").name == "first, edited"
    assert store.latest_of_type("default", "simulation") is None


def test_dashboards_survive_reopening_and_the_file_is_wal(tmp_path):
    path = store_path(tmp_path)
    s = DashboardStore(path)
    s.open()
    created = s.create("default", board(), 1000)
    s.close()
    again = DashboardStore(path)
    again.open()
    assert again.get("default", created.id) == created
    again.close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def test_a_newer_schema_is_refused(tmp_path):
    path = store_path(tmp_path)
    path.parent.mkdir(parents=True)
    with sqlite3.connect(path) as db:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(RuntimeError, match="schema version 2"):
        DashboardStore(path).open()


def test_a_closed_store_says_so(tmp_path):
    with pytest.raises(RuntimeError, match="not open"):
        DashboardStore(store_path(tmp_path)).list("default")
