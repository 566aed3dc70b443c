import pytest_asyncio
from grpc import aio

from libs.config import SERVICE_NAMES, load_settings
from services.runner import start_services


@pytest_asyncio.fixture
async def server(tmp_path, monkeypatch):
    """All four services on a real grpc.aio server bound to a free loopback port."""
    monkeypatch.setenv("DATA_DIR", str(tmp_path))
    running = await start_services(list(SERVICE_NAMES), load_settings(), 0)
    yield running
    await running.stop(0)


@pytest_asyncio.fixture
async def channel(server):
    async with aio.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        yield ch
