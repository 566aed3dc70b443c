"""User SQL over one tenant's data: a fresh, hardened DuckDB per query exposing two views.

  series(datasource VARCHAR, series_id UBIGINT, metric VARCHAR, labels MAP(VARCHAR, VARCHAR))
  metrics(datasource VARCHAR, metric VARCHAR, labels MAP(VARCHAR, VARCHAR), ts BIGINT (epoch ms),
          time TIMESTAMP, value DOUBLE)

Only the tenant's own segment files and hot points are wired into the views, and the connection
may read only the tenant's segment directory, so nothing of another tenant is reachable.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import duckdb
import pyarrow as pa

from libs.storage.store import Snapshot
from services.query_router.sql_guard import harden, run_user_sql

VIEWS = frozenset({"metrics", "series"})
_SERIES_SCHEMA = pa.schema(
    [
        ("datasource", pa.string()),
        ("series_id", pa.uint64()),
        ("metric", pa.string()),
        ("labels", pa.map_(pa.string(), pa.string())),
    ]
)


def _series_table(snapshots: dict[str, Snapshot]) -> pa.Table:
    rows = [
        (ds, sid, key.metric, list(key.labels))
        for ds, snap in snapshots.items()
        for sid, key in snap.catalog.by_id.items()
    ]
    return pa.Table.from_arrays(
        [
            pa.array([r[0] for r in rows], pa.string()),
            pa.array([r[1] for r in rows], pa.uint64()),
            pa.array([r[2] for r in rows], pa.string()),
            pa.array([r[3] for r in rows], pa.map_(pa.string(), pa.string())),
        ],
        schema=_SERIES_SCHEMA,
    )


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def run_tenant_sql(
    segments_root: Path,
    tenant: str,
    snapshots: dict[str, Snapshot | None],
    sql: str,
    params: Sequence[object],
    max_rows: int,
) -> tuple[list[str], list[tuple], float]:
    """Check and run user SQL over the tenant's views; (columns, rows, seconds)."""
    started = time.perf_counter()
    live = {ds: snap for ds, snap in snapshots.items() if snap is not None}
    con = duckdb.connect()
    try:
        con.register("_series", _series_table(live))
        points = []
        for i, (ds, snap) in enumerate(sorted(live.items())):
            if snap.segments:
                files = ", ".join(_quote(str(s.path)) for s in snap.segments)
                points.append(
                    f"SELECT {_quote(ds)} AS datasource, series_id, ts, value FROM read_parquet([{files}])"
                )
            if snap.hot is not None:
                con.register(f"_hot{i}", snap.hot)
                points.append(f"SELECT {_quote(ds)} AS datasource, series_id, ts, value FROM _hot{i}")
        if not points:
            points.append(
                "SELECT NULL::VARCHAR AS datasource, NULL::UBIGINT AS series_id, NULL::BIGINT AS ts, "
                "NULL::DOUBLE AS value WHERE false"
            )
        con.execute("CREATE VIEW series AS SELECT * FROM _series")
        con.execute(
            "CREATE VIEW metrics AS SELECT s.datasource, s.metric, s.labels, p.ts, epoch_ms(p.ts) AS time, p.value "
            f"FROM ({' UNION ALL '.join(points)}) p JOIN _series s USING (datasource, series_id)"
        )
        tenant_dir = segments_root / f"tenant={tenant}"
        tenant_dir.mkdir(parents=True, exist_ok=True)
        harden(con, [tenant_dir])
        columns, rows = run_user_sql(con, sql, params, VIEWS, max_rows)
    finally:
        con.close()
    return columns, rows, time.perf_counter() - started
