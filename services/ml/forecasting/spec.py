"""Validation of a ForecastRequest into a ForecastSpec; every rejection names its field."""

from __future__ import annotations

import math
from dataclasses import dataclass

from libs.errors import InvalidArgument
from libs.timeparse import parse_duration_ms
from platformq.analytics.v1 import common_pb2
from platformq.analytics.v1 import ml_service_pb2 as pb
from services.ml.forecasting.methods import STATISTICAL
from services.ml.spec import InlineSeries, parse_inline, parse_window
from services.query_router.spec import DEFAULT_DATASOURCE, LABEL_KEY, LabelMatch, filters_from_proto

METHODS = ("auto", "prophet", *STATISTICAL)
DEFAULT_LEVELS = (80.0, 95.0)
DIRECTIONS = ("above", "below")
DEFAULT_LOOKBACK_MS = 7 * 86_400_000


@dataclass(frozen=True)
class ForecastSpec:
    """A validated Forecast request: stored series (kind "stored") or inline histories ("inline")."""

    kind: str
    method: str
    horizon: int
    step_ms: int | None
    levels: tuple[float, ...]
    threshold: float | None = None
    direction: str = "above"
    datasource: str = DEFAULT_DATASOURCE
    metrics: tuple[str, ...] = ()
    filters: tuple[LabelMatch, ...] = ()
    group_by: tuple[str, ...] = ()
    lookback_ms: int | None = None
    start_ms: int | None = None
    end_ms: int | None = None
    inline: tuple[InlineSeries, ...] = ()
    origin: str = "metric"  # the request field the series come from (metric, selection, history, series)


def check_series_count(count: int, limit: int, field: str) -> None:
    """Refuse a request that would fit more series than FORECAST_MAX_SERIES. A stored selection's
    count is known only once its series are read, so the component calls this before fitting."""
    if count > limit:
        raise InvalidArgument(
            f"too many series: the request matches {count} series, over the limit of {limit} per forecast "
            "(FORECAST_MAX_SERIES); narrow it with label filters"
            + (" or fewer group_by labels" if field == "group_by" else ""),
            field,
        )


def _labels(labels, where: str) -> tuple[LabelMatch, ...]:
    for key in labels:
        if not LABEL_KEY.fullmatch(key):
            raise InvalidArgument(f"{key!r} is not a label key", f"{where}.{key}")
    return tuple(LabelMatch(k, "=", (v,)) for k, v in sorted(labels.items()))


def forecast_from_proto(request: pb.ForecastRequest, max_horizon: int) -> ForecastSpec:
    """Validate a ForecastRequest; exactly one of metric, selection, history or series."""
    method = request.method or "auto"
    if method not in METHODS:
        raise InvalidArgument(f"{method!r} is not a method; use one of {', '.join(METHODS)}", "method")
    if not 0 < request.horizon <= max_horizon:
        raise InvalidArgument(f"must be between 1 and {max_horizon} (FORECAST_MAX_HORIZON)", "horizon")
    step_ms = parse_duration_ms(request.step, "step") if request.step else None
    if step_ms is not None and step_ms <= 0:
        raise InvalidArgument("must be a positive duration", "step")
    levels = tuple(request.levels) or DEFAULT_LEVELS
    for i, level in enumerate(levels):
        if not 0 < level < 100:
            raise InvalidArgument(f"{level} is outside (0, 100)", f"levels[{i}]")
    if len(set(levels)) != len(levels):
        raise InvalidArgument("levels must be distinct", "levels")
    threshold = request.threshold if request.HasField("threshold") else None
    if threshold is not None and not math.isfinite(threshold):
        raise InvalidArgument(f"{threshold} is not a finite number", "threshold")
    direction = request.direction or "above"
    if direction not in DIRECTIONS:
        raise InvalidArgument(
            f"{direction!r} is not a direction; use one of {', '.join(DIRECTIONS)}", "direction"
        )
    for i, key in enumerate(request.group_by):
        if not LABEL_KEY.fullmatch(key):
            raise InvalidArgument(f"{key!r} is not a label key", f"group_by[{i}]")
    selection = request.selection if request.HasField("selection") else None
    history = request.history if request.HasField("history") else None
    shapes = [
        name
        for name, given in (
            ("metric", request.metric),
            ("selection", selection),
            ("history", history),
            ("series", request.series),
        )
        if given
    ]
    if len(shapes) != 1:
        raise InvalidArgument(
            "give exactly one of metric (a stored series), selection (stored series), history or series "
            f"(inline); got {', '.join(shapes) or 'none'}",
            "metric" if not shapes else shapes[1],
        )
    common = {
        "method": method,
        "horizon": request.horizon,
        "step_ms": step_ms,
        "levels": tuple(sorted(levels)),
        "threshold": threshold,
        "direction": direction,
    }
    if history is not None or request.series:
        if request.group_by:
            raise InvalidArgument("group_by applies to stored series only", "group_by")
        if history is not None:
            # A single history may come without a name; it is then reported as "history".
            named = common_pb2.Series(name=history.name or "history", labels=history.labels)
            named.timestamps_ms.extend(history.timestamps_ms)
            named.values.extend(history.values)
            try:
                parsed = [parse_inline(0, named)]
            except InvalidArgument as exc:
                raise InvalidArgument(exc.reason, (exc.field or "").replace("series[0]", "history")) from None
        else:
            parsed = [parse_inline(i, s) for i, s in enumerate(request.series)]
        return ForecastSpec(
            "inline",
            inline=tuple(parsed),
            origin="history" if history is not None else "series",
            **common,
        )
    if selection is not None:
        if not selection.metrics:
            raise InvalidArgument("give at least one metric to forecast", "selection.metrics")
        for i, name in enumerate(selection.metrics):
            if not name.strip():
                raise InvalidArgument("must not be empty", f"selection.metrics[{i}]")
        filters = _labels(selection.labels, "selection.labels") + filters_from_proto(
            list(selection.filters), "selection.filters"
        )
        lookback, start, end = parse_window(
            selection.time_range, selection.start, selection.end, "selection."
        )
        datasource, metrics, origin = selection.datasource, tuple(selection.metrics), "selection"
    else:
        filters = _labels(request.labels, "labels")
        lookback, start, end = None, None, None
        datasource, metrics, origin = request.datasource, (request.metric,), "metric"
    return ForecastSpec(
        "stored",
        datasource=datasource or DEFAULT_DATASOURCE,
        metrics=metrics,
        filters=filters,
        group_by=tuple(request.group_by),
        lookback_ms=lookback if lookback is not None or start is not None else DEFAULT_LOOKBACK_MS,
        start_ms=start,
        end_ms=end,
        origin=origin,
        **common,
    )
