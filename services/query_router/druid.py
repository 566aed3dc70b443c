"""The Druid engine: runs timeseries fragments on a Druid broker (pydruid), over the points the
loader (druid_loader.py) has mirrored into Druid, with the same numbers as the embedded engines.

What Druid answers: sum, min, max, count and avg (as sum / count) per series and bucket, grouped
by the series id dimension and merged into the query's groups here, so label filters, tenant
scoping and grouping are decided by the same catalog code as on the embedded path. Percentiles,
rate and last stay embedded (Druid's quantiles are approximate sketches, rate needs per-series
ordering, last breaks ties between series differently).

Which part of a window Druid serves is decided per query (`DruidMirror.cut`): only whole hours the
loader reports in sync with the snapshot's segments, before the hot tier; the rest of the window
runs embedded and the two are concatenated (buckets are aligned at the cut).

Deadlines: the request's remaining time goes to the broker as `context.timeout` and bounds the HTTP
call; when it passes or the caller goes away the query is cancelled on the broker by its queryId.
"""

from __future__ import annotations

import asyncio
import logging
import time

# pydruid 0.6.9 uses urllib.request without importing it itself.
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
from pydruid.client import BaseDruidClient
from pydruid.utils.aggregators import count, doublemax, doublemin, doublesum
from pydruid.utils.filters import Filter

from libs import arrowbuf
from libs.errors import connection_failure
from libs.storage import Segment, Snapshot
from services.query_router.cancel import Deadline
from services.query_router.engine import RESULT_SCHEMA, Bucketing, EngineUnreachable, Fragment, FragmentResult
from services.query_router.planner import Window

log = logging.getLogger(__name__)

# Aggregations Druid computes exactly as the embedded engines do.
DRUID_AGGREGATIONS = frozenset({"avg", "sum", "min", "max", "count"})
# Druid's aggregators for the partials each aggregation needs (rows are points: count is exact,
# and always asked for: it is the answer's points_scanned).
_PARTIALS = {
    "sum": {"sum": doublesum("value"), "count": count("value")},
    "count": {"count": count("value")},
    "min": {"min": doublemin("value"), "count": count("value")},
    "max": {"max": doublemax("value"), "count": count("value")},
    "avg": {"sum": doublesum("value"), "count": count("value")},
}
HOUR_MS = 3_600_000
PartitionKey = tuple[str, str]
CALENDAR_PERIODS = {"month": "P1M", "quarter": "P3M", "year": "P1Y"}
# How long after the deadline a cancelled call may take to return (the broker was told to stop).
CANCEL_GRACE_SECONDS = 2.0


class DruidUnreachable(EngineUnreachable):
    """The broker could not be connected to or failed; `reason` says why."""


def druid_datasource(tenant: str, datasource: str) -> str:
    """The Druid datasource holding one (tenant, datasource): '~' is in neither name's alphabet, so
    the mapping is one to one, and no query can read another tenant's rows."""
    return f"platformq~{tenant}~{datasource}"


def granularity_of(bucketing: Bucketing) -> str | dict:
    """Druid's granularity for the embedded engines' bucketing (fixed widths from the epoch)."""
    if bucketing.calendar == "all":
        return "all"
    if bucketing.calendar:
        return {"type": "period", "period": CALENDAR_PERIODS[bucketing.calendar], "timeZone": "UTC"}
    return {"type": "duration", "duration": bucketing.step_ms, "origin": "1970-01-01T00:00:00Z"}


def iso(ms: int) -> str:
    """An epoch-ms instant as Druid's ISO-8601 (UTC, milliseconds)."""
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def parse_iso_ms(text: str) -> int:
    """Druid's ISO-8601 timestamp as epoch ms."""
    return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)


