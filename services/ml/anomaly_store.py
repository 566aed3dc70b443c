"""The anomaly store: every anomaly found, kept in SQLite, listed with filters, with user feedback.

One file, `<data_dir>/ml/anomalies.sqlite3`, in WAL mode with synchronous=FULL: a commit is fsynced
before `add` or `set_feedback` returns, so an acknowledged anomaly or verdict survives a power loss
(anomalies are few, so the fsync per call costs little). Several processes may share the file; they
wait for each other's writes (busy_timeout) instead of failing.

A series (tenant, datasource, metric, labels) is stored once in `series`, its labels in the indexed
`series_labels`, and each anomaly points at it. Label filters resolve to series ids first, so
filtering by `simulation_id` or any other label is an index lookup.

Explanations are counted when read, so siblings stored later count too. The siblings of a series are
the other series of its tenant, datasource and metric whose labels have the same keys (the other
hosts of a service): `peers` counts those with an anomaly in the same minute, `peer_series` those
with any anomaly stored. Retention goes by the anomalous point's timestamp.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from libs.sqlite_db import SqliteDb

VERDICTS = ("true_positive", "false_positive")
SOURCES = ("stream", "request")
MAX_LIMIT = 1000
MINUTE_MS = 60_000
DAY_MS = 86_400_000
# Up to this many anomalies in the series a filter matches, a list reads them all through the series
# index and keeps the newest; beyond, walking the tenant's time index finds a page sooner.
SERIES_PATH_ROWS = 20_000

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS series (
    sid INTEGER PRIMARY KEY,
    tenant TEXT NOT NULL, datasource TEXT NOT NULL, metric TEXT NOT NULL, labels TEXT NOT NULL,
    shape INTEGER NOT NULL,
    anomalies INTEGER NOT NULL DEFAULT 0,  -- kept by the triggers below
    UNIQUE (tenant, datasource, metric, labels)
);
CREATE INDEX IF NOT EXISTS series_by_metric ON series (tenant, metric);
CREATE INDEX IF NOT EXISTS series_by_shape ON series (shape);
CREATE TABLE IF NOT EXISTS series_labels (
    tenant TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL, sid INTEGER NOT NULL,
    PRIMARY KEY (tenant, key, value, sid)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS anomalies (
    id TEXT NOT NULL UNIQUE, tenant TEXT NOT NULL, sid INTEGER NOT NULL, shape INTEGER NOT NULL,
    timestamp_ms INTEGER NOT NULL, method TEXT NOT NULL, value REAL, score REAL, expected REAL,
    lower REAL, upper REAL, deviation REAL, threshold REAL, model_version TEXT NOT NULL,
    contributions TEXT NOT NULL, source TEXT NOT NULL, detected_at_ms INTEGER NOT NULL,
    reason TEXT NOT NULL DEFAULT 'value',
    feedback TEXT NOT NULL DEFAULT '', feedback_comment TEXT NOT NULL DEFAULT ''
);
CREATE UNIQUE INDEX IF NOT EXISTS anomalies_by_series ON anomalies (sid, timestamp_ms, method);
CREATE INDEX IF NOT EXISTS anomalies_by_time ON anomalies (tenant, timestamp_ms, id);
CREATE INDEX IF NOT EXISTS anomalies_by_shape ON anomalies (shape, timestamp_ms, sid);
CREATE INDEX IF NOT EXISTS anomalies_by_detection ON anomalies (tenant, detected_at_ms);
CREATE INDEX IF NOT EXISTS anomalies_by_method ON anomalies (tenant, method);
CREATE INDEX IF NOT EXISTS anomalies_with_feedback ON anomalies (tenant, sid, method, feedback)
    WHERE feedback != '';
CREATE TRIGGER IF NOT EXISTS anomaly_added AFTER INSERT ON anomalies BEGIN
    UPDATE series SET anomalies = anomalies + 1 WHERE sid = NEW.sid;
END;
CREATE TRIGGER IF NOT EXISTS anomaly_dropped AFTER DELETE ON anomalies BEGIN
    UPDATE series SET anomalies = anomalies - 1 WHERE sid = OLD.sid;
END;
"""

