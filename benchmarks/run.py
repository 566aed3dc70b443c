"""Run the benchmark: our service, raw DuckDB and VictoriaMetrics on TSBS cpu-only, one report.

    .venv/bin/python -m benchmarks.run [--quick] [--docs] [--skip-vm] [--rounds 3]

Phases: data (generate + parse, cached) -> ours (ingest, SIGTERM + restart, queries, cache hits)
-> raw DuckDB over the segments -> VictoriaMetrics (load, queries). Systems run one at a time so
none competes with another for the 2 cores. The phases after the data run `--rounds` times (fresh
directories and query instances each); the report's tables are the first round's, and its Rounds
table gives every round's p50s. Where our RPCs answer UNIMPLEMENTED the report says
"not available" for our columns, and the DuckDB floor reads segments written by
benchmarks/segments_dev.py instead of the service's.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import duckdb
import grpc
import numpy as np

from benchmarks import report, tsbs_data, victoria
from benchmarks.answers import Answer, diff
from benchmarks.duckdb_floor import RawDuckDB
from benchmarks.ours import (
    OurQuerier,
    OurService,
    answer_of,
    build_ingest_plan,
    ingest,
    probe_ingest,
)
from benchmarks.procs import DATA_DIR, REPO_ROOT, RESULTS_DIR, Latency, RssSampler, mib
from benchmarks.segments_dev import write_segments
from benchmarks.tsbs_queries import (
    QUERY_TYPES,
    VM_UNSUPPORTED,
    QueryInstance,
    describe_types,
    make_instances,
    ours_request,
    promql,
)
from platformq.analytics.v1 import query_service_pb2

DATASOURCE = "tsbs"
_T0 = time.perf_counter()


def say(text: str) -> None:
    """Progress on stdout with the elapsed time."""
    print(f"[{time.perf_counter() - _T0:7.1f}s] {text}", flush=True)


@dataclass
class TypeRun:
    """What one query type produced across the systems."""

    instances: list[QueryInstance]
    ours: dict[str, Any] = field(default_factory=lambda: {"available": False})
    duckdb: dict[str, Any] = field(default_factory=dict)
    vm: dict[str, Any] = field(default_factory=dict)
    cache: dict[str, Any] = field(default_factory=dict)
    ours_answers: dict[int, Answer] = field(default_factory=dict)
    floor_answers: dict[int, Answer] = field(default_factory=dict)


# --- facts ----------------------------------------------------------------------------------------


def machine_facts() -> dict[str, Any]:
    """CPU count and model, RAM, OS and kernel."""
    cpu_model = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    ram_kib = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                ram_kib = int(line.split()[1])
    os_name = platform.system()
    if Path("/etc/os-release").exists():
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                os_name = line.split("=", 1)[1].strip('"')
    return {
        "load_avg_start": os.getloadavg()[0],
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_model": cpu_model,
        "ram_gib": ram_kib / 2**20,
        "os": os_name,
        "kernel": platform.release(),
    }


def versions(generator_name: str) -> dict[str, str]:
    """Versions of everything measured or measuring."""
    go = shutil.which("go")
    go_version = subprocess.run([go, "version"], capture_output=True, text=True).stdout.strip() if go else "-"
    return {
        "python": platform.python_version(),
        "duckdb": duckdb.__version__,
        "victoria_metrics": victoria.version(),
        "tsbs": generator_name,
        "go": go_version,
        "grpcio": grpc.__version__,
        "pyarrow": metadata.version("pyarrow"),
        "numpy": np.__version__,
    }


def hot_tier_bound() -> dict[str, Any]:
    """HOT_MAX_POINTS as the service will see it (the environment, else the default)."""
    from libs.config import load_settings

    source = "HOT_MAX_POINTS from the environment" if os.environ.get("HOT_MAX_POINTS") else "the default"
    return {"value": load_settings().hot_max_points, "source": f"{source} (libs/config.py)"}


# --- phases ---------------------------------------------------------------------------------------


async def phase_ours(
    args: argparse.Namespace,
    ds: tsbs_data.Dataset,
    work: Path,
    runs: dict[str, TypeRun],
    results: dict[str, Any],
) -> Path | None:
    """Ingest, restart, queries and cache hits on our service; returns its DATA_DIR if it holds the data."""
    data_dir = work / "ours-data"
    service = OurService(data_dir, work / "ours.log")
    ingest_out: dict[str, Any] = {"available": False}
    results["ingest"]["ours"] = ingest_out
    say(f"ours: starting `{' '.join(service.command())}` on {service.target}")
    service.start()
    try:
        await service.wait_healthy()
        probe = await probe_ingest(service.target, DATASOURCE)
        ingest_out["detail"] = probe.detail
        if not probe.available:
            say(f"ours: ingest {report.NA} ({probe.detail})")
            await _probe_query(service, ds, runs)
            return None

        say(f"ours: building requests ({args.hosts_per_batch} hosts x {args.slice_minutes} min per batch)")
        plan = build_ingest_plan(ds, DATASOURCE, args.hosts_per_batch, args.slice_minutes * 60_000)
        say(
            f"ours: {len(plan.payloads)} requests, {plan.total_points:,} points, "
            f"{plan.total_bytes / 2**20:.0f} MiB, built in {plan.build_seconds:.1f}s (not timed)"
        )
        with RssSampler(service.pid) as sampler:
            result = await ingest(service.target, plan, args.ingest_concurrency)
        hwm = service.hwm_kib()
        ingest_out.update(
            available=True,
            points=result.points,
            seconds=result.seconds,
            points_per_s=result.points_per_s,
            accepted=result.accepted,
            rejected=result.rejected,
            retries=result.retries,
            errors=result.first_errors,
            concurrency=result.concurrency,
            requests=len(plan.payloads),
            points_per_request=plan.total_points / len(plan.payloads),
            batch=f"{plan.hosts_per_batch} hosts x 10 fields x {plan.slice_ms // 60_000} min",
            mib=plan.total_bytes / 2**20,
            build_seconds=plan.build_seconds,
            peak_rss_mib=mib(hwm),
            sampled_peak_rss_mib=mib(sampler.peak_kib),
        )
        say(
            f"ours: ingested {result.points:,} points in {result.seconds:.2f}s = {result.points_per_s:,.0f} points/s, "
            f"accepted {result.accepted:,}, rejected {result.rejected:,}, peak RSS {mib(hwm) or 0:.0f} MiB"
        )
        del plan

        stop_s, code = service.stop()
        ingest_out["stop_seconds"], ingest_out["stop_exit_code"] = stop_s, code
        say(f"ours: SIGTERM -> exited {code} after {stop_s:.1f}s; restarting")
        service = OurService(data_dir, work / "ours.log")
        service.start()
        ingest_out["restart_seconds"] = await service.wait_healthy(timeout_s=600)

        with RssSampler(service.pid) as sampler:
            await _ours_queries(args, ds, service, runs)
            results["rpc_floor"] = await _rpc_floor(service.target, args.cache_repeats)
        say(
            f"ours: a bare gRPC round trip (GetCapabilities) takes p50 {results['rpc_floor']['p50_us']:.0f} µs"
        )
        hwm = service.hwm_kib()
        results["query_memory"]["ours"] = {
            "peak_rss_mib": mib(hwm),
            "sampled_peak_rss_mib": mib(sampler.peak_kib),
        }
        return data_dir
    finally:
        stop_s, code = service.stop()
        say(f"ours: stopped (exit {code}, {stop_s:.1f}s)")


async def _probe_query(service: OurService, ds: tsbs_data.Dataset, runs: dict[str, TypeRun]) -> None:
    """With no data, still record whether the Query API answers, for the report."""
    first = next(iter(runs.values())).instances[0]
    async with OurQuerier(service.target) as q:
        try:
            await q.query(ours_request(first, DATASOURCE, len(ds.hosts)))
            detail = "the Query API answers, but no data could be ingested"
        except grpc.aio.AioRpcError as exc:
            detail = f"{exc.code().name}: {exc.details()}"
    say(f"ours: Query answers {detail}")
    for run in runs.values():
        run.ours = {"available": False, "detail": detail}


async def _ours_queries(
    args: argparse.Namespace, ds: tsbs_data.Dataset, service: OurService, runs: dict[str, TypeRun]
) -> None:
    async with OurQuerier(service.target) as q:
        for name, run in runs.items():
            seconds, server_ms, hits = [], [], 0
            error = None
            for inst in run.instances:
                try:
                    out = await q.query(ours_request(inst, DATASOURCE, len(ds.hosts)))
                except grpc.aio.AioRpcError as exc:
                    if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
                        detail = f"UNIMPLEMENTED: {exc.details()}"
                        say(f"ours: Query {report.NA} ({detail})")
                        for r in runs.values():
                            r.ours = {"available": False, "detail": detail}
                        return
                    error = f"{inst.name}: {exc.code().name}: {exc.details()}"
                    break
                if out.cache_hit:
                    hits += 1
                    continue
                seconds.append(out.seconds)
                server_ms.append(out.server_ms)
                run.ours_answers[inst.index] = answer_of(out.response, inst.qtype.kind)
            lat = Latency.of_seconds(seconds)
            run.ours = {"available": lat is not None, "uncached": len(seconds), "cache_hits_seen": hits}
            if lat:
                server = Latency.of_seconds([ms / 1000 for ms in server_ms])
                run.ours.update(
                    p50_ms=lat.p50_ms,
                    p99_ms=lat.p99_ms,
                    mean_ms=lat.mean_ms,
                    server_p50_ms=server.p50_ms if server else None,
                )
            notes = []
            if hits:
                notes.append(f"{hits} of {len(run.instances)} instances were cache hits and are left out")
            if error:
                notes.append(f"error: {error}")
            if notes:
                run.ours["note"] = "; ".join(notes)
            say(f"ours: {name}: {_lat_text(lat)}{' (' + run.ours.get('note', '') + ')' if notes else ''}")
            if lat:
                run.cache = await _cache_hits(
                    q, ours_request(run.instances[0], DATASOURCE, len(ds.hosts)), args.cache_repeats
                )
                say(
                    f"ours: {name}: {run.cache['hits']}/{run.cache['calls']} calls were cache hits, client p50 "
                    f"{run.cache.get('client_p50_us') or 0:.0f} µs"
                )


async def _rpc_floor(target: str, repeats: int) -> dict[str, Any]:
    """Latency of an RPC that does no work (QueryService/GetCapabilities) on a channel like the
    queries': the floor under every query's client latency."""
    async with OurQuerier(target) as q:
        assert q.stub is not None
        seconds = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            await q.stub.GetCapabilities(query_service_pb2.GetCapabilitiesRequest())
            seconds.append(time.perf_counter() - t0)
    lat = Latency.of_seconds(seconds)
    assert lat is not None
    return {"calls": len(seconds), "p50_us": lat.p50_ms * 1000, "p99_us": lat.p99_ms * 1000}


async def _cache_hits(q: OurQuerier, request: Any, repeats: int) -> dict[str, Any]:
    """Repeat one query; latency of the answers that came from the cache.

    Stops after 5 calls without a hit: that query is not cached (SQL, for one), and repeating a
    slow uncached query 200 times would only stretch the run.
    """
    client, server = [], []
    calls = 0
    for calls in range(1, repeats + 1):
        out = await q.query(request)
        if out.cache_hit:
            client.append(out.seconds)
            server.append(out.server_ms / 1000)
        elif calls >= 5 and not client:
            break
    c, s = Latency.of_seconds(client), Latency.of_seconds(server)
    return {
        "hits": len(client),
        "calls": calls,
        "client_p50_us": c.p50_ms * 1000 if c else None,
        "client_p99_us": c.p99_ms * 1000 if c else None,
        "server_p50_us": s.p50_ms * 1000 if s else None,
        "server_p99_us": s.p99_ms * 1000 if s else None,
    }


def phase_floor(
    ds: tsbs_data.Dataset,
    ours_data: Path | None,
    work: Path,
    runs: dict[str, TypeRun],
    results: dict[str, Any],
) -> None:
    """Raw DuckDB over the service's segments, or over dev-written ones when ours holds no data."""
    if ours_data is not None:
        data_dir, source = ours_data, "written by the service"
    else:
        data_dir, source = (
            work / "dev-segments",
            "written by benchmarks/segments_dev.py (our service was skipped or could not ingest)",
        )
        say("duckdb: writing segments in the service's layout (dev helper)")
        counts = write_segments(ds, data_dir, DATASOURCE)
        say(f"duckdb: {counts['point_files']} point files, {counts['points']:,} points")
    floor = RawDuckDB(data_dir, DATASOURCE)
    results["floor"] = {"source": source, **floor.describe(), "points": floor.count_points()}
    if results["floor"]["points"] != ds.n_points:
        results["meta"]["warnings"].append(
            f"the segments hold {results['floor']['points']:,} points, the data set {ds.n_points:,}"
        )
    floor.run(next(iter(runs.values())).instances[0])  # warm the connection and the file list
    for name, run in runs.items():
        seconds = []
        try:
            for inst in run.instances:
                t0 = time.perf_counter()
                run.floor_answers[inst.index] = floor.run(inst)
                seconds.append(time.perf_counter() - t0)
        except duckdb.Error as exc:
            run.duckdb["error"] = f"{type(exc).__name__}: {exc}"
        lat = Latency.of_seconds(seconds)
        if lat:
            run.duckdb.update(p50_ms=lat.p50_ms, p99_ms=lat.p99_ms, mean_ms=lat.mean_ms)
        say(f"duckdb: {name}: {_lat_text(lat)}")
    floor.close()


