"""What a subscriber asks for: a SubscribeRequest (gRPC) or a WebSocket path and query string,
validated into a `StreamSpec`. Every refusal is InvalidArgument naming the field."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from google.protobuf import json_format

from libs.errors import InvalidArgument
from libs.storage import DEFAULT_TENANT
from libs.streams.frames import Cursor
from libs.timeparse import parse_duration_ms
from platformq.analytics.v1 import query_service_pb2
from platformq.analytics.v1 import realtime_service_pb2 as pb

STREAM_TYPES = ("metrics", "anomalies", "dashboard", "analytics", "alerts")
BUCKET_AGGREGATIONS = ("avg", "sum", "min", "max", "count", "last")
DEFAULT_DATASOURCE = "platform_metrics"
# Query string parameters with a meaning; every other one is a label filter.
PARAMETERS = ("since", "step", "aggregation", "datasource", "query")
MIN_STEP_MS = 1_000
MAX_STEP_MS = 86_400_000
MAX_ID_CHARS = 512

_LABEL_KEY = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_DATASOURCE = re.compile(r"[a-zA-Z_][a-zA-Z0-9_.-]{0,127}")
# Which stream types take label filters (on the series, anomaly or alert labels).
_LABELLED = ("metrics", "anomalies", "alerts")


@dataclass(frozen=True)
class StreamSpec:
    """One validated subscription. `key` groups subscribers into a channel: they get the same frames."""

    stream_type: str
    stream_id: str
    datasource: str = ""
    labels: tuple[tuple[str, str], ...] = ()
    step_ms: int = 0
    step: str = ""
    aggregation: str = ""
    query: query_service_pb2.QueryRequest | None = field(default=None, compare=False)
    query_key: bytes = b""
    since: Cursor | None = None
    tenant: str = DEFAULT_TENANT
    """The subscriber's tenant: its channel carries that tenant's events only."""

    @property
    def key(self) -> tuple:
        """The channel key: everything but `since`."""
        return (
            self.tenant,
            self.stream_type,
            self.stream_id,
            self.datasource,
            self.labels,
            self.step_ms,
            self.aggregation,
            self.query_key,
        )

    def request(self) -> pb.SubscribeRequest:
        """The subscription as understood, defaults filled in (sent in the hello frame)."""
        out = pb.SubscribeRequest(
            stream_type=self.stream_type,
            stream_id=self.stream_id,
            since=str(self.since) if self.since else "",
            labels=dict(self.labels),
            step=self.step,
            aggregation=self.aggregation,
            datasource=self.datasource,
        )
        if self.query is not None:
            out.query.CopyFrom(self.query)
        return out


def parse_subscription(request: pb.SubscribeRequest, tenant: str = DEFAULT_TENANT) -> StreamSpec:
    """Validate a SubscribeRequest of `tenant` (the caller's) into a StreamSpec."""
    kind, stream_id = request.stream_type, request.stream_id
    if kind not in STREAM_TYPES:
        raise InvalidArgument(
            f"{kind!r} is not a stream type; use one of {', '.join(STREAM_TYPES)}", "stream_type"
        )
    if not stream_id.strip():
        raise InvalidArgument("must not be empty", "stream_id")
    if len(stream_id) > MAX_ID_CHARS:
        raise InvalidArgument(f"longer than {MAX_ID_CHARS} characters", "stream_id")
    since = Cursor.parse(request.since) if request.since else None
    labels = _labels(kind, request.labels.items())
    datasource = _datasource(kind, request.datasource)
    step_ms, step, aggregation = _buckets(kind, request.step, request.aggregation)
    query, query_key = _query(kind, request.query if request.HasField("query") else None)
    return StreamSpec(
        kind, stream_id, datasource, labels, step_ms, step, aggregation, query, query_key, since, tenant
    )


ACCESS_TOKEN_PARAM = "access_token"


def request_from_params(
    stream_type: str, stream_id: str, params: Iterable[tuple[str, str]]
) -> pb.SubscribeRequest:
    """A WebSocket's path and query string as a SubscribeRequest: `since`, `step`, `aggregation`,
    `datasource` and `query` (URL-encoded JSON of a query body) are parameters; every other
    parameter is a label filter (`?service_name=auth-service`), except `access_token`: the bearer
    token a browser sends there (it cannot set headers on an upgrade), which the gateway checked."""
    request = pb.SubscribeRequest(stream_type=stream_type, stream_id=stream_id)
    seen: set[str] = set()
    for name, value in params:
        if name == ACCESS_TOKEN_PARAM:
            continue
        if name in seen:
            raise InvalidArgument("given more than once", name)
        seen.add(name)
        if name == "query":
            try:
                json_format.Parse(value, request.query)
            except json_format.ParseError as exc:
                raise InvalidArgument(
                    f"not a query body as POST /api/v1/query takes: {exc}", "query"
                ) from None
        elif name in PARAMETERS:
            setattr(request, name, value)
        else:
            request.labels[name] = value
    return request


def _labels(kind: str, items: Iterable[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    labels = tuple(sorted(items))
    for key, _ in labels:
        if kind not in _LABELLED:
            raise InvalidArgument(f"{kind} streams take no label filters", key)
        if not _LABEL_KEY.fullmatch(key):
            raise InvalidArgument(f"{key!r} is not a label key ([a-zA-Z_][a-zA-Z0-9_]*)", f"labels.{key}")
    return labels


def _datasource(kind: str, datasource: str) -> str:
    if kind != "metrics":
        if datasource:
            raise InvalidArgument(
                f"only metrics streams take a datasource (not {kind} streams)", "datasource"
            )
        return ""
    name = datasource or DEFAULT_DATASOURCE
    if not _DATASOURCE.fullmatch(name):
        raise InvalidArgument(f"{name!r} must match {_DATASOURCE.pattern}", "datasource")
    return name


def _buckets(kind: str, step: str, aggregation: str) -> tuple[int, str, str]:
    if kind != "metrics" and (step or aggregation):
        raise InvalidArgument(
            f"only metrics streams take it (not {kind} streams)", "step" if step else "aggregation"
        )
    if not step:
        if aggregation:
            raise InvalidArgument("needs a step: buckets are aggregated, raw points are not", "aggregation")
        return 0, "", ""
    step_ms = parse_duration_ms(step, "step")
    if not MIN_STEP_MS <= step_ms <= MAX_STEP_MS:
        raise InvalidArgument(f"{step!r} is outside 1s to 1d", "step")
    aggregation = aggregation or "avg"
    if aggregation not in BUCKET_AGGREGATIONS:
        raise InvalidArgument(
            f"{aggregation!r} is not allowed; use one of {', '.join(BUCKET_AGGREGATIONS)}", "aggregation"
        )
    return step_ms, step, aggregation


def _query(
    kind: str, query: query_service_pb2.QueryRequest | None
) -> tuple[query_service_pb2.QueryRequest | None, bytes]:
    if kind != "analytics":
        if query is not None:
            raise InvalidArgument(f"only analytics streams take a query (not {kind} streams)", "query")
        return None, b""
    if query is None:
        raise InvalidArgument(
            "an analytics stream needs a query (the body POST /api/v1/query takes)", "query"
        )
    if query.sql:
        raise InvalidArgument("analytics streams follow metrics queries; SQL is not streamed", "query.sql")
    if query.explain:
        raise InvalidArgument(
            "a plan does not change as data arrives; use POST /api/v1/query/explain", "query.explain"
        )
    if not query.metrics:
        raise InvalidArgument("give at least one metric", "query.metrics")
    normalized = query_service_pb2.QueryRequest()
    normalized.CopyFrom(query)
    normalized.datasource = query.datasource or DEFAULT_DATASOURCE
    return normalized, normalized.SerializeToString(deterministic=True)
