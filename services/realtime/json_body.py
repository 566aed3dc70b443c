"""The REST ingest body, parsed here rather than by the gateway.

Envoy passes `POST /api/v1/metrics/ingest` bodies through untouched (`IngestMetricsRequest.json_body`,
a `google.api.HttpBody`): transcoding large bodies in Envoy's grpc_json_transcoder cost more than
all the rest of ingest, worst for the row form's one object per point. The body is the proto3 JSON
of `IngestMetricsRequest`, and it is accepted exactly as the transcoder accepted it:

- a body in the usual shapes with every point acceptable (what well-behaved clients send) is
  parsed, checked and encoded by compiled code, read from the request's bytes as they arrived
  (`native.encode_usual_request`: native/, Rust, without the GIL; on the event loop under
  `native.INLINE_MAX_BYTES`, else in a thread of the serving process): about a third of the Python
  path's CPU for columnar bodies, a fifth for rows; it gives exactly the Python path's batch
  (tests/unit/test_ingest_native.py) and takes no other body, so it words no error;
- any other body comes here (`JsonBodies`, `validate_and_encode`), which is the reference. There the
  usual shapes (snake_case fields, numbers as JSON numbers, int64 times also as strings) are
  decoded by msgspec straight into typed structs, labels of rows kept as raw JSON and decoded once
  per distinct label set, then validated column-wise (`ingest.validate_parts`); anything else the
  proto3 JSON mapping allows (lowerCamelCase names, numbers as strings, "NaN", nulls) goes through
  protobuf's own JSON parser and the ordinary validation (both give the same validated batch for
  the same body: tests/unit/test_ingest_json.py);
- what none accepts is a 400 naming the field: `series[0].timestamps_ms[2]: expected int, got str`.

`JsonBodies` says where a body the fast path leaves is parsed: bodies of INLINE_MAX_BYTES and more
in worker processes (INGEST_JSON_WORKERS, `json_worker.py`), so parsing uses another core than the
serving process's event loop, WAL and hot tier (a body reaches its worker through a reused memory file, `BodySlots`,
and the worker's answer comes back through the same file); smaller bodies, or all with
INGEST_JSON_WORKERS=0, in a thread. Either way the accepted points are also encoded there
(`validate_and_encode`: series ids and the WAL record, an `EncodedBatch`), which is what a worker
sends back: a record and a few arrays, where the batch's per-series objects cost more to pickle than
the parsing.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import pickle
import re
import time
from concurrent.futures import Future, InvalidStateError, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Annotated, NamedTuple

import msgspec
import numpy as np
from google.protobuf import json_format

from libs.errors import InvalidArgument
from libs.storage import EncodedBatch, SeriesMemo
from platformq.analytics.v1 import realtime_service_pb2
from services.realtime.ingest import KnownGoodSeries, RowColumns, ValidatedBatch, validate, validate_parts
from services.realtime.native import ParsedBatch

log = logging.getLogger(__name__)
_NO_LABELS = msgspec.Raw(b"{}")
_INT = re.compile(r"-?[0-9]{1,19}")
Int64 = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]
"""A proto int64: msgspec's int alone would take uint64 values too."""


