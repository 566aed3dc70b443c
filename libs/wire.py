"""Protobuf wire-format pieces for messages written by hand from arrays (the bus's event codec,
the query router's answers): varints, one at a time and vectorised."""

from __future__ import annotations

import numpy as np

_SHIFTS = np.arange(0, 70, 7, dtype=np.uint64)  # 7 bits per varint byte, at most 10 bytes


_ONE_BYTE = tuple(bytes((n,)) for n in range(0x80))
"""The varints of 0 to 127 (every tag and most lengths of a series record)."""


def varint(n: int) -> bytes:
    """One unsigned varint (protobuf's base-128 integer)."""
    if n < 0x80:
        return _ONE_BYTE[n]
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def varint_size(n: int) -> int:
    """Bytes of the varint of a non-negative `n`."""
    return max(1, -(-n.bit_length() // 7))


def varints(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The varint encoding of int64 `values` (negatives as their 64-bit two's complement, as
    protobuf writes int64): (every byte, in order; how many bytes each value took)."""
    v = np.ascontiguousarray(values, dtype=np.int64).view(np.uint64)
    if not len(v):
        return np.zeros(0, dtype=np.uint8), np.zeros(0, dtype=np.int64)
    # The length only grows with the value: when the smallest and largest take as many bytes, all
    # do (the usual case: timestamps of one era), and the bytes form a dense (n, width) matrix.
    width = varint_size(int(v.max()))
    if varint_size(int(v.min())) == width:
        out = np.empty((len(v), width), dtype=np.uint8)
        for k in range(width):
            out[:, k] = (v >> _SHIFTS[k]).astype(np.uint8) | 0x80
        out[:, -1] &= 0x7F
        return out.reshape(-1), np.full(len(v), width, dtype=np.int64)
    # A value takes one byte per started 7 bits: count the thresholds it reaches.
    lengths = np.ones(len(v), dtype=np.int64)
    for shift in _SHIFTS[1:width]:
        lengths += v >= (np.uint64(1) << shift)
    flat = np.empty(int(lengths.sum()), dtype=np.uint8)
    starts = np.cumsum(lengths) - lengths
    for k in range(width):
        sel = np.flatnonzero(lengths > k)
        byte = (v[sel] >> _SHIFTS[k]).astype(np.uint8) & 0x7F
        byte[lengths[sel] > k + 1] |= 0x80
        flat[starts[sel] + k] = byte
    return flat, lengths
