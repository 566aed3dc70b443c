"""The alert store on a real SQLite file: transitions kept across reopen, current states reloaded,
history newest first with filters, and the schema version."""

from __future__ import annotations

import sqlite3

import pytest

from services.monitoring.alert_store import AlertRecord, AlertStore, Transition, store_path

T0 = 1_800_000_000_000


def record(
    state: str, at: int, name: str = "SlowBatchQuery", engine: str = "duckdb", severity: str = "warning"
):
    return AlertRecord(
        rule_id=name,
        name=name,
        labels=(("engine", engine), ("instance", "all")),
        state=state,
        severity=severity,
        summary=f"{name} {state}",
        value=7.5,
        threshold=5.0,
        active_since_ms=T0,
        timestamp_ms=at,
    )


@pytest.fixture
def store(tmp_path):
    s = AlertStore(store_path(tmp_path))
    s.open()
    yield s
    s.close()


def test_transitions_and_current_states_survive_a_reopen(tmp_path, store):
    stored = store.record(
        [
            Transition(record("pending", T0), "inactive"),
            Transition(record("firing", T0 + 60_000), "pending"),
            Transition(record("pending", T0, engine="hot"), "inactive"),
        ]
    )
    assert [t.id for t in stored] == [1, 2, 3]
    store.close()
    again = AlertStore(store_path(tmp_path))
    again.open()
    current = {dict(a.labels)["engine"]: a for a in again.current()}
    assert current["duckdb"].state == "firing" and current["duckdb"].active_since_ms == T0
    assert current["hot"].state == "pending"
    history = again.history(0)
    assert [(t.id, t.from_state, t.alert.state) for t in history] == [
        (2, "pending", "firing"),
        (3, "inactive", "pending"),
        (1, "inactive", "pending"),
    ]
    assert history[0].alert == record("firing", T0 + 60_000)
    again.close()


def test_an_alert_that_goes_inactive_leaves_the_current_states_but_not_the_history(store):
    store.record([Transition(record("pending", T0), "inactive")])
    store.record([Transition(record("inactive", T0 + 15_000), "pending")])
    assert store.current() == []
    assert [t.alert.state for t in store.history(0)] == ["inactive", "pending"]


def test_history_filters_by_time_name_severity_and_state(store):
    store.record(
        [
            Transition(record("firing", T0), "inactive"),
            Transition(record("resolved", T0 + 1000), "firing"),
            Transition(
                record("firing", T0 + 2000, name="EngineConnectionFailure", severity="critical"), "inactive"
            ),
        ]
    )
    assert len(store.history(T0 + 1000)) == 2
    assert [t.alert.state for t in store.history(0, name="SlowBatchQuery")] == ["resolved", "firing"]
    assert [t.alert.name for t in store.history(0, severity="critical")] == ["EngineConnectionFailure"]
    assert [t.alert.timestamp_ms for t in store.history(0, states=("firing",))] == [T0 + 2000, T0]
    assert len(store.history(0, limit=1)) == 1


def test_the_file_is_in_wal_mode_with_a_schema_version(tmp_path, store):
    with sqlite3.connect(store_path(tmp_path)) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("PRAGMA user_version").fetchone()[0] == 1


def test_a_file_from_a_newer_version_is_refused(tmp_path):
    path = store_path(tmp_path)
    path.parent.mkdir(parents=True)
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA user_version = 99")
    with pytest.raises(RuntimeError, match="schema version 99"):
        AlertStore(path).open()


def test_schema_scripts_split_into_statements_keeping_trigger_bodies_whole():
    from libs.sqlite_db import statements

    script = """
    CREATE TABLE t (a INTEGER);
    CREATE TRIGGER tr AFTER INSERT ON t BEGIN
        UPDATE t SET a = a + 1; UPDATE t SET a = a - 1;
    END;
    """
    found = statements(script)
    assert len(found) == 2 and found[1].startswith("CREATE TRIGGER") and found[1].endswith("END;")