_FLOATS = ("value", "score", "expected", "lower", "upper", "deviation", "threshold")
_SELECT = (
    "SELECT a.*, s.datasource, s.metric, s.labels FROM anomalies a {index} JOIN series s ON s.sid = a.sid"
)


@dataclass(frozen=True)
class AnomalyRecord:
    """One anomalous point of one series, with how it was judged; the last fields are filled on read."""

    tenant: str
    datasource: str
    metric: str
    labels: dict[str, str]
    timestamp_ms: int
    value: float
    score: float
    method: str
    expected: float
    lower: float
    upper: float
    deviation: float
    threshold: float
    model_version: str
    contributions: dict[str, float]  # share of each metric in a multivariate score; may be empty
    source: str  # "stream" or "request"
    detected_at_ms: int
    id: str = ""
    peers: int = 0  # other series of the same shape anomalous in the same minute
    peer_series: int = 0  # other series of the same shape with any anomaly stored
    feedback: str = ""  # "", "true_positive" or "false_positive"
    feedback_comment: str = ""
    reason: str = "value"  # what decided the score: "value", "level_shift" or "variance"


@dataclass(frozen=True)
class AnomalyFilter:
    """Which anomalies to list: all given conditions hold; labels must all be equal."""

    tenant: str = "default"
    datasource: str = ""
    metric: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    start_ms: int | None = None  # inclusive
    end_ms: int | None = None  # exclusive
    min_score: float = 0.0  # 0 lists every score
    method: str = ""
    limit: int = 100
    cursor: str = ""  # from the previous page


@dataclass(frozen=True)
class MethodPrecision:
    """How well one detection method did according to user feedback."""

    anomalies: int
    true_positive: int
    false_positive: int
    precision: float | None  # None without feedback


def anomaly_id(
    tenant: str, datasource: str, metric: str, labels: dict[str, str], timestamp_ms: int, method: str
) -> str:
    """Stable id of an anomaly: 16 hex chars of sha256 over its JSON-encoded key, labels sorted."""
    key = [tenant, datasource, metric, sorted(labels.items()), int(timestamp_ms), method]
    return hashlib.sha256(json.dumps(key, separators=(",", ":")).encode()).hexdigest()[:16]


def store_path(data_dir: Path) -> Path:
    """Where the service keeps its anomaly store."""
    return data_dir / "ml" / "anomalies.sqlite3"


def encode_cursor(timestamp_ms: int, anomaly: str) -> str:
    """The opaque cursor of the page that follows the anomaly (timestamp_ms, id)."""
    return base64.urlsafe_b64encode(f"{timestamp_ms}:{anomaly}".encode()).decode()


def decode_cursor(cursor: str) -> tuple[int, str]:
    """(timestamp_ms, id) of a cursor; ValueError when it is not one this store made."""
    try:
        ts, anomaly = base64.urlsafe_b64decode(cursor.encode()).decode().split(":")
        if len(anomaly) != 16 or not all(c in "0123456789abcdef" for c in anomaly):
            raise ValueError(anomaly)
        return int(ts), anomaly
    except (ValueError, UnicodeError) as exc:
        raise ValueError(f"cursor: {cursor!r} is not a cursor from a previous page") from exc


def _labels_json(labels: dict[str, str]) -> str:
    return json.dumps(labels, sort_keys=True, separators=(",", ":"))


def _shape(tenant: str, datasource: str, metric: str, labels: dict[str, str]) -> int:
    # Series of a shape are siblings: same place, same metric, same label keys (other hosts of a service).
    key = json.dumps([tenant, datasource, metric, sorted(labels)], separators=(",", ":"))
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big", signed=True)


def _real(x: float) -> float | None:
    return None if math.isnan(x) else float(x)  # sqlite3 would store NaN as NULL anyway


def _float(x: float | None) -> float:
    return math.nan if x is None else x


