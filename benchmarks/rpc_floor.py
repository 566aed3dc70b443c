"""The floor of one Python gRPC call: what no query of ours can go under at the gRPC client.

    .venv/bin/python -m benchmarks.rpc_floor [--docs] [--calls 3000]

The stock health service's Check (no work at all) answered by grpcio's synchronous thread-pool
server, by grpc.aio (what the services run) and by grpc-go (benchmarks/rpcfloor, built by
benchmarks/setup.sh: what a compiled front would cost), each in a process of its own on loopback,
timed in this process at a synchronous and at a grpc.aio client (the benchmark's query client), in
the same run. Issue 11's single-groupby-1-1-1 target is VictoriaMetrics' p50 (under a millisecond):
this says how much of that a server spends before it does anything.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import subprocess
import time
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from benchmarks.procs import BIN_DIR
from benchmarks.report import add_docs_flag, machine, publish

SECTION = "## gRPC call floor"
WARMUP = 300


def _serve(kind: str, ports: Any, stop: Any) -> None:
    """Run a health server of `kind` ("sync" or "aio") until `stop` is set; its port goes to `ports`."""
    from concurrent import futures

    from grpc import aio
    from grpc_health.v1 import health

    if kind == "sync":
        server = grpc.server(futures.ThreadPoolExecutor(4))
        health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
        ports.put(server.add_insecure_port("127.0.0.1:0"))
        server.start()
        stop.wait()
        server.stop(0)
        return

    import asyncio

    async def main() -> None:
        server = aio.server()
        health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
        ports.put(server.add_insecure_port("127.0.0.1:0"))
        await server.start()
        while not stop.is_set():
            await asyncio.sleep(0.1)
        await server.stop(0)

    asyncio.run(main())


def _percentiles(times: list[float]) -> dict[str, float]:
    times.sort()
    return {"p50": times[len(times) // 2], "p99": times[int(len(times) * 0.99)]}


def _time_calls(port: int, calls: int) -> dict[str, float]:
    """Milliseconds per Check from a synchronous client."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        request = health_pb2.HealthCheckRequest()
        for _ in range(WARMUP):
            stub.Check(request, timeout=5)
        times = []
        for _ in range(calls):
            started = time.perf_counter()
            stub.Check(request, timeout=5)
            times.append((time.perf_counter() - started) * 1000)
    return _percentiles(times)


async def _time_calls_aio(port: int, calls: int) -> dict[str, float]:
    """Milliseconds per Check from a grpc.aio client (as benchmarks.run's queries are timed)."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        request = health_pb2.HealthCheckRequest()
        for _ in range(WARMUP):
            await stub.Check(request, timeout=5)
        times = []
        for _ in range(calls):
            started = time.perf_counter()
            await stub.Check(request, timeout=5)
            times.append((time.perf_counter() - started) * 1000)
    return _percentiles(times)


def _both_clients(port: int, calls: int) -> dict[str, dict[str, float]]:
    return {"sync": _time_calls(port, calls), "aio": asyncio.run(_time_calls_aio(port, calls))}


def measure(calls: int) -> dict[str, dict[str, dict[str, float]]]:
    """{server: {client: {p50, p99}}} for every server that can run here."""
    results = {}
    for kind in ("sync", "aio"):
        ports, stop = multiprocessing.Queue(), multiprocessing.Event()
        server = multiprocessing.Process(target=_serve, args=(kind, ports, stop), daemon=True)
        server.start()
        try:
            results[kind] = _both_clients(ports.get(timeout=30), calls)
        finally:
            stop.set()
            server.join(timeout=10)
    go = BIN_DIR / "rpcfloor"
    if go.exists():  # built by benchmarks/setup.sh
        with subprocess.Popen([str(go)], stdout=subprocess.PIPE, text=True) as process:
            try:
                assert process.stdout is not None
                results["go"] = _both_clients(int(process.stdout.readline()), calls)
            finally:
                process.kill()
    return results


def render(r: dict[str, dict[str, dict[str, float]]], calls: int) -> str:
    rows = [
        SECTION,
        "",
        f"`python -m benchmarks.rpc_floor --docs` ({machine()}): a health Check, which does nothing, "
        f"{calls:,} calls on loopback from a synchronous and from a grpc.aio client (benchmarks.run times "
        "queries at a grpc.aio client), each server in its own process, same run.",
        "",
        "| server | p50, sync client | p99 | p50, grpc.aio client | p99 |",
        "|---|---|---|---|---|",
    ]
    for kind, label in (
        ("sync", "grpcio, synchronous thread pool"),
        ("aio", "grpc.aio (what the services run)"),
        ("go", "grpc-go 1.84 (benchmarks/rpcfloor: a compiled server)"),
    ):
        if kind in r:
            s, a = r[kind]["sync"], r[kind]["aio"]
            rows.append(
                f"| {label} | {s['p50']:.2f} ms | {s['p99']:.2f} ms | {a['p50']:.2f} ms | {a['p99']:.2f} ms |"
            )
    rows += [
        "",
        "Every query of ours pays at least the grpc.aio row before it does any work, so no query can "
        "answer faster than that at the gRPC client.",
    ]
    if "go" in r:
        ratio = r["go"]["aio"]["p50"] / r["aio"]["aio"]["p50"]
        rows.append(
            f"A compiled server answers the same call at the same grpc.aio client in {ratio:.2f}x "
            "the time grpc.aio's Python server takes."
        )
    rows.append("")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=3000)
    add_docs_flag(parser)
    args = parser.parse_args()
    results = measure(args.calls)
    publish(SECTION, render(results, args.calls), args.docs, results, "rpc_floor")


if __name__ == "__main__":
    main()
