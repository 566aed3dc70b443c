"""The WebSocket bridge behind Envoy: /api/v1/ws/{stream_type}/{stream_id}, GET /health, and the
web console's static files at / and /ui/ (gateway/console.py).

Streams come from the process's stream hub (libs/streams): in mode all the one the services
share, in distributed mode the bridge process's own hub on Pulsar. A connection gets a hello
frame, then its frames (heartbeats while idle); the client may send `{"type": "ping"}` (answered
by a heartbeat) and nothing else: any other frame closes it with code 1003.

A connection streams its caller's tenant only: the identity headers Envoy set on the upgrade
request (libs/identity.py) choose it, and the read scope is needed (401 without an identity in
AUTH_MODE=jwt, 403 without the scope, both before the upgrade), and a tenant already holding
TENANT_MAX_STREAMS streams gets 429 (libs/limits.py). Envoy's own refusal counts join this process's
self-metrics (analytics_gateway_refusals_total).
"""

from __future__ import annotations

import asyncio
import json
import logging

from aiohttp import WSMsgType, web

from gateway.console import ConsoleFiles
from libs.config import SERVICE_NAMES, Settings
from libs.errors import AnalyticsError, InvalidArgument, NotFound
from libs.identity import READ, PermissionDenied, Unauthenticated, identity_from_metadata
from libs.limits import Throttled
from libs.peers import PeerChannels
from libs.streams import STREAM_TYPES, Subscriber, SubscriptionClosed, parse_subscription, request_from_params
from libs.streams.frames import Frame, closing_frame, heartbeat_frame
from libs.streams.spec import StreamSpec
from libs.streams.subscriber import (
    CLOSE_BAD_REQUEST,
    CLOSE_GOING_AWAY,
    CLOSE_NOT_FOUND,
    CLOSE_UNAVAILABLE,
    CLOSE_UNSUPPORTED,
)
from services.context import ServiceContext

log = logging.getLogger(__name__)

# Clients send only tiny control frames; anything larger is refused by aiohttp (close 1009).
MAX_CLIENT_FRAME_BYTES = 4096
MAX_CLOSE_REASON_BYTES = 123  # RFC 6455: a close frame's payload is at most 125 bytes
SEND_DIRECT_BYTES = 64 * 1024  # well under aiohttp's writer_limit: such a send never waits to drain


