"""gRPC channels to the other services of the mesh, one per address, and their health.

Used by every component that calls a peer (the ws bridge, the monitoring reader, the stream hub,
the self-metrics writer): channels are opened on first use, since in mode all the peers are this
process, on a port known only once the server has started."""

from __future__ import annotations

import asyncio

from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from libs.config import SERVICES

HEALTH_NAMES = {s.name: s.full_name for s in SERVICES}
"""The proto service name each service reports its health under."""


def replicas(addresses: str) -> list[str]:
    """The addresses of a service's setting (comma-separated for replicas)."""
    return [a.strip() for a in addresses.split(",") if a.strip()]


class PeerChannels:
    """Lazily opened channels to peer addresses, closed together."""

    def __init__(self, max_message_bytes: int | None = None) -> None:
        self._options = (
            []
            if max_message_bytes is None
            else [
                ("grpc.max_receive_message_length", max_message_bytes),
                ("grpc.max_send_message_length", max_message_bytes),
            ]
        )
        self._channels: dict[str, aio.Channel] = {}

    def to(self, address: str) -> aio.Channel:
        """The channel to `address` (host:port), opened on first use."""
        if address not in self._channels:
            self._channels[address] = aio.insecure_channel(address, options=self._options)
        return self._channels[address]

    async def health(self, service: str, addresses: str, timeout: float = 2.0) -> dict[str, str]:
        """The gRPC health status of each replica of `service`, by address: "SERVING",
        "NOT_SERVING", ..., or "UNREACHABLE (<code>)" when it does not answer within `timeout`."""
        found = replicas(addresses)
        statuses = await asyncio.gather(*(self._status(service, a, timeout) for a in found))
        return dict(zip(found, statuses, strict=True))

    async def _status(self, service: str, address: str, timeout: float) -> str:
        stub = health_pb2_grpc.HealthStub(self.to(address))
        try:
            reply = await stub.Check(
                health_pb2.HealthCheckRequest(service=HEALTH_NAMES[service]), timeout=timeout
            )
        except aio.AioRpcError as exc:
            return f"UNREACHABLE ({exc.code().name})"
        return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)

    async def close(self) -> None:
        """Close every channel."""
        channels, self._channels = self._channels, {}
        for channel in channels.values():
            await channel.close()
