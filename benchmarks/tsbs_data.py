"""The TSBS cpu-only data set: generate it (cached), parse the influx lines into columnar series.

Run alone to prepare the data: `python -m benchmarks.tsbs_data [--quick]`.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from benchmarks.procs import BIN_DIR, DATA_DIR

UPSTREAM_BIN = BIN_DIR / "tsbs_generate_data"
PORT_BIN = BIN_DIR / "tsbsgen"
DEFAULT_START = "2026-11-01T00:00:00Z"
# Bump when the parsed cache's layout changes, so old caches are not read.
_CACHE_FORMAT = 1


@dataclass(frozen=True)
class DataParams:
    """The tsbs_generate_data parameters that define a data set."""

    scale: int = 100
    hours: float = 24.0
    start: str = DEFAULT_START
    log_interval_s: int = 10
    seed: int = 123
    use_case: str = "cpu-only"

    @property
    def start_dt(self) -> datetime:
        """The first timestamp."""
        return datetime.fromisoformat(self.start.replace("Z", "+00:00")).astimezone(UTC)

    @property
    def end(self) -> str:
        """The exclusive end timestamp, RFC 3339."""
        return (self.start_dt + timedelta(hours=self.hours)).strftime("%Y-%m-%dT%H:%M:%SZ")

    @property
    def start_ms(self) -> int:
        """The first timestamp in epoch ms."""
        return int(self.start_dt.timestamp() * 1000)

    @property
    def end_ms(self) -> int:
        """The exclusive end in epoch ms."""
        return self.start_ms + int(self.hours * 3_600_000)

    @property
    def expected_points(self) -> int:
        """Points the generator writes: hosts x 10 fields x rows per host."""
        return self.scale * 10 * int(self.hours * 3600 // self.log_interval_s)

    def key(self, generator: str) -> str:
        """A file-name-safe cache key: every parameter plus which generator wrote the file."""
        start = self.start.replace(":", "").replace("-", "")
        return (
            f"{self.use_case}-s{self.scale}-h{self.hours:g}-i{self.log_interval_s}s-{start}"
            f"-seed{self.seed}-{generator}"
        )

    def generator_args(self) -> list[str]:
        """The command-line flags, identical for upstream tsbs_generate_data and the port."""
        return [
            f"--use-case={self.use_case}",
            f"--scale={self.scale}",
            f"--log-interval={self.log_interval_s}s",
            f"--timestamp-start={self.start}",
            f"--timestamp-end={self.end}",
            "--format=influx",
            f"--seed={self.seed}",
        ]


QUICK = DataParams(scale=10, hours=2.0)
FULL = DataParams()


@dataclass
class Dataset:
    """Columnar series: series i owns ts_ms/values[offsets[i]:offsets[i+1]], sorted by time."""

    params: DataParams
    generator: str
    names: list[str]
    labels: list[dict[str, str]]
    offsets: np.ndarray
    ts_ms: np.ndarray
    values: np.ndarray
    influx_path: Path
    parse_seconds: float = 0.0
    from_cache: bool = False
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def n_series(self) -> int:
        """Number of series (hosts x fields)."""
        return len(self.names)

    @property
    def n_points(self) -> int:
        """Number of points."""
        return int(self.ts_ms.size)

    @property
    def hosts(self) -> list[str]:
        """Host names in numeric order (host_0, host_1, ...)."""
        names = {lab["hostname"] for lab in self.labels}
        return sorted(names, key=lambda h: int(h.rsplit("_", 1)[1]))

    @property
    def metrics(self) -> list[str]:
        """Metric names in first-seen order."""
        return list(dict.fromkeys(self.names))

    def series(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Timestamps (ms) and values of series i."""
        lo, hi = int(self.offsets[i]), int(self.offsets[i + 1])
        return self.ts_ms[lo:hi], self.values[lo:hi]

    def describe(self) -> dict[str, object]:
        """Facts for the report."""
        return {
            "use_case": self.params.use_case,
            "hosts": self.params.scale,
            "start": self.params.start,
            "end": self.params.end,
            "hours": self.params.hours,
            "log_interval_s": self.params.log_interval_s,
            "seed": self.params.seed,
            "series": self.n_series,
            "points": self.n_points,
            "metrics": self.metrics,
            "label_keys": list(self.labels[0]) if self.labels else [],
            "generator": self.generator,
            "influx_bytes": self.influx_path.stat().st_size if self.influx_path.exists() else None,
            "parse_seconds": round(self.parse_seconds, 2),
            "parsed_from_cache": self.from_cache,
        }