async def phase_vm(
    args: argparse.Namespace,
    ds: tsbs_data.Dataset,
    work: Path,
    runs: dict[str, TypeRun],
    results: dict[str, Any],
) -> None:
    """Load the data into VictoriaMetrics both ways, then run the PromQL-expressible types.

    Each loader gets a fresh instance and storage, so neither sees the other's points; the
    instance loaded last (/write, TSBS's own loader path) stays up for the queries.
    """
    out: dict[str, Any] = {"available": False, "loads": {}}
    results["ingest"]["vm"] = out
    loaders = {
        "/api/v1/import": lambda: victoria.import_chunks(ds),
        "/write": lambda: victoria.influx_chunks(ds.influx_path),
    }
    vm: victoria.VictoriaMetrics | None = None
    try:
        for path, build in loaders.items():
            if vm is not None:
                vm.stop()
                shutil.rmtree(vm.storage, ignore_errors=True)
            vm = victoria.VictoriaMetrics(work / f"vm-data{path.replace('/', '-')}", work / "vm.log")
            say(f"vm: starting {victoria.binary()} on {vm.url}")
            vm.start()
            await vm.wait_ready()
            t0 = time.perf_counter()
            chunks = build()
            build_s = time.perf_counter() - t0
            with RssSampler(vm.pid) as sampler:
                load = await victoria.load(vm.url, chunks, ds.n_points, args.vm_concurrency, path)
            hwm = vm.hwm_kib()
            visible = await victoria.count_points(vm.url, ds.params.end_ms / 1000, ds.params.hours * 3600)
            out["loads"][path] = {
                "available": True,
                "path": path,
                "points": load.points,
                "seconds": load.seconds,
                "send_seconds": load.send_seconds,
                "flush_seconds": load.flush_seconds,
                "points_per_s": load.points_per_s,
                "requests": load.requests,
                "mib": load.bytes_sent / 2**20,
                "build_seconds": build_s,
                "failures": load.failures,
                "concurrency": args.vm_concurrency,
                "peak_rss_mib": mib(hwm),
                "sampled_peak_rss_mib": mib(sampler.peak_kib),
                "visible_points": visible,
            }
            del chunks
            say(
                f"vm: {path}: {load.points:,} points in {load.seconds:.2f}s = {load.points_per_s:,.0f} points/s "
                f"({visible:,} visible), peak RSS {mib(hwm) or 0:.0f} MiB"
            )
            if load.failures or visible != ds.n_points:
                results["meta"]["warnings"].append(
                    f"VictoriaMetrics {path}: {load.failures} failed POSTs, {visible:,} points visible"
                )
        best = max(out["loads"].values(), key=lambda x: x["points_per_s"])
        out.update(best, available=True, best=best["path"])
        assert vm is not None
        with RssSampler(vm.pid) as sampler:
            async with victoria.PromQuerier(vm.url) as q:
                for name, run in runs.items():
                    if name in VM_UNSUPPORTED:
                        run.vm = {"supported": False}
                        continue
                    seconds = []
                    for inst in run.instances:
                        pq = promql(inst)
                        assert pq is not None
                        s, _ = await q.query_range(*pq)
                        seconds.append(s)
                    lat = Latency.of_seconds(seconds)
                    run.vm = {"supported": True, "available": True, "query": promql(run.instances[0])[0]}  # type: ignore[index]
                    if lat:
                        run.vm.update(p50_ms=lat.p50_ms, p99_ms=lat.p99_ms, mean_ms=lat.mean_ms)
                    say(f"vm: {name}: {_lat_text(lat)}")
        results["query_memory"]["vm"] = {
            "peak_rss_mib": mib(vm.hwm_kib()),
            "sampled_peak_rss_mib": mib(sampler.peak_kib),
        }
    finally:
        if vm is not None:
            vm.stop()
            say("vm: stopped")


