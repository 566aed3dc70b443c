"""Helpers shared by the test suites: free ports, polling, process trees, a quiet store, the
README's examples."""

from __future__ import annotations

import os
import random
import re
import socket
import time
from collections.abc import Callable
from pathlib import Path

from libs.storage import MetricStore, StoreConfig

REPO_ROOT = Path(__file__).resolve().parent.parent


def readme_bodies(path: str) -> list[str]:
    """The `-d '...'` bodies of the README's endpoint row for `POST path`, verbatim."""
    readme = (REPO_ROOT / "README.md").read_text()
    (row,) = [line for line in readme.splitlines() if line.startswith(f"| `POST {path}`")]
    return re.findall(r"-d '([^']*)'", row)


def curl_examples(text: str) -> list[str]:
    """The curl commands a page shows inline (`curl ...`)."""
    return re.findall(r"`(curl [^`]+)`", text)


def free_port() -> int:
    """A TCP port on loopback that is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def free_port_block(count: int) -> int:
    """The first of `count` consecutive loopback ports that are all free right now (outside the
    ephemeral range, so ports picked by free_port() do not land inside the block)."""
    for base in range(20_000 + random.randrange(0, 9_000, 10), 32_000, 10):
        socks = []
        try:
            for port in range(base, base + count):
                sock = socket.socket()
                socks.append(sock)
                sock.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
    raise RuntimeError(f"no block of {count} free ports")


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll `predicate` until it holds; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def descendants(pid: int) -> set[int]:
    """Every live process below `pid`, read from /proc."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        parents.setdefault(ppid, []).append(int(entry))
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def opened_store(data_dir: Path, **knobs: object) -> MetricStore:
    """An opened MetricStore in `data_dir` that flushes only when told (no size or age trigger)
    and skips fsync; `knobs` override any StoreConfig field."""
    config = {"hot_flush_points": 10**9, "hot_flush_seconds": 3600.0, "wal_fsync": False}
    store = MetricStore(StoreConfig(data_dir=data_dir, **{**config, **knobs}))
    store.open()
    return store


class ManualClock:
    """A clock a test moves by hand (`clock.now += 5`), for code that takes a `clock` callable."""

    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def batch_summary(batch) -> tuple:
    """A validated ingest batch as plain values, for comparing two parses of one body."""
    return (
        batch.datasource,
        batch.accepted,
        batch.rejected,
        [(e.index, e.field, e.reason) for e in batch.errors],
        [(s.key, s.ts.tolist(), s.values.tolist()) for s in batch.series],
    )
