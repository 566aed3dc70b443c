"""Correctness checks of the benchmark's pieces (no timing assertions); part of `make test` (testpaths).

They need only Python: a tiny influx file is written here, so neither Go, VictoriaMetrics nor the
service is started.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from benchmarks import footprint, report
from benchmarks.answers import SeriesAnswer, diff
from benchmarks.duckdb_floor import RawDuckDB
from benchmarks.segments_dev import write_segments
from benchmarks.tsbs_data import DataParams, Dataset, parse_influx
from benchmarks.tsbs_queries import (
    CPU_FIELDS,
    CPU_METRICS,
    HIGH_CPU_THRESHOLD,
    QUERY_TYPES,
    QueryInstance,
    make_instances,
    ours_request,
    promql,
)

START_MS = 1_793_491_200_000  # 2026-11-01T00:00:00Z
HOSTS = 4
ROWS = 3 * 360  # 3 hours at 10 s


def _influx(path: Path) -> None:
    rng = np.random.default_rng(7)
    lines = []
    for row in range(ROWS):
        ts_ns = (START_MS + row * 10_000) * 1_000_000
        for h in range(HOSTS):
            vals = rng.integers(0, 101, size=len(CPU_FIELDS))
            fields = ",".join(f"{f}={v}i" for f, v in zip(CPU_FIELDS, vals, strict=True))
            lines.append(f"cpu,hostname=host_{h},region=r{h % 2},rack={h} {fields} {ts_ns}")
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    path = tmp_path_factory.mktemp("data") / "tiny.influx"
    _influx(path)
    names, labels, offsets, ts, values = parse_influx(path)
    params = DataParams(scale=HOSTS, hours=3, start="2026-11-01T00:00:00Z")
    return Dataset(params, "test", names, labels, offsets, ts, values, path)


@pytest.fixture(scope="module")
def floor(dataset: Dataset, tmp_path_factory: pytest.TempPathFactory) -> RawDuckDB:
    root = tmp_path_factory.mktemp("segments")
    write_segments(dataset, root, "tsbs", flush_every_ms=3_600_000)
    return RawDuckDB(root, "tsbs")


def test_parse_influx_makes_one_series_per_host_and_field(dataset: Dataset) -> None:
    assert dataset.n_series == HOSTS * len(CPU_FIELDS)
    assert dataset.n_points == HOSTS * len(CPU_FIELDS) * ROWS
    assert set(dataset.names) == set(CPU_METRICS)
    assert dataset.labels[0] == {"hostname": "host_0", "region": "r0", "rack": "0"}
    for i in range(dataset.n_series):
        ts, _ = dataset.series(i)
        assert ts.size == ROWS and np.all(np.diff(ts) == 10_000)


def test_parse_influx_keeps_values(dataset: Dataset) -> None:
    first = dataset.influx_path.read_text().splitlines()[0]
    fields = dict(kv.split("=") for kv in first.split(" ")[1].split(","))
    for i, name in enumerate(dataset.names[:10]):
        if dataset.labels[i]["hostname"] == "host_0":
            assert dataset.series(i)[1][0] == float(fields[name.removeprefix("cpu_")].rstrip("i"))


def _reference_groupby(ds: Dataset, inst: QueryInstance) -> SeriesAnswer:
    """The Query API semantics computed with numpy from the parsed data."""
    qt = inst.qtype
    acc: dict[tuple[str, str], dict[int, list[float]]] = {}
    for i, (name, lab) in enumerate(zip(ds.names, ds.labels, strict=True)):
        if name not in inst.metrics or (inst.hosts and lab["hostname"] not in inst.hosts):
            continue
        ts, val = ds.series(i)
        keep = (ts >= inst.start_ms) & (ts < inst.end_ms)
        grp = lab["hostname"] if "hostname" in qt.group_by else ""
        for t, v in zip(ts[keep] // qt.step_ms * qt.step_ms, val[keep], strict=True):
            acc.setdefault((name, grp), {}).setdefault(int(t), []).append(float(v))
    agg = max if qt.aggregation == "max" else (lambda xs: sum(xs) / len(xs))
    return {k: {t: agg(vs) for t, vs in b.items()} for k, b in acc.items()}


@pytest.mark.parametrize("qtype", [t for t in QUERY_TYPES if t.kind == "groupby"], ids=lambda t: t.name)
def test_floor_groupby_matches_numpy(dataset: Dataset, floor: RawDuckDB, qtype: object) -> None:
    hosts = dataset.hosts
    for inst in make_instances(qtype, 3, hosts, START_MS, dataset.params.end_ms):  # type: ignore[arg-type]
        got = floor.run(inst)
        d = diff(got, _reference_groupby(dataset, inst))
        assert d.agree, (inst.name, d)
        assert d.compared > 0


def _rows_by_host_ts(ds: Dataset) -> dict[tuple[str, int], dict[str, float]]:
    rows: dict[tuple[str, int], dict[str, float]] = {}
    for i, (name, lab) in enumerate(zip(ds.names, ds.labels, strict=True)):
        ts, val = ds.series(i)
        for t, v in zip(ts, val, strict=True):
            rows.setdefault((lab["hostname"], int(t)), {})[name] = float(v)
    return rows


def test_floor_high_cpu_lastpoint_gobl_match_numpy(dataset: Dataset, floor: RawDuckDB) -> None:
    rows = _rows_by_host_ts(dataset)
    by_name = {t.name: t for t in QUERY_TYPES}
    for inst in make_instances(by_name["high-cpu-1"], 2, dataset.hosts, START_MS, dataset.params.end_ms):
        want = [
            (t, *(r[m] for m in CPU_METRICS))
            for (h, t), r in sorted(rows.items(), key=lambda kv: kv[0][1])
            if h == inst.hosts[0]
            and inst.start_ms <= t < inst.end_ms
            and r["cpu_usage_user"] > HIGH_CPU_THRESHOLD
        ]
        assert diff(floor.run(inst), want).agree
    (last,) = make_instances(by_name["lastpoint"], 1, dataset.hosts, START_MS, dataset.params.end_ms)
    end_t = max(t for _, t in rows)
    want = [(h, end_t, *(rows[(h, end_t)][m] for m in CPU_METRICS)) for h in sorted(dataset.hosts)]
    assert diff(floor.run(last), want).agree
    for inst in make_instances(
        by_name["groupby-orderby-limit"], 2, dataset.hosts, START_MS, dataset.params.end_ms
    ):
        minutes: dict[int, float] = {}
        for (_, t), r in rows.items():
            if t < inst.end_ms:
                m = t // 60_000 * 60_000
                minutes[m] = max(minutes.get(m, -1.0), r["cpu_usage_user"])
        want = sorted(minutes.items(), reverse=True)[:5]
        assert diff(floor.run(inst), want).agree


def test_instances_are_deterministic_and_inside_the_data() -> None:
    hosts = [f"host_{i}" for i in range(100)]
    end = START_MS + 86_400_000
    for qt in QUERY_TYPES:
        a = make_instances(qt, 30, hosts, START_MS, end)
        assert a == make_instances(qt, 30, hosts, START_MS, end)
        for inst in a:
            assert len(set(inst.hosts)) == qt.n_hosts
            if inst.start_ms is not None:
                assert inst.start_ms >= START_MS and inst.end_ms <= end + 1000
        if qt.kind != "lastpoint":
            windows = {(i.start_ms, i.end_ms, i.hosts) for i in a}
            assert len(windows) > 1  # random windows: instances differ, so none is a cache hit


def test_requests_and_promql_are_well_formed() -> None:
    hosts = [f"host_{i}" for i in range(100)]
    for qt in QUERY_TYPES:
        (inst,) = make_instances(qt, 1, hosts, START_MS, START_MS + 86_400_000)
        req = ours_request(inst, "tsbs", n_hosts_total=100)
        if qt.kind == "groupby":
            assert list(req.metrics) == list(inst.metrics) and req.start.endswith("Z")
            assert promql(inst) is not None
        else:
            assert req.sql.count("?") == len(req.params)
            assert promql(inst) is None


def test_report_renders_unavailable_columns() -> None:
    results = report.example_results()
    text = report.render(results)
    assert "not available" in text and "| single-groupby-1-1-1 |" in text


def test_the_footprint_table_has_a_row_a_sample_and_says_when_victoria_metrics_is_missing() -> None:
    sample = {"at_s": 30.0, "rss_mib": 120.4, "anon_mib": 90.2, "envoy_mib": 60.0, "loaded": []}
    results = {"idle": [sample], "demo": [{**sample, "at_s": 90.0, "loaded": ["pandas"]}], "vm": None}
    text = footprint.render({**results, "machine": "x86_64, 2 cores", "when": "now"})
    assert "| `make up`, no demo feed | 30 s | 120 MiB | 90 MiB | 60 MiB | neither |" in text
    assert "| `make up`, demo feed | 90 s | 120 MiB | 90 MiB | 60 MiB | pandas |" in text
    assert "not installed" in text and "VictoriaMetrics, idle |" not in text


def test_the_rounds_table_gives_each_round_and_the_ratio_of_the_medians() -> None:
    def one(ours: float, vm: float | None, agree: bool) -> dict:
        return {
            "ingest": {"ours": 4e6, "vm": 3e6},
            "types": {"t": {"ours": ours, "vm": vm, "duckdb": 10.0, "agree": agree}},
        }

    results = {"rounds": [one(2.0, 1.0, True), one(4.0, 2.0, True), one(3.0, 6.0, True)]}
    row = next(line for line in report._rounds(results) if line.startswith("| t |"))
    # medians 3.0 and 2.0: 1.50x, whatever each round's own ratio
    assert (
        row
        == "| t | 2.00, 4.00, 3.00 | 1.00, 2.00, 6.00 | 2.00x, 2.00x, 0.50x | 1.50x | 0.20x, 0.40x, 0.30x | yes |"
    )
    results["rounds"][1]["types"]["t"]["agree"] = False
    assert next(line for line in report._rounds(results) if line.startswith("| t |")).endswith("| NO |")
    assert report._rounds({"rounds": results["rounds"][:1]}) == []


# A stand-in for `analytics serve all` whose RPCs are all unbuilt: grpc answers UNIMPLEMENTED for
# every method no servicer registered, and the health service says SERVING.
_UNBUILT_SERVICE = """
import asyncio, os, signal
from grpc import aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