def generator() -> tuple[Path, str]:
    """The generator binary and a short name: upstream TSBS when installed, else the port."""
    if UPSTREAM_BIN.exists():
        version_file = BIN_DIR / ".tsbs_version"
        version = version_file.read_text().strip() if version_file.exists() else "unknown version"
        return UPSTREAM_BIN, f"tsbs_generate_data (github.com/timescale/tsbs {version})"
    if PORT_BIN.exists():
        return PORT_BIN, "benchmarks/tsbsgen (port of TSBS cpu-only; upstream module not fetchable)"
    raise FileNotFoundError(f"no TSBS generator in {BIN_DIR}: run `bash benchmarks/setup.sh` first")


def generate(params: DataParams, log: bool = True) -> tuple[Path, str]:
    """Write the influx file for params unless cached; returns its path and the generator's name."""
    binary, name = generator()
    kind = "tsbs" if binary == UPSTREAM_BIN else "port"
    out = DATA_DIR / f"{params.key(kind)}.influx"
    if out.exists():
        return out, name
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    t0 = time.perf_counter()
    with open(tmp, "wb") as f:
        subprocess.run([str(binary), *params.generator_args()], stdout=f, check=True)
    tmp.rename(out)
    if log:
        print(
            f"  generated {out.name} ({out.stat().st_size / 2**20:.0f} MiB) in {time.perf_counter() - t0:.1f}s"
        )
    return out, name


def _parse_tagset(tagset: str) -> tuple[str, dict[str, str]]:
    """ "cpu,hostname=host_0,region=..." -> ("cpu", {"hostname": "host_0", ...}).

    TSBS writes no escaped characters, so a plain split is exact for its output.
    """
    measurement, *pairs = tagset.split(",")
    return measurement, dict(pair.split("=", 1) for pair in pairs)


_MAX_FIELDS = 64
"""Field keys a measurement may have (series keys are tag set * _MAX_FIELDS + field)."""


