"""libs.arrowbuf: Arrow arrays to and from numpy through their buffers, equal to pyarrow's own
conversions, without pyarrow's pandas shim importing pandas."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pyarrow as pa
import pytest

from libs.arrowbuf import array, numpy, strings

TYPES = [pa.int32(), pa.int64(), pa.uint64(), pa.float64(), pa.uint8()]


@pytest.mark.parametrize("type_", TYPES, ids=str)
def test_an_array_equals_pyarrows_with_and_without_nulls(type_):
    values = np.arange(-3, 40, dtype=np.int64) % 250
    assert array(values, type_).equals(pa.array(values, type_))
    valid = values % 3 != 0
    assert array(values, type_, valid).equals(pa.array(values, type_, mask=~valid))
    assert array(values.astype(np.float64)).type == pa.float64()
    assert array(np.array([True, False, True])).equals(pa.array([True, False, True]))
    assert len(array(np.empty(0, np.int32))) == 0
    assert array([1, None, 3], pa.int64()).equals(pa.array([1, None, 3], pa.int64()))
    assert array([], pa.float64()).equals(pa.array([], pa.float64()))


def test_strings_equal_pyarrows():
    texts = ["", "a", "ünïcode", "x" * 300, "sim-0000001"]
    assert strings(texts).equals(pa.array(texts, pa.string()))
    assert len(strings([])) == 0


def test_numpy_reads_chunks_slices_and_nulls_as_pyarrow_does():
    chunked = pa.chunked_array([pa.array([1, 2, 3], pa.int64()), pa.array([4, 5], pa.int64())])
    assert numpy(chunked).tolist() == [1, 2, 3, 4, 5]
    assert numpy(pa.array(np.arange(10, dtype=np.uint64)).slice(3, 4)).tolist() == [3, 4, 5, 6]
    with_nulls = pa.array([1.5, None, 3.0]).slice(1)
    np.testing.assert_array_equal(numpy(with_nulls), with_nulls.to_numpy(zero_copy_only=False))
    ints = pa.array([1, None, 3], pa.int64())
    np.testing.assert_array_equal(numpy(ints), ints.to_numpy(zero_copy_only=False))
    assert numpy(pa.chunked_array([], pa.int32())).dtype == np.int32


def test_none_of_it_imports_pandas():
    script = (
        "import sys, numpy as np\n"
        "from libs.arrowbuf import array, numpy, strings\n"
        "a = array(np.arange(5), None, np.arange(5) > 1)\n"
        "numpy(a); numpy(strings(['x']).take(array(np.array([0, 0]))).cast('string') and a)\n"
        "print('pandas' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
