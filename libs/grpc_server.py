"""The gRPC server every service runs in: the interceptor (identity, scopes, per-tenant limits,
errors to statuses), health per service, reflection."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from grpc import aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from libs.interceptor import ExceptionToStatusInterceptor
from libs.limits import TenantLimits

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServiceBinding:
    """One service ready to be added to a server: its short name, proto name and registrar."""

    name: str
    full_name: str
    register: Callable[[aio.Server], None]
    start: Callable[[], Awaitable[None]] | None = None
    """Background work to start once the process's shared resources are open."""
    stop: Callable[[], Awaitable[None]] | None = None
    """Stops that work; runs after the server has stopped, before shared resources close."""


@dataclass
class RunningServer:
    """A started server with the port it bound and the health servicer to flip on shutdown."""

    server: aio.Server
    health: health.aio.HealthServicer
    port: int
    bindings: tuple[ServiceBinding, ...]
    on_stop: tuple[Callable[[], Awaitable[None]], ...] = ()

    async def stop(self, grace: float) -> None:
        """Report NOT_SERVING, let in-flight calls finish for `grace` seconds, then stop."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)
        for callback in self.on_stop:
            await callback()


async def start_server(
    bindings: list[ServiceBinding],
    host: str,
    port: int,
    max_message_bytes: int,
    on_stop: tuple[Callable[[], Awaitable[None]], ...] = (),
    auth_mode: str = "none",
    limits: TenantLimits | None = None,
) -> RunningServer:
    """Start a grpc.aio server hosting `bindings`; port 0 picks a free port. `on_stop` callbacks
    run after the server has stopped (to flush and close shared resources). `auth_mode` (AUTH_MODE)
    says whether a call without the gateway's identity headers is refused (libs/identity.py);
    `limits` are the process's per-tenant limits (libs/limits.py; none when not given)."""
    server = aio.server(
        interceptors=[ExceptionToStatusInterceptor(auth_mode, limits)],
        options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.so_reuseport", 0),
        ],
    )
    for binding in bindings:
        binding.register(server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = [b.full_name for b in bindings]
    reflection.enable_server_reflection(
        [*names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME],
        server,
    )
    bound = server.add_insecure_port(f"{host}:{port}")
    await server.start()
    for name in ["", *names]:
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    log.info("grpc server listening", extra={"address": f"{host}:{bound}", "services": names})
    return RunningServer(server, health_servicer, bound, tuple(bindings), tuple(on_stop))
