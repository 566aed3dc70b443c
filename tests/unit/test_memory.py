"""Freed memory goes back to the operating system once the service has fixed glibc's thresholds."""

from __future__ import annotations

import subprocess
import sys

PRELUDE = """
import sys
import numpy as np
from libs.memory import MMAP_THRESHOLD_BYTES, give_back_freed_heap, return_freed_memory

def rss_mib():
    with open("/proc/self/status") as f:
        return int(next(line for line in f if line.startswith("VmRSS")).split()[1]) / 1024
"""


def _run(script: str, arg: str) -> str:
    """What `script`, after PRELUDE, prints when run with `arg` in a fresh interpreter."""
    out = subprocess.run(
        [sys.executable, "-c", PRELUDE + script, arg], capture_output=True, text=True, check=True
    )
    return out.stdout


SCRIPT = """
if sys.argv[1] == "fixed":
    assert return_freed_memory()
big = np.ones(16 << 20, dtype=np.uint8)  # freeing a 16 MiB block raises glibc's dynamic threshold
del big
before = rss_mib()
# 200 MiB of blocks of twice the fixed threshold, each followed by a small array that stays (as a
# service's long-lived objects do), so the freed blocks are holes below the heap's top that
# trimming cannot reach, unless they were mapped.
size = 2 * MMAP_THRESHOLD_BYTES
blocks, kept = [], []
for _ in range((200 << 20) // size):
    blocks.append(np.ones(size, dtype=np.uint8))
    kept.append(np.ones(1024, dtype=np.uint8))
del blocks
print(rss_mib() - before)
"""


def _kept_mib(mode: str) -> float:
    return float(_run(SCRIPT, mode))


def test_fixed_thresholds_return_freed_blocks_that_glibc_would_keep():
    assert _kept_mib("default") > 100, "glibc keeps the freed blocks (the case being fixed)"
    assert _kept_mib("fixed") < 20


TOP_SCRIPT = """
assert return_freed_memory()
before = rss_mib()
# Blocks just under the mmap threshold come from the heap, one after another at its top.
size = MMAP_THRESHOLD_BYTES - (64 << 10)
blocks = [np.ones(size, dtype=np.uint8) for _ in range((int(sys.argv[1]) << 20) // size)]
del blocks
print(rss_mib() - before)
"""


def _kept_at_top(mib: int) -> float:
    """MiB still resident after `mib` MiB of blocks were freed at the heap's top."""
    return float(_run(TOP_SCRIPT, str(mib)))


def test_a_freed_heap_top_stays_for_reuse_below_the_trim_threshold_and_goes_back_above_it():
    """REST bodies of a megabyte come and go at the heap's top: below the trim threshold (16 MiB)
    their pages stay for the next ones, not faulted in and zeroed again (glibc's own 128 KiB gives
    them back); a free top beyond it goes back."""
    assert _kept_at_top(12) >= 10
    assert _kept_at_top(64) < 8


HOLES_SCRIPT = """
assert return_freed_memory()
before = rss_mib()
# 200 MiB of heap blocks (under the mmap threshold), each followed by a small array that stays: the
# freed blocks are holes below the heap's top, which neither threshold returns.
size = MMAP_THRESHOLD_BYTES - (64 << 10)
blocks, kept = [], []
for _ in range((200 << 20) // size):
    blocks.append(np.ones(size, dtype=np.uint8))
    kept.append(np.ones(1024, dtype=np.uint8))
del blocks
held = rss_mib() - before
if sys.argv[1] == "trim":
    assert give_back_freed_heap()
print(held, rss_mib() - before)
"""


def _holes(mode: str) -> tuple[float, float]:
    """MiB resident after 200 MiB of heap blocks were freed between kept ones, then after `mode`."""
    held, after = _run(HOLES_SCRIPT, mode).split()
    return float(held), float(after)


def test_freed_holes_inside_the_heap_go_back_when_the_heap_is_trimmed():
    """What a flush or a merge frees between long-lived objects stays resident under both
    thresholds; give_back_freed_heap (every TRIM_INTERVAL_SECONDS in a serving process) returns it."""
    held, after = _holes("keep")
    assert held > 150 and after > 150
    held, after = _holes("trim")
    assert held > 150 and after < 20
