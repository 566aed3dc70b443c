"""The write-ahead log: round trips, group commit, rolling and truncation, torn tails, corruption."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from libs.storage import wal as wal_module
from libs.storage.wal import HEADER_BYTES, WalCorruption, WalError, WriteAheadLog

# With 300-byte payloads a record is 324 bytes, so a 1000-byte file holds 4 records before it rolls.
SMALL_FILE = 1000
RECORD_PAYLOAD = 300


def _payload(i: int, size: int = RECORD_PAYLOAD) -> bytes:
    return (f"record-{i}|".encode() * size)[:size]


def _open(directory: Path, *, file_bytes: int = 64 * 1024 * 1024, fsync: bool = True) -> WriteAheadLog:
    wal = WriteAheadLog(directory, file_bytes=file_bytes, fsync=fsync)
    wal.open()
    return wal


def _files(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.glob("wal-*.log"))


def _write_records(directory: Path, count: int, *, file_bytes: int = SMALL_FILE) -> list[bytes]:
    wal = _open(directory, file_bytes=file_bytes)
    payloads = [_payload(i) for i in range(1, count + 1)]
    assert [wal.append_sync(p) for p in payloads] == list(range(1, count + 1))
    wal.close_sync()
    return payloads


def _replayed(directory: Path, after_lsn: int = 0) -> list[tuple[int, bytes]]:
    wal = _open(directory)
    try:
        return list(wal.replay(after_lsn))
    finally:
        wal.close_sync()


def test_round_trip_across_reopen_and_lsns_continue(tmp_path):
    wal = _open(tmp_path)
    assert wal.last_lsn == 0
    assert list(wal.replay()) == []
    payloads = [b"", b"x", _payload(3, 5000), bytes(range(256))]
    assert [wal.append_sync(p) for p in payloads] == [1, 2, 3, 4]
    assert wal.last_lsn == 4
    wal.close_sync()

    wal = _open(tmp_path)
    assert wal.last_lsn == 4
    assert list(wal.replay()) == list(enumerate(payloads, start=1))
    assert wal.append_sync(b"after reopen") == 5
    wal.close_sync()

    assert _replayed(tmp_path)[-1] == (5, b"after reopen")


async def test_async_append_round_trip(tmp_path):
    wal = _open(tmp_path)
    assert await wal.append(b"one") == 1
    assert await wal.append(b"two") == 2
    await wal.close()
    wal = _open(tmp_path)
    assert await wal.append(b"three") == 3
    assert list(wal.replay()) == [(1, b"one"), (2, b"two"), (3, b"three")]
    await wal.close()


async def test_concurrent_appends_share_one_sync_per_batch(tmp_path):
    wal = _open(tmp_path, fsync=True)
    payloads = [_payload(i, 2000) for i in range(200)]
    lsns = await asyncio.gather(*(wal.append(p) for p in payloads))
    # Each task enqueues before the next runs, so the LSNs follow the order of the calls.
    assert lsns == list(range(1, 201))
    assert wal.fsync_count < 20, f"{wal.fsync_count} syncs for 200 concurrent appends: no group commit"
    assert dict(wal.replay()) == dict(zip(lsns, payloads, strict=True))
    await wal.close()


def test_files_roll_and_truncate_through_removes_only_covered_files(tmp_path):
    payloads = _write_records(tmp_path, 20, file_bytes=SMALL_FILE)
    assert _files(tmp_path) == [f"wal-{first:020d}.log" for first in (1, 5, 9, 13, 17)]

    wal = _open(tmp_path, file_bytes=SMALL_FILE)
    assert wal.truncate_through(3) == 0  # records 1-4 share a file: 4 is not yet safe
    assert wal.truncate_through(5) == 1
    assert wal.truncate_through(12) == 2
    assert _files(tmp_path)[0] == f"wal-{13:020d}.log"
    assert list(wal.replay(after_lsn=12)) == list(zip(range(13, 21), payloads[12:], strict=True))
    assert list(wal.replay(after_lsn=14)) == list(zip(range(15, 21), payloads[14:], strict=True))
    # The file being written is never removed, however far the caller says data is safe.
    assert wal.truncate_through(10**9) == 1
    assert _files(tmp_path) == [f"wal-{17:020d}.log"]
    wal.close_sync()

    wal = _open(tmp_path, file_bytes=SMALL_FILE)
    assert wal.last_lsn == 20
    assert [lsn for lsn, _ in wal.replay()] == [17, 18, 19, 20]
    assert wal.append_sync(b"next") == 21
    wal.close_sync()


def test_replay_after_lsn_filters(tmp_path):
    payloads = _write_records(tmp_path, 10, file_bytes=SMALL_FILE)
    wal = _open(tmp_path)
    assert list(wal.replay()) == list(enumerate(payloads, start=1))
    assert list(wal.replay(after_lsn=7)) == [(8, payloads[7]), (9, payloads[8]), (10, payloads[9])]
    assert list(wal.replay(after_lsn=10)) == []
    assert list(wal.replay(after_lsn=100)) == []
    wal.close_sync()


def _append_bytes(data: bytes) -> Callable[[Path], None]:
    def damage(path: Path) -> None:
        with path.open("ab") as stream:
            stream.write(data)

    return damage


def _cut_last_record(into: int) -> Callable[[Path], None]:
    def damage(path: Path) -> None:
        record = HEADER_BYTES + RECORD_PAYLOAD
        os.truncate(path, path.stat().st_size - record + into)

    return damage


def _flip_last_payload_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("damage", "intact"),
    [
        pytest.param(_append_bytes(b"\x13garbage that is no record"), 6, id="garbage-appended"),
        pytest.param(_append_bytes(bytes(4096)), 6, id="zeros-appended"),
        pytest.param(_cut_last_record(into=10), 5, id="cut-mid-header"),
        pytest.param(_cut_last_record(into=HEADER_BYTES + 100), 5, id="cut-mid-payload"),
        pytest.param(_flip_last_payload_byte, 5, id="last-record-crc-fails"),
    ],
)
def test_torn_tail_of_newest_file_is_truncated(tmp_path, caplog, damage, intact):
    # Six records over two files (1-4, 5-6): only the newest file may be torn.
    payloads = _write_records(tmp_path, 6, file_bytes=SMALL_FILE)
    damage(tmp_path / f"wal-{5:020d}.log")

    with caplog.at_level(logging.WARNING, logger="libs.storage.wal"):
        wal = _open(tmp_path, file_bytes=SMALL_FILE)
    assert any("torn tail" in record.getMessage() for record in caplog.records)
    assert wal.last_lsn == intact
    assert list(wal.replay()) == list(enumerate(payloads[:intact], start=1))
    # The torn record was never acknowledged, so its LSN is free to reuse.
    assert wal.append_sync(b"after repair") == intact + 1
    wal.close_sync()

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="libs.storage.wal"):
        assert _replayed(tmp_path)[-1] == (intact + 1, b"after repair")
    assert not caplog.records


def test_newest_file_torn_at_its_first_record_keeps_the_lsn_sequence(tmp_path):
    _write_records(tmp_path, 5, file_bytes=SMALL_FILE)  # files 1-4 and 5
    os.truncate(tmp_path / f"wal-{5:020d}.log", 7)
    wal = _open(tmp_path, file_bytes=SMALL_FILE)
    assert wal.last_lsn == 4
    assert wal.append_sync(b"five again") == 5
    wal.close_sync()
    assert [lsn for lsn, _ in _replayed(tmp_path)] == [1, 2, 3, 4, 5]


def _flip_byte_of_second_record(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[HEADER_BYTES + RECORD_PAYLOAD + HEADER_BYTES + 50] ^= 0x01
    path.write_bytes(bytes(data))


def _cut_inside(path: Path) -> None:
    os.truncate(path, path.stat().st_size - 20)


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(_flip_byte_of_second_record, id="bad-crc"),
        pytest.param(_cut_inside, id="short-record"),
        pytest.param(_append_bytes(b"trailing garbage"), id="trailing-garbage"),
        pytest.param(Path.unlink, id="file-missing"),
    ],
)
def test_damage_to_an_older_file_is_corruption(tmp_path, damage):
    _write_records(tmp_path, 10, file_bytes=SMALL_FILE)  # files 1-4, 5-8, 9-10
    middle = tmp_path / f"wal-{5:020d}.log"
    damage(middle)
    sizes = {name: (tmp_path / name).stat().st_size for name in _files(tmp_path)}

    with pytest.raises(WalCorruption):
        _open(tmp_path, file_bytes=SMALL_FILE)
    # Nothing was "repaired", and the failed open released the directory.
    assert {name: (tmp_path / name).stat().st_size for name in _files(tmp_path)} == sizes
    with pytest.raises(WalCorruption):
        _open(tmp_path, file_bytes=SMALL_FILE)


def test_a_second_writer_is_refused(tmp_path):
    wal = _open(tmp_path)
    with pytest.raises(WalError, match="another writer"):
        _open(tmp_path)
    wal.close_sync()
    _open(tmp_path).close_sync()


async def test_append_outside_open_raises(tmp_path):
    wal = WriteAheadLog(tmp_path)
    with pytest.raises(WalError, match="not open"):
        await wal.append(b"early")
    wal.open()
    await wal.close()
    with pytest.raises(WalError, match="not open"):
        wal.append_sync(b"late")
    await wal.close()  # closing twice is harmless


async def test_close_commits_appends_still_pending(tmp_path):
    wal = _open(tmp_path)
    tasks = [asyncio.create_task(wal.append(_payload(i))) for i in range(50)]
    await asyncio.sleep(0)  # one loop turn: every task has queued its record
    await wal.close()
    assert sorted([await task for task in tasks]) == list(range(1, 51))
    assert len(_replayed(tmp_path)) == 50


async def test_a_failed_sync_fails_the_batch_and_refuses_further_appends(tmp_path, monkeypatch):
    wal = _open(tmp_path)
    assert await wal.append(b"durable") == 1

    def failing_sync(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(wal_module, "_datasync", failing_sync)
    with pytest.raises(WalError, match="failed") as failed:
        await wal.append(b"lost")
    assert isinstance(failed.value.__cause__, OSError)
    with pytest.raises(WalError, match="reopen"):
        await wal.append(b"refused")
    await wal.close()

    monkeypatch.undo()
    wal = _open(tmp_path)
    # The failed record may or may not be there (its write succeeded here); the durable one is.
    assert next(wal.replay()) == (1, b"durable")
    await wal.close()
