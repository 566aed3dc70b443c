"""The serving process stores and answers without loading pandas (46 MiB resident): pyarrow's
pandas shim imports it at the first `pa.array` or `to_numpy`, which the storage and query paths
avoid (libs/arrowbuf.py). Pandas is for the detectors and forecasters that use it. DuckDB (14 MiB
imported, about 25 more with a connection) is loaded by the first SQL query, not before: metrics
queries over rollups and points maps do not use it. PyJWT and cryptography (9 MiB) are the
launcher's, for the gateway's development keys, not the serving process's."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path

from tests.e2e.conftest import own_stack, stack_env
from tests.helpers import descendants, wait_until


def _post(base: str, path: str, body: dict) -> dict:
    request = urllib.request.Request(
        base + path, data=json.dumps(body).encode(), headers={"content-type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as reply:
        return json.loads(reply.read())


def _get(base: str, path: str) -> dict:
    with urllib.request.urlopen(base + path, timeout=30) as reply:
        return json.loads(reply.read())


def _serving_pid(launcher: int) -> int:
    for pid in descendants(launcher):
        try:
            if b"serve" in Path(f"/proc/{pid}/cmdline").read_bytes():
                return pid
        except OSError:
            continue
    raise AssertionError("no serving process")


def test_ingest_flush_and_queries_leave_pandas_unloaded_and_duckdb_until_sql(tmp_path):
    env = stack_env(tmp_path, DEMO="0", HOT_FLUSH_SECONDS="1")
    with own_stack(env) as stack:
        now = int(time.time() * 1000)
        series = [
            {
                "name": "cpu",
                "labels": {"host": f"h{i}", "dc": "eu"},
                "timestamps_ms": [now - 600_000 + k * 10_000 for k in range(60)],
                "values": [float((i + k) % 17) for k in range(60)],
            }
            for i in range(100)
        ]
        # Large enough for the JSON worker (64 KiB and more), then a small body parsed in process.
        assert (
            _post(stack.base, "/api/v1/metrics/ingest", {"datasource": "ds", "series": series})["accepted"]
            == "6000"  # int64 in proto3 JSON
        )
        rows = [
            {"name": "mem", "value": 1.5, "timestamp_ms": now - k * 1000, "labels": {"host": "h0"}}
            for k in range(5)
        ]
        assert (
            _post(stack.base, "/api/v1/metrics/ingest", {"datasource": "ds", "points": rows})["accepted"]
            == "5"
        )
        wait_until(lambda: any((tmp_path / "segments").rglob("*.parquet")), 30, "a flush")
        grouped = {
            "datasource": "ds",
            "metrics": ["cpu"],
            "time_range": "15m",
            "step": "1m",
            "aggregation": "max",
        }
        assert _post(stack.base, "/api/v1/query", {**grouped, "group_by": ["dc"]})["series"]
        assert _get(stack.base, "/api/v1/analytics/metadata/ds")["metrics"]
        proc = Path(f"/proc/{_serving_pid(stack.process.pid)}")
        loaded = (proc / "maps").read_text()
        assert "/_duckdb." not in loaded
        assert "/cryptography/" not in loaded
        assert _post(
            stack.base, "/api/v1/query", {"datasource": "ds", "sql": "SELECT count(*) AS n FROM metrics"}
        )["rows"]
        loaded = (proc / "maps").read_text()
        assert "/_duckdb." in loaded  # what the SQL query ran in
        assert "/pandas/" not in loaded
