"""Growth: what ingest, disk, memory and each query type cost as the stored data grows, ours
beside VictoriaMetrics, on 1, 7 and 30 days of TSBS cpu-only data (scale 100).

    .venv/bin/python -m benchmarks.growth [--days 1,7,30] [--scale 100] [--instances 30] [--docs] [--skip-vm]

Per size, each system alone on the machine, each on a fresh data directory: the data set is
ingested (ours: columnar IngestMetrics over gRPC, as benchmarks.run does; VictoriaMetrics: the
influx lines on /write, streamed from the file), then stopped, which flushes everything to disk,
and its bytes on disk counted; restarted, every TSBS query type runs `--instances` random uncached
instances over the whole span (p50 at the client). Resident memory: after ingest, and after the
queries. All sizes start on the same day (RETENTION_OVERRIDES keeps old days), so a one-hour query
reads the same amount of data at every size: its p50 should not grow with the total.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pyarrow.parquet as pq

from benchmarks import tsbs_data, victoria
from benchmarks.ours import OurQuerier, OurService, build_ingest_plan, ingest
from benchmarks.procs import DATA_DIR, Latency, proc_status_kib
from benchmarks.report import add_docs_flag, machine, publish
from benchmarks.tsbs_queries import QUERY_TYPES, VM_UNSUPPORTED, make_instances, ours_request, promql
from libs.storage.store import WEEK_MERGE_MAX_POINTS

SECTION = "## Growth with the stored data (TSBS, 1 to 30 days)"
DATASOURCE = "tsbs"
START = "2026-10-01T00:00:00Z"
"""Every size starts here, in the past, so no point is refused as being in the future."""
ONE_HOUR_TYPES = ("single-groupby-1-1-1", "single-groupby-5-8-1")
"""Types that read one hour whatever the total (lastpoint and groupby-orderby-limit read every point
before their time, so they grow with the data by definition)."""
_T0 = time.perf_counter()


def say(text: str) -> None:
    """Progress on stdout with the elapsed time."""
    print(f"[{time.perf_counter() - _T0:7.1f}s] {text}", flush=True)


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def dir_bytes(path: Path, suffix: str = "") -> int:
    """Bytes of the files under `path` (those ending in `suffix` when given)."""
    return sum(p.stat().st_size for p in path.rglob(f"*{suffix}") if p.is_file())


def _days_to_merge(points_dir: Path) -> int:
    """Day files that compaction has yet to merge: those of past weeks with files of two days or
    more (one day's files follow the day rule, as in the store's compact), in weeks small enough to
    be merged (WEEK_MERGE_MAX_POINTS)."""
    weeks: dict[int, list[Path]] = {}
    for path in points_dir.glob("day=*/*.parquet"):
        day = datetime.strptime(path.parent.name[4:], "%Y-%m-%d").replace(tzinfo=UTC)
        week = (int(day.timestamp()) // 86_400 + 3) // 7  # Monday-based, as the store's partitions
        weeks.setdefault(week, []).append(path)
    return sum(
        len(paths)
        for paths in weeks.values()
        if len({p.parent.name for p in paths}) > 1
        and sum(pq.ParquetFile(p).metadata.num_rows for p in paths) <= WEEK_MERGE_MAX_POINTS
    )


async def _settled(points_dir: Path, timeout_s: float = 1800.0) -> float:
    """Seconds until background compaction has merged every past week's day files."""
    started = time.monotonic()
    while _days_to_merge(points_dir) and time.monotonic() - started < timeout_s:
        await asyncio.sleep(1.0)
    return time.monotonic() - started


def _mib(kib: int | None) -> float | None:
    return None if kib is None else kib / 1024


