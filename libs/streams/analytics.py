"""`analytics/{name}`: a metrics query re-evaluated as data arrives. The first answer is the whole
answer; after that, a batch of the query's datasource and metrics marks the channel dirty, the
query runs again (at most once per `interval`) and only the points that changed or are new go out."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from libs.errors import AnalyticsError
from libs.streams.channels import Channel
from libs.streams.frames import series_dict
from libs.streams.peers import StreamPeers
from libs.streams.spec import StreamSpec
from platformq.analytics.v1 import query_service_pb2

log = logging.getLogger(__name__)

SeriesKey = tuple[str, tuple[tuple[str, str], ...], str]
Answer = dict[SeriesKey, dict[int, float]]


def answer_of(reply: query_service_pb2.QueryResponse) -> Answer:
    """A query answer as {(metric, group, aggregation): {timestamp: value}}."""
    return {
        (s.metric, tuple(sorted(s.group.items())), s.aggregation): {p.timestamp_ms: p.value for p in s.points}
        for s in reply.series
    }


def changes(old: Answer, new: Answer) -> list[dict[str, Any]]:
    """The series of `new` with only their points that are new or differ from `old`, as frame
    series (points that left the window are not news: clients trim by the query's time range)."""
    out = []
    for key, points in new.items():
        before = old.get(key)
        changed = points if before is None else {ts: v for ts, v in points.items() if before.get(ts) != v}
        if changed:
            metric, group, aggregation = key
            out.append(series_dict(metric, dict(group), aggregation, sorted(changed.items())))
    return out


def whole(answer: Answer) -> list[dict[str, Any]]:
    """Every series of an answer, as frame series."""
    return changes({}, answer)


class AnalyticsChannel(Channel):
    """One query followed live by its subscribers."""

    def __init__(
        self,
        spec: StreamSpec,
        *args: Any,
        peers: StreamPeers,
        interval: float = 1.0,
        confirm: bool = False,
    ) -> None:
        super().__init__(spec, *args)
        if spec.query is None:
            raise ValueError("an analytics channel needs the spec's query")
        self.query: query_service_pb2.QueryRequest = spec.query
        self.datasource = spec.query.datasource
        self.metrics = tuple(spec.query.metrics)
        self._peers = peers
        self._interval = interval
        # Distributed mode: a batch may reach this hub before the store has it, so every run
        # caused by data is followed by one confirming run an interval later.
        self._confirm = confirm
        self._answer: Answer = {}
        self._dirty = asyncio.Event()
        self._confirming = False
        self._last_run = 0.0
        self._task: asyncio.Task[None] | None = None
        self.failures = 0

    async def open(self) -> None:
        """Run the query once (its refusal is the subscriber's error), then follow it."""
        self._answer = answer_of(await self._peers.query(self.query, self.spec.tenant))
        self._last_run = time.monotonic()
        self._task = asyncio.create_task(self._follow(), name=f"analytics:{self.spec.stream_id}")

    def mark_dirty(self) -> None:
        """Data of the query's datasource and metrics arrived."""
        self._dirty.set()

    def snapshot(self) -> dict[str, Any] | None:
        return self.data(series=whole(self._answer))

    async def _follow(self) -> None:
        while True:
            await self._dirty.wait()
            wait = self._last_run + self._interval - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)  # the rate limit, not a synchronisation
            self._dirty.clear()
            await self.rerun()
            if self._confirm and not self._confirming:
                self._confirming = True
                self._dirty.set()
            else:
                self._confirming = False

    async def rerun(self) -> None:
        """Run the query again and publish what changed."""
        self._last_run = time.monotonic()
        try:
            answer = answer_of(await self._peers.query(self.query, self.spec.tenant))
        except AnalyticsError as exc:
            self.failures += 1
            log.warning(
                "analytics stream query failed: %s", exc.message, extra={"stream_id": self.spec.stream_id}
            )
            return
        changed = changes(self._answer, answer)
        self._answer = answer
        if changed:
            self.publish(self.data(series=changed), time.monotonic())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
