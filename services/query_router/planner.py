"""Routing: resolves a query's time window and step, then splits it into fragments.

Where points live is known exactly: the hot tier reports its time span, each segment its own.
Auto (and realtime) read the hot tier only where it has points: a range that starts before the
hot tier's oldest point is split at that point (aligned down to the step, so no bucket straddles
two fragments) into a cold fragment (segments only) and a hot fragment (hot tier plus any
segments in the same span), run in parallel and concatenated. Batch reads everything in one pass,
unless Trino is configured: then batch splits the same way and the cold fragment is "trino" (raw
Parquet on the Trino server, `_remote`), for the aggregations Trino computes with equal numbers.

Every fragment also says how its segments are read: from their 1-hour or 1-minute rollups where
those answer the aggregation exactly, from their points maps for a mergeable aggregation (or raw
points) over few series at any other step, else raw points through DuckDB (`plan`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from libs.errors import InvalidArgument
from libs.storage import (
    POINTS,
    RESOLUTIONS,
    ROLLUP_AGGREGATIONS,
    Snapshot,
    cover,
    resolution_for,
    split_window,
)
from libs.timeparse import round_step_ms
from services.query_router.engine import Bucketing, Fragment
from services.query_router.spec import RAW

DEFAULT_LOOKBACK_MS = 3_600_000
TARGET_POINTS = 300
# A mergeable query no rollup fits reads the points maps (numpy) instead of Parquet (DuckDB, which
# uses every core but pays milliseconds to start) when its series hold at most this many points,
# counted at one point every ASSUMED_INTERVAL_MS (Prometheus' usual scrape interval).
POINTS_READ_MAX = 1_000_000
ASSUMED_INTERVAL_MS = 10_000


@dataclass(frozen=True)
class Window:
    """The resolved [start, end) and bucketing of a query."""

    start: int
    end: int
    bucketing: Bucketing


def choose_step(range_ms: int) -> int:
    """The smallest round step giving at most TARGET_POINTS buckets."""
    return round_step_ms(range_ms, TARGET_POINTS)


def resolve_window(
    lookback_ms: int | None,
    start_ms: int | None,
    end_ms: int | None,
    step_ms: int | None,
    now_ms: int,
    max_points: int,
) -> Window:
    """Absolute window and step (bucket semantics in docs/api.md).

    An explicit start/end is kept as given: buckets are step-aligned and clipped to it. A relative
    window ending now is widened outward to whole steps, [floor(now - lookback), end of the current
    step), so it holds every point of the last `lookback`, and repeated queries within one step
    share a cache entry."""
    if start_ms is not None:
        end = end_ms if end_ms is not None else now_ms + 1
        start = start_ms
        step = step_ms or choose_step(end - start)
    else:
        lookback = lookback_ms or DEFAULT_LOOKBACK_MS
        step = step_ms or choose_step(lookback)
        if end_ms is not None:
            end, start = end_ms, end_ms - lookback
        else:
            end = (now_ms // step + 1) * step
            start = ((now_ms - lookback) // step) * step
    if end <= start:
        raise InvalidArgument("end must be after start", "end")
    points = math.ceil((end - start) / step)
    if points > max_points:
        raise InvalidArgument(
            f"a step of {step} ms over {end - start} ms gives {points} points per series; "
            f"at most {max_points} are allowed: use a larger step or a shorter range",
            "step",
        )
    return Window(start, end, Bucketing(step))


@dataclass(frozen=True)
class Plan:
    """The fragments to run and why."""

    mode: str
    reason: str
    fragments: tuple[Fragment, ...]


def _aligned_down(ts: int, bucketing: Bucketing) -> int | None:
    if bucketing.calendar:
        return None  # calendar buckets are never split
    return (ts // bucketing.step_ms) * bucketing.step_ms


def plan(
    mode: str,
    window: Window,
    snapshot: Snapshot,
    aggregation: str | None = None,
    n_series: int | None = None,
    batch_engine: str | None = None,
) -> Plan:
    """Split the window into fragments according to the mode and where the points are, and read
    the segments' rollups instead of raw points where they answer the aggregation exactly. A
    mergeable aggregation no rollup fits (a step of seconds, say) over few points (`n_series`
    selected, at most POINTS_READ_MAX points at one every ASSUMED_INTERVAL_MS) reads the segments'
    points maps and aggregates them here instead of scanning Parquet with DuckDB.

    `batch_engine` ("trino" when Trino is configured): batch mode sends the segments before the hot
    tier to that engine (raw Parquet, no rollups), and the rest to the embedded engines (`_remote`)."""
    bucketing = window.bucketing
    if mode == "batch" and batch_engine is not None:
        remote = _remote(window, snapshot, aggregation, batch_engine)
        if remote is not None:
            return remote
    rollup = resolution_for(bucketing.step_ms, aggregation or "", bucketing.calendar)
    if (
        rollup is None
        and n_series is not None
        # Raw is `last` per timestamp (one group per series): mergeable too.
        and (aggregation in ROLLUP_AGGREGATIONS or aggregation == RAW)
        and bucketing.calendar is None
        and n_series * ((window.end - window.start) // ASSUMED_INTERVAL_MS + 1) <= POINTS_READ_MAX
    ):
        rollup = POINTS
    the_plan = _split(mode, window, snapshot, rollup)
    if rollup is None:
        return the_plan
    if rollup == POINTS:
        return Plan(
            the_plan.mode,
            f"{the_plan.reason}; segments read from their points maps (a few series: raw points aggregated "
            "without DuckDB)",
            tuple(dataclasses.replace(f, rollup=rollup) for f in the_plan.fragments),
        )
    names = {"1h": "1-hour", "1m": "1-minute"}
    pieces = cover(window.start, window.end, rollup)
    finer = [names[r] for r in dict.fromkeys(r for r, _, _ in pieces) if r is not None and r != rollup]
    ends = ([f"{' and '.join(finer)} rollups"] if finer else []) + (
        ["raw points"] if any(r is None for r, _, _ in pieces) else []
    )
    detail = f" ({' and '.join(ends)} for the cut ends)" if ends else ""
    return Plan(
        the_plan.mode,
        f"{the_plan.reason}; segments read from their {names[rollup]} rollups{detail}",
        tuple(dataclasses.replace(f, rollup=rollup) for f in the_plan.fragments),
    )


def _split(mode: str, window: Window, snapshot: Snapshot, rollup: str | None) -> Plan:
    start, end = window.start, window.end
    # Downsampled segments (raw points past retention) hold rollups only, so they serve only
    # windows no rollup bucket of which is cut (the cut ends need raw points).
    whole = rollup in RESOLUTIONS and not split_window(start, end, rollup)[1]
    candidates = snapshot.segments + (snapshot.downsampled if whole else ())
    segments = tuple(s for s in candidates if s.max_ts >= start and s.min_ts < end)
    hot_in_range = (
        snapshot.hot is not None
        and snapshot.hot_min_ts is not None
        and snapshot.hot_max_ts >= start
        and snapshot.hot_min_ts < end
    )
    hot = snapshot.hot if hot_in_range else None
    if mode == "batch":
        return Plan(
            "batch", "batch reads every source in one pass", (Fragment("duckdb", start, end, segments, hot),)
        )
    if hot is None:
        return Plan(
            mode, "no hot points in range: segments only", (Fragment("duckdb", start, end, segments, None),)
        )
    if not segments:
        return Plan(mode, "every point in range is in the hot tier", (Fragment("hot", start, end, (), hot),))
    boundary = _aligned_down(max(snapshot.hot_min_ts, start), window.bucketing)
    if boundary is None or boundary <= start:
        return Plan(
            mode,
            "hot points from the start of the range: one pass over the hot tier and segments",
            (Fragment("hot", start, end, segments, hot),),
        )
    cold = tuple(s for s in segments if s.min_ts < boundary)
    warm = tuple(s for s in segments if s.max_ts >= boundary)
    return Plan(
        mode,
        f"federated: segments before {boundary}, hot tier and recent segments after, in parallel",
        (Fragment("duckdb", start, boundary, cold, None), Fragment("hot", boundary, end, warm, hot)),
    )


# What a remote batch engine computes with the same numbers as the embedded path.
REMOTE_AGGREGATIONS = frozenset({"avg", "sum", "min", "max", "count", "last", "p50", "p90", "p95", "p99"})


def _remote(window: Window, snapshot: Snapshot, aggregation: str | None, engine: str) -> Plan | None:
    """A batch plan whose cold fragment runs on `engine`, or None when the embedded plan must run
    (an aggregation or calendar bucket the engine does not compute the same, or no segment in range)."""
    bucketing = window.bucketing
    if aggregation not in REMOTE_AGGREGATIONS or bucketing.calendar not in (None, "all"):
        return None
    start, end = window.start, window.end
    segments = tuple(s for s in snapshot.segments if s.max_ts >= start and s.min_ts < end)
    if not segments:
        return None
    hot = snapshot.hot
    if (
        hot is None
        or snapshot.hot_min_ts is None
        or snapshot.hot_max_ts < start
        or snapshot.hot_min_ts >= end
    ):
        return Plan(
            "batch",
            f"batch: every point in range is in segments, read by {engine}",
            (Fragment(engine, start, end, segments, None),),
        )
    boundary = _aligned_down(max(snapshot.hot_min_ts, start), bucketing)
    if boundary is None or boundary <= start:
        return None
    cold = tuple(s for s in segments if s.min_ts < boundary)
    warm = tuple(s for s in segments if s.max_ts >= boundary)
    return Plan(
        "batch",
        f"batch: segments before {boundary} on {engine}, hot tier and recent segments after, embedded, in parallel",
        (Fragment(engine, start, boundary, cold, None), Fragment("hot", boundary, end, warm, hot)),
    )
