"""Feeds Druid from the store's segments, and knows which hours Druid holds exactly.

Druid has no Pulsar indexing service, so the loader mirrors the cold tier: every second it compares,
per (tenant, datasource), the segment files covering each hour with the files Druid was last loaded
from for that hour, and submits one `index_parallel` task (`dropExisting`) that
replaces the changed hours in Druid with the points of the current files. A new flush, a rewrite
of older points (last write wins), compaction and retention all show up as changed hours, so Druid
ends up holding exactly what the segments hold. The rows go to Druid as a JSON-lines file the loader
stages under DATA_DIR/druid-staging and the task reads with a `local` input source (inline rows
travel through ZooKeeper to the indexer, which caps a task at 512 KB); so Druid's indexers must
see that directory (the same host, or a shared volume as the segments are for Trino); the file is
removed once the task has ended. Freshness: a point reaches Druid after the hot
tier's flush (HOT_FLUSH_SECONDS) plus one task (a few seconds); until then, and for any hour not in
sync, queries answer it embedded (`DruidMirror.cut`).

A task waits until the historicals serve its segments (`awaitSegmentAvailabilityTimeoutMillis`)
before the hours count as loaded. An hour is marked not loaded before its task is submitted, so a
query never reads a half-replaced hour. Failures (Druid down, a task failing) leave the hours not
loaded: they are retried with backoff and never lost; the loop reads immutable files in a worker
thread and never holds the store's locks, so it never blocks ingestion.

One Druid datasource per (tenant, datasource) (`druid.druid_datasource`); rows carry `sid` (the
series id), `metric`, each label as `label_<key>` and `value` (double), one row per point.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import numpy as np
import pyarrow as pa

from libs import arrowbuf
from libs.errors import ConfigError
from libs.storage import MetricStore, Snapshot
from services.query_router.druid import HOUR_MS, DruidMirror, druid_datasource, hours_of, iso

log = logging.getLogger(__name__)

LABEL_PREFIX = "label_"
PartitionKey = tuple[str, str]


class IngestFailed(Exception):
    """Druid refused or failed an ingestion task; the hours stay not loaded and are retried."""


@dataclass(frozen=True)
class LoaderSettings:
    """Where tasks go (DRUID_OVERLORD_URL, else DRUID_COORDINATOR_URL: coordinator-as-overlord)
    and the loop's pace."""

    overlord_url: str
    poll_seconds: float = 1.0
    max_backoff_seconds: float = 30.0
    task_timeout_seconds: float = 300.0
    availability_timeout_ms: int = 120_000
    hours_per_task: int = 24


