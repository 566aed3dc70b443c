"""run_interruptible stops DuckDB work at its deadline or when its caller is cancelled, and returns only
once the worker thread has stopped."""

import asyncio
import threading

import duckdb
import pytest

from libs.errors import DeadlineExceeded
from services.query_router.cancel import (
    REQUEST_DEADLINE,
    CancelToken,
    Deadline,
    QueryInterrupted,
    run_interruptible,
)

# Minutes of work for DuckDB if nothing stops it.
ENDLESS = "SELECT count(*) FROM range(100000000) a, range(100000) b WHERE (a.range * b.range) % 7 = 3"


@pytest.fixture
def database():
    con = duckdb.connect()
    yield con
    con.close()


class Work:
    """Runs `statements` on a cursor of `database`, watched by the token; records whether it ran to the
    end and whether its thread has returned."""

    def __init__(self, database: duckdb.DuckDBPyConnection, *statements: str) -> None:
        self.database = database
        self.statements = statements
        self.started = threading.Event()
        self.returned = threading.Event()
        self.outcome: list[object] = []

    def __call__(self, token: CancelToken) -> object:
        con = self.database.cursor()
        try:
            with token.watch(con):
                self.started.set()
                for sql in self.statements:
                    self.outcome = con.execute(sql).fetchall()
                return self.outcome
        finally:
            con.close()
            self.returned.set()


async def test_work_within_its_deadline_returns_its_result(database):
    work = Work(database, "SELECT 42")
    assert await run_interruptible(work, Deadline.within(30, "QUERY_TIMEOUT_SECONDS")) == [(42,)]


async def test_work_without_a_deadline_runs_to_the_end(database):
    assert await run_interruptible(Work(database, "SELECT 1 + 1"), None) == [(2,)]


async def test_the_works_own_error_reaches_the_caller(database):
    with pytest.raises(duckdb.BinderException):
        await run_interruptible(Work(database, "SELECT no_such_column"), Deadline.within(30, "X"))


async def test_work_past_its_deadline_is_interrupted_and_the_error_names_the_limit(database):
    work = Work(database, ENDLESS)
    with pytest.raises(DeadlineExceeded) as caught:
        await run_interruptible(work, Deadline.within(0.5, "QUERY_TIMEOUT_SECONDS"))
    # The call returned only after the worker did: its CPU is free.
    assert work.returned.is_set() and work.outcome == []
    assert "did not finish within 0.5 s (QUERY_TIMEOUT_SECONDS) and was stopped" in caught.value.reason


async def test_an_interrupt_between_statements_is_not_lost(database):
    # Many short statements then an endless one: a single interrupt landing between two of them would
    # be forgotten by DuckDB, so the stop is repeated until the work returns.
    work = Work(database, *["SELECT 1"] * 2000, ENDLESS)
    with pytest.raises(DeadlineExceeded):
        await run_interruptible(work, Deadline.within(0.2, "X"))
    assert work.returned.is_set()


async def test_a_cancelled_caller_interrupts_the_work(database):
    work = Work(database, ENDLESS)
    task = asyncio.ensure_future(run_interruptible(work, None))
    await asyncio.to_thread(work.started.wait, 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert work.returned.is_set() and work.outcome == []


async def test_an_expired_deadline_does_not_start_the_work(database):
    work = Work(database, "SELECT 1")
    with pytest.raises(DeadlineExceeded):
        await run_interruptible(work, Deadline.within(0, "X"))
    assert not work.started.is_set()


def test_watching_after_cancel_raises(database):
    token = CancelToken()
    token.cancel()
    with pytest.raises(QueryInterrupted), token.watch(database):
        pass


def test_a_request_deadline_is_moved_earlier_and_named_so():
    deadline = Deadline.of_request(2.0, 30.0, "QUERY_TIMEOUT_SECONDS")
    assert deadline.source == REQUEST_DEADLINE and deadline.seconds == 2.0
    assert 1.7 <= deadline.remaining() <= 1.8 + 1e-9
    assert "within 2 s (the request's deadline)" in deadline.exceeded().reason


def test_without_a_request_deadline_the_setting_applies():
    deadline = Deadline.of_request(None, 30.0, "QUERY_TIMEOUT_SECONDS")
    assert (deadline.seconds, deadline.source) == (30.0, "QUERY_TIMEOUT_SECONDS")
    assert 29 < deadline.remaining() <= 30
