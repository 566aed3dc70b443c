"""DuckDB work under a deadline, stopped inside DuckDB when the deadline passes or the caller goes away.

A query runs in a worker thread, and cancelling the asyncio task that awaits it does not stop the thread:
without help, a heavy query keeps every core busy long after its client (or Envoy, with a 504) has given
up. `run_interruptible` closes that gap:

    deadline = Deadline.within(seconds, "QUERY_TIMEOUT_SECONDS")
    result = await run_interruptible(work, deadline)   # work(token) runs in a worker thread

    def work(token: CancelToken) -> T:
        con = database.cursor()
        try:
            with token.watch(con):                      # interrupts reach this connection
                return con.execute(sql).fetchall()
        finally:
            con.close()

When the deadline passes, the connections the work watches get `interrupt()`ed (again every few
milliseconds until the work returns, because DuckDB forgets an interrupt that lands between two
statements) and the caller gets DeadlineExceeded naming the limit. When the awaiting task is cancelled
(gRPC cancels the handler when its client cancels, disconnects or passes its own deadline) the same
interrupts run and the CancelledError goes on. Either way the call returns only once the worker thread
has stopped, so its CPU is free and its connection idle.

Interrupt the cursor that runs the query: DuckDB's `interrupt()` on a parent connection does not reach
queries running on its cursors.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from libs.errors import DeadlineExceeded

if TYPE_CHECKING:
    import duckdb

T = TypeVar("T")

# How often a stop is repeated while the worker is still running: an interrupt reaches only the
# statement running at that moment, so one landing between two statements would be lost.
_REPEAT_SECONDS = 0.02

# How much earlier than a request's own deadline the work is stopped: time for the answer to travel.
_MARGIN_SECONDS = 0.2

# What the caller's own deadline is called in messages, as opposed to a configured default.
REQUEST_DEADLINE = "the request's deadline"


class QueryInterrupted(Exception):
    """Raised in the worker when it starts watching a connection after the work was cancelled."""


@dataclass(frozen=True)
class Deadline:
    """When work must be done by (time.monotonic()), its budget in seconds, and what set it."""

    at: float
    seconds: float
    source: str

    @classmethod
    def within(cls, seconds: float, source: str) -> Deadline:
        """A deadline `seconds` from now; `source` names the limit in messages (a setting's name, or
        REQUEST_DEADLINE)."""
        return cls(time.monotonic() + seconds, seconds, source)

    @classmethod
    def of_request(cls, time_remaining: float | None, default_seconds: float, setting: str) -> Deadline:
        """The deadline of work done for a request with `time_remaining` seconds left (None: the request
        has no deadline, so `default_seconds`, named `setting` in messages).

        A request's own deadline is moved a little earlier, so the answer naming the limit reaches the
        client before the client's timer fires and replaces it with a bare DEADLINE_EXCEEDED.
        """
        if time_remaining is None:
            return cls.within(default_seconds, setting)
        margin = min(_MARGIN_SECONDS, time_remaining / 10)
        return cls(time.monotonic() + max(0.0, time_remaining - margin), time_remaining, REQUEST_DEADLINE)

    def remaining(self) -> float:
        """Seconds left, never negative."""
        return max(0.0, self.at - time.monotonic())

    def exceeded(self) -> DeadlineExceeded:
        """The error for work that ran past this deadline."""
        return DeadlineExceeded(
            f"the query did not finish within {self.seconds:.3g} s ({self.source}) and was stopped; "
            "narrow it (a shorter time range, fewer series, an aggregation) or allow more time"
        )


class CancelToken:
    """Connects the asyncio side to the DuckDB connections a worker thread is using.

    `watch(connection)` registers a connection for the duration of a block; `cancel()` marks the work
    cancelled and interrupts every connection being watched. Both are safe to call from any thread.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._connections: list[duckdb.DuckDBPyConnection] = []
        self._cancelled = False

    @property
    def cancelled(self) -> bool:
        """Whether cancel() has been called."""
        return self._cancelled

    @contextmanager
    def watch(self, connection: duckdb.DuckDBPyConnection) -> Iterator[duckdb.DuckDBPyConnection]:
        """Let cancel() interrupt `connection` while the block runs; QueryInterrupted if already cancelled.

        Leave the block before closing the connection, so no interrupt reaches a closed one.
        """
        with self._lock:
            if self._cancelled:
                raise QueryInterrupted("the work was cancelled before it started")
            self._connections.append(connection)
        try:
            yield connection
        finally:
            with self._lock:
                self._connections.remove(connection)

    def cancel(self) -> None:
        """Mark the work cancelled and interrupt whatever its watched connections are running."""
        with self._lock:
            self._cancelled = True
            for connection in self._connections:
                connection.interrupt()


async def run_interruptible(work: Callable[[CancelToken], T], deadline: Deadline | None) -> T:
    """Run `work(token)` in a worker thread; stop it in DuckDB when `deadline` passes or the caller is
    cancelled.

    Returns work's result or raises its exception. When the deadline passes first: DeadlineExceeded
    (naming deadline.source). When the awaiting task is cancelled: CancelledError. In both cases only
    after the worker has returned, interrupted.
    """
    if deadline is not None and deadline.remaining() <= 0:
        raise deadline.exceeded()  # spent while queued or planning: do not start at all
    token = CancelToken()
    worker = asyncio.get_running_loop().run_in_executor(None, work, token)
    try:
        timeout = None if deadline is None else deadline.remaining()
        return await asyncio.wait_for(asyncio.shield(worker), timeout)
    except TimeoutError:
        await _stop(token, worker)
        raise deadline.exceeded() from None  # wait_for times out only when it was given a deadline
    except asyncio.CancelledError:
        await _stop(token, worker)
        raise


async def _stop(token: CancelToken, worker: asyncio.Future[T]) -> None:
    while not worker.done():
        token.cancel()
        # asyncio.wait neither raises the worker's error nor cancels it on a timeout.
        await asyncio.wait({worker}, timeout=_REPEAT_SECONDS)
    # The worker's error is the interruption we caused (or a consequence of it): retrieved, not raised.
    worker.exception()
