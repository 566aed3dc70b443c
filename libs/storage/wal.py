"""Write-ahead log: an ingest is acknowledged only once its batch is durable here.

The store appends each ingest batch as one record, replays the log on start, and truncates it only
once the data is safe in Parquet segments.

Record format (little-endian), a 24-byte header then the payload:

    offset  size  field
    0       4     magic b"PQWL"
    4       2     format version (1)
    6       2     flags (0; reserved)
    8       4     payload length in bytes
    12      8     LSN (log sequence number, uint64)
    20      4     CRC32 (zlib.crc32) of bytes 4..19 (version, flags, length, LSN) and the payload
    24      n     payload

Files are named after the LSN of their first record, zero-padded to 20 digits
(`wal-00000000000000000001.log`). Records are appended to the newest file; once it has reached
`file_bytes`, the next record starts a new file. LSNs are consecutive (each record is the previous
one plus 1), strictly increasing across files, and continue after a restart.

Durability: one writer thread drains a queue of pending appends, writes them all, syncs the file
once (group commit) and only then completes every append in the batch. A file is synced before the
next one is created, and the directory is synced after files are created or deleted, so only the
newest file can end in a partial record after a crash. `open()` truncates such a torn tail (a short
or failing record at the end of the newest file, which no caller was ever told was durable); the
same fault in any older file is corruption and raises `WalCorruption`.

An append that raises, or whose caller was cancelled while waiting, may still be in the log: only
the converse is promised (an append that returned is durable).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import fcntl
import logging
import os
import re
import struct
import threading
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

log = logging.getLogger(__name__)

MAGIC = b"PQWL"
VERSION = 1
_PREFIX = struct.Struct("<4sHHIQ")  # magic, version, flags, length, LSN
_CRC = struct.Struct("<I")
HEADER_BYTES = _PREFIX.size + _CRC.size
# A garbage length must never make a reader allocate gigabytes; ingest batches are far smaller.
MAX_PAYLOAD_BYTES = 256 * 1024 * 1024
LOCK_FILE = "wal.lock"

_FILE_NAME = re.compile(r"^wal-(\d{20})\.log$")
# The writer hands the kernel at most this much per write() so a huge backlog is not joined into
# one huge buffer; the batch is still synced once.
_WRITE_CHUNK_BYTES = 4 * 1024 * 1024
_READ_BUFFER_BYTES = 1024 * 1024
# fdatasync skips the inode timestamps a pure append does not need; the size is still synced.
_datasync = getattr(os, "fdatasync", os.fsync)


class WalError(Exception):
    """The log cannot be used: not open, closed, locked by another writer, or a write failed."""


class WalCorruption(WalError):
    """A record that is not a torn tail fails to check: the log needs an operator, not a repair."""


class _BadRecord(Exception):
    """A record that does not parse or check; the caller decides if it is a torn tail or corruption."""

    def __init__(self, offset: int, reason: str) -> None:
        super().__init__(f"{reason} at byte {offset}")
        self.offset = offset
        self.reason = reason


def _file_name(first_lsn: int) -> str:
    return f"wal-{first_lsn:020d}.log"


def _encode_header(lsn: int, payload: bytes) -> bytes:
    prefix = _PREFIX.pack(MAGIC, VERSION, 0, len(payload), lsn)
    return prefix + _CRC.pack(zlib.crc32(payload, zlib.crc32(prefix[len(MAGIC) :])))


def _records(stream: BinaryIO, size: int) -> Iterator[tuple[int, int, bytes]]:
    """Yield (offset, LSN, payload) of each record in the first `size` bytes of `stream`.

    Raises `_BadRecord` at the first record that is short or fails its magic, version or CRC check.
    """
    offset = 0
    while offset < size:
        if size - offset < HEADER_BYTES:
            raise _BadRecord(offset, "short header")
        header = stream.read(HEADER_BYTES)
        if len(header) < HEADER_BYTES:
            raise _BadRecord(offset, "short header")
        magic, version, _flags, length, lsn = _PREFIX.unpack_from(header)
        (crc,) = _CRC.unpack_from(header, _PREFIX.size)
        if magic != MAGIC:
            raise _BadRecord(offset, "bad magic")
        if version != VERSION:
            if offset == 0 and version > VERSION:
                # A whole file in a newer format is not a torn write; truncating it would lose data.
                raise WalError(
                    f"log written by a newer format (version {version}); this code reads {VERSION}"
                )
            raise _BadRecord(offset, f"unknown version {version}")
        end = offset + HEADER_BYTES + length
        if end > size:
            raise _BadRecord(offset, "short payload")
        payload = stream.read(length)
        if len(payload) < length:
            raise _BadRecord(offset, "short payload")
        if zlib.crc32(payload, zlib.crc32(header[len(MAGIC) : _PREFIX.size])) != crc:
            raise _BadRecord(offset, "crc mismatch")
        yield offset, lsn, payload
        offset = end


@dataclass(slots=True)
class _Pending:
    """One append waiting for the writer: its payload and where to report its LSN."""

    payload: bytes
    # None for append_sync callers, whose concurrent future the writer completes directly.
    loop: asyncio.AbstractEventLoop | None
    future: asyncio.Future[int] | concurrent.futures.Future[int]


def _settle_on_loop(results: list[tuple[asyncio.Future[int], int | BaseException]]) -> None:
    """Complete a batch's asyncio futures; runs on their event loop."""
    for future, outcome in results:
        if future.done():  # the caller was cancelled and no longer waits
            continue
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)