class WsBridge:
    """Serves WebSocket streams from a stream hub and the aggregated health of every service."""

    def __init__(self, settings: Settings, context: ServiceContext, owns_context: bool = False) -> None:
        self.settings = settings
        self.context = context
        self.hub = context.stream_hub()
        self.metrics = context.metrics
        self._owns_context = owns_context
        self._channels = PeerChannels()
        self._open: set[Subscriber] = set()
        self.console = ConsoleFiles()
        # The gateway's own refusals (Envoy's counters) join this process's self-metrics.
        self.metrics.gateway_refusals.attach(f"127.0.0.1:{settings.envoy_admin_port}")

    @property
    def connections(self) -> int:
        """Open stream connections."""
        return len(self._open)

    async def _status_of(self, service: str) -> str:
        # A replicated service (comma-separated addresses) serves when every replica does: Envoy
        # balances over all of them, so one that is not up yet would fail requests.
        statuses = await self._channels.health(service, self.settings.address_of(service))
        failing = [f"{a}: {st}" for a, st in statuses.items() if st != "SERVING"]
        if not failing:
            return "SERVING"
        return next(iter(statuses.values())) if len(statuses) == 1 else f"NOT_SERVING ({'; '.join(failing)})"

    async def health(self, request: web.Request) -> web.Response:
        """200 with every service's status when all serve, 503 otherwise."""
        statuses = await asyncio.gather(*(self._status_of(s) for s in SERVICE_NAMES))
        services = dict(zip(SERVICE_NAMES, statuses, strict=True))
        services["ws-bridge"] = "SERVING"
        healthy = all(s == "SERVING" for s in services.values())
        body = {"status": "SERVING" if healthy else "NOT_SERVING", "services": services}
        return web.json_response(body, status=200 if healthy else 503)

    async def stream(self, request: web.Request) -> web.StreamResponse:
        """Refuse an unknown stream type (404) or a bad parameter (400) before the upgrade; after
        it, an unknown stream id gets a closing frame; otherwise frames until either side leaves."""
        stream_type = request.match_info["stream_type"]
        stream_id = request.match_info["stream_id"]
        if stream_type not in STREAM_TYPES:
            message = f"stream_type: {stream_type!r} is not one of {', '.join(STREAM_TYPES)}"
            return web.json_response({"code": 404, "message": message}, status=404)
        try:
            # Header names are case-insensitive in HTTP; the identity's are lower case, as in gRPC.
            headers = [(k.lower(), v) for k, v in request.headers.items()]
            identity = identity_from_metadata(headers, self.settings.auth_mode)
            if not identity.allows(READ):
                raise PermissionDenied(f"missing scope '{READ}': streams need it", "scope")
            spec = parse_subscription(
                request_from_params(stream_type, stream_id, request.query.items()), identity.tenant
            )
        except Unauthenticated as exc:
            return web.json_response({"code": 401, "message": exc.message}, status=401)
        except PermissionDenied as exc:
            return web.json_response({"code": 403, "message": exc.message}, status=403)
        except InvalidArgument as exc:
            return web.json_response({"code": 400, "message": exc.message}, status=400)
        try:
            self.context.limits.streams.enter(identity.tenant)
        except Throttled as exc:
            return web.json_response(
                {"code": 429, "message": exc.message},
                status=429,
                headers={"Retry-After": str(exc.retry_after)},
            )
        try:
            return await self._serve(request, spec)
        finally:
            self.context.limits.streams.leave(identity.tenant)

    async def _serve(self, request: web.Request, spec: StreamSpec) -> web.StreamResponse:
        """The upgrade, then the stream's frames until either side leaves."""
        stream_type = spec.stream_type
        # No per-connection compression: every subscriber of a channel gets the same bytes, and
        # deflating them once per client would cost more than the hub itself.
        ws = web.WebSocketResponse(heartbeat=None, max_msg_size=MAX_CLIENT_FRAME_BYTES, compress=False)
        await ws.prepare(request)
        gauge = self.metrics.ws_connections.labels(stream_type)
        gauge.inc()
        try:
            try:
                subscriber = await self.hub.subscribe(spec)
            except AnalyticsError as exc:
                await self._refuse(ws, spec.stream_type, spec.stream_id, exc)
                return ws
            self._open.add(subscriber)
            reader = asyncio.create_task(self._read(ws, subscriber), name="ws-reader")
            try:
                await self._write(request, ws, subscriber)
            finally:
                reader.cancel()
                await asyncio.gather(reader, return_exceptions=True)
                self._open.discard(subscriber)
                self.hub.unsubscribe(subscriber)
        finally:
            gauge.dec()
        return ws

    async def _refuse(
        self, ws: web.WebSocketResponse, stream_type: str, stream_id: str, exc: AnalyticsError
    ) -> None:
        """A closing frame saying why the stream cannot be followed, then the close."""
        if isinstance(exc, NotFound):
            code, kind = CLOSE_NOT_FOUND, "unknown_stream"
        elif isinstance(exc, InvalidArgument):
            code, kind = CLOSE_BAD_REQUEST, "bad_request"
        else:
            code, kind = CLOSE_UNAVAILABLE, "unavailable"
        self.metrics.stream_clients_closed.labels(kind).inc()
        await self._send_closing(ws, closing_frame(stream_type, stream_id, code, exc.message))

    @staticmethod
    async def _send_closing(ws: web.WebSocketResponse, frame: Frame) -> None:
        try:
            await ws.send_str(frame.text)
            reason = frame.body.get("reason", "").encode()[:MAX_CLOSE_REASON_BYTES]
            await ws.close(code=frame.close_code, message=reason)
        except ConnectionResetError:
            pass  # the client left first

    async def _write(self, request: web.Request, ws: web.WebSocketResponse, subscriber: Subscriber) -> None:
        """Send the subscriber's frames (heartbeats when idle) until it ends. A client that does not
        read at all blocks its send: past WS_CLIENT_MAX_LAG_SECONDS its connection is dropped."""
        spec = subscriber.spec
        transport = request.transport
        try:
            while True:
                frame = await subscriber.next()
                if frame.close_code:
                    async with asyncio.timeout(self.settings.ws_client_max_lag_seconds):
                        await self._send_closing(ws, frame)
                    return
                text = frame.text
                # A send can only block once the socket stopped draining (or for a frame larger
                # than aiohttp's write limit); only then is it worth a timer.
                if transport is not None and (
                    transport.get_write_buffer_size() or len(text) > SEND_DIRECT_BYTES
                ):
                    async with asyncio.timeout(self.settings.ws_client_max_lag_seconds):
                        await ws.send_str(text)
                else:
                    await ws.send_str(text)
                subscriber.count_sent()
        except (SubscriptionClosed, ConnectionResetError):
            return
        except TimeoutError:
            self.metrics.stream_clients_closed.labels("lagged").inc()
            log.info("websocket client stopped reading; dropping it", extra={"stream_id": spec.stream_id})
            if request.transport is not None:
                request.transport.abort()

    async def _read(self, ws: web.WebSocketResponse, subscriber: Subscriber) -> None:
        """Answer pings; close on anything else (1003); end the subscription when the client leaves."""
        spec = subscriber.spec
        async for message in ws:
            if message.type == WSMsgType.TEXT:
                reason = _control_problem(message.data)
                if reason is None:
                    subscriber.push_control(heartbeat_frame(spec.stream_type, spec.stream_id))
                    continue
            elif message.type == WSMsgType.BINARY:
                reason = 'binary frames are not accepted; send {"type": "ping"} or nothing'
            else:  # an error (a frame over the size limit): aiohttp has closed the connection
                break
            log.info("websocket client sent garbage; closing it", extra={"stream_id": spec.stream_id})
            subscriber.close(CLOSE_UNSUPPORTED, reason, "bad_frame")
            return
        subscriber.end()

    def app(self) -> web.Application:
        """The aiohttp application: health, the streams and the web console's files."""
        application = web.Application()
        application.router.add_get("/health", self.health)
        application.router.add_get("/api/v1/ws/{stream_type}/{stream_id}", self.stream)
        self.console.add_routes(application)
        application.on_shutdown.append(self._going_away)
        return application

    async def _going_away(self, _: web.Application) -> None:
        # Open streams end with a closing frame (1001) rather than waiting for the shutdown timeout.
        for subscriber in list(self._open):
            subscriber.close(
                CLOSE_GOING_AWAY, "the server is shutting down; reconnect with since", "shutdown"
            )

    async def close(self) -> None:
        """Close the health-check channels (and the context, when the bridge built its own)."""
        await self._channels.close()
        if self._owns_context:
            await self.context.close()