class AnomalyStore:
    """Durable, filterable store of anomalies and their feedback; every method is synchronous (the
    service calls them from a worker thread) and serialised on one connection."""

    def __init__(self, path: Path, retention_days: float = 0.0) -> None:
        self.path = path
        self.retention_days = retention_days  # 0 keeps anomalies forever
        self.db = SqliteDb(path, _SCHEMA, SCHEMA_VERSION, "anomaly store")

    def open(self) -> None:
        """Open the database file, creating or upgrading its schema."""
        self.db.open()

    def close(self) -> None:
        """Close the database; the store can be opened again."""
        self.db.close()

    # ---- writing -----------------------------------------------------------------------------
    def add(self, records: Iterable[AnomalyRecord]) -> int:
        """Keep anomalies once per (tenant, datasource, series, timestamp, method), committed before
        returning; returns how many were new."""
        records = list(records)
        for r in records:
            if r.source not in SOURCES:
                raise ValueError(f"source: {r.source!r} is not one of {', '.join(SOURCES)}")
        if not records:
            return 0
        with self.db.transaction(write=True) as db:
            sids: dict[tuple[str, str, str, str], int] = {}
            rows = []
            for r in records:
                labels = _labels_json(r.labels)
                key = (r.tenant, r.datasource, r.metric, labels)
                if key not in sids:
                    sids[key] = _series_id(db, r, labels)
                rows.append(
                    (
                        anomaly_id(r.tenant, r.datasource, r.metric, r.labels, r.timestamp_ms, r.method),
                        r.tenant,
                        sids[key],
                        _shape(r.tenant, r.datasource, r.metric, r.labels),
                        int(r.timestamp_ms),
                        r.method,
                        *(_real(getattr(r, name)) for name in _FLOATS),
                        r.model_version,
                        json.dumps(r.contributions, sort_keys=True),
                        r.source,
                        int(r.detected_at_ms),
                        r.reason,
                    )
                )
            # rowcount leaves out the triggers' updates and the ignored duplicates.
            return db.executemany(
                "INSERT OR IGNORE INTO anomalies (id, tenant, sid, shape, timestamp_ms, method,"
                f" {', '.join(_FLOATS)}, model_version, contributions, source, detected_at_ms, reason)"
                f" VALUES ({', '.join('?' * 18)})",
                rows,
            ).rowcount

    def set_feedback(self, tenant: str, anomaly_id: str, verdict: str, comment: str = "") -> AnomalyRecord:
        """Record a user's verdict on an anomaly, replacing any earlier one; KeyError for an unknown id."""
        if verdict not in VERDICTS:
            raise ValueError(f"verdict: {verdict!r} is not one of {', '.join(VERDICTS)}")
        with self.db.transaction(write=True) as db:
            db.execute(
                "UPDATE anomalies SET feedback = ?, feedback_comment = ? WHERE id = ? AND tenant = ?",
                (verdict, comment, anomaly_id, tenant),
            )
            record = _get(db, tenant, anomaly_id)
        if record is None:
            raise KeyError(anomaly_id)
        return record

    def purge(self, now_ms: int) -> int:
        """Drop anomalies whose point is older than the retention (none when it is 0); returns how many."""
        if self.retention_days <= 0:
            return 0
        cutoff = now_ms - int(self.retention_days * DAY_MS)
        with self.db.transaction(write=True) as db:
            tenants = [row[0] for row in db.execute("SELECT DISTINCT tenant FROM series")]
            dropped = 0
            for tenant in tenants:
                dropped += db.execute(
                    "DELETE FROM anomalies WHERE tenant = ? AND timestamp_ms < ?", (tenant, cutoff)
                ).rowcount
            # A series left without anomalies no longer counts as anyone's peer.
            db.execute("DELETE FROM series WHERE anomalies = 0")
            db.execute("DELETE FROM series_labels WHERE sid NOT IN (SELECT sid FROM series)")
        return dropped

    # ---- reading -----------------------------------------------------------------------------
    def list(self, f: AnomalyFilter) -> tuple[list[AnomalyRecord], str]:
        """A page of anomalies, newest first (timestamp, then id, both descending), and the cursor of
        the next page ("" after the last)."""
        if not 1 <= f.limit <= MAX_LIMIT:
            raise ValueError(f"limit: {f.limit} is not between 1 and {MAX_LIMIT}")
        after = decode_cursor(f.cursor) if f.cursor else None
        where, params = _conditions(f, after)
        with self.db.transaction() as db:
            index = "anomalies_by_time"
            if f.datasource or f.metric or f.labels:
                sids, matched = _matching_series(db, f)
                if not sids:
                    return [], ""
                where.append("a.sid IN (SELECT value FROM json_each(?))")
                params.append(json.dumps(sids))
                if matched <= SERIES_PATH_ROWS:
                    index = "anomalies_by_series"
            rows = db.execute(
                _SELECT.format(index=f"INDEXED BY {index}")
                + f" WHERE {' AND '.join(where)} ORDER BY a.timestamp_ms DESC, a.id DESC LIMIT ?",
                (*params, f.limit + 1),
            ).fetchall()
            records = _explained(db, rows[: f.limit])
        more = len(rows) > f.limit
        return records, encode_cursor(records[-1].timestamp_ms, records[-1].id) if more else ""

    def get(self, tenant: str, anomaly_id: str) -> AnomalyRecord | None:
        """One anomaly of the tenant, explained like a listed one, or None."""
        with self.db.transaction() as db:
            return _get(db, tenant, anomaly_id)

    def feedback_counts(
        self, tenant: str, datasource: str, metric: str, labels: dict[str, str]
    ) -> tuple[int, int]:
        """(true positives, false positives) users marked among one series' anomalies."""
        with self.db.transaction() as db:
            counts = {
                row[0]: row[1]
                for row in db.execute(
                    "SELECT a.feedback, COUNT(*) FROM series s"
                    " JOIN anomalies a INDEXED BY anomalies_with_feedback ON a.tenant = s.tenant AND a.sid = s.sid"
                    " WHERE s.tenant = ? AND s.datasource = ? AND s.metric = ? AND s.labels = ?"
                    " AND a.feedback != '' GROUP BY a.feedback",
                    (tenant, datasource, metric, _labels_json(labels)),
                )
            }
        return counts.get("true_positive", 0), counts.get("false_positive", 0)

    def precision_by_method(self, tenant: str) -> dict[str, MethodPrecision]:
        """Per method: anomalies found, verdicts given, and precision tp / (tp + fp)."""
        with self.db.transaction() as db:
            found = db.execute(
                "SELECT method, COUNT(*) FROM anomalies WHERE tenant = ? GROUP BY method", (tenant,)
            ).fetchall()
            judged = db.execute(
                "SELECT method, feedback, COUNT(*) FROM anomalies INDEXED BY anomalies_with_feedback"
                " WHERE tenant = ? AND feedback != '' GROUP BY method, feedback",
                (tenant,),
            ).fetchall()
        verdicts = {(method, verdict): n for method, verdict, n in judged}
        result = {}
        for method, n in found:
            tp = verdicts.get((method, "true_positive"), 0)
            fp = verdicts.get((method, "false_positive"), 0)
            result[method] = MethodPrecision(n, tp, fp, tp / (tp + fp) if tp + fp else None)
        return result

    def count_since(self, tenant: str, since_ms: int) -> int:
        """How many of the tenant's anomalies were detected at or after `since_ms`."""
        with self.db.transaction() as db:
            return db.execute(
                "SELECT COUNT(*) FROM anomalies WHERE tenant = ? AND detected_at_ms >= ?", (tenant, since_ms)
            ).fetchone()[0]


