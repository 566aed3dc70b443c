"""A process killed mid-append loses no acknowledged write-ahead log record."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from collections import Counter
from itertools import pairwise
from pathlib import Path

import pytest

from libs.storage.wal import WriteAheadLog

REPO_ROOT = Path(__file__).resolve().parents[2]
ACKS_BEFORE_KILL = 3000

# Sixteen tasks append in a tight loop, each printing "<lsn> <sha256 of payload>" only after its
# append returned. Small files make the log roll often, so the kill can land mid-roll too.
CHILD = """
import asyncio, hashlib, os, sys
from pathlib import Path

from libs.storage.wal import WriteAheadLog


async def appender(wal, worker):
    n = 0
    while True:
        payload = f"{worker}:{n}:".encode() + os.urandom(64 + (n * 37 + worker * 101) % 4000)
        lsn = await wal.append(payload)
        sys.stdout.write(f"{lsn} {hashlib.sha256(payload).hexdigest()}\\n")
        sys.stdout.flush()
        n += 1


async def main():
    wal = WriteAheadLog(Path(sys.argv[1]), file_bytes=256 * 1024)
    wal.open()
    await asyncio.gather(*(appender(wal, worker) for worker in range(16)))


asyncio.run(main())
"""


def _parse(line: str, acked: dict[int, str]) -> None:
    lsn_text, digest = line.split()
    lsn = int(lsn_text)
    assert lsn not in acked, f"LSN {lsn} acknowledged twice"
    acked[lsn] = digest


@pytest.mark.timeout(60)
def test_every_acknowledged_append_survives_sigkill(tmp_path):
    wal_dir = tmp_path / "wal"
    acked: dict[int, str] = {}
    with (tmp_path / "child.stderr").open("w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(wal_dir)],
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                _parse(line, acked)
                if len(acked) >= ACKS_BEFORE_KILL:
                    break
            assert len(acked) >= ACKS_BEFORE_KILL, (
                f"child stopped after {len(acked)} acks: {(tmp_path / 'child.stderr').read_text()}"
            )
            proc.kill()  # SIGKILL: no handler, no flush, no close
            # Acks already in the pipe were printed before the kill, so they count too; a line cut
            # short by the kill is dropped.
            for line in proc.stdout.read().splitlines(keepends=True):
                if line.endswith("\n"):
                    _parse(line, acked)
        finally:
            proc.kill()
            proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()

    assert len(list(wal_dir.glob("wal-*.log"))) > 1, (
        "the log never rolled; the test covers less than it should"
    )
    wal = WriteAheadLog(wal_dir)
    wal.open()
    try:
        replayed = [(lsn, hashlib.sha256(payload).hexdigest()) for lsn, payload in wal.replay()]
        lsns = [lsn for lsn, _ in replayed]
        assert all(a < b for a, b in pairwise(lsns)), "LSNs not strictly increasing"
        by_lsn = dict(replayed)
        missing = [lsn for lsn in acked if lsn not in by_lsn]
        assert not missing, f"{len(missing)} acknowledged records lost, e.g. LSN {missing[:5]}"
        changed = [lsn for lsn, digest in acked.items() if by_lsn[lsn] != digest]
        assert not changed, f"acknowledged records replay with other bytes: LSN {changed[:5]}"
        copies = Counter(digest for _, digest in replayed)
        assert all(copies[digest] == 1 for digest in acked.values()), "an acknowledged payload replays twice"
        assert wal.append_sync(b"after the crash") == wal.last_lsn == lsns[-1] + 1
    finally:
        wal.close_sync()