def _failed(
    results: dict[str, Any], runs: dict[str, TypeRun], system: str, exc: Exception, log: Path
) -> None:
    """Record a system's failure in the results instead of ending the run."""
    detail = f"failed: {type(exc).__name__}: {exc}".splitlines()[0][:300]
    say(f"{system}: {detail} (log: {log.relative_to(REPO_ROOT)})")
    results["meta"]["warnings"].append(f"{system} {detail}")
    results["ingest"].setdefault(system, {})
    if not results["ingest"][system].get("available"):
        results["ingest"][system] = {"available": False, "detail": detail}
    for run in runs.values():
        target = run.ours if system == "ours" else run.vm
        if "p50_ms" not in target:
            target.update(available=False, detail=detail)


def _lat_text(lat: Latency | None) -> str:
    return "no samples" if lat is None else f"p50 {lat.p50_ms:.2f} ms, p99 {lat.p99_ms:.2f} ms (n={lat.n})"


def agreement(runs: dict[str, TypeRun]) -> None:
    """Compare ours with the floor on every instance both answered."""
    for run in runs.values():
        common = run.ours_answers.keys() & run.floor_answers.keys()
        if not common:
            continue
        diffs = [diff(run.ours_answers[i], run.floor_answers[i]) for i in sorted(common)]
        run.ours["agreement"] = {
            "instances": len(diffs),
            "compared": sum(d.compared for d in diffs),
            "max_abs_diff": max(d.max_abs_diff for d in diffs),
            "only_ours": sum(d.only_left for d in diffs),
            "only_duckdb": sum(d.only_right for d in diffs),
            "agree": all(d.agree for d in diffs),
        }


