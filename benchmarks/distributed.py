"""The distributed path beside mode all, in one run: end-to-end ingest rate (first send until every
point answers queries) and producer-to-queryable latency.

    .venv/bin/python -m benchmarks.distributed [--hours 6] [--docs]

Distributed: a real Pulsar standalone (scripts/pulsar-standalone), a query-router (store and bus
consumer) and two realtime replicas, each its own process; batches go to the replicas in turn.
Mode all: one `analytics serve all` process. Same data (the TSBS cpu-only set of benchmarks.run,
first `--hours`), same client, same queries.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
from google.protobuf import struct_pb2
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from benchmarks import tsbs_data
from benchmarks.ours import build_ingest_plan
from benchmarks.procs import free_port, mib, proc_status_kib
from benchmarks.report import add_docs_flag, publish
from platformq.analytics.v1 import common_pb2, query_service_pb2, query_service_pb2_grpc
from platformq.analytics.v1 import realtime_service_pb2 as rpb
from services.pulsar_standalone import PulsarStandalone

REPO_ROOT = Path(__file__).resolve().parent.parent
SECTION = "## Distributed path (Pulsar) beside mode all"
LATENCY_SAMPLES = 100


def _start(name: str, env: dict[str, str], log: Path) -> subprocess.Popen:
    with log.open("a") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "services.cli", "serve", name],
            cwd=REPO_ROOT,
            env=env,
            stdout=out,
            stderr=out,
        )


async def _wait_serving(port: int) -> None:
    async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        for _ in range(600):
            try:
                reply = await health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=1
                )
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError(f"the service on {port} did not become SERVING")


async def _count(query: query_service_pb2_grpc.QueryServiceStub, datasource: str) -> int:
    reply = await query.Query(
        query_service_pb2.QueryRequest(
            sql="SELECT count(*) FROM metrics WHERE datasource = ?",
            params=[struct_pb2.Value(string_value=datasource)],
            mode="batch",
        )
    )
    return int(reply.rows[0].values[0].number_value)


async def _visible(query: query_service_pb2_grpc.QueryServiceStub, n: int, ts: int) -> bool:
    """True once probe n answers a (cheap, uncached) metrics query on its own datasource."""
    try:
        reply = await query.Query(
            query_service_pb2.QueryRequest(
                datasource="latency",
                metrics=["probe"],
                aggregation="count",
                step="1m",
                mode="batch",
                filters=[common_pb2.LabelFilter(label="n", op="=", value=str(n))],
                start="2023-11-14T22:13:00Z",
                end="2023-11-14T22:16:00Z",
            )
        )
    except grpc.aio.AioRpcError as err:
        if err.code() == grpc.StatusCode.NOT_FOUND:  # the datasource is not there yet
            return False
        raise
    return any(
        p.timestamp_ms <= ts < p.timestamp_ms + 60_000 and p.value >= 1
        for s in reply.series
        for p in s.points
    )


async def _measure(ingest_ports: list[int], query_port: int, payloads: list[bytes], points: int) -> dict:
    """Ingest every payload (8 in flight, replicas in turn), wait until all points answer, then
    time LATENCY_SAMPLES single small batches from send to queryable."""
    channels = [
        aio.insecure_channel(f"127.0.0.1:{p}", options=[("grpc.max_send_message_length", 256 << 20)])
        for p in ingest_ports
    ]
    calls = [
        ch.unary_unary(
            "/platformq.analytics.v1.RealtimeService/IngestMetrics",
            request_serializer=None,
            response_deserializer=rpb.IngestMetricsResponse.FromString,
        )
        for ch in channels
    ]
    query_channel = aio.insecure_channel(f"127.0.0.1:{query_port}")
    query = query_service_pb2_grpc.QueryServiceStub(query_channel)
    try:
        queue = list(enumerate(payloads))
        started = time.perf_counter()

        async def worker() -> None:
            while queue:
                i, payload = queue.pop()
                await calls[i % len(calls)](payload, timeout=300)

        await asyncio.gather(*(worker() for _ in range(8)))
        acked = time.perf_counter()
        while await _count(query, "tsbs") < points:
            await asyncio.sleep(0.05)
        queryable = time.perf_counter()

        latencies = []
        for n in range(LATENCY_SAMPLES):
            ts = 1_700_000_000_000 + n * 1000
            batch = rpb.IngestMetricsRequest(
                datasource="latency",
                series=[
                    common_pb2.Series(
                        name="probe", labels={"n": str(n)}, timestamps_ms=[ts], values=[float(n)]
                    )
                ],
            )
            sent = time.perf_counter()
            await calls[n % len(calls)](batch.SerializeToString(), timeout=30)
            while not await _visible(query, n, ts):
                await asyncio.sleep(0.002)
            latencies.append((time.perf_counter() - sent) * 1000)
    finally:
        for ch in [*channels, query_channel]:
            await ch.close()
    latencies.sort()
    return {
        "ack_s": acked - started,
        "queryable_s": queryable - started,
        "points_per_s": points / (queryable - started),
        "acked_points_per_s": points / (acked - started),
        "latency_p50_ms": statistics.median(latencies),
        "latency_p99_ms": latencies[int(0.99 * (len(latencies) - 1))],
    }


async def run(hours: float) -> dict:
    data = tsbs_data.load(tsbs_data.DataParams(hours=hours), log=False)
    plan = build_ingest_plan(data, "tsbs", 10, 60 * 60_000)
    payloads = list(plan.payloads)
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="pq-dist-bench-") as tmp:
        work = Path(tmp)
        base = {
            **os.environ,
            "LOG_LEVEL": "WARNING",
            "WS_BRIDGE_PORT": str(free_port()),
            "RETENTION_OVERRIDES": "tsbs=36500,latency=36500",
            "HOT_FLUSH_SECONDS": "30",
            "ANOMALY_STREAM": "0",  # storage latency alone; the scorer is measured in anomaly_speed
        }
        # Mode all: one process.
        port = free_port()
        proc = _start(
            "all", {**base, "GRPC_PORT": str(port), "DATA_DIR": str(work / "all")}, work / "all.log"
        )
        try:
            await _wait_serving(port)
            results["mode all"] = await _measure([port], port, payloads, plan.total_points)
            results["mode all"]["rss_mib"] = mib(proc_status_kib(proc.pid, "VmHWM"))
        finally:
            proc.terminate()
            proc.wait(120)
        # Distributed: Pulsar, a query-router and two realtime replicas.
        os.environ["PULSAR_PORT"], os.environ["PULSAR_HTTP_PORT"] = str(free_port()), str(free_port())
        pulsar = PulsarStandalone(work / "pulsar")
        pulsar.start()
        procs = []
        try:
            env = {**base, "PULSAR_URL": pulsar.url}
            router_port, replica_ports = free_port(), [free_port(), free_port()]
            procs.append(
                _start(
                    "query-router",
                    {**env, "GRPC_PORT": str(router_port), "DATA_DIR": str(work / "dist")},
                    work / "query-router.log",
                )
            )
            for i, p in enumerate(replica_ports):
                procs.append(
                    _start(
                        "realtime",
                        {**env, "GRPC_PORT": str(p), "DATA_DIR": str(work / f"r{i}")},
                        work / f"realtime-{i}.log",
                    )
                )
            for p in [router_port, *replica_ports]:
                await _wait_serving(p)
            results["distributed"] = await _measure(replica_ports, router_port, payloads, plan.total_points)
            results["distributed"]["rss_mib"] = sum(mib(proc_status_kib(p.pid, "VmHWM")) or 0 for p in procs)
            broker_pid = int((work / "pulsar" / "pulsar.pid").read_text())
            results["distributed"]["broker_rss_mib"] = mib(proc_status_kib(broker_pid, "VmHWM"))
        finally:
            for p in procs:
                p.terminate()
            for p in procs:
                p.wait(120)
            pulsar.stop()
    return {"points": plan.total_points, "hours": hours, "batches": len(payloads), "modes": results}


def render(r: dict) -> str:
    lines = [
        SECTION,
        "",
        f"Run on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} by `python -m benchmarks.distributed "
        f"--hours {r['hours']:g}`: the first {r['hours']:g} h of the TSBS set ({r['points']:,} points in "
        f"{r['batches']} columnar batches, 8 calls in flight). End to end = first send until a SQL count "
        "through the query-router sees every point; latency = one 1-point batch from send until a metrics "
        f"query (mode batch, no cache) on its own datasource returns it ({LATENCY_SAMPLES} samples, one at a time).",
        "",
        "| path | acked points/s | end-to-end points/s (queryable) | producer-to-queryable p50 ms | p99 ms | peak RSS MiB |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, m in r["modes"].items():
        rss = f"{m['rss_mib']:.0f}" + (
            f" (+ broker {m['broker_rss_mib']:.0f})" if "broker_rss_mib" in m else ""
        )
        lines.append(
            f"| {name} | {m['acked_points_per_s']:,.0f} | {m['points_per_s']:,.0f} | "
            f"{m['latency_p50_ms']:.1f} | {m['latency_p99_ms']:.1f} | {rss} |"
        )
    lines += [
        "",
        "Distributed RSS is the sum over the query-router and both replicas; the broker is one JVM "
        "(`PULSAR_MEM`, default -Xmx512m).",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.distributed", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--hours", type=float, default=6.0, help="hours of the TSBS set to load (default 6)")
    add_docs_flag(parser)
    args = parser.parse_args(argv)
    publish(SECTION, render(asyncio.run(run(args.hours))), args.docs)


if __name__ == "__main__":
    main()
