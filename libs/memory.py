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
The trim threshold stays at 128 KiB: a free top of the heap beyond it goes back at once.
"""

from __future__ import annotations

import ctypes
import ctypes.util

# mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 4 << 20
TRIM_THRESHOLD_BYTES = 128 << 10  # glibc's own starting value


def return_freed_memory() -> bool:
    """Fix glibc's mmap threshold at MMAP_THRESHOLD_BYTES (blocks at least this big are mmapped
    and unmapped when freed) and its trim threshold at TRIM_THRESHOLD_BYTES (free heap tops beyond
    it are trimmed). True when applied, False where the C library is not glibc."""
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
