"""REST bodies of INLINE_MAX_BYTES and more that the compiled fast path leaves to the Python parsers
are parsed in a worker process (JsonBodies, INGEST_JSON_WORKERS): the same batch as in the serving
process, the same 400 naming the field, and no request lost when a worker dies. A body the fast
path takes (`RealtimeCore.ingest_serialized`) starts no worker, whatever its size."""

from __future__ import annotations

import asyncio
import itertools
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time

import pytest
from google.api import httpbody_pb2

from libs.bus import make_bus
from libs.errors import InvalidArgument
from libs.storage import EncodedBatch, SeriesMemo, series_id
from libs.storage.keys import SeriesKey
from libs.timeparse import format_time_ms
from platformq.analytics.v1 import events_pb2, realtime_service_pb2
from services.realtime.core import RealtimeCore
from services.realtime.ingest import KnownGoodSeries
from services.realtime.json_body import (
    INLINE_MAX_BYTES,
    BodyInSlot,
    BodySlots,
    JsonBodies,
    JsonIngestDecoder,
)
from tests.helpers import batch_summary


def _body(
    series: int = 120, points: int = 60, bad_value_at: tuple[int, int] | None = None, name: str = "cpu"
) -> bytes:
    now = int(time.time() * 1000)
    out = []
    for i in range(series):
        values: list[object] = [float(j % 17) for j in range(points)]
        if bad_value_at is not None and bad_value_at[0] == i:
            values[bad_value_at[1]] = "not a number"
        out.append(
            {
                "name": name,
                "labels": {"host": f"h{i}", "dc": "eu"},
                "timestamps_ms": [now - 60_000 + j * 1000 for j in range(points)],
                "values": values,
            }
        )
    rows = [
        {"name": "mem", "value": 3.5, "timestamp_ms": now - k * 1000, "labels": {"host": "h0"}}
        for k in range(50)
    ]
    # One row's time as RFC 3339, a spelling the compiled fast path (`native.encode_usual_request`)
    # leaves to the parsers these tests are about.
    del rows[0]["timestamp_ms"]
    rows[0]["timestamp"] = format_time_ms(now)
    data = json.dumps({"datasource": "ds", "series": out, "points": rows}).encode()
    assert len(data) >= INLINE_MAX_BYTES
    return data


def _encoded_summary(encoded: EncodedBatch) -> tuple:
    """An encoded batch as plain values: its columns, and its WAL record's series (the batch id and
    time apart)."""
    columns = encoded.columns
    event = events_pb2.MetricsBatchEvent.FromString(encoded.payload)
    assert columns.sids.tolist() == [series_id(k.metric, k.labels) for k in columns.keys]
    return (
        (encoded.tenant, encoded.datasource, event.tenant, event.datasource),
        columns.keys,
        columns.lengths.tolist(),
        columns.ts.tolist(),
        columns.values.tolist(),
        [(s.name, sorted(s.labels.items()), list(s.timestamps_ms), list(s.values)) for s in event.series],
    )


def _workers() -> set[int]:
    return {p.pid for p in multiprocessing.active_children()}


@pytest.fixture
def bodies():
    parsed = JsonBodies(1, KnownGoodSeries(), SeriesMemo())
    yield parsed
    parsed.close()


def _parsed_here(bodies: JsonBodies, name: str) -> bool:
    """True when a body of series `name` was parsed in this process (its series are then among the
    serving process's known-good ones; a worker remembers its own)."""
    return SeriesKey.of(name, {"host": "h0", "dc": "eu"}) in bodies.known


async def _until_workers_parse(bodies: JsonBodies) -> None:
    """Send large bodies until one is parsed by a worker (they start at the first; meanwhile bodies
    are parsed here)."""
    deadline = time.monotonic() + 60
    for k in itertools.count():
        name = f"warm{k}"
        await bodies.validate(_body(name=name), "t")
        if not _parsed_here(bodies, name):
            return
        assert time.monotonic() < deadline, "no worker took a body within 60 s"
        await asyncio.sleep(0.05)


async def test_a_large_body_is_parsed_in_a_worker_process_with_the_same_batch(bodies):
    before = _workers()
    first, _ = await bodies.validate(_body(name="first"), "t")
    # The first large body starts the worker and, not to wait for it, is parsed here.
    assert _parsed_here(bodies, "first") and first.accepted == 120 * 60 + 50
    started = _workers() - before
    assert len(started) == 1 and os.getpid() not in started
    await _until_workers_parse(bodies)
    data = _body(name="later")
    batch, encoded = await bodies.validate(data, "t")
    assert not _parsed_here(bodies, "later")
    here = JsonIngestDecoder().validate(data)
    expected = EncodedBatch.encode("t", "ds", here.series, SeriesMemo())
    # The series travel back only in the encoded batch: the same columns and WAL record.
    here.series = []
    assert batch_summary(batch) == batch_summary(here)
    assert _encoded_summary(encoded) == _encoded_summary(expected)
    assert len(encoded.columns.keys) == 121 and encoded.columns.lengths.sum() == 120 * 60 + 50
    assert _workers() - before == started  # the same worker serves every body