class DruidLoader:
    """The background loop mirroring segments into Druid (see the module docstring)."""

    def __init__(self, store: MetricStore, mirror: DruidMirror, settings: LoaderSettings) -> None:
        self.store = store
        self.mirror = mirror
        self.settings = settings
        self.overlord = settings.overlord_url.rstrip("/")
        self.staging_dir = store.config.data_dir / "druid-staging"
        self._task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None
        self.stats = {"tasks": 0, "rows": 0, "failures": 0}

    async def start(self) -> None:
        """Start the loop."""
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30, connect=5))
        self._task = asyncio.create_task(self._loop(), name="druid-loader")

    async def stop(self) -> None:
        """Stop the loop (a submitted task goes on in Druid; its hours are reloaded next start)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    async def _loop(self) -> None:
        delay = self.settings.poll_seconds
        while True:
            await asyncio.sleep(delay)
            try:
                await self.sync_once()
                delay = self.settings.poll_seconds
            except (aiohttp.ClientError, TimeoutError, OSError, IngestFailed) as exc:
                self.stats["failures"] += 1
                delay = min(self.settings.max_backoff_seconds, max(delay * 2, 1.0))
                log.warning("Druid ingestion failed; retrying in %.0f s: %s", delay, exc)
            except Exception:
                # Anything else is a bug, but the mirror must keep going: logged with its traceback,
                # retried with backoff; the hours it touched stay answered embedded meanwhile.
                self.stats["failures"] += 1
                delay = self.settings.max_backoff_seconds
                log.exception("Druid ingestion failed unexpectedly; retrying in %.0f s", delay)

    async def sync_once(self) -> int:
        """Bring every partition's changed hours (up to hours_per_task each) into Druid; rows sent."""
        sent = 0
        for key in self.store.partitions():
            snapshot = self.store.snapshot(*key)
            if snapshot is None:
                continue
            expected = hours_of(snapshot.segments)
            loaded = self.mirror.loaded(key)
            changed = sorted(h for h in expected.keys() | loaded.keys() if expected.get(h) != loaded.get(h))
            if not changed:
                continue
            hours = changed[: self.settings.hours_per_task]
            self.mirror.forget(key, hours)
            staged = self.staging_dir / f"{uuid.uuid4()}.json"
            try:
                rows, dimensions = await asyncio.to_thread(self._stage, staged, snapshot, hours, expected)
                await self._replace(key, hours, staged, rows, dimensions)
            finally:
                staged.unlink(missing_ok=True)
            self.mirror.mark_loaded(key, {h: expected.get(h, frozenset()) for h in hours})
            sent += rows
        return sent

    def _stage(
        self, path: Path, snapshot: Snapshot, hours: list[int], expected: dict
    ) -> tuple[int, list[str]]:
        """Write the points of `hours` to `path` as JSON lines; (rows, the label dimensions used)."""
        wanted = np.array(hours, dtype=np.int64)
        files = sorted({p for h in hours for p in expected.get(h, ())})
        by_path = {str(s.path): s for s in snapshot.segments}
        tables = []
        for name in files:
            table = by_path[name].read_points()
            mask = np.isin(arrowbuf.numpy(table["ts"]) // HOUR_MS, wanted)
            tables.append(table.filter(arrowbuf.array(mask)))
        if not tables:
            return 0, []
        table = pa.concat_tables(tables)
        sids = arrowbuf.numpy(table["series_id"])
        unique = np.unique(sids)
        keys = snapshot.catalog.keys_of(unique)
        label_keys = sorted({k for series in keys for k, _ in series.labels})
        prefix = {}
        for sid, series in zip(unique.tolist(), keys, strict=True):
            head = {"sid": str(sid), "metric": series.metric}
            head.update({LABEL_PREFIX + k: v for k, v in series.labels})
            prefix[sid] = json.dumps(head)[:-1]
        ts = table["ts"].to_pylist()
        values = table["value"].to_pylist()
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w") as out:
            out.writelines(
                f'{prefix[s]}, "ts": {t}, "value": {v!r}}}\n'
                for s, t, v in zip(sids.tolist(), ts, values, strict=True)
            )
        return len(ts), [LABEL_PREFIX + k for k in label_keys]

    def task_spec(self, key: PartitionKey, hours: list[int], staged: Path, dimensions: list[str]) -> dict:
        """The index_parallel task replacing `hours` of the partition's Druid datasource."""
        return {
            "type": "index_parallel",
            "spec": {
                "dataSchema": {
                    "dataSource": druid_datasource(*key),
                    "timestampSpec": {"column": "ts", "format": "millis"},
                    "dimensionsSpec": {
                        "dimensions": ["metric", "sid", *dimensions, {"type": "double", "name": "value"}]
                    },
                    "metricsSpec": [],
                    "granularitySpec": {
                        "segmentGranularity": "hour",
                        "queryGranularity": "none",
                        "rollup": False,
                        "intervals": _intervals(hours),
                    },
                },
                "ioConfig": {
                    "type": "index_parallel",
                    "inputSource": {"type": "local", "files": [str(staged)]},
                    "inputFormat": {"type": "json"},
                    "appendToExisting": False,
                    # Hours left without points get tombstones: what they held in Druid is dropped.
                    "dropExisting": True,
                },
                "tuningConfig": {
                    "type": "index_parallel",
                    "maxNumConcurrentSubTasks": 1,
                    "awaitSegmentAvailabilityTimeoutMillis": self.settings.availability_timeout_ms,
                },
            },
        }

    async def _replace(
        self, key: PartitionKey, hours: list[int], staged: Path, rows: int, dimensions: list[str]
    ) -> None:
        """Submit the task and wait until Druid serves its segments."""
        assert self._session is not None, "start() first"
        if not rows:
            await self._drop(key, hours)
            return
        spec = self.task_spec(key, hours, staged, dimensions)
        async with self._session.post(f"{self.overlord}/druid/indexer/v1/task", json=spec) as response:
            if response.status != 200:
                raise IngestFailed(f"task refused: HTTP {response.status} {(await response.text())[:300]}")
            task_id = (await response.json())["task"]
        deadline = asyncio.get_running_loop().time() + self.settings.task_timeout_seconds
        while True:
            await asyncio.sleep(0.25)
            async with self._session.get(
                f"{self.overlord}/druid/indexer/v1/task/{task_id}/status"
            ) as response:
                status = (await response.json())["status"]
            code = status.get("statusCode") or status.get("status")
            if code == "SUCCESS":
                break
            if code == "FAILED":
                raise IngestFailed(f"task {task_id} failed: {status.get('errorMsg')}")
            if asyncio.get_running_loop().time() > deadline:
                raise IngestFailed(
                    f"task {task_id} still {code} after {self.settings.task_timeout_seconds} s"
                )
        async with self._session.get(f"{self.overlord}/druid/indexer/v1/task/{task_id}/reports") as response:
            report = await response.json(content_type=None)
        payload = report.get("ingestionStatsAndErrors", {}).get("payload", {})
        if not payload.get("segmentAvailabilityConfirmed", False):
            raise IngestFailed(f"task {task_id} succeeded but its segments were not served in time")
        self.stats["tasks"] += 1
        self.stats["rows"] += rows

    async def _drop(self, key: PartitionKey, hours: list[int]) -> None:
        """Hours with no points left (retention): mark what Druid holds there unused."""
        assert self._session is not None
        for interval in _intervals(hours):
            url = f"{self.overlord}/druid/indexer/v1/datasources/{druid_datasource(*key)}/markUnused"
            async with self._session.post(url, json={"interval": interval}) as response:
                if response.status not in (200, 204, 404):
                    raise IngestFailed(f"markUnused refused: HTTP {response.status}")


def druid_urls(broker: str, overlord: str, coordinator: str) -> tuple[str, str]:
    """(broker URL, URL ingestion tasks go to), checked: ConfigError naming the variable."""
    for name, url in (
        ("DRUID_BROKER_URL", broker),
        ("DRUID_OVERLORD_URL", overlord),
        ("DRUID_COORDINATOR_URL", coordinator),
    ):
        if url and not url.startswith(("http://", "https://")):
            raise ConfigError(f"invalid configuration: {name}: {url!r} is not an http(s) URL")
    if not (overlord or coordinator):
        raise ConfigError(
            "invalid configuration: DRUID_OVERLORD_URL: needed with DRUID_BROKER_URL (ingestion tasks "
            "go there; DRUID_COORDINATOR_URL also works for a coordinator running as the overlord)"
        )
    return broker, overlord or coordinator


def _intervals(hours: list[int]) -> list[str]:
    """Consecutive hours merged into ISO-8601 intervals."""
    out: list[str] = []
    run_start = prev = None
    for hour in sorted(hours):
        if run_start is None:
            run_start = prev = hour
        elif hour == prev + 1:
            prev = hour
        else:
            out.append(f"{iso(run_start * HOUR_MS)}/{iso((prev + 1) * HOUR_MS)}")
            run_start = prev = hour
    if run_start is not None:
        out.append(f"{iso(run_start * HOUR_MS)}/{iso((prev + 1) * HOUR_MS)}")
    return out
