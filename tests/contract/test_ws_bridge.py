"""The bridge's /health aggregates every service: 200 when all serve, 503 naming the one down."""

import aiohttp

from gateway.ws_bridge import start_bridge
from libs.config import load_settings
from tests.helpers import free_port


async def _health() -> tuple[int, dict]:
    """GET /health from a bridge started with the current environment."""
    runner, bridge, port = await start_bridge(load_settings(), port=0)
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{port}/health") as reply,
        ):
            return reply.status, await reply.json()
    finally:
        await runner.cleanup()
        await bridge.close()


async def test_health_is_200_when_every_service_serves(server, monkeypatch):
    monkeypatch.setenv("GRPC_PORT", str(server.port))
    status, body = await _health()
    assert status == 200
    assert body["services"]["ml"] == "SERVING"


async def test_health_is_503_naming_the_service_that_is_down(server, monkeypatch):
    monkeypatch.setenv("GRPC_PORT", str(server.port))
    monkeypatch.setenv("ML_ADDRESS", f"127.0.0.1:{free_port()}")  # nothing listens there
    status, body = await _health()
    assert status == 503
    assert body["status"] == "NOT_SERVING"
    assert body["services"]["ml"] == "UNREACHABLE (UNAVAILABLE)"
    assert body["services"]["query-router"] == "SERVING"


async def test_health_is_503_while_services_drain(server, monkeypatch):
    monkeypatch.setenv("GRPC_PORT", str(server.port))
    await server.health.enter_graceful_shutdown()
    status, body = await _health()
    assert status == 503
    assert set(body["services"].values()) == {"NOT_SERVING", "SERVING"}
