"""Runs one service, or all of them in one process, until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import gc
import importlib
import logging
import signal
from collections.abc import Callable

from libs.config import SERVICE_NAMES, Settings, service_info
from libs.grpc_server import RunningServer, ServiceBinding, start_server
from libs.memory import trim_heap_periodically
from libs.selfmetrics_writer import SelfMetricsWriter, process_labels
from services.context import ServiceContext

log = logging.getLogger(__name__)

GC_YOUNG_THRESHOLD = 50_000
"""Allocations between young collections (CPython's default is 700)."""


def binder(name: str) -> Callable[[ServiceContext], ServiceBinding]:
    """The `binding` function of a service of libs.config.SERVICES: its package services/<ident>/."""
    return importlib.import_module(f"services.{service_info(name).ident}").binding


async def until_stop_signal() -> None:
    """Return on SIGTERM or SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


async def start_services(
    names: list[str], settings: Settings, port: int, context: ServiceContext | None = None
) -> RunningServer:
    """Open the shared resources, then start a gRPC server hosting the named services on `port`
    (0 picks one). Stopping the server flushes the store. A caller that passes `context` can
    share it (mode all gives its bus and stream hub to the ws bridge)."""
    context = context or ServiceContext(settings, hosted=tuple(names))
    bindings = [binder(name)(context) for name in names]
    await context.start()
    # A JSON body's numbers can grow up to 4x as protobuf doubles ("1," is 2 bytes, a double 8), so
    # gRPC messages may be 4x the gateway's REST body limit, which Envoy enforces itself.
    stops = tuple(b.stop for b in bindings if b.stop is not None)
    writer = SelfMetricsWriter(
        context.metrics,
        lambda: context.address_of("realtime"),
        lambda: process_labels(context.hosted, context.local_port),
        settings.self_metrics_interval_seconds,
        4 * settings.max_request_bytes,
    )
    running = await start_server(
        bindings,
        settings.bind_host,
        port,
        4 * settings.max_request_bytes,
        on_stop=(writer.stop, *stops, context.close),
        auth_mode=settings.auth_mode,
        limits=context.limits,
    )
    context.local_port = running.port
    for b in bindings:
        if b.start is not None:
            await b.start()
    await writer.start()
    return running


async def serve(target: str, settings: Settings, with_demo: bool = False) -> None:
    """Serve `target` ("all" or one service name) until a stop signal, then stop gracefully.

    With `all` the ws bridge runs in the same process; `with_demo` also feeds the simulated
    platform through the public ingest API.
    """
    names = list(SERVICE_NAMES) if target == "all" else [target]
    port = settings.grpc_bind_port if target == "all" else settings.port_for(target)
    # One context for the process: in mode all the bridge serves the same stream hub, on the same
    # in-process bus, with the same self-metrics, as the services.
    context = ServiceContext(settings, hosted=tuple(names))
    server = await start_services(names, settings, port, context=context)
    bridge_runner = bridge = None
    if target == "all":
        from gateway.ws_bridge import start_bridge

        bridge_runner, bridge, _ = await start_bridge(settings, context=context)
    demo_stop = asyncio.Event()
    demo = None
    if with_demo:
        from services.demo.feed import run_feed

        demo = asyncio.create_task(
            run_feed(f"127.0.0.1:{server.port}", stop=demo_stop, machines=True), name="demo-feed"
        )

    # What start-up allocated (modules, protobuf descriptors, models) lives as long as the process:
    # out of the cyclic collector's sight, full collections stay short on the live path. A larger
    # young generation lets the live path's short-lived objects (frames, batches, requests) die
    # before a collection promotes them, so full collections come less often.
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])
    # Freed heap pages go back to the system every few seconds (libs/memory.py).
    trimmer = asyncio.create_task(trim_heap_periodically(), name="heap-trim")
    log.info("serving", extra={"target": target, "grpc_port": server.port})
    await until_stop_signal()

    log.info("stopping", extra={"grace_s": settings.shutdown_grace_seconds})
    trimmer.cancel()
    await asyncio.gather(trimmer, return_exceptions=True)
    if demo is not None:
        demo_stop.set()
        await asyncio.gather(demo, return_exceptions=True)
    if bridge_runner is not None:
        await bridge_runner.cleanup()
        await bridge.close()
    await server.stop(settings.shutdown_grace_seconds)
    log.info("stopped")


async def serve_bridge(settings: Settings) -> None:
    """Serve the WebSocket bridge and /health alone (distributed mode) until a stop signal."""
    from gateway.ws_bridge import start_bridge

    # The bridge's own context hosts no service; its hub follows the bus (Pulsar when PULSAR_URL is
    # set), so frames from every replica of distributed mode arrive as they do in mode all.
    context = ServiceContext(settings)
    await context.start()
    runner, bridge, port = await start_bridge(settings, context=context)
    # The bridge's self-metrics (WebSocket connections, frames) go into analytics_self too.
    writer = SelfMetricsWriter(
        context.metrics,
        lambda: context.address_of("realtime"),
        lambda: process_labels(["bridge"], port),
        settings.self_metrics_interval_seconds,
        4 * settings.max_request_bytes,
    )
    await writer.start()
    await until_stop_signal()
    await writer.stop()
    await runner.cleanup()
    await bridge.close()
    await context.close()


async def serve_demo(target: str) -> None:
    """Feed the simulated platform to the RealtimeService at `target` until a stop signal."""
    from services.demo.feed import run_feed

    stop = asyncio.Event()
    waiter = asyncio.create_task(until_stop_signal())
    waiter.add_done_callback(lambda _: stop.set())
    try:
        await run_feed(target, stop=stop, machines=True)
    finally:
        waiter.cancel()