class WriteAheadLog:
    """An append-only, group-committed log of opaque payloads in numbered files under one directory.

    Call `open()` once (it repairs a torn tail and starts the writer thread), then `append()` from
    asyncio or `append_sync()` from plain threads, `replay()` to read back, `truncate_through()` once
    data is safe elsewhere, and `close()` at the end. One open log at a time per directory (a
    flock on `wal.lock` refuses a second writer, in this process or another).
    With `fsync=False` nothing is synced: records survive a process crash but not a power loss
    (for tests and tools only).
    """

    def __init__(self, directory: Path, *, file_bytes: int = 64 * 1024 * 1024, fsync: bool = True) -> None:
        if file_bytes < 1:
            raise ValueError(f"file_bytes must be positive, got {file_bytes}")
        self.directory = Path(directory)
        self.file_bytes = file_bytes
        self.fsync = fsync
        # Data syncs of log files so far: one per group commit plus one per file roll. Tests read
        # it to see that concurrent appends share syncs.
        self.fsync_count = 0

        self._state = "new"
        self._lock_fd: int | None = None
        self._cond = threading.Condition()
        self._queue: list[_Pending] = []
        self._closing = False
        self._failure: BaseException | None = None
        self._thread: threading.Thread | None = None
        # First LSN of each file, oldest first; the last one is the file being written.
        self._files: list[int] = []
        self._files_lock = threading.Lock()
        self._fd: int | None = None
        self._file_size = 0
        self._next_lsn = 1
        self._last_lsn = 0

    @property
    def last_lsn(self) -> int:
        """LSN of the last durable record (0 if none was ever written)."""
        return self._last_lsn

    # -- opening ---------------------------------------------------------------------------------

    def open(self) -> None:
        """Scan the files, truncate a torn tail of the newest one, and start the writer thread.

        Blocks on disk I/O (it reads every record once); call it before serving, or in a thread.
        Raises `WalCorruption` when a file other than the newest is damaged or a file is missing,
        and `WalError` when another process holds the directory.
        """
        if self._state != "new":
            raise WalError(f"write-ahead log in {self.directory} was already opened")
        created = not self.directory.exists()
        self.directory.mkdir(parents=True, exist_ok=True)
        if created:
            self._sync_dir(self.directory.parent)
        self._lock_fd = self._acquire_lock()
        opened = False
        try:
            self._recover()
            opened = True
        finally:
            if not opened:
                self._release_lock()
        self._state = "open"
        self._thread = threading.Thread(target=self._run, name=f"wal-writer:{self.directory}", daemon=True)
        self._thread.start()

    def _acquire_lock(self) -> int:
        fd = os.open(self.directory / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise WalError(f"write-ahead log in {self.directory} is open in another writer") from None
        return fd

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor drops the flock
            self._lock_fd = None

    def _recover(self) -> None:
        firsts = sorted(
            int(match.group(1))
            for match in (_FILE_NAME.match(entry.name) for entry in self.directory.iterdir())
            if match
        )
        next_lsn = 1
        size = 0
        for index, first in enumerate(firsts):
            if index and first != next_lsn:
                raise WalCorruption(
                    f"{self.directory / _file_name(first)}: starts at LSN {first} but the previous file "
                    f"ends at {next_lsn - 1} (a file is missing or misnamed)"
                )
            next_lsn, size = self._scan(first, last=index == len(firsts) - 1)
        self._files = firsts
        self._next_lsn = next_lsn
        self._last_lsn = next_lsn - 1
        if firsts:
            self._fd = os.open(self._path(firsts[-1]), os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
            self._file_size = size
        else:
            self._create_file(next_lsn)

    def _scan(self, first: int, *, last: bool) -> tuple[int, int]:
        """Check every record of one file; return the LSN after its last record and its good size."""
        path = self._path(first)
        expected = first
        with path.open("rb", buffering=_READ_BUFFER_BYTES) as stream:
            size = os.fstat(stream.fileno()).st_size
            try:
                for offset, lsn, _payload in _records(stream, size):
                    if lsn != expected:
                        # The CRC checked, so this is no torn write: something rewrote the file.
                        raise WalCorruption(
                            f"{path}: record at byte {offset} has LSN {lsn}, expected {expected}"
                        )
                    expected += 1
            except _BadRecord as bad:
                if not last:
                    raise WalCorruption(f"{path}: {bad} in a file that is not the newest") from None
                self._repair(path, bad, size)
                size = bad.offset
        if not last and expected == first:
            raise WalCorruption(f"{path}: holds no records but is not the newest file")
        return expected, size

    def _repair(self, path: Path, bad: _BadRecord, size: int) -> None:
        # The record was never acknowledged: a batch is acknowledged only after the sync that
        # follows its write, and the newest file ends with the newest batch.
        log.warning(
            "write-ahead log: truncating a torn tail",
            extra={
                "file": str(path),
                "offset": bad.offset,
                "dropped_bytes": size - bad.offset,
                "reason": bad.reason,
            },
        )
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.ftruncate(fd, bad.offset)
            if self.fsync:
                os.fsync(fd)
        finally:
            os.close(fd)

    # -- appending -------------------------------------------------------------------------------

    async def append(self, payload: bytes) -> int:
        """Append one record; return its LSN once it is written and synced.

        Never blocks the event loop: the writer thread does the I/O, sharing one write and one sync
        among every append pending at the time.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[int] = loop.create_future()
        self._enqueue(_Pending(payload, loop, future))
        return await future

    def append_sync(self, payload: bytes) -> int:
        """Append one record from a plain thread; blocks until it is written and synced."""
        future: concurrent.futures.Future[int] = concurrent.futures.Future()
        self._enqueue(_Pending(payload, None, future))
        return future.result()

    def _enqueue(self, pending: _Pending) -> None:
        if len(pending.payload) > MAX_PAYLOAD_BYTES:
            raise ValueError(f"payload of {len(pending.payload)} bytes exceeds {MAX_PAYLOAD_BYTES}")
        with self._cond:
            if self._state != "open" or self._closing:
                raise WalError(f"write-ahead log in {self.directory} is not open")
            if self._failure is not None:
                raise WalError(f"write-ahead log in {self.directory} failed; reopen it") from self._failure
            self._queue.append(pending)
            if len(self._queue) == 1:  # the writer only waits on an empty queue
                self._cond.notify()

    def _run(self) -> None:
        """The writer thread: take every pending append, commit them together, report, repeat."""
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait()
                if not self._queue:
                    return
                batch, self._queue = self._queue, []
                failure = self._failure
            lsns: list[int] = []
            if failure is None:
                try:
                    lsns = self._commit([pending.payload for pending in batch])
                # Any error, not only OSError: a writer that died silently would leave every waiter
                # hanging. After a failed write or sync the file's state is unknown, so the log
                # refuses further appends until it is reopened (and open() repairs the tail).
                except Exception as exc:
                    log.exception("write-ahead log: commit failed; refusing appends until reopened")
                    with self._cond:
                        self._failure = exc
                    failure = exc
            self._settle(batch, lsns, failure)

    def _commit(self, payloads: list[bytes]) -> list[int]:
        """Write `payloads` as consecutive records, rolling files as needed, then sync once."""
        assert self._fd is not None
        lsns: list[int] = []
        parts: list[bytes] = []
        pending_bytes = 0
        for payload in payloads:
            if self._file_size + pending_bytes >= self.file_bytes:
                self._write(parts)
                parts, pending_bytes = [], 0
                # The full file is synced before the next exists, so only the newest can be torn.
                self._sync_file()
                self._create_file(self._next_lsn)
            lsn = self._next_lsn
            self._next_lsn += 1
            parts.append(_encode_header(lsn, payload))
            parts.append(payload)
            pending_bytes += HEADER_BYTES + len(payload)
            lsns.append(lsn)
            if pending_bytes >= _WRITE_CHUNK_BYTES:
                self._write(parts)
                parts, pending_bytes = [], 0
        self._write(parts)
        self._sync_file()
        self._last_lsn = lsns[-1]
        return lsns

    def _write(self, parts: list[bytes]) -> None:
        if not parts:
            return
        assert self._fd is not None
        data = b"".join(parts)
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
        self._file_size += len(data)

    def _sync_file(self) -> None:
        if self.fsync and self._fd is not None:
            _datasync(self._fd)
            self.fsync_count += 1

    def _create_file(self, first_lsn: int) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        # O_EXCL: a file already named so would mean two writers or an LSN reused.
        self._fd = os.open(
            self._path(first_lsn), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC, 0o644
        )
        self._file_size = 0
        self._sync_dir(self.directory)
        with self._files_lock:
            self._files.append(first_lsn)

    def _settle(self, batch: list[_Pending], lsns: list[int], failure: BaseException | None) -> None:
        """Report each append's LSN or failure; one wake-up per event loop for the whole batch."""
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[int], int | BaseException]]] = {}
        for index, pending in enumerate(batch):
            outcome: int | BaseException
            if failure is None:
                outcome = lsns[index]
            else:
                outcome = WalError(f"append to the write-ahead log in {self.directory} failed")
                outcome.__cause__ = failure
            if pending.loop is None:
                sync_future = pending.future
                assert isinstance(sync_future, concurrent.futures.Future)
                if isinstance(outcome, BaseException):
                    sync_future.set_exception(outcome)
                else:
                    sync_future.set_result(outcome)
            else:
                assert isinstance(pending.future, asyncio.Future)
                by_loop.setdefault(pending.loop, []).append((pending.future, outcome))
        for loop, results in by_loop.items():
            try:
                loop.call_soon_threadsafe(_settle_on_loop, results)
            except RuntimeError:
                # The loop closed while its appends were in flight: nobody is left to tell.
                log.debug("write-ahead log: event loop closed before its appends completed")

    # -- reading and truncating ------------------------------------------------------------------

    def replay(self, after_lsn: int = 0) -> Iterator[tuple[int, bytes]]:
        """Yield (LSN, payload) of every durable record with LSN > `after_lsn`, in LSN order.

        Reads the files lazily; records appended after the call starts are not included. Do not
        call `truncate_through()` while iterating.
        """
        if self._state != "open":
            raise WalError(f"write-ahead log in {self.directory} is not open")
        # Read the bound before the file list: every record up to it is in a file already listed.
        through = self._last_lsn
        with self._files_lock:
            firsts = list(self._files)
        return self._replay(firsts, after_lsn, through)

    def _replay(self, firsts: list[int], after_lsn: int, through: int) -> Iterator[tuple[int, bytes]]:
        for index, first in enumerate(firsts):
            if first > through:
                return
            if index + 1 < len(firsts) and firsts[index + 1] <= after_lsn + 1:
                continue  # every record of this file is at or below after_lsn
            path = self._path(first)
            with path.open("rb", buffering=_READ_BUFFER_BYTES) as stream:
                size = os.fstat(stream.fileno()).st_size
                try:
                    for _offset, lsn, payload in _records(stream, size):
                        if lsn > after_lsn:
                            yield lsn, payload
                        if lsn >= through:
                            # Stop here: past the bound the writer may be mid-record.
                            return
                except _BadRecord as bad:
                    raise WalCorruption(f"{path}: {bad} in a record that was durable") from None

    def truncate_through(self, lsn: int) -> int:
        """Delete the oldest files whose records all have LSN <= `lsn`; return how many.

        The file being written is never deleted, so LSNs keep counting after every truncation.
        """
        if self._state != "open":
            raise WalError(f"write-ahead log in {self.directory} is not open")
        with self._files_lock:
            count = 0
            # A file's last LSN is one below the next file's first.
            while count + 1 < len(self._files) and self._files[count + 1] - 1 <= lsn:
                count += 1
            doomed = self._files[:count]
            del self._files[:count]
        # Oldest first, so a crash part-way leaves a log that still starts cleanly.
        for first in doomed:
            self._path(first).unlink()
        if doomed:
            self._sync_dir(self.directory)
        return len(doomed)

    # -- closing ---------------------------------------------------------------------------------

    async def close(self) -> None:
        """Commit every pending append, then stop the writer thread and release the directory."""
        await asyncio.to_thread(self.close_sync)

    def close_sync(self) -> None:
        """Like `close()`, blocking; safe to call more than once."""
        with self._cond:
            if self._state == "new":
                self._state = "closed"
            if self._state != "open" or self._closing:
                return
            self._closing = True
            self._cond.notify()
        assert self._thread is not None
        self._thread.join()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self._release_lock()
        with self._cond:
            self._state = "closed"

    # -- helpers ---------------------------------------------------------------------------------

    def _path(self, first_lsn: int) -> Path:
        return self.directory / _file_name(first_lsn)

    def _sync_dir(self, directory: Path) -> None:
        # A new or deleted name is durable only once its directory is synced.
        if not self.fsync:
            return
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