async def ingest_days(target: str, ds: tsbs_data.Dataset, concurrency: int) -> tuple[int, int, float]:
    """Ingest the data set into the service at `target` (columnar IngestMetrics, `concurrency` calls
    in flight): (points, accepted, seconds of ingest)."""
    say(f"ours: ingesting {ds.n_points:,} points, a day's requests at a time")
    points = accepted = 0
    seconds = 0.0
    for day in range(int(-(-ds.params.hours // 24))):
        # Requests are built a day at a time (not timed), so 30 days never sit in memory at once.
        hours = min(24.0, ds.params.hours - 24 * day)
        window = replace(ds.params, start=_iso(ds.params.start_ms + day * 86_400_000), hours=hours)
        plan = build_ingest_plan(replace(ds, params=window), DATASOURCE, 10, 3_600_000)
        result = await ingest(target, plan, concurrency)
        points, accepted, seconds = (
            points + result.points,
            accepted + result.accepted,
            seconds + result.seconds,
        )
        del plan
    return points, accepted, seconds


async def run_ours(ds: tsbs_data.Dataset, work: Path, instances: dict[str, list], concurrency: int) -> dict:
    """Ingest, stop (flush), measure the disk, restart, run every query type."""
    data_dir = work / "ours-data"
    env = {"RETENTION_OVERRIDES": f"{DATASOURCE}=36500"}
    service = OurService(data_dir, work / "ours.log", extra_env=env)
    service.start()
    out: dict[str, Any] = {}
    try:
        await service.wait_healthy()
        points, accepted, seconds = await ingest_days(service.target, ds, concurrency)
        out.update(
            points=points,
            accepted=accepted,
            ingest_points_per_s=points / seconds,
            rss_after_ingest_mib=_mib(proc_status_kib(service.pid, "VmRSS")),
            peak_rss_ingest_mib=_mib(service.hwm_kib()),
        )
        stop_s, _ = service.stop()
        out["stop_flush_seconds"] = stop_s
        out["disk_bytes"] = dir_bytes(data_dir)
        out["parquet_bytes"] = dir_bytes(data_dir, ".parquet")
        out["bytes_per_point"] = out["parquet_bytes"] / points
        out["dir_bytes_per_point"] = out["disk_bytes"] / points
        source = data_dir / "segments" / "tenant=default" / f"datasource={DATASOURCE}"
        out["bytes_per_point_by_kind"] = {
            kind: dir_bytes(path) / points
            for kind, path in (
                ("points (Parquet)", source / "points"),
                ("points maps", source / "maps"),
                ("1-minute rollups", source / "rollups" / "1m"),
                ("1-hour rollups", source / "rollups" / "1h"),
                ("WAL", data_dir / "wal"),
            )
        }
        say(
            f"ours: {out['ingest_points_per_s']:,.0f} points/s, {out['bytes_per_point']:.2f} bytes/point on disk"
        )
        service = OurService(data_dir, work / "ours.log", extra_env=env)
        service.start()
        out["restart_seconds"] = await service.wait_healthy(timeout_s=900)
        # Compaction merges past weeks' day files into week partitions in the background: queries
        # are timed once it is done, as they would run on a long-lived server.
        points_dir = data_dir / "segments" / "tenant=default" / f"datasource={DATASOURCE}" / "points"
        out["settle_seconds"] = await _settled(points_dir)
        kinds = [p.parent.name.split("=")[0] for p in points_dir.glob("*/*.parquet")]
        out["points_files"] = {k: kinds.count(k) for k in sorted(set(kinds))}
        say(
            f"ours: compaction settled after {out['settle_seconds']:.0f} s; points files {out['points_files']}"
        )
        out["queries"] = {}
        async with OurQuerier(service.target) as q:
            for name, insts in instances.items():
                seconds = []
                for inst in insts:
                    answer = await q.query(ours_request(inst, DATASOURCE, len(ds.hosts)))
                    if not answer.cache_hit:
                        seconds.append(answer.seconds)
                lat = Latency.of_seconds(seconds)
                out["queries"][name] = lat.p50_ms if lat else None
                say(f"ours: {name}: p50 {out['queries'][name] or 0:.1f} ms")
        out["rss_after_queries_mib"] = _mib(proc_status_kib(service.pid, "VmRSS"))
        # Of which file pages: the memory-mapped rollups and points maps the queries touched (page
        # cache the kernel can drop), apart from the process's own (anonymous) memory.
        out["rss_file_after_queries_mib"] = _mib(proc_status_kib(service.pid, "RssFile"))
    finally:
        service.stop()
    return out


def influx_pieces(path: Path, target_bytes: int = 2 << 20) -> Iterator[bytes]:
    """The influx file in pieces of about target_bytes cut at line ends, read as they are sent."""
    with open(path, "rb") as f:
        rest = b""
        while block := f.read(target_bytes):
            data = rest + block
            cut = data.rfind(b"\n") + 1
            rest = data[cut:]
            if cut:
                yield data[:cut]
        if rest:
            yield rest


async def _stream_load(url: str, pieces: Iterator[bytes], concurrency: int = 4) -> tuple[float, int]:
    """POST the pieces to /write over `concurrency` connections, then force_flush: (seconds, failures)."""
    failures = 0
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=900)
    ) as session:

        async def worker() -> None:
            nonlocal failures
            for body in pieces:  # one shared iterator: each piece goes to one worker
                async with session.post(f"{url}/write", data=body) as resp:
                    await resp.read()
                    failures += resp.status >= 300

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        async with session.get(f"{url}/internal/force_flush") as resp:
            await resp.read()
        return time.perf_counter() - t0, failures


async def run_vm(ds: tsbs_data.Dataset, work: Path, instances: dict[str, list]) -> dict:
    """Load the influx file, measure memory, query, stop and measure the disk."""
    vm = victoria.VictoriaMetrics(work / "vm-data", work / "vm.log")
    vm.start()
    out: dict[str, Any] = {}
    try:
        await vm.wait_ready()
        say(f"VictoriaMetrics: loading {ds.n_points:,} points")
        seconds, failures = await _stream_load(vm.url, influx_pieces(ds.influx_path))
        visible = await victoria.count_points(vm.url, ds.params.end_ms / 1000, ds.params.hours * 3600)
        out.update(
            ingest_points_per_s=ds.n_points / seconds,
            failures=failures,
            visible_points=visible,
            rss_after_ingest_mib=_mib(proc_status_kib(vm.pid, "VmRSS")),
            peak_rss_ingest_mib=_mib(vm.hwm_kib()),
            queries={},
        )
        async with victoria.PromQuerier(vm.url) as q:
            for name, insts in instances.items():
                if name in VM_UNSUPPORTED:
                    continue
                seconds_each = []
                for inst in insts:
                    query = promql(inst)
                    assert query is not None
                    s, _ = await q.query_range(*query)
                    seconds_each.append(s)
                lat = Latency.of_seconds(seconds_each)
                out["queries"][name] = lat.p50_ms if lat else None
                say(f"VictoriaMetrics: {name}: p50 {out['queries'][name] or 0:.1f} ms")
        out["rss_after_queries_mib"] = _mib(proc_status_kib(vm.pid, "VmRSS"))
    finally:
        vm.stop()
    out["disk_bytes"] = dir_bytes(vm.storage)
    out["bytes_per_point"] = out["disk_bytes"] / ds.n_points
    return out


# --- report ---------------------------------------------------------------------------------------


def _n(value: float | None, fmt: str = ",.0f") -> str:
    return "-" if value is None else format(value, fmt)


def render(r: dict[str, Any]) -> str:
    """The docs section."""
    lines = [
        SECTION,
        "",
        f"`python -m benchmarks.growth --days {','.join(format(row['days'], 'g') for row in r['rows'])}` (part of "
        f"`make bench`): TSBS cpu-only, {r['scale']} hosts, 10 s interval, every size starting "
        f"{START[:10]}; per size each system alone on a fresh directory: ingest (ours: columnar gRPC, "
        "8 calls in flight; VictoriaMetrics: influx lines on /write, 4 connections, force_flush "
        "included), stop (flushes) and count the bytes on disk (ours: the raw points' Parquet files, "
        "and in brackets the whole DATA_DIR: rollups, series files, WAL and the services' databases "
        "too; VM: its storage directory), restart and run each query type "
        f"({r['instances']} random uncached instances over the span, p50 at the client). Timings on this "
        f"shared 2-core machine are noisy; compare the columns of one run. Machine: {r['machine']}; run "
        f"{r['when']}.",
        "",
        "| days | points | ingest points/s, ours / VM | bytes on disk per point, ours (whole DATA_DIR) / VM | RSS after "
        "ingest MiB, ours / VM | RSS after queries MiB, ours / VM | ours' points files after compaction "
        "(seconds it took after restart) |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in r["rows"]:
        o, v = row["ours"], row.get("vm") or {}
        if "error" in o:
            lines.append(f"| {row['days']:g} | {row['points']:,} | ours failed: {o['error']} | | | | |")
            continue
        lines.append(
            f"| {row['days']:g} | {row['points']:,} | {_n(o.get('ingest_points_per_s'))} / "
            f"{_n(v.get('ingest_points_per_s'))} | {_n(o.get('bytes_per_point'), '.2f')} "
            f"({_n(o.get('dir_bytes_per_point'), '.2f')}) / "
            f"{_n(v.get('bytes_per_point'), '.2f')} | {_n(o.get('rss_after_ingest_mib'))} / "
            f"{_n(v.get('rss_after_ingest_mib'))} | {_n(o.get('rss_after_queries_mib'))} "
            f"(mapped files {_n(o.get('rss_file_after_queries_mib'))}) / "
            f"{_n(v.get('rss_after_queries_mib'))} | "
            f"{', '.join(f'{n} {k}' for k, n in (o.get('points_files') or {}).items()) or '-'} "
            f"({_n(o.get('settle_seconds'))}) |"
        )
    last = r["rows"][-1]["ours"] if r["rows"] else {}
    if last.get("bytes_per_point_by_kind"):
        kinds = ", ".join(f"{k} {v:.2f}" for k, v in last["bytes_per_point_by_kind"].items())
        lines += ["", f"Ours' bytes on disk per point at {r['rows'][-1]['days']:g} days, by kind: {kinds}."]
    lines += [
        "",
        "Query p50 in ms, ours / VictoriaMetrics (`-`: PromQL cannot express the type); the one-hour "
        f"types ({', '.join(ONE_HOUR_TYPES)}) read the same data at every size; lastpoint and "
        "groupby-orderby-limit read everything before their time, so they grow with the data by definition:",
        "",
        "| query type | " + " | ".join(f"{row['days']:g} d" for row in r["rows"]) + " |",
        "|---|" + "---|" * len(r["rows"]),
    ]
    for qt in QUERY_TYPES:
        cells = []
        for row in r["rows"]:
            o = (row["ours"].get("queries") or {}).get(qt.name)
            v = ((row.get("vm") or {}).get("queries") or {}).get(qt.name)
            cells.append(f"{_n(o, '.1f')} / {_n(v, '.1f')}")
        lines.append(f"| {qt.name} | " + " | ".join(cells) + " |")
    lines.append("")
    return "\n".join(lines)


async def _run(days: list[float], scale: int, n_instances: int, skip_vm: bool, seed: int) -> dict[str, Any]:
    rows = []
    for d in days:
        params = tsbs_data.DataParams(scale=scale, hours=24 * d, start=START)
        say(f"{d:g} days: {params.expected_points:,} points (generated and parsed once, then cached)")
        ds = tsbs_data.load(params)
        instances = {
            qt.name: make_instances(qt, n_instances, ds.hosts, params.start_ms, params.end_ms, seed)
            for qt in QUERY_TYPES
        }
        work = DATA_DIR / "growth" / f"{d:g}d"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        row: dict[str, Any] = {"days": d, "points": ds.n_points}
        try:
            row["ours"] = await run_ours(ds, work, instances, concurrency=8)
        except Exception as exc:  # report the failure and measure the rest
            row["ours"] = {"error": f"{type(exc).__name__}: {exc}".splitlines()[0][:200]}
        if not skip_vm and victoria.binary() is not None:
            try:
                row["vm"] = await run_vm(ds, work, instances)
            except Exception as exc:
                row["vm"] = {"error": f"{type(exc).__name__}: {exc}".splitlines()[0][:200]}
        shutil.rmtree(work, ignore_errors=True)
        del ds
        rows.append(row)
        say(f"{d:g} days: {json.dumps(row, default=str)[:600]}")
    return {
        "rows": rows,
        "scale": scale,
        "instances": n_instances,
        "machine": machine(),
        "when": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "victoria_metrics": victoria.version(),
    }


def main(argv: list[str] | None = None) -> None:
    """Entry point of `python -m benchmarks.growth`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", default="1,7,30", help="comma-separated sizes in days")
    parser.add_argument("--scale", type=int, default=100, help="hosts")
    parser.add_argument("--instances", type=int, default=30, help="uncached instances per query type")
    parser.add_argument("--seed", type=int, default=123)
    parser.add_argument("--skip-vm", action="store_true", help="ours only")
    add_docs_flag(parser)
    args = parser.parse_args(argv)
    days = [float(d) for d in args.days.split(",") if d]
    results = asyncio.run(_run(days, args.scale, args.instances, args.skip_vm, args.seed))
    publish(SECTION, render(results), args.docs, results, "growth")


if __name__ == "__main__":
    main()