# --- main -----------------------------------------------------------------------------------------


async def _round(
    args: argparse.Namespace,
    ds: tsbs_data.Dataset,
    params: tsbs_data.DataParams,
    work: Path,
    results: dict[str, Any],
    seed: int,
) -> dict[str, TypeRun]:
    """One whole comparison: ours (ingest, restart, queries), the DuckDB floor, VictoriaMetrics."""
    work.mkdir(parents=True, exist_ok=True)
    runs = {
        qt.name: TypeRun(make_instances(qt, args.instances, ds.hosts, params.start_ms, params.end_ms, seed))
        for qt in QUERY_TYPES
    }
    for run in runs.values():
        run.ours = {"available": False, "detail": "skipped (--skip-ours)"}
        run.vm = {"supported": run.instances[0].qtype.name not in VM_UNSUPPORTED, "available": False}

    ours_data = None
    if not args.skip_ours:
        try:
            ours_data = await phase_ours(args, ds, work, runs, results)
        except Exception as exc:  # the service is under construction: report, and measure the rest
            _failed(results, runs, "ours", exc, work / "ours.log")
    phase_floor(ds, ours_data, work, runs, results)
    if not args.skip_vm:
        try:
            await phase_vm(args, ds, work, runs, results)
        except Exception as exc:
            _failed(results, runs, "vm", exc, work / "vm.log")
    agreement(runs)
    if not args.keep:
        for sub in ("ours-data", "vm-data-write", "vm-data-api-v1-import", "dev-segments"):
            shutil.rmtree(work / sub, ignore_errors=True)
    return runs


