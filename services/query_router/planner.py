"""Routing: resolves a query's time window and step, then splits it into fragments.

Where points live is known exactly: the hot tier reports its time span, each segment its own.
Auto (and realtime) read the hot tier only where it has points: a range that starts before the
hot tier's oldest point is split at that point (aligned down to the step, so no bucket straddles
two fragments) into a cold fragment (segments only) and a hot fragment (hot tier plus any
segments in the same span), run in parallel and concatenated. Batch reads everything in one pass.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from libs.errors import InvalidArgument
from libs.storage.store import Snapshot
from libs.timeparse import round_step_ms
from services.query_router.engine import Bucketing, Fragment

DEFAULT_LOOKBACK_MS = 3_600_000
TARGET_POINTS = 300


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
    """Absolute window and step; relative windows are aligned to the step so that repeated
    queries within one step share a cache entry and buckets are whole."""
    if start_ms is not None:
        end = end_ms if end_ms is not None else now_ms + 1
        start = start_ms
        step = step_ms or choose_step(end - start)
    else:
        lookback = lookback_ms or DEFAULT_LOOKBACK_MS
        if end_ms is not None:
            end = end_ms
            step = step_ms or choose_step(lookback)
        else:
            step = step_ms or choose_step(lookback)
            end = (now_ms // step + 1) * step
        start = end - lookback
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


def plan(mode: str, window: Window, snapshot: Snapshot) -> Plan:
    """Split the window into fragments according to the mode and where the points are."""
    start, end = window.start, window.end
    segments = tuple(s for s in snapshot.segments if s.max_ts >= start and s.min_ts < end)
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
