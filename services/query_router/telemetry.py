"""What the query-router counts about its queries, in the process's self-metrics.

`analytics_query_duration_seconds{engine,mode}` is observed once per answered query with the time
its metadata reports: `engine` is the engines that ran, joined by "+" ("hot", "duckdb",
"duckdb+hot" for a federated query, "cache" for a hit); `mode` is how it was served: "cache" for a
hit, "realtime" when only the hot tier's engine ran, "batch" when segments were read.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import grpc

from libs.errors import AnalyticsError
from libs.selfmetrics import SelfMetrics
from platformq.analytics.v1 import query_service_pb2 as pb


@dataclass
class QueryTrace:
    """What one query has done so far: the engines its plan chose (for labelling a failure)."""

    engines: set[str] = field(default_factory=set)


def served_by(meta: pb.QueryMetadata) -> tuple[str, str]:
    """(engine, mode) labels of an answered query."""
    if meta.cache_hit:
        return "cache", "cache"
    engines = sorted(set(meta.engines))
    if not engines:
        return "none", "batch"
    return "+".join(engines), "realtime" if engines == ["hot"] else "batch"


def status_code(exc: BaseException) -> str:
    """The gRPC status name the interceptor will answer for `exc`."""
    if isinstance(exc, AnalyticsError):
        return exc.status.name
    return grpc.StatusCode.INTERNAL.name


class QueryTelemetry:
    """Records query timings, failures and engine failures (a no-op without metrics)."""

    def __init__(self, metrics: SelfMetrics | None) -> None:
        self.metrics = metrics

    def answered(self, meta: pb.QueryMetadata) -> None:
        """One answered query."""
        if self.metrics is not None:
            engine, mode = served_by(meta)
            self.metrics.query_duration.labels(engine, mode).observe(meta.total_time_ms / 1000)

    def failed(self, exc: BaseException, trace: QueryTrace) -> None:
        """One failed query; `engine` is "none" when it was refused before an engine was chosen."""
        if self.metrics is not None:
            engine = "+".join(sorted(trace.engines)) or "none"
            self.metrics.query_failures.labels(engine, status_code(exc)).inc()

    def engine_unreachable(self, engine: str) -> None:
        """An engine could not read its data (I/O) or be connected to."""
        if self.metrics is not None:
            self.metrics.engine_connection_failures.labels(engine).inc()