def _control_problem(text: str) -> str | None:
    """None for a valid control frame (`{"type": "ping"}`), else why it is refused."""
    try:
        frame = json.loads(text)
    except ValueError:
        return 'not JSON; the only client frame is {"type": "ping"}'
    if not isinstance(frame, dict) or frame.get("type") != "ping":
        return 'unknown control frame; the only client frame is {"type": "ping"}'
    return None


async def start_bridge(
    settings: Settings, port: int | None = None, context: ServiceContext | None = None
) -> tuple[web.AppRunner, WsBridge, int]:
    """Start the bridge on BIND_HOST:WS_BRIDGE_PORT (or `port`; 0 picks one) serving the streams of
    `context`'s hub (without one, the bridge builds and later closes its own context: its bus is
    Pulsar when PULSAR_URL is set); returns the runner, the bridge and the bound port."""
    owns = context is None
    bridge = WsBridge(settings, context or ServiceContext(settings), owns_context=owns)
    runner = web.AppRunner(bridge.app(), access_log=None, shutdown_timeout=settings.shutdown_grace_seconds)
    await runner.setup()
    site = web.TCPSite(runner, settings.bind_host, settings.ws_bridge_port if port is None else port)
    await site.start()
    bound = runner.addresses[0][1]
    log.info("ws bridge listening", extra={"address": f"{settings.bind_host}:{bound}"})
    return runner, bridge, bound
