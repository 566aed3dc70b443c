"""Rollups and points maps store each column in the narrowest type that gives its values back
exactly (issue 11, item 3: bytes on disk and pages a read touches), and a reader gets them back in
the canonical types, bit for bit: int64 epoch ms, int64 counts, float64 values."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from libs import arrowbuf
from libs.storage import rollups as rollups_module
from libs.storage.rollups import MappedFile, MappedReader, MapRead

DAY_MS = 86_400_000
START = 1_790_000_000_000


def _series(n_series: int, n_points: int, interval_ms: int) -> tuple[np.ndarray, np.ndarray]:
    ids = np.repeat(np.arange(1, n_series + 1, dtype=np.uint64), n_points)
    ts = np.tile(START + np.arange(n_points, dtype=np.int64) * interval_ms, n_series)
    return ids, ts


def _write(tmp_path: Path, name: str, table: pa.Table) -> MappedFile:
    rollups_module.write_mapped(table, tmp_path / name)
    return MappedFile.open(tmp_path / name)


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal values of one dtype, NaN equal to NaN and -0.0 told from 0.0."""
    return a.dtype == b.dtype and a.tobytes() == b.tobytes()


rng = np.random.default_rng(11)
VALUES = {
    "small whole numbers (int8)": rng.integers(-100, 100, 2_000).astype(np.float64),
    "whole numbers to 60,000 (uint16)": rng.integers(0, 60_000, 2_000).astype(np.float64),
    "whole numbers past int32": rng.integers(2**31, 2**40, 2_000).astype(np.float64),
    "quarters (float32)": rng.integers(0, 1_000, 2_000) / 4.0,
    "normal draws (float64)": rng.normal(size=2_000),
    "whole numbers with a -0.0": np.concatenate([[-0.0], rng.integers(0, 9, 1_999).astype(np.float64)]),
    "whole numbers with NaN and inf": np.concatenate([[np.nan, np.inf, -np.inf], np.arange(1_997.0)]),
    "float32 values with NaN": np.concatenate([[np.nan], rng.integers(0, 100, 1_999) / 8.0]),
    "past float32's range": np.concatenate([[1e300, -1e300], rng.integers(0, 100, 1_998) / 8.0]),
    "below float32's smallest": np.concatenate([[5e-324, 1e-40], rng.integers(0, 100, 1_998) / 8.0]),
}
STORED = {
    "small whole numbers (int8)": np.int8,
    "whole numbers to 60,000 (uint16)": np.uint16,
    "whole numbers past int32": np.float64,
    "quarters (float32)": np.float32,
    "normal draws (float64)": np.float64,
    "whole numbers with a -0.0": np.float32,
    "whole numbers with NaN and inf": np.float32,
    "float32 values with NaN": np.float32,
    "past float32's range": np.float64,
    "below float32's smallest": np.float64,
}


@pytest.mark.filterwarnings("error::RuntimeWarning")  # a flush must not warn about values past float32
@pytest.mark.parametrize("kind", list(VALUES))
def test_points_come_back_bit_for_bit_from_the_narrowest_type_that_holds_them(tmp_path, kind):
    values = VALUES[kind]
    ids, ts = _series(4, len(values) // 4, 10_000)
    mapped = _write(tmp_path, "m.arrow", rollups_module.points_map(ids, ts, values))
    assert mapped.columns[0].dtype == np.uint32  # 5.5 hours: offsets from the file's first time
    assert mapped.columns[1].dtype == STORED[kind]
    rows = np.arange(len(values))
    assert _same(mapped.take(0, rows), ts)
    assert _same(mapped.take(1, rows), values)
    (read,) = MappedReader().read(
        [MapRead.points([tmp_path / "m.arrow"], [(START, START + DAY_MS)])], ids[::500]
    )
    assert _same(read.ts, ts) and _same(read.sum, values)


def test_rollup_columns_come_back_as_the_rollup_computed_them(tmp_path):
    ids, ts = _series(50, 8_640, 10_000)  # a day of 10-second points
    for values in (rng.integers(0, 100, len(ts)).astype(np.float64), rng.normal(size=len(ts))):
        for width in rollups_module.RESOLUTIONS.values():
            table = rollups_module.rollup(ids, ts, values, width)
            mapped = _write(tmp_path, f"r{width}.arrow", table)
            rows = np.arange(table.num_rows)
            for i, name in enumerate(table.column_names[1:]):
                want = arrowbuf.numpy(table.column(name))
                assert _same(mapped.take(i, rows), want), name
            assert mapped.columns[0].dtype == mapped.columns[-1].dtype == np.uint32  # ts, last_ts
            assert mapped.columns[1].dtype == (
                np.uint16 if width == rollups_module.HOUR_MS else np.uint8
            )  # count


def test_whole_number_values_take_5_bytes_a_point_and_their_minute_rollup_under_3(tmp_path):
    # TSBS cpu-only shaped: 10-second points of whole numbers in [0, 100]. Stored as int64 and
    # float64 they took 16 and 9.3 bytes a point.
    ids, ts = _series(100, 8_640, 10_000)
    values = rng.integers(0, 100, len(ts)).astype(np.float64)
    rollups_module.write_mapped(rollups_module.points_map(ids, ts, values), tmp_path / "m.arrow")
    rollups_module.write_mapped(rollups_module.rollup(ids, ts, values, 60_000), tmp_path / "r.arrow")
    assert (tmp_path / "m.arrow").stat().st_size / len(ts) < 5.1
    assert (tmp_path / "r.arrow").stat().st_size / len(ts) < 3.0


@pytest.mark.parametrize("days", [49, 50])
def test_a_span_past_uint32_milliseconds_keeps_int64_times_and_searches_find_the_same_rows(tmp_path, days):
    # uint32 ms after the base covers 49.7 days; a longer file keeps epoch ms.
    ids, ts = _series(3, days * 24, 3_600_000)
    values = np.arange(len(ts), dtype=np.float64)
    mapped = _write(tmp_path, "m.arrow", rollups_module.points_map(ids, ts, values))
    assert mapped.columns[0].dtype == (np.uint32 if days == 49 else np.int64)
    reader = MappedReader()
    cuts = [START - DAY_MS, START, START + 1, int(ts[7]), int(ts.max()), int(ts.max()) + 1, START + 2**33]
    for a in cuts:
        for b in cuts:
            if a > b:
                continue
            (read,) = reader.read(
                [MapRead.points([tmp_path / "m.arrow"], [(a, b)])], np.array([2], np.uint64)
            )
            keep = (ids == 2) & (ts >= a) & (ts < b)
            assert _same(read.ts, ts[keep]) and _same(read.sum, values[keep]), (a, b)


def test_a_file_of_an_earlier_release_in_int64_and_float64_reads_the_same(tmp_path):
    ids, ts = _series(3, 1_000, 10_000)
    values = rng.normal(size=len(ts))
    table = rollups_module.points_map(ids, ts, values)
    with pa.OSFile(str(tmp_path / "old.arrow"), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)  # as releases before the narrowing wrote it (no time base)
    mapped = MappedFile.open(tmp_path / "old.arrow")
    assert mapped.columns[0].dtype == np.int64 and mapped.columns[1].dtype == np.float64
    (read,) = MappedReader().read(
        [MapRead.points([tmp_path / "old.arrow"], [(int(ts[10]), int(ts[900]))])], ids[:1]
    )
    keep = (ids == 1) & (ts >= ts[10]) & (ts < ts[900])
    assert _same(read.ts, ts[keep]) and _same(read.sum, values[keep])