class JsonSeries(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    """One columnar series of the body."""

    name: str = ""
    labels: dict[str, str] = {}
    timestamps_ms: list[Int64] = []
    values: list[float] = []


class JsonPoint(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    """One row of the body; its labels stay raw JSON until the distinct label sets are decoded."""

    name: str = ""
    value: float = 0.0
    timestamp: str = ""
    timestamp_ms: Int64 | str = 0
    labels: msgspec.Raw = _NO_LABELS


class JsonBody(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    """The body: IngestMetricsRequest's fields, as proto3 JSON names them."""

    datasource: str = ""
    points: list[JsonPoint] = []
    series: list[JsonSeries] = []


class _Unusual(Exception):
    """The body needs protobuf's JSON parser (a form the fast decoder does not take); the field and
    reason say why, should protobuf's parser refuse it too."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class JsonIngestDecoder:
    """Decodes and validates REST ingest bodies; one per ingest core (its decoders are reusable)."""

    def __init__(self) -> None:
        self._body = msgspec.json.Decoder(JsonBody)
        self._labels = msgspec.json.Decoder(dict[str, str])

    def validate(
        self, data: bytes, known: KnownGoodSeries | None = None, now_ms: int | None = None
    ) -> ValidatedBatch:
        """The validated batch of a JSON body; a body that is not an IngestMetricsRequest in proto3
        JSON raises InvalidArgument naming the field."""
        try:
            body = self._body.decode(data)
            return validate_parts(body.datasource, body.series, self._rows(body.points), now_ms, known)
        except msgspec.DecodeError as exc:
            if not isinstance(exc, msgspec.ValidationError):
                raise InvalidArgument(f"is not valid JSON: {exc}", "body") from None
            fast_error: Exception = exc
        except _Unusual as exc:
            fast_error = exc
        return validate(self._parse_proto(data, fast_error), now_ms, known)

    def _rows(self, points: list[JsonPoint]) -> RowColumns:
        times_ms: list[int | str] | np.ndarray = [p.timestamp_ms for p in points]
        if times_ms:
            times_ms = np.array(times_ms)
            if times_ms.dtype.kind == "U":
                # proto3 JSON writes int64 as a string: take plain integers, leave the rest to protobuf.
                for i, t in enumerate(times_ms.tolist()):
                    if not _INT.fullmatch(t):
                        raise _Unusual(
                            f"points[{i}].timestamp_ms", f"{t!r} is not an integer (epoch milliseconds)"
                        )
                try:
                    times_ms = times_ms.astype(np.int64)
                except (ValueError, OverflowError):
                    raise _Unusual("timestamp_ms", "is out of the int64 range") from None

        # Raw JSON of identical label sets is identical bytes in practice (one encoder): decoded once.
        groups, group_of_row = RowColumns.grouped([(p.name, bytes(p.labels)) for p in points])
        return RowColumns(
            groups=groups,
            group_of_row=group_of_row,
            labels_of=self._decode_labels,
            timestamps=[p.timestamp for p in points],
            timestamps_ms=times_ms,
            values=[p.value for p in points],
        )

    def _decode_labels(self, raw: bytes) -> dict[str, str]:
        try:
            return self._labels.decode(raw)
        except msgspec.ValidationError as exc:
            reason = str(exc).split(" - at ")[0].replace("`", "")
            raise _Unusual("labels", f"{reason[:1].lower()}{reason[1:]} (label values are strings)") from None

    @staticmethod
    def _parse_proto(data: bytes, fast_error: Exception) -> realtime_service_pb2.IngestMetricsRequest:
        request = realtime_service_pb2.IngestMetricsRequest()
        if not data.lstrip().startswith(b"{"):
            # protobuf's parser takes a JSON array as an empty message; the transcoder did not.
            raise _invalid(fast_error, ValueError("must be a JSON object"))
        try:
            json_format.Parse(data, request)
        except json_format.ParseError as exc:
            raise _invalid(fast_error, exc) from None
        if request.HasField("json_body"):
            raise InvalidArgument("is set by the gateway, not by clients", "json_body")
        return request


def validate_and_encode(
    decoder: JsonIngestDecoder,
    known: KnownGoodSeries,
    memo: SeriesMemo,
    data: bytes,
    now_ms: int,
    tenant: str,
) -> ParsedBatch:
    """The validated batch of a JSON body (InvalidArgument naming the field for a bad one) and its
    accepted points encoded for the store (None when none was accepted). The batch's `series` are
    left out: they live on in the encoded batch's columns, which a worker process sends back at a
    small part of their cost."""
    batch = decoder.validate(data, known, now_ms)
    encoded = EncodedBatch.encode(tenant, batch.datasource, batch.series, memo)
    batch.series = []
    return batch, encoded


INLINE_MAX_BYTES = 64 * 1024
"""Bodies under this are parsed in a thread of the serving process: the hop to a worker process
(about half a millisecond) costs more than parsing them."""


class BodyInSlot(NamedTuple):
    """Where a worker finds a body: the first `length` bytes of file descriptor `fd` of process
    `pid` (a `BodySlots` slot). The worker writes its answer back into the same slot (`answer`)."""

    pid: int
    fd: int
    length: int

    def read(self) -> bytes:
        """The body (in the worker process)."""
        fd = os.open(f"/proc/{self.pid}/fd/{self.fd}", os.O_RDONLY | os.O_CLOEXEC)
        try:
            data = os.pread(fd, self.length, 0)
        finally:
            os.close(fd)
        if len(data) != self.length:
            raise OSError(f"read {len(data)} of a {self.length}-byte body from its slot")
        return data

    def answer(self, parsed: ParsedBatch) -> ParsedBatch | AnswerInSlot:
        """Write the body's parsed batch (pickled) over it in the slot (in the worker process), and
        say how long it is; when the slot cannot be written, the batch itself (for the pool's pipe)."""
        data = pickle.dumps(parsed, protocol=pickle.HIGHEST_PROTOCOL)
        try:
            fd = os.open(f"/proc/{self.pid}/fd/{self.fd}", os.O_WRONLY | os.O_CLOEXEC)
            try:
                written = os.pwrite(fd, data, 0)
            finally:
                os.close(fd)
        except OSError:
            return parsed
        return AnswerInSlot(written) if written == len(data) else parsed


class AnswerInSlot(NamedTuple):
    """A worker's answer left in the body's slot: its first `length` bytes, a pickled ParsedBatch."""

    length: int

    def read(self, slot: int) -> ParsedBatch:
        """The parsed body (in the serving process, which owns the slot)."""
        data = os.pread(slot, self.length, 0)
        if len(data) != self.length:
            raise OSError(f"read {len(data)} of a {self.length}-byte answer from its slot")
        parsed: ParsedBatch = pickle.loads(data)
        return parsed


class BodySlots:
    """Memory files through which large bodies reach the worker processes, reused body after body.

    The serving process writes a body into a free slot (`memfd_create`: anonymous memory with a file
    descriptor, gone with the process even after SIGKILL) and the worker reads it back through
    `/proc/<serving pid>/fd/<slot>`: one copy on each side, into pages kept from the body before.
    The pool's pipe took a pickled copy, a copy per side through a 64 KiB pipe with a switch between
    the processes for each 64 KiB, and fresh pages for each: about 3 ms of CPU a 1.3 MB body, of
    which a reused slot keeps 0.4 ms. The worker writes its answer (the pickled batch, often larger
    than a columnar body) over the body in the same slot, and the serving process reads it from there
    before the slot is free again: for a TSBS body of 5,000 points the serving process's share of the
    hand-off went from 815 to 681 µs of CPU (a probe: JsonBodies alone, the medians of five runs
    alternated with the code before). Linux only: elsewhere (no `os.memfd_create`) bodies and answers
    go through the pipe, as they do from the first slot that cannot be written or read (JsonBodies).
    A slot is kept while at most `keep` are free, and emptied when a body or answer of more than
    `KEEP_BYTES` used it."""

    KEEP_BYTES = 16 << 20

    def __init__(self, keep: int) -> None:
        self.keep = keep
        self._free: list[int] = []
        self._closed = False

    @staticmethod
    def available() -> bool:
        """True where bodies can go through slots (Linux)."""
        return hasattr(os, "memfd_create") and os.path.isdir(f"/proc/{os.getpid()}/fd")

    def put(self, data: bytes) -> int:
        """A slot holding `data` (its first len(data) bytes), to `release` once the worker has it."""
        fd = self._free.pop() if self._free else os.memfd_create("ingest-body", os.MFD_CLOEXEC)
        try:
            written = os.pwrite(fd, data, 0)
            if written != len(data):
                raise OSError(f"wrote {written} of {len(data)} bytes into a body slot")
        except BaseException:
            os.close(fd)
            raise
        return fd

    def release(self, fd: int) -> None:
        """Give a slot back once the worker has read it."""
        if self._closed or len(self._free) >= self.keep:
            os.close(fd)
            return
        if os.fstat(fd).st_size > self.KEEP_BYTES:
            os.ftruncate(fd, 0)
        self._free.append(fd)

    def close(self) -> None:
        """Free every slot not in use (and each other one as it is released)."""
        self._closed = True
        while self._free:
            os.close(self._free.pop())


class JsonBodies:
    """Parses REST ingest bodies where they cost the serving process least: in `workers` worker
    processes (spawned at the first large body, so a process that never gets one starts none; bodies
    are parsed in a thread until they are up), or in a thread. A worker that dies (killed, out of
    memory) fails no request: its body is parsed here, and the next large body starts a new pool. A
    body whose request is cancelled meanwhile is still parsed to its end in the worker
    (milliseconds), and its batch dropped."""

    def __init__(self, workers: int, known: KnownGoodSeries, memo: SeriesMemo) -> None:
        self.workers = workers
        self.known = known
        self.memo = memo
        self.decoder = JsonIngestDecoder()
        self._pool: ProcessPoolExecutor | None = None
        self._ready: Future[object] | None = None
        # Kept when a pool breaks; dropped for good when a slot cannot be written or read.
        self._slots = BodySlots(keep=4 * workers) if workers > 0 and BodySlots.available() else None

    async def validate(self, data: bytes, tenant: str) -> ParsedBatch:
        """`validate_and_encode` of a JSON body the compiled fast path left, for `tenant`."""
        now_ms = int(time.time() * 1000)
        if self.workers > 0 and len(data) >= INLINE_MAX_BYTES and self._started():
            assert self._pool is not None
            try:
                return await self._in_worker(self._pool, data, now_ms, tenant)
            except BrokenProcessPool:
                self._pool.shutdown(wait=False, cancel_futures=True)
                self._pool = self._ready = None
            except OSError as exc:
                # A slot could not be written here or read there (/proc/<pid>/fd closed to the
                # worker): this body is parsed here, later ones go through the pool's pipe.
                log.warning("REST bodies no longer go through memory files: %s", exc)
                if self._slots is not None:
                    self._slots.close()
                    self._slots = None
        return await asyncio.to_thread(
            validate_and_encode, self.decoder, self.known, self.memo, data, now_ms, tenant
        )

    async def _in_worker(
        self, pool: ProcessPoolExecutor, data: bytes, now_ms: int, tenant: str
    ) -> ParsedBatch:
        """The body parsed in a worker: given through a slot where there are slots, and answered
        through the same slot, which is released once the answer is read from it (even if this
        request was cancelled meanwhile)."""
        from services.realtime.json_worker import validate_in_worker as parse

        slots = self._slots
        if slots is None:
            return await asyncio.wrap_future(pool.submit(parse, data, now_ms, tenant))
        slot = slots.put(data)
        try:
            future = pool.submit(parse, BodyInSlot(os.getpid(), slot, len(data)), now_ms, tenant)
        except BaseException:
            slots.release(slot)
            raise
        loop = asyncio.get_running_loop()
        answer: Future[ParsedBatch] = Future()

        def read_answer(done: Future[ParsedBatch | AnswerInSlot]) -> None:
            # In the pool's thread, as the pool reads answers from its pipe: the slot is read
            # before it is given back.
            try:
                got = done.result()
                _settle(answer, got.read(slot) if isinstance(got, AnswerInSlot) else got)
            except BaseException as exc:  # the body's error, a dead worker, an unreadable slot
                _settle(answer, exc)
            finally:
                loop.call_soon_threadsafe(slots.release, slot)

        future.add_done_callback(read_answer)
        return await asyncio.wrap_future(answer)

    def _started(self) -> bool:
        """True once the workers are up. The first large body starts them and is parsed here, as
        are the bodies that come while they start (about a second): no body waits for a spawn."""
        if self._pool is None:
            from services.realtime.json_worker import die_with_parent

            # spawn: the serving process runs gRPC's threads, which a fork would copy half-way.
            self._pool = ProcessPoolExecutor(
                self.workers, mp_context=multiprocessing.get_context("spawn"), initializer=die_with_parent
            )
            self._ready = self._pool.submit(int)
        assert self._ready is not None
        return self._ready.done()

    def close(self) -> None:
        """Stop the worker processes (a body being parsed is dropped)."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = self._ready = None
        if self._slots is not None:
            self._slots.close()
            self._slots = None


def _settle(future: Future[ParsedBatch], outcome: ParsedBatch | BaseException) -> None:
    """Give `future` its result or exception, unless its request was cancelled meanwhile."""
    try:
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)
    except InvalidStateError:
        pass


_AT = re.compile(r"^(?P<reason>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.S)


def _invalid(fast_error: Exception, proto_error: Exception) -> InvalidArgument:
    """The 400 for a body neither parser accepts: msgspec's message names the path precisely
    (`series[0].values[3]`); protobuf's is the fallback."""
    if isinstance(fast_error, _Unusual):
        return InvalidArgument(fast_error.reason, fast_error.field)
    if isinstance(fast_error, msgspec.ValidationError):
        found = _AT.match(str(fast_error))
        if found:
            path = (found["path"] or "").lstrip(".")
            reason = found["reason"]
            unknown = re.fullmatch(r"Object contains unknown field `(.+)`", reason)
            if unknown:
                field = f"{path}.{unknown[1]}" if path else unknown[1]
                return InvalidArgument("is not a field of IngestMetricsRequest", field)
            return InvalidArgument(reason[:1].lower() + reason[1:].replace("`", ""), path or "body")
    return InvalidArgument(str(proto_error), "body")
