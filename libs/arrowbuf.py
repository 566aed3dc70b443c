"""Arrow arrays to and from numpy through their buffers.

pyarrow's `pa.array`, `Array.to_numpy` and the functions that take numpy arguments first ask its
pandas shim whether the input is a pandas object, and the first such question imports pandas:
46 MiB resident and 0.2 s in a process that needs none of it (the storage and query paths). These
build and read primitive and string arrays from their buffers instead (zero-copy where the layout
allows), which never asks. `tests/unit/test_arrowbuf.py` checks both: the same arrays as pyarrow's,
and pandas left unloaded.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa

_NUMPY = {
    pa.int8(): np.int8,
    pa.int16(): np.int16,
    pa.int32(): np.int32,
    pa.int64(): np.int64,
    pa.uint8(): np.uint8,
    pa.uint16(): np.uint16,
    pa.uint32(): np.uint32,
    pa.uint64(): np.uint64,
    pa.float32(): np.float32,
    pa.float64(): np.float64,
}
_ARROW = {np.dtype(v): k for k, v in _NUMPY.items()}


def dtype(type: pa.DataType) -> np.dtype:
    """The numpy dtype of a primitive Arrow type."""
    return np.dtype(_NUMPY[type])


def array(
    values: np.ndarray | Sequence[int | float],
    type: pa.DataType | None = None,
    valid: np.ndarray | None = None,
) -> pa.Array:
    """A primitive Arrow array of `values` (numpy's dtype, or `type`'s), null where `valid` is
    False or a value is None; booleans as Arrow booleans."""
    if not isinstance(values, np.ndarray):
        items = list(values)
        if any(v is None for v in items):  # rows of a SQL answer: None is null
            present = np.array([v is not None for v in items], dtype=bool)
            valid = present if valid is None else present & np.asarray(valid, dtype=bool)
            items = [0 if v is None else v for v in items]
        values = np.asarray(items)
    if type is None:
        type = pa.bool_() if values.dtype == np.bool_ else _ARROW[values.dtype]
    validity = (
        None if valid is None else pa.py_buffer(np.packbits(np.asarray(valid, dtype=bool), bitorder="little"))
    )
    nulls = -1 if valid is None else int(len(values) - np.count_nonzero(valid))
    if type == pa.bool_():
        data = pa.py_buffer(np.packbits(values.astype(bool, copy=False), bitorder="little"))
    else:
        data = pa.py_buffer(np.ascontiguousarray(values, dtype=_NUMPY[type]))
    return pa.Array.from_buffers(type, len(values), [validity, data], null_count=nulls)


def strings(texts: Sequence[str]) -> pa.Array:
    """An Arrow string array of `texts` (no nulls)."""
    encoded = [t.encode() for t in texts]
    offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
    np.cumsum(np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded)), out=offsets[1:])
    data = pa.py_buffer(b"".join(encoded))
    if offsets[-1] < 2**31:
        return pa.StringArray.from_buffers(len(encoded), pa.py_buffer(offsets.astype(np.int32)), data)
    return pa.LargeStringArray.from_buffers(len(encoded), pa.py_buffer(offsets), data)


def numpy(column: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A primitive column as numpy (a view of its buffer when it is one chunk without nulls); nulls
    read as NaN, in float64 for integer columns, as pyarrow's `to_numpy` gives them."""
    if isinstance(column, pa.ChunkedArray):
        if column.num_chunks == 1:
            return numpy(column.chunk(0))
        if column.num_chunks == 0:
            return numpy(pa.nulls(0, column.type))
        return np.concatenate([numpy(chunk) for chunk in column.chunks])
    kind = _NUMPY.get(column.type)
    if kind is None:  # not a primitive type read here (temporal, decimal): pyarrow's conversion
        return column.to_numpy(zero_copy_only=False)
    validity, data = column.buffers()[:2]
    n, offset = len(column), column.offset
    if data is None:
        values = np.zeros(n, dtype=kind)
    else:
        values = np.frombuffer(data, dtype=kind, count=n + offset)[offset:]
    if column.null_count == 0:
        return values
    bits = np.unpackbits(np.frombuffer(validity, dtype=np.uint8), bitorder="little", count=n + offset)[
        offset:
    ]
    out = values.astype(np.float64)
    out[bits == 0] = np.nan
    return out


def empty_table(schema: pa.Schema) -> pa.Table:
    """A table of `schema` with no rows (`Schema.empty_table` asks the pandas shim)."""
    return pa.Table.from_arrays([pa.nulls(0, field.type) for field in schema], schema=schema)
