"""The floor of one Python gRPC call: what no query of ours can go under at the gRPC client.

    .venv/bin/python -m benchmarks.rpc_floor [--docs] [--calls 3000]

The stock health service's Check (no work at all) answered by grpcio's synchronous thread-pool
server and by grpc.aio (what the services run), each in a process of its own on loopback, timed at a
synchronous client in this process, in the same run. Issue 11's single-groupby-1-1-1 target is
VictoriaMetrics' p50 (under a millisecond): this says how much of that a Python server spends
before it does anything.
"""

from __future__ import annotations

import argparse
import multiprocessing
import time
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

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


def _time_calls(port: int, calls: int) -> dict[str, float]:
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
    times.sort()
    return {"p50": times[len(times) // 2], "p99": times[int(len(times) * 0.99)]}


def measure(calls: int) -> dict[str, dict[str, float]]:
    results = {}
    for kind in ("sync", "aio"):
        ports, stop = multiprocessing.Queue(), multiprocessing.Event()
        server = multiprocessing.Process(target=_serve, args=(kind, ports, stop), daemon=True)
        server.start()
        try:
            results[kind] = _time_calls(ports.get(timeout=30), calls)
        finally:
            stop.set()
            server.join(timeout=10)
    return results


def render(r: dict[str, dict[str, float]], calls: int) -> str:
    rows = [
        SECTION,
        "",
        f"`python -m benchmarks.rpc_floor --docs` ({machine()}): a health Check, which does nothing, "
        f"{calls:,} calls from a synchronous client on loopback, each server in its own process, same run.",
        "",
        "| server | p50 | p99 |",
        "|---|---|---|",
    ]
    for kind, label in (
        ("sync", "grpcio, synchronous thread pool"),
        ("aio", "grpc.aio (what the services run)"),
    ):
        rows.append(f"| {label} | {r[kind]['p50']:.2f} ms | {r[kind]['p99']:.2f} ms |")
    rows += [
        "",
        "Every query of ours pays at least this before it does any work, so no query can answer faster "
        "than this at the gRPC client. The synchronous server is no faster than aio.",
        "",
    ]
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