async def test_a_large_body_in_the_usual_shapes_is_taken_by_the_fast_path_without_a_worker():
    data = json.loads(_body(name="usual"))
    row = data["points"][0]
    row["timestamp_ms"] = int(time.time() * 1000) - 99_000
    del row["timestamp"]
    request = realtime_service_pb2.IngestMetricsRequest(
        json_body=httpbody_pb2.HttpBody(content_type="application/json", data=json.dumps(data).encode())
    )
    core = RealtimeCore(None, make_bus("", "public", "default"), json_workers=1)
    before = _workers()
    try:
        reply = await core.ingest_serialized(request.SerializeToString(), lambda: request)
    finally:
        core.close()
    assert (reply.accepted, reply.rejected) == (120 * 60 + 50, 0)
    # Neither the Python parsers (they would know its series) nor a worker (none started).
    assert SeriesKey.of("usual", {"host": "h0", "dc": "eu"}) not in core.known_series
    assert _workers() <= before


async def test_a_small_body_is_parsed_here_without_a_worker(bodies):
    before = _workers()
    small = json.dumps(
        {"datasource": "ds", "series": [{"name": "cpu", "timestamps_ms": [1], "values": [1.0]}]}
    )
    assert (await bodies.validate(small.encode(), "t"))[0].accepted == 1
    assert _workers() == before


async def test_a_bad_large_body_is_refused_naming_the_field_from_the_worker(bodies):
    await _until_workers_parse(bodies)
    with pytest.raises(InvalidArgument) as refused:
        await bodies.validate(_body(bad_value_at=(7, 3)), "t")
    assert refused.value.field == "series[7].values[3]"
    assert "expected" in refused.value.reason


async def test_a_dead_worker_loses_no_body_and_the_next_large_body_gets_a_new_one(bodies):
    before = _workers()
    await _until_workers_parse(bodies)
    data = _body()
    (worker,) = _workers() - before
    os.kill(worker, signal.SIGKILL)
    time.sleep(0.2)
    assert (await bodies.validate(data, "t"))[0].accepted == 120 * 60 + 50  # parsed here
    assert (await bodies.validate(data, "t"))[0].accepted == 120 * 60 + 50
    assert len(_workers() - before - {worker}) == 1  # a new pool


async def test_with_no_workers_every_body_is_parsed_here():
    parsed = JsonBodies(0, KnownGoodSeries(), SeriesMemo())
    before = _workers()
    assert (await parsed.validate(_body(), "t"))[0].accepted == 120 * 60 + 50
    assert _workers() == before
    parsed.close()


def _body_slots_open() -> int:
    """How many body slots (memory files) this process holds."""
    return sum(os.readlink(f"/proc/self/fd/{fd}").startswith("/memfd:ingest-body") for fd in _fds())


def _fds() -> list[str]:
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            os.readlink(f"/proc/self/fd/{fd}")
            found.append(fd)
        except FileNotFoundError:  # the listing's own descriptor
            pass
    return found


@pytest.mark.skipif(not BodySlots.available(), reason="body slots need memfd_create and /proc (Linux)")
def test_a_slot_reused_for_a_shorter_body_gives_exactly_that_body():
    before = _body_slots_open()
    slots = BodySlots(keep=2)
    long_slot = slots.put(b"x" * 100_000)
    assert BodyInSlot(os.getpid(), long_slot, 100_000).read() == b"x" * 100_000
    slots.release(long_slot)
    short_slot = slots.put(b'{"datasource": "ds"}')
    assert short_slot == long_slot  # the same memory, not a new file
    assert BodyInSlot(os.getpid(), short_slot, 20).read() == b'{"datasource": "ds"}'
    slots.release(short_slot)
    slots.close()
    assert _body_slots_open() == before


@pytest.mark.skipif(not BodySlots.available(), reason="body slots need memfd_create and /proc (Linux)")
def test_a_slot_that_held_a_very_large_body_is_emptied_and_no_more_than_keep_are_kept():
    before = _body_slots_open()
    slots = BodySlots(keep=1)
    first, second = slots.put(b"a" * (BodySlots.KEEP_BYTES + 1)), slots.put(b"b")
    slots.release(first)
    assert os.fstat(first).st_size == 0  # its pages given back
    slots.release(second)  # one free slot is kept already: this one is closed
    assert _body_slots_open() == before + 1
    slots.close()
    assert _body_slots_open() == before