# ---- queries, run inside a transaction ------------------------------------------------------------
def _series_id(db: sqlite3.Connection, r: AnomalyRecord, labels: str) -> int:
    """The id of the record's series, stored with its labels when new."""
    found = db.execute(
        "SELECT sid FROM series WHERE tenant = ? AND datasource = ? AND metric = ? AND labels = ?",
        (r.tenant, r.datasource, r.metric, labels),
    ).fetchone()
    if found:
        return found[0]
    sid = db.execute(
        "INSERT INTO series (tenant, datasource, metric, labels, shape) VALUES (?, ?, ?, ?, ?)",
        (r.tenant, r.datasource, r.metric, labels, _shape(r.tenant, r.datasource, r.metric, r.labels)),
    ).lastrowid
    db.executemany(
        "INSERT INTO series_labels (tenant, key, value, sid) VALUES (?, ?, ?, ?)",
        [(r.tenant, k, v, sid) for k, v in r.labels.items()],
    )
    return sid


def _conditions(f: AnomalyFilter, after: tuple[int, str] | None) -> tuple[list[str], list[object]]:
    """SQL conditions on the anomaly row itself, and their parameters."""
    where: list[str] = ["a.tenant = ?"]
    params: list[object] = [f.tenant]
    for condition, value, given in (
        ("a.timestamp_ms >= ?", f.start_ms, f.start_ms is not None),
        ("a.timestamp_ms < ?", f.end_ms, f.end_ms is not None),
        ("a.score >= ?", f.min_score, f.min_score != 0),
        ("a.method = ?", f.method, bool(f.method)),
    ):
        if given:
            where.append(condition)
            params.append(value)
    if after is not None:
        where.append("(a.timestamp_ms, a.id) < (?, ?)")
        params.extend(after)
    return where, params