def _round_summary(results: dict[str, Any], runs: dict[str, TypeRun]) -> dict[str, Any]:
    """What the rounds table shows of one round: ingest rates and each type's p50s."""
    ingest = results["ingest"]
    return {
        "ingest": {system: ingest[system].get("points_per_s") for system in ("ours", "vm")},
        "types": {
            name: {
                "ours": run.ours.get("p50_ms"),
                "vm": run.vm.get("p50_ms"),
                "duckdb": run.duckdb.get("p50_ms"),
                "agree": (run.ours.get("agreement") or {}).get("agree"),
            }
            for name, run in runs.items()
        },
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--quick",
        action="store_true",
        help=f"{tsbs_data.QUICK.scale} hosts, {tsbs_data.QUICK.hours:g} h, fewer repeats",
    )
    p.add_argument("--docs", action="store_true", help="also put the report at the top of docs/benchmarks.md")
    p.add_argument("--skip-vm", action="store_true", help="leave VictoriaMetrics out")
    p.add_argument("--skip-ours", action="store_true", help="leave our service out (floor on dev segments)")
    p.add_argument("--scale", type=int, help="hosts (default 100, quick 10)")
    p.add_argument("--hours", type=float, help="hours of data (default 24, quick 2)")
    p.add_argument("--instances", type=int, help="instances per query type (default 30, quick 10)")
    p.add_argument(
        "--cache-repeats", type=int, help="repeats of one instance for cache hits (default 200, quick 50)"
    )
    p.add_argument("--seed", type=int, default=123, help="seed of the query instances")
    p.add_argument(
        "--rounds",
        type=int,
        help="times the whole comparison runs, each with fresh data directories and fresh query "
        "instances; the report's tables are the first round's, and a table gives every round's p50s "
        "(default 3, quick 1)",
    )
    # 8 in flight: on 2 cores with 36k-point batches the rate rose from 1 (1.8M points/s) through 4
    # (2.4M) to 8 and then flattened (8 and 16 both about 2.9M).
    p.add_argument("--ingest-concurrency", type=int, default=8, help="IngestMetrics calls in flight")
    p.add_argument("--hosts-per-batch", type=int, default=10, help="hosts per IngestMetrics request")
    p.add_argument("--slice-minutes", type=int, default=60, help="minutes of data per IngestMetrics request")
    # VictoriaMetrics gained from 2 to 4 connections and not beyond (its loader is CPU-bound on 2 cores).
    p.add_argument("--vm-concurrency", type=int, default=4, help="HTTP connections loading VictoriaMetrics")
    p.add_argument("--keep", action="store_true", help="keep the run's data directories")
    args = p.parse_args(argv)
    args.instances = args.instances or (10 if args.quick else 30)
    args.cache_repeats = args.cache_repeats or (50 if args.quick else 200)
    args.rounds = max(1, args.rounds or (1 if args.quick else 3))
    return args