@pytest.mark.skipif(not BodySlots.available(), reason="body slots need memfd_create and /proc (Linux)")
async def test_bodies_in_flight_together_each_get_their_own_batch_and_their_slots_back(bodies):
    await _until_workers_parse(bodies)
    sizes = [(80, 60), (200, 60), (120, 40), (300, 20), (60, 90), (150, 40)]
    datas = [_body(series=s, points=p, name=f"together{k}") for k, (s, p) in enumerate(sizes)]
    batches = await asyncio.gather(*(bodies.validate(d, "t") for d in datas))
    for (s, p), (batch, encoded) in zip(sizes, batches, strict=True):
        assert batch.accepted == s * p + 50
        assert encoded is not None and encoded.columns.lengths.sum() == s * p + 50
    await asyncio.sleep(0.1)  # slots are released on the event loop when their worker is done
    assert 1 <= _body_slots_open() <= 4 * bodies.workers


@pytest.mark.skipif(not BodySlots.available(), reason="body slots need memfd_create and /proc (Linux)")
async def test_a_cancelled_body_gives_its_slot_back_once_the_worker_is_done_with_it(bodies):
    await _until_workers_parse(bodies)
    held = _body_slots_open()
    pending = [
        asyncio.ensure_future(bodies.validate(_body(series=300, name=f"gone{k}"), "t")) for k in range(6)
    ]
    await asyncio.sleep(0)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    deadline = time.monotonic() + 10
    while _body_slots_open() > max(held, 4 * bodies.workers) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert _body_slots_open() <= max(held, 4 * bodies.workers)
    assert (await bodies.validate(_body(name="after"), "t"))[0].accepted == 120 * 60 + 50


def test_a_worker_process_loads_neither_the_store_nor_the_server():
    # Each worker imports json_worker alone (spawned): what it loads is its resident memory.
    loaded = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, services.realtime.json_worker; print(' '.join(sorted(sys.modules)))",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    heavy = {"pyarrow", "duckdb", "pydantic", "libs.storage.store", "libs.grpc_server", "services.context"}
    assert heavy.isdisjoint(loaded)
    assert "services.realtime.json_body" in loaded and "libs.storage.batches" in loaded


@pytest.mark.skipif(not BodySlots.available(), reason="body slots need memfd_create and /proc (Linux)")
async def test_a_slot_the_worker_cannot_read_fails_no_body_and_later_bodies_take_the_pipe(
    bodies, monkeypatch
):
    await _until_workers_parse(bodies)
    never_open = 999_999  # no such descriptor here: the worker's open of it fails

    def put(self, data):
        return never_open

    def release(self, fd):
        assert fd == never_open

    monkeypatch.setattr(BodySlots, "put", put)
    monkeypatch.setattr(BodySlots, "release", release)
    batch, _ = await bodies.validate(_body(name="unreadable"), "t")
    assert batch.accepted == 120 * 60 + 50 and _parsed_here(bodies, "unreadable")
    batch, _ = await bodies.validate(_body(name="piped"), "t")
    assert batch.accepted == 120 * 60 + 50 and not _parsed_here(bodies, "piped")  # in the worker


@pytest.mark.skipif(not BodySlots.available(), reason="body slots need memfd_create and /proc (Linux)")
def test_a_body_given_in_a_slot_is_answered_in_that_slot_or_through_the_pipe_when_it_cannot_be():
    from services.realtime.json_body import AnswerInSlot
    from services.realtime.json_worker import validate_in_worker

    data = _body(name="answered")
    slots = BodySlots(keep=1)
    slot = slots.put(data)
    try:
        now = int(time.time() * 1000)
        answer = validate_in_worker(BodyInSlot(os.getpid(), slot, len(data)), now, "t")
        assert isinstance(answer, AnswerInSlot)
        batch, encoded = answer.read(slot)
        here = JsonIngestDecoder().validate(data, now_ms=now)
        expected = EncodedBatch.encode("t", "ds", here.series, SeriesMemo())
        here.series = []
        assert batch_summary(batch) == batch_summary(here)
        assert _encoded_summary(encoded) == _encoded_summary(expected)
        # A slot the worker cannot open leaves the answer to the pool's pipe.
        parsed = (batch, encoded)
        assert BodyInSlot(os.getpid(), 999_999, len(data)).answer(parsed) is parsed
        with pytest.raises(OSError, match="answer from its slot"):
            AnswerInSlot(answer.length + 10**6).read(slot)
    finally:
        slots.release(slot)
        slots.close()
