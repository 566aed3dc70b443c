"""The WebSocket bridge behind Envoy: /api/v1/ws/{stream_type}/{stream_id} and GET /health.

Until live streams are built, a WebSocket gets a hello frame and then heartbeats.
"""

from __future__ import annotations

import asyncio
import logging
import time

import grpc
from aiohttp import WSMsgType, web
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from libs.config import SERVICE_NAMES, Settings
from services.realtime.servicer import STREAM_TYPES

log = logging.getLogger(__name__)

# Proto service name each short service name reports its health under.
HEALTH_NAMES = {
    "query-router": "platformq.analytics.v1.QueryService",
    "realtime": "platformq.analytics.v1.RealtimeService",
    "ml": "platformq.analytics.v1.MLService",
    "monitoring": "platformq.analytics.v1.MonitoringService",
}


def _now_ms() -> int:
    return int(time.time() * 1000)


class WsBridge:
    """Serves WebSocket streams and the aggregated health of every service."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._channels: dict[str, aio.Channel] = {}
        self.connections = 0

    def _channel(self, address: str) -> aio.Channel:
        if address not in self._channels:
            self._channels[address] = aio.insecure_channel(address)
        return self._channels[address]

    async def _status_of(self, service: str) -> str:
        # A replicated service (comma-separated addresses) is up when its first replica answers.
        address = self.settings.address_of(service).split(",")[0].strip()
        stub = health_pb2_grpc.HealthStub(self._channel(address))
        try:
            reply = await stub.Check(health_pb2.HealthCheckRequest(service=HEALTH_NAMES[service]), timeout=2)
        except grpc.RpcError as exc:
            return f"UNREACHABLE ({exc.code().name})"
        return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)

    async def health(self, request: web.Request) -> web.Response:
        """200 with every service's status when all serve, 503 otherwise."""
        statuses = await asyncio.gather(*(self._status_of(s) for s in SERVICE_NAMES))
        services = dict(zip(SERVICE_NAMES, statuses, strict=True))
        services["ws-bridge"] = "SERVING"
        healthy = all(s == "SERVING" for s in services.values())
        body = {"status": "SERVING" if healthy else "NOT_SERVING", "services": services}
        return web.json_response(body, status=200 if healthy else 503)

    async def stream(self, request: web.Request) -> web.StreamResponse:
        """Upgrade to a WebSocket, send a hello frame, then heartbeats until the client leaves."""
        stream_type = request.match_info["stream_type"]
        stream_id = request.match_info["stream_id"]
        if stream_type not in STREAM_TYPES:
            return web.json_response(
                {
                    "code": 404,
                    "message": f"stream_type: {stream_type!r} is not one of {', '.join(STREAM_TYPES)}",
                },
                status=404,
            )
        ws = web.WebSocketResponse(heartbeat=None)
        await ws.prepare(request)
        self.connections += 1
        period = self.settings.ws_heartbeat_seconds
        try:
            await ws.send_json(
                {
                    "type": "hello",
                    "stream_type": stream_type,
                    "stream_id": stream_id,
                    "server_time_ms": _now_ms(),
                    "heartbeat_interval_s": period,
                    "updates": "live updates are not built yet; this stream sends heartbeats only",
                }
            )
            while not ws.closed:
                try:
                    msg = await ws.receive(timeout=period)
                except TimeoutError:
                    await ws.send_json({"type": "heartbeat", "server_time_ms": _now_ms()})
                    continue
                if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
                    break
        except ConnectionResetError:
            log.info("websocket client went away", extra={"stream_type": stream_type, "stream_id": stream_id})
        finally:
            self.connections -= 1
        return ws

    def app(self) -> web.Application:
        """The aiohttp application with both routes."""
        application = web.Application()
        application.router.add_get("/health", self.health)
        application.router.add_get("/api/v1/ws/{stream_type}/{stream_id}", self.stream)
        return application

    async def close(self) -> None:
        """Close the health-check channels."""
        for channel in self._channels.values():
            await channel.close()


async def start_bridge(settings: Settings, port: int | None = None) -> tuple[web.AppRunner, WsBridge, int]:
    """Start the bridge on BIND_HOST:WS_BRIDGE_PORT (or `port`); returns the runner and bound port."""
    bridge = WsBridge(settings)
    runner = web.AppRunner(bridge.app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, settings.bind_host, settings.ws_bridge_port if port is None else port)
    await site.start()
    bound = site._server.sockets[0].getsockname()[1]  # aiohttp exposes no public accessor
    log.info("ws bridge listening", extra={"address": f"{settings.bind_host}:{bound}"})
    return runner, bridge, bound