async def main():
    server = aio.server()
    servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    server.add_insecure_port("127.0.0.1:" + os.environ["GRPC_PORT"])
    await server.start()
    await servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await server.stop(0)

asyncio.run(main())
"""


async def test_unimplemented_service_is_reported_not_available(
    dataset: Dataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import argparse
    import sys

    from benchmarks import ours, run

    script = tmp_path / "unbuilt.py"
    script.write_text(_UNBUILT_SERVICE)
    monkeypatch.setattr(ours.OurService, "command", lambda self: [sys.executable, str(script)])
    runs = {
        qt.name: run.TypeRun(make_instances(qt, 2, dataset.hosts, START_MS, dataset.params.end_ms))
        for qt in QUERY_TYPES
    }
    results: dict[str, object] = {"ingest": {}, "query_memory": {}}
    args = argparse.Namespace(hosts_per_batch=2, slice_minutes=60, ingest_concurrency=2, cache_repeats=3)
    data_dir = await run.phase_ours(args, dataset, tmp_path, runs, results)  # type: ignore[arg-type]
    assert data_dir is None
    assert results["ingest"]["ours"]["available"] is False  # type: ignore[index]
    assert "UNIMPLEMENTED" in results["ingest"]["ours"]["detail"]  # type: ignore[index]
    for r in runs.values():
        assert r.ours["available"] is False and "UNIMPLEMENTED" in r.ours["detail"]