def parse_influx(path: Path) -> tuple[list[str], list[dict[str, str]], np.ndarray, np.ndarray, np.ndarray]:
    """Parse line protocol into (names, labels, offsets, ts_ms, values), all work vectorised.

    A line is "<measurement>,<tags> <field>=<v>[i],... <ts ns>". Arrow reads the three
    space-separated parts a block at a time (a month of data does not fit in memory as text);
    field lists are split and flattened in Arrow; series are the pairs (distinct tag set, field
    key), named <measurement>_<field> as VictoriaMetrics names them, numbered in order of first
    appearance.
    """
    reader = pacsv.open_csv(
        path,
        read_options=pacsv.ReadOptions(column_names=["tags", "fields", "ts"], block_size=64 << 20),
        parse_options=pacsv.ParseOptions(delimiter=" ", quote_char=False, escape_char=False),
        convert_options=pacsv.ConvertOptions(
            column_types={"tags": pa.string(), "fields": pa.string(), "ts": pa.int64()}
        ),
    )
    tagset_ids: dict[str, int] = {}
    field_ids: dict[str, int] = {}
    # Per series key, its pieces of (ts, values) in file order (lines come in time order).
    pieces: dict[int, list[tuple[np.ndarray, np.ndarray]]] = {}
    for batch in reader:
        tags = pc.dictionary_encode(batch.column("tags"))
        tag_ids = np.array([tagset_ids.setdefault(t, len(tagset_ids)) for t in tags.dictionary.to_pylist()])
        tag_of_line = tag_ids[tags.indices.to_numpy(zero_copy_only=False)]
        field_lists = pc.split_pattern(batch.column("fields"), ",")
        line_of_field = pc.list_parent_indices(field_lists).to_numpy(zero_copy_only=False)
        kv = pc.split_pattern(pc.list_flatten(field_lists), "=", max_splits=1)
        keys = pc.dictionary_encode(pc.list_element(kv, 0))
        key_ids = np.array([field_ids.setdefault(k, len(field_ids)) for k in keys.dictionary.to_pylist()])
        field_of = key_ids[keys.indices.to_numpy(zero_copy_only=False)]
        # Integers carry an "i" suffix in line protocol; floats have none.
        raw = pc.utf8_rtrim(pc.list_element(kv, 1), characters="i")
        values = pc.cast(raw, pa.float64()).to_numpy(zero_copy_only=False)
        ts_ms = (batch.column("ts").to_numpy() // 1_000_000)[line_of_field]
        series_key = tag_of_line[line_of_field].astype(np.int64) * _MAX_FIELDS + field_of
        order = np.argsort(series_key, kind="stable")
        series_key, ts_ms, values = series_key[order], ts_ms[order], values[order]
        starts = np.flatnonzero(np.r_[True, series_key[1:] != series_key[:-1]])
        ends = np.r_[starts[1:], len(series_key)]
        for key, lo, hi in zip(series_key[starts].tolist(), starts.tolist(), ends.tolist(), strict=True):
            pieces.setdefault(key, []).append((ts_ms[lo:hi], values[lo:hi]))  # views of this block's arrays
    if len(field_ids) > _MAX_FIELDS:
        raise ValueError(f"{path}: more than {_MAX_FIELDS} fields")
    tagsets = [_parse_tagset(t) for t in tagset_ids]
    field_names = list(field_ids)
    names, labels, counts, ts_parts, value_parts = [], [], [], [], []
    for key in sorted(pieces):
        measurement, tagmap = tagsets[key // _MAX_FIELDS]
        names.append(f"{measurement}_{field_names[key % _MAX_FIELDS]}")
        labels.append(tagmap)
        series = pieces.pop(key)
        counts.append(sum(len(t) for t, _ in series))
        ts_parts += [t for t, _ in series]
        value_parts += [v for _, v in series]
    offsets = np.r_[0, np.cumsum(counts)].astype(np.int64)
    return names, labels, offsets, np.concatenate(ts_parts), np.concatenate(value_parts)


def load(params: DataParams, log: bool = True) -> Dataset:
    """Generate (cached) and parse (cached as .npz) the data set for params."""
    influx, gen_name = generate(params, log=log)
    cache = influx.with_suffix(".npz")
    if cache.exists():
        t0 = time.perf_counter()
        with np.load(cache, allow_pickle=False) as z:
            if int(z["format"]) == _CACHE_FORMAT:
                meta = json.loads(str(z["meta"]))
                return Dataset(
                    params=params,
                    generator=gen_name,
                    names=meta["names"],
                    labels=meta["labels"],
                    offsets=z["offsets"],
                    ts_ms=z["ts_ms"],
                    values=z["values"],
                    influx_path=influx,
                    parse_seconds=time.perf_counter() - t0,
                    from_cache=True,
                )
    t0 = time.perf_counter()
    names, labels, offsets, ts_ms, values = parse_influx(influx)
    seconds = time.perf_counter() - t0
    if log:
        print(f"  parsed {ts_ms.size:,} points in {len(names)} series in {seconds:.1f}s")
    meta = json.dumps({"names": names, "labels": labels, "params": asdict(params)})
    tmp = cache.with_suffix(".tmp.npz")
    np.savez(tmp, format=_CACHE_FORMAT, meta=np.array(meta), offsets=offsets, ts_ms=ts_ms, values=values)
    tmp.rename(cache)
    return Dataset(params, gen_name, names, labels, offsets, ts_ms, values, influx, seconds)


def main(argv: list[str] | None = None) -> None:
    """Generate and parse the data set; print what it holds."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help=f"{QUICK.scale} hosts, {QUICK.hours:g} hours")
    parser.add_argument("--scale", type=int, help="number of hosts")
    parser.add_argument("--hours", type=float, help="hours of data")
    args = parser.parse_args(argv)
    params = QUICK if args.quick else FULL
    if args.scale or args.hours:
        params = DataParams(scale=args.scale or params.scale, hours=args.hours or params.hours)
    ds = load(params)
    print(json.dumps({k: v for k, v in ds.describe().items() if k != "metrics"}, indent=2))


if __name__ == "__main__":
    main()
