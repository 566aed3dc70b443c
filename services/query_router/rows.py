"""Fast encoding of SQL rows as QueryResponse.rows (repeated google.protobuf.ListValue).

Building a protobuf Value per cell from Python costs 1.5 to 2.5 us; a 1,000-row, 11-column answer
spent more time there than in DuckDB. The wire format of Value is simple, so cells are encoded here
directly and parsed once by the C++/upb runtime.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

import numpy as np
from google.protobuf import struct_pb2

_DOUBLE = struct.Struct("<d")
_NULL = b"\x08\x00"  # null_value (field 1, varint) = NULL_VALUE
_TRUE, _FALSE = b"\x20\x01", b"\x20\x00"  # bool_value (field 4, varint)
_ROWS_TAG = b"\x1a"  # QueryResponse.rows: field 3, length-delimited
_VALUES_TAG = b"\x0a"  # ListValue.values: field 1, length-delimited
_NUMBERS = {int, float}


def _varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _value(cell: object) -> bytes:
    if cell is None:
        return _NULL
    if cell is True:
        return _TRUE
    if cell is False:
        return _FALSE
    if isinstance(cell, (int, float)):
        return b"\x11" + _DOUBLE.pack(float(cell))  # number_value: field 2, fixed64
    if isinstance(cell, str):
        data = cell.encode()
        return b"\x1a" + _varint(len(data)) + data  # string_value: field 3
    if isinstance(cell, dict):
        return struct_pb2.Value(struct_value={str(k): _plain(v) for k, v in cell.items()}).SerializeToString()
    if isinstance(cell, (list, tuple)):
        return struct_pb2.Value(list_value=[_plain(v) for v in cell]).SerializeToString()
    return _value(str(cell))  # timestamps, decimals, UUIDs... as text


def _plain(cell: object) -> object:
    """A nested cell as something struct_pb2 accepts."""
    if cell is None or isinstance(cell, (bool, str)):
        return cell
    if isinstance(cell, (int, float)):
        return float(cell)
    if isinstance(cell, dict):
        return {str(k): _plain(v) for k, v in cell.items()}
    if isinstance(cell, (list, tuple)):
        return [_plain(v) for v in cell]
    return str(cell)


def _encode_numeric(rows: list[tuple]) -> bytes:
    """Rows of numbers only: every cell is the same 11 bytes (tag, length 9, number tag, double),
    so the whole field is laid out with numpy at once."""
    matrix = np.asarray(rows, dtype=np.float64)
    n_rows, n_cols = matrix.shape
    prefix = _ROWS_TAG + _varint(11 * n_cols)
    out = np.empty((n_rows, len(prefix) + 11 * n_cols), dtype=np.uint8)
    out[:, : len(prefix)] = np.frombuffer(prefix, dtype=np.uint8)
    cells = out[:, len(prefix) :].reshape(n_rows, n_cols, 11)
    cells[:, :, :3] = np.frombuffer(_VALUES_TAG + b"\x09\x11", dtype=np.uint8)
    cells[:, :, 3:] = matrix.astype("<f8").view(np.uint8).reshape(n_rows, n_cols, 8)
    return out.tobytes()


def encode_rows(rows: Iterable[tuple]) -> bytes:
    """The serialized `rows` field of a QueryResponse; merge it with MergeFromString."""
    rows = list(rows)
    if rows and len({len(r) for r in rows}) == 1 and _NUMBERS.issuperset({type(c) for r in rows for c in r}):
        return _encode_numeric(rows)
    out = []
    for row in rows:
        body = b"".join(_VALUES_TAG + _varint(len(v)) + v for v in map(_value, row))
        out.append(_ROWS_TAG + _varint(len(body)) + body)
    return b"".join(out)
