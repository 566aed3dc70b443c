"""A memory map that records what a MappedFile asks the kernel for, for the read path's tests."""

from __future__ import annotations

import mmap
from pathlib import Path


class AdvisedMap(mmap.mmap):
    """A real map (a reader asks it which of its pages are in memory) that records the byte ranges
    the reader asks the kernel to read ahead (MADV_WILLNEED) instead of asking."""

    ranges: list[tuple[int, int]]

    def madvise(self, option: int, start: int = 0, length: int | None = None) -> None:
        assert option == mmap.MADV_WILLNEED and start % mmap.PAGESIZE == 0 and length is not None
        self.ranges.append((start, start + length))


def advised_map(path: Path | None = None, size: int = 8 << 20) -> AdvisedMap:
    """A map of `path` (its pages as the page cache holds them), or an anonymous map of `size` bytes
    none of which was touched (so none is in memory: as after the kernel reclaimed a file's pages)."""
    if path is None:
        advice = AdvisedMap(-1, size)
    else:
        with open(path, "rb") as f:
            advice = AdvisedMap(f.fileno(), 0, access=mmap.ACCESS_READ)
    advice.ranges = []
    return advice