def _matching_series(db: sqlite3.Connection, f: AnomalyFilter) -> tuple[list[int], int]:
    """Ids of the tenant's series passing the datasource, metric and label filters, and how many
    anomalies they have."""
    where: list[str] = ["tenant = ?"]
    params: list[object] = [f.tenant]
    for column, value in (("datasource", f.datasource), ("metric", f.metric)):
        if value:
            where.append(f"{column} = ?")
            params.append(value)
    for key, value in sorted(f.labels.items()):
        where.append("sid IN (SELECT sid FROM series_labels WHERE tenant = ? AND key = ? AND value = ?)")
        params.extend((f.tenant, key, value))
    found = db.execute(f"SELECT sid, anomalies FROM series WHERE {' AND '.join(where)}", params).fetchall()
    return [row[0] for row in found], sum(row[1] for row in found)


def _get(db: sqlite3.Connection, tenant: str, anomaly_id: str) -> AnomalyRecord | None:
    rows = db.execute(_SELECT.format(index="") + " WHERE a.id = ? AND a.tenant = ?", (anomaly_id, tenant))
    records = _explained(db, rows.fetchall())
    return records[0] if records else None


def _explained(db: sqlite3.Connection, rows: Sequence[sqlite3.Row]) -> list[AnomalyRecord]:
    """Records of rows, with their peers counted now, so siblings stored later count too."""
    population: dict[int, int] = {}
    records = []
    for row in rows:
        minute = row["timestamp_ms"] - row["timestamp_ms"] % MINUTE_MS
        peers = db.execute(
            "SELECT COUNT(DISTINCT sid) FROM anomalies INDEXED BY anomalies_by_shape"
            " WHERE shape = ? AND timestamp_ms >= ? AND timestamp_ms < ? AND sid != ?",
            (row["shape"], minute, minute + MINUTE_MS, row["sid"]),
        ).fetchone()[0]
        if row["shape"] not in population:
            population[row["shape"]] = db.execute(
                "SELECT COUNT(*) FROM series WHERE shape = ?", (row["shape"],)
            ).fetchone()[0]
        records.append(
            AnomalyRecord(
                tenant=row["tenant"],
                datasource=row["datasource"],
                metric=row["metric"],
                labels=json.loads(row["labels"]),
                timestamp_ms=row["timestamp_ms"],
                method=row["method"],
                **{name: _float(row[name]) for name in _FLOATS},
                model_version=row["model_version"],
                contributions=json.loads(row["contributions"]),
                source=row["source"],
                detected_at_ms=row["detected_at_ms"],
                id=row["id"],
                peers=peers,
                peer_series=population[row["shape"]] - 1,
                feedback=row["feedback"],
                feedback_comment=row["feedback_comment"],
                reason=row["reason"],
            )
        )
    return records