async def main_async(args: argparse.Namespace, argv: list[str]) -> Path:
    """Run every phase and write the report; returns the report's path."""
    base = tsbs_data.QUICK if args.quick else tsbs_data.FULL
    params = tsbs_data.DataParams(scale=args.scale or base.scale, hours=args.hours or base.hours)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    work = DATA_DIR / "runs" / stamp
    work.mkdir(parents=True)
    results: dict[str, Any] = {
        "meta": {
            "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "mode": "quick" if args.quick else "full",
            "command": " ".join([".venv/bin/python -m benchmarks.run", *argv]),
            "warnings": [],
        },
        "machine": machine_facts(),
        "ingest": {
            "ours": {"available": False, "detail": "skipped (--skip-ours)"},
            "vm": {"available": False, "detail": "skipped (--skip-vm)"},
        },
        "query_memory": {},
        "query_instances": args.instances,
        "cache_repeats": args.cache_repeats,
        "query_types": describe_types(),
        "hot_tier": hot_tier_bound(),
    }
    say(f"data: TSBS cpu-only, {params.scale} hosts, {params.hours:g} h ({params.expected_points:,} points)")
    ds = tsbs_data.load(params)
    binary, gen_name = tsbs_data.generator()
    results["versions"] = versions(gen_name)
    results["data"] = ds.describe()
    results["data_command"] = " ".join([binary.name, *params.generator_args()])
    say(
        f"data: {ds.n_points:,} points in {ds.n_series} series ({'cached' if ds.from_cache else 'parsed'} in {ds.parse_seconds:.1f}s)"
    )

    runs = await _round(args, ds, params, work, results, args.seed)
    results["rounds"] = [_round_summary(results, runs)]
    for extra in range(1, args.rounds):
        # Fresh directories and instances (ours would answer repeated ones from its cache); the
        # round's facts go to a scratch copy, so the report's tables stay the first round's.
        say(f"round {extra + 1} of {args.rounds}")
        scratch = copy.deepcopy({k: v for k, v in results.items() if k != "rounds"})
        extra_runs = await _round(args, ds, params, work / f"round{extra + 1}", scratch, args.seed + extra)
        results["rounds"].append(_round_summary(scratch, extra_runs))
        results["meta"]["warnings"] += scratch["meta"]["warnings"][len(results["meta"]["warnings"]) :]

    results["queries"] = [
        {
            "type": name,
            "ours": run.ours,
            "duckdb": run.duckdb,
            "vm": run.vm,
            "cache": run.cache,
            "agreement": run.ours.get("agreement"),
        }
        for name, run in runs.items()
    ]
    results["meta"]["duration_s"] = time.perf_counter() - _T0
    results["machine"]["load_avg_end"] = os.getloadavg()[0]
    busy = max(results["machine"]["load_avg_start"], results["machine"]["load_avg_end"])
    if busy > 1.0:
        # Two cores: a 1-minute load above 1 means something else was running beside the benchmark.
        results["meta"]["warnings"].append(
            f"the machine was busy (1-minute load average up to {busy:.1f} on {results['machine']['nproc']} CPUs "
            "at the start or end of the run): other processes competed for the CPUs, so latencies are noisy"
        )

    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    name = f"benchmarks-{stamp}{'-quick' if args.quick else ''}"
    md_path = RESULTS_DIR / f"{name}.md"
    md_path.write_text(report.render(results))
    (RESULTS_DIR / f"{name}.json").write_text(json.dumps(results, indent=2, default=str))
    shutil.copyfile(md_path, RESULTS_DIR / "latest.md")
    if args.docs:
        docs = REPO_ROOT / "docs" / "benchmarks.md"
        report.write_docs_report(docs, md_path.read_text())
        say(f"report put at the top of {docs.relative_to(REPO_ROOT)} (the other benchmarks' sections kept)")
    say(f"report: {md_path.relative_to(REPO_ROOT)} (logs in {work.relative_to(REPO_ROOT)})")
    return md_path


def main(argv: list[str] | None = None) -> None:
    """Entry point of `python -m benchmarks.run`."""
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.quick and args.docs:
        print("note: --quick results are going to docs/benchmarks.md", file=sys.stderr)
    asyncio.run(main_async(args, argv))


if __name__ == "__main__":
    main()
