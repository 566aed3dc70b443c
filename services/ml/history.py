"""Stored history for the ML service, read through the query-router's gRPC API (never segment
files), so the ML service runs the same in mode all and in distributed mode. Reads carry the
identity of the call they are made for (libs/identity.py): the tenant's data only."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import grpc
import numpy as np
from grpc import aio

from libs.errors import DeadlineExceeded, InvalidArgument, Unavailable
from libs.identity import PermissionDenied, outgoing_metadata
from libs.timeparse import format_time_ms
from platformq.analytics.v1 import common_pb2, query_service_pb2, query_service_pb2_grpc
from services.ml.detectors.base import FloatArray, IntArray

MAX_LOOKBACK_MS = 7 * 86_400_000
"""The furthest back `last_before` reads."""


@dataclass(frozen=True)
class StoredSeries:
    """One stored series' raw points over a window."""

    metric: str
    labels: dict[str, str]
    ts: IntArray
    values: FloatArray

    @property
    def key(self) -> tuple[str, tuple[tuple[str, str], ...]]:
        """(metric, sorted labels): which series this is."""
        return self.metric, tuple(sorted(self.labels.items()))


class HistoryClient:
    """Raw points of stored series, by metric and label filters, from the query-router."""

    def __init__(self, address: Callable[[], str], max_message_bytes: int) -> None:
        # Resolved on first use: in mode all the query-router is this process, on a port known
        # only once the server has started.
        self._address = address
        self._options = [
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
        ]
        self._channel: aio.Channel | None = None

    def _stub(self) -> query_service_pb2_grpc.QueryServiceStub:
        if self._channel is None:
            self._channel = aio.insecure_channel(self._address(), options=self._options)
        return query_service_pb2_grpc.QueryServiceStub(self._channel)

    async def raw(
        self,
        datasource: str,
        metrics: list[str],
        filters: list[common_pb2.LabelFilter],
        start_ms: int,
        end_ms: int,
        timeout: float | None = None,
    ) -> list[StoredSeries]:
        """Every point of every matching series in [start_ms, end_ms) of the tenant the call is made
        for (the current request's, or the one `acting_as` names); an unknown datasource gives no
        series. `timeout` is the caller's remaining deadline."""
        request = query_service_pb2.QueryRequest(
            datasource=datasource,
            metrics=metrics,
            filters=filters,
            aggregation="raw",
            start=format_time_ms(start_ms),
            end=format_time_ms(end_ms),
            # batch: no query-cache read or entry. A window ending about now never repeats, so each
            # read would be a miss (the live scorer's warm-up of a few hundred series set off
            # LowCacheHitRate on a fresh demo) and an entry that only evicts users' answers.
            mode="batch",
        )
        try:
            response = await self._stub().Query(
                request, timeout=timeout, wait_for_ready=True, metadata=outgoing_metadata()
            )
        except aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return []
            if exc.code() == grpc.StatusCode.INVALID_ARGUMENT:
                raise InvalidArgument(f"the stored history cannot be read: {exc.details()}") from None
            if exc.code() == grpc.StatusCode.PERMISSION_DENIED:
                raise PermissionDenied(exc.details() or "missing scope 'read'", "scope") from None
            if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                raise DeadlineExceeded("the request's deadline passed while reading stored history") from None
            raise Unavailable(
                f"the query-router at {self._address()} did not answer: {exc.details()}"
            ) from None
        return [
            StoredSeries(
                s.metric,
                dict(s.group),
                np.fromiter((p.timestamp_ms for p in s.points), np.int64, len(s.points)),
                np.fromiter((p.value for p in s.points), np.float64, len(s.points)),
            )
            for s in response.series
        ]

    async def last_before(
        self,
        datasource: str,
        metrics: list[str],
        filters: list[common_pb2.LabelFilter],
        before_ms: int,
        points: int,
        spacing_ms: int,
        timeout: float | None = None,
    ) -> dict[tuple[str, tuple[tuple[str, str], ...]], StoredSeries]:
        """The last `points` stored points before `before_ms` of every matching series that has any,
        by `StoredSeries.key`; read over twice `points` spacings back (at most a week)."""
        lookback = min(MAX_LOOKBACK_MS, max(1, spacing_ms) * points * 2)
        found = await self.raw(datasource, metrics, filters, before_ms - lookback, before_ms, timeout)
        return {
            s.key: StoredSeries(s.metric, s.labels, s.ts[-points:], s.values[-points:])
            for s in found
            if len(s.ts)
        }

    async def close(self) -> None:
        """Close the channel."""
        if self._channel is not None:
            await self._channel.close()