def hours_of(segments: Iterable[Segment], lo_hour: int | None = None) -> dict[int, frozenset[str]]:
    """Hour number (epoch ms // HOUR_MS) -> paths of the segments with points in that hour."""
    out: dict[int, set[str]] = {}
    for s in segments:
        first = s.min_ts // HOUR_MS if lo_hour is None else max(lo_hour, s.min_ts // HOUR_MS)
        for hour in range(first, s.max_ts // HOUR_MS + 1):
            out.setdefault(hour, set()).add(str(s.path))
    return {h: frozenset(p) for h, p in out.items()}


class DruidMirror:
    """Which hours of each (tenant, datasource) Druid holds, and from which segment files."""

    def __init__(self) -> None:
        self._loaded: dict[PartitionKey, dict[int, frozenset[str]]] = {}

    def loaded(self, key: PartitionKey) -> dict[int, frozenset[str]]:
        """A copy of the loaded hours of one partition."""
        return dict(self._loaded.get(key, {}))

    def forget(self, key: PartitionKey, hours: Iterable[int]) -> None:
        """Hours about to be replaced: no query reads them in Druid until they are loaded again."""
        part = self._loaded.setdefault(key, {})
        for hour in hours:
            part.pop(hour, None)

    def mark_loaded(self, key: PartitionKey, hours: dict[int, frozenset[str]]) -> None:
        """Hours Druid now serves, with the files they were read from (empty: no points)."""
        self._loaded.setdefault(key, {}).update(hours)

    def cut(self, tenant: str, datasource: str, snapshot: Snapshot, window: Window) -> int | None:
        """The end of the part of `window` Druid can answer exactly: [window.start, cut) holds only
        hours Druid has loaded from the snapshot's current segments, no hot point and no downsampled
        segment, and at least one segment; cut is aligned to the window's buckets. None: no part."""
        start, end, bucketing = window.start, window.end, window.bucketing
        limit = end
        if snapshot.hot_min_ts is not None and snapshot.hot_max_ts >= start:
            limit = min(limit, snapshot.hot_min_ts)
        for s in snapshot.downsampled:
            if s.max_ts >= start and s.min_ts < end:
                limit = min(limit, s.min_ts)
        first_hour = start // HOUR_MS
        nearby = [s for s in snapshot.segments if s.max_ts >= first_hour * HOUR_MS and s.min_ts < limit]
        expected = hours_of(nearby, first_hour)
        loaded = self._loaded.get((tenant, datasource), {})
        hour = first_hour
        while hour * HOUR_MS < limit:
            if expected.get(hour, frozenset()) != loaded.get(hour, frozenset()):
                limit = min(limit, hour * HOUR_MS)
                break
            hour += 1
        if limit >= end:
            cut = end
        elif bucketing.calendar is not None:
            return None  # calendar buckets (and "all") are never split
        else:
            cut = (limit // bucketing.step_ms) * bucketing.step_ms
        if cut <= start or not any(s.max_ts >= start and s.min_ts < cut for s in nearby):
            return None
        return cut


class _TimedDruidClient(BaseDruidClient):
    """pydruid's client with a socket timeout (PyDruid's own urlopen has none): `_post` is the
    method pydruid leaves to its client subclasses."""

    def __init__(self, url: str, timeout: float) -> None:
        super().__init__(url, "druid/v2")
        self.timeout = timeout

    def _post(self, query):
        headers, body, url = self._prepare_url_headers_and_body(query)
        request = urllib.request.Request(url, body, headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                data = response.read().decode("utf-8")
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode("utf-8", "replace")[:500]
            if exc.code in (502, 503):
                raise DruidUnreachable(f"broker answered HTTP {exc.code}: {detail}") from None
            raise DruidQueryFailed(exc.code, detail) from None
        except (urllib.error.URLError, OSError) as exc:
            log.warning("Druid broker %s unreachable: %s", self.url, exc)
            raise DruidUnreachable(f"broker unreachable: {connection_failure(exc)}") from None
        query.parse(data)
        return query


class DruidQueryFailed(Exception):
    """The broker refused or failed the query (not a connection problem)."""

    def __init__(self, code: int, detail: str) -> None:
        super().__init__(f"Druid answered HTTP {code}: {detail}")
        self.code = code
        self.detail = detail


@dataclass(frozen=True)
class DruidSettings:
    """Where the broker is (DRUID_BROKER_URL)."""

    broker_url: str


class DruidEngine:
    """Runs fragments on the broker; see the module docstring."""

    aggregations = DRUID_AGGREGATIONS
    """The aggregations Druid answers with the embedded path's numbers."""

    def __init__(self, settings: DruidSettings, mirror: DruidMirror) -> None:
        self.broker_url = settings.broker_url.rstrip("/")
        # What the loader has put into Druid: decides which part of a window runs here.
        self.mirror = mirror

    def query_body(
        self, fragment: Fragment, sids: np.ndarray, aggregation: str, bucketing: Bucketing, timeout_ms: int
    ) -> tuple[str, dict]:
        """(queryId, the groupBy query's arguments for pydruid) of one fragment."""
        segment = fragment.segments[0]
        query_id = f"platformq-{uuid.uuid4()}"
        return query_id, {
            "datasource": druid_datasource(segment.tenant, segment.datasource),
            "granularity": granularity_of(bucketing),
            "intervals": [f"{iso(fragment.start)}/{iso(fragment.end)}"],
            "dimensions": ["sid"],
            "filter": Filter(type="in", dimension="sid", values=[str(s) for s in sids.tolist()]),
            "aggregations": _PARTIALS[aggregation],
            "context": {"timeout": max(1, timeout_ms), "queryId": query_id},
        }

    def run(
        self, fragment: Fragment, selection: pa.Table, aggregation: str, bucketing: Bucketing, seconds: float
    ) -> tuple[str, Callable[[], FragmentResult]]:
        """(queryId, a blocking call returning the FragmentResult); split so the caller can cancel."""
        sids = arrowbuf.numpy(selection["series_id"])
        query_id, args = self.query_body(fragment, sids, aggregation, bucketing, int(seconds * 1000))

        def call() -> FragmentResult:
            started = time.perf_counter()
            client = _TimedDruidClient(self.broker_url, seconds + CANCEL_GRACE_SECONDS)
            rows = client.groupby(**args).result
            table = merge_rows(rows, selection, aggregation, bucketing, fragment.start)
            scanned = int(sum(r["event"]["count"] for r in rows))
            return FragmentResult(table, scanned, time.perf_counter() - started, "druid")

        return query_id, call

    def cancel(self, query_id: str) -> None:
        """Ask the broker to stop a running query (best effort: it may have finished already)."""
        request = urllib.request.Request(f"{self.broker_url}/druid/v2/{query_id}", method="DELETE")
        try:
            urllib.request.urlopen(request, timeout=2).close()
        except (urllib.error.URLError, OSError) as exc:
            log.info("could not cancel Druid query %s: %s", query_id, exc)

    async def run_fragment(
        self,
        fragment: Fragment,
        selection: pa.Table,
        aggregation: str,
        bucketing: Bucketing,
        deadline: Deadline,
    ) -> FragmentResult:
        """Run one fragment under `deadline`; cancelled on the broker when it passes or the caller
        goes away. DruidUnreachable when the broker cannot answer."""
        if deadline.remaining() <= 0:
            raise deadline.exceeded()
        query_id, call = self.run(fragment, selection, aggregation, bucketing, deadline.remaining())
        worker = asyncio.get_running_loop().run_in_executor(None, call)
        try:
            return await asyncio.wait_for(asyncio.shield(worker), deadline.remaining())
        except TimeoutError:
            await asyncio.to_thread(self.cancel, query_id)
            await asyncio.wait({worker}, timeout=CANCEL_GRACE_SECONDS)
            raise deadline.exceeded() from None
        except asyncio.CancelledError:
            await asyncio.to_thread(self.cancel, query_id)
            raise
        except DruidQueryFailed as exc:
            # 504: the broker stopped the query at its context.timeout, our deadline.
            if exc.code == 504 or "QueryInterruptedException" in exc.detail:
                raise deadline.exceeded() from None
            raise DruidUnreachable(str(exc)) from None


def merge_rows(
    rows: list[dict], selection: pa.Table, aggregation: str, bucketing: Bucketing, start: int
) -> pa.Table:
    """Per-series partials from Druid merged into (gid, bucket, value), sorted by group and bucket."""
    if not rows:
        return arrowbuf.empty_table(RESULT_SCHEMA)
    sid_to_gid = dict(zip(selection["series_id"].to_pylist(), selection["gid"].to_pylist(), strict=True))
    gids = np.fromiter((sid_to_gid[int(r["event"]["sid"])] for r in rows), dtype=np.int64, count=len(rows))
    if bucketing.calendar == "all":
        buckets = np.full(len(rows), start, dtype=np.int64)
    else:
        buckets = np.fromiter((parse_iso_ms(r["timestamp"]) for r in rows), dtype=np.int64, count=len(rows))
    keys, inverse = np.unique(np.stack([gids, buckets], axis=1), axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)

    def column(name: str) -> np.ndarray:
        return np.fromiter((float(r["event"][name]) for r in rows), dtype=np.float64, count=len(rows))

    if aggregation in ("sum", "count", "avg"):
        total = np.zeros(len(keys))
        if aggregation != "count":
            np.add.at(total, inverse, column("sum"))
        if aggregation != "sum":
            counts = np.zeros(len(keys))
            np.add.at(counts, inverse, column("count"))
            total = counts if aggregation == "count" else total / counts
        values = total
    elif aggregation == "min":
        values = np.full(len(keys), np.inf)
        np.minimum.at(values, inverse, column("min"))
    else:
        values = np.full(len(keys), -np.inf)
        np.maximum.at(values, inverse, column("max"))
    return pa.table(
        {
            "gid": arrowbuf.array(keys[:, 0], pa.int32()),
            "bucket": arrowbuf.array(keys[:, 1], pa.int64()),
            "value": arrowbuf.array(values, pa.float64()),
        },
        schema=RESULT_SCHEMA,
    )
