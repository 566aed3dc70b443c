"""Give freed memory back to the operating system.

glibc serves large allocations with mmap and returns them on free, but after a large block is
freed it raises that threshold (up to 32 MiB on 64-bit) and serves later blocks of that size
from its heaps, which it keeps. A service that builds and drops big numpy arrays per request and per
flush (ingest batches, hot-tier tables, merges) then holds memory it no longer uses. Measured with
benchmarks.churn at 1 M series: +992 MiB after ingest with glibc's defaults, +637 to +739 MiB with
both thresholds fixed at 128 KiB, +368 MiB when they are set through the environment before start.

The mmap threshold is fixed at 4 MiB, not 128 KiB: below it a block comes from the heap and its
pages are used again, where a mapped block is faulted in and zeroed page by page on every use and
unmapped on free. REST ingest bodies (a 1.3 MB row body, and the copies gRPC, protobuf and the
hand-off to the JSON worker make of it) sit between the two: at 128 KiB the serving process spent
1.19 to 1.41 CPU s on 199 such bodies, at 4 MiB 0.74 to 0.95 (rows 571-611 -> 699-707 K points/s,
benchmarks.ingest_rest's row load, 2026-11-30). benchmarks.churn's memory moved within its noise
(after ingest at 200,000 and 1,000,000 series: 444 and 654 MiB at 128 KiB, 450 and 673 at 4 MiB).
The trim threshold is 16 MiB: a free top of a heap smaller than that stays, so the next bodies reuse
its pages, and one beyond it goes back (all but glibc's 128 KiB pad). At glibc's own 128 KiB every
freed body at the top went back and
the next one was faulted in again, on this machine (transparent huge pages on) a 2 MiB page zeroed
at a time: in benchmarks.ingest_rest's row load the serving process spent 1.29 to 1.63 CPU s on
199 bodies at 128 KiB, 0.99 to 1.10 at 16 MiB (rows 736-918 -> 1,016-1,129 K points/s, three
alternated runs each, 2026-12-01; 8 MiB: 1.06 to 1.41 s, 32 MiB: 0.94 to 1.14 s). benchmarks.churn's
memory once flushed moved within its noise (265, 350 and 725 MiB at 20,000, 200,000 and 1,000,000
series at 16 MiB; 260 to 274, 327 to 332 and 581 to 727 at 128 KiB).

Neither threshold returns pages freed between blocks still in use (what a flush frees among the
catalog's long-lived objects), so a serving process also trims its heaps every
TRIM_INTERVAL_SECONDS (`trim_heap_periodically`, started by `services.runner.serve`): in
benchmarks.churn the settled memory at 1,000,000 series fell from 547-565 to 341-363 MiB
(docs/storage.md, Memory).
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import sys

# mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 4 << 20
TRIM_THRESHOLD_BYTES = 16 << 20
TRIM_INTERVAL_SECONDS = 10.0


def return_freed_memory() -> bool:
    """Fix glibc's mmap threshold at MMAP_THRESHOLD_BYTES (blocks at least this big are mmapped
    and unmapped when freed) and its trim threshold at TRIM_THRESHOLD_BYTES (a free heap top beyond
    it is trimmed). True when applied, False where the C library is not glibc."""
    name = ctypes.util.find_library("c")
    if not name:
        return False
    libc = ctypes.CDLL(name)
    mallopt = getattr(libc, "mallopt", None)
    if mallopt is None:
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(
        mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)
    )


def give_back_freed_heap() -> bool:
    """Return the free pages inside glibc's heaps to the operating system (malloc_trim(0): every
    arena, and free blocks between used ones, which the trim threshold never reaches: it only
    trims a free top), and the free pages of Arrow's memory pool when this process uses Arrow.
    True when glibc's malloc_trim ran (False where the C library has none)."""
    arrow = sys.modules.get("pyarrow")
    if arrow is not None:
        arrow.default_memory_pool().release_unused()
    trim = getattr(ctypes.CDLL(None), "malloc_trim", None)
    if trim is None:
        return False
    trim(0)
    return True


async def trim_heap_periodically(interval_s: float = TRIM_INTERVAL_SECONDS) -> None:
    """give_back_freed_heap every `interval_s`, in a worker thread, until cancelled."""
    while True:
        await asyncio.sleep(interval_s)
        await asyncio.to_thread(give_back_freed_heap)
