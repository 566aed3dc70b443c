"""The embedded database of a store kept in DATA_DIR (anomalies, dashboards, alert history): one
SQLite file in WAL mode with a full fsync per commit, a versioned schema, and one connection
serialised by a lock (stores are called from worker threads)."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def statements(script: str) -> list[str]:
    """The complete SQL statements of a script (triggers keep the `;` inside their BEGIN ... END)."""
    out: list[str] = []
    pending = ""
    for piece in script.split(";"):
        pending += piece + ";"
        if sqlite3.complete_statement(pending):
            if pending.strip(" \n;"):
                out.append(pending.strip())
            pending = ""
    return out


class SqliteDb:
    """One SQLite file: `open` creates or upgrades its schema (a newer schema is refused),
    `transaction` runs one transaction under the lock."""

    def __init__(self, path: Path, schema: str, version: int, what: str) -> None:
        self.path = path
        self.what = what
        self._schema = statements(schema)
        self._version = version
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None

    def open(self) -> None:
        """Open the file, creating it and its schema when new."""
        if self._conn is not None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        try:
            conn.execute("PRAGMA busy_timeout=30000")  # other processes' writes are waited for
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            # Statement by statement in one transaction: executescript would commit it first.
            conn.execute("BEGIN IMMEDIATE")
            found = conn.execute("PRAGMA user_version").fetchone()[0]
            if found > self._version:
                conn.execute("ROLLBACK")
                raise RuntimeError(
                    f"{self.path} has {self.what} schema version {found}; this version reads up to {self._version}"
                )
            for statement in self._schema:
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {self._version:d}")
            conn.execute("COMMIT")
        except BaseException:
            conn.close()
            raise
        with self._lock:
            self._conn = conn

    def close(self) -> None:
        """Close the file; it can be opened again."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    @contextmanager
    def transaction(self, write: bool = False) -> Iterator[sqlite3.Connection]:
        """One transaction under the lock; a write takes the database lock up front (IMMEDIATE),
        since upgrading a read transaction fails at once in WAL mode instead of waiting."""
        with self._lock:
            if self._conn is None:
                raise RuntimeError(f"the {self.what} is not open")
            self._conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                yield self._conn
            except BaseException:
                if self._conn.in_transaction:  # SQLite may have rolled back already (disk full, I/O)
                    self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")
