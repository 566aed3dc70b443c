"""Dev-only: write a data set as Parquet segments in the service's on-disk layout.

This lets the raw-DuckDB floor (benchmarks/duckdb_floor.py) be built and checked before the
service can ingest. When the service ingests, the benchmark reads the segments the service wrote
instead. The layout (under DATA_DIR):

    segments/tenant=default/datasource=<ds>/points/day=<YYYY-MM-DD>/<min_ts_ms>-<max_ts_ms>-<uuid>.parquet
        series_id UBIGINT, ts BIGINT (epoch ms), value DOUBLE; sorted by (series_id, ts)
    segments/tenant=default/datasource=<ds>/series/<uuid>.parquet
        series_id UBIGINT, metric VARCHAR, labels MAP(VARCHAR, VARCHAR)
"""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from benchmarks.tsbs_data import Dataset

DAY_MS = 86_400_000


def datasource_dir(data_dir: Path, datasource: str, tenant: str = "default") -> Path:
    """The datasource's segment root."""
    return data_dir / "segments" / f"tenant={tenant}" / f"datasource={datasource}"


def series_id(metric: str, labels: dict[str, str]) -> int:
    """A stable 64-bit id of (metric, labels); spans the full UBIGINT range like a real hash would."""
    key = metric + "\x00" + "\x00".join(f"{k}={labels[k]}" for k in sorted(labels))
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little")


def write_segments(
    ds: Dataset,
    data_dir: Path,
    datasource: str,
    flush_every_ms: int = 6 * 3_600_000,
    row_group_size: int = 122_880,
) -> dict[str, int]:
    """Write ds as segments, one file per day and flush period (as a hot tier flushing every
    flush_every_ms would); returns counts of files and points."""
    root = datasource_dir(data_dir, datasource)
    (root / "series").mkdir(parents=True, exist_ok=True)
    ids = np.array([series_id(n, lab) for n, lab in zip(ds.names, ds.labels, strict=True)], dtype=np.uint64)
    series_table = pa.table(
        {
            "series_id": pa.array(ids, pa.uint64()),
            "metric": pa.array(ds.names, pa.string()),
            "labels": pa.array([sorted(lab.items()) for lab in ds.labels], pa.map_(pa.string(), pa.string())),
        }
    )
    pq.write_table(series_table, root / "series" / f"{uuid.uuid4()}.parquet")

    point_sid = np.repeat(ids, np.diff(ds.offsets))
    # A flush period that divides the day never straddles midnight, so each file has one day.
    if DAY_MS % flush_every_ms:
        raise ValueError("flush_every_ms must divide a day")
    bucket = ds.ts_ms // flush_every_ms
    files = 0
    for b in np.unique(bucket):
        mask = bucket == b
        sid, ts, val = point_sid[mask], ds.ts_ms[mask], ds.values[mask]
        order = np.lexsort((ts, sid))
        sid, ts, val = sid[order], ts[order], val[order]
        day = datetime.fromtimestamp(int(ts.min()) // 1000, tz=UTC).strftime("%Y-%m-%d")
        out = root / "points" / f"day={day}"
        out.mkdir(parents=True, exist_ok=True)
        table = pa.table(
            {
                "series_id": pa.array(sid, pa.uint64()),
                "ts": pa.array(ts, pa.int64()),
                "value": pa.array(val, pa.float64()),
            }
        )
        name = f"{int(ts.min())}-{int(ts.max())}-{uuid.uuid4()}.parquet"
        pq.write_table(table, out / name, row_group_size=row_group_size, compression="zstd")
        files += 1
    return {"point_files": files, "series_files": 1, "points": int(point_sid.size)}
