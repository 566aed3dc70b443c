"""Per-tenant limits through the real Envoy with real tokens: a tenant over its rate gets 429 with
Retry-After while another tenant is served; a tenant at its stream limit gets 429 before the
upgrade; refusals are counted."""

from __future__ import annotations

import asyncio
import time
import urllib.error
import urllib.request

import aiohttp
import pytest

from tests.e2e.conftest import running_stack, stack_env
from tests.e2e.test_auth import AUDIENCE, ISSUER, Signer, call

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def limited(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("limits") / "data"
    signer = Signer(data_dir)
    env = stack_env(
        data_dir,
        AUTH_MODE="jwt",
        AUTH_AUDIENCES=AUDIENCE,
        AUTH_ISSUER=ISSUER,
        DEMO="0",
        SELF_METRICS_INTERVAL_SECONDS="0",
        TENANT_RATE_LIMIT="0.5",
        TENANT_RATE_BURST="5",
        TENANT_MAX_STREAMS="1",
    )
    with (data_dir / "stack.log").open("w") as log, running_stack(env, log) as stack:
        yield stack, signer


def test_a_tenant_over_its_rate_gets_429_with_retry_after_and_others_are_served(limited):
    stack, signer = limited
    greedy, other = signer.token("greedy"), signer.token("other")
    answers = [call(stack.base, "GET", "/api/v1/analytics/capabilities", token=greedy) for _ in range(8)]
    statuses = [status for status, _ in answers]
    assert statuses[:5] == [200] * 5 and 429 in statuses[5:], statuses
    refused = next(reply for status, reply in answers if status == 429)
    assert "tenant 'greedy' is over its 0.5 requests/s (TENANT_RATE_LIMIT)" in refused["message"]
    assert call(stack.base, "GET", "/api/v1/analytics/capabilities", token=other)[0] == 200

    request = urllib.request.Request(
        stack.base + "/api/v1/analytics/capabilities", headers={"authorization": f"Bearer {greedy}"}
    )
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(request, timeout=10)
    assert err.value.code == 429 and int(err.value.headers["retry-after"]) >= 1
    # Counted in the self-metrics (the export of the service's own metrics needs admin).
    export = urllib.request.Request(
        stack.base + "/api/v1/export/prometheus",
        headers={"authorization": f"Bearer {signer.token('ops', 'admin')}"},
    )
    with urllib.request.urlopen(export, timeout=10) as reply:
        text = reply.read().decode()
    counted = [
        line
        for line in text.splitlines()
        if line.startswith("analytics_tenant_refusals_total{") and 'limit="rate"' in line
    ]
    assert counted and float(counted[0].rsplit(" ", 1)[1]) >= 2, counted


async def test_a_tenant_at_its_stream_limit_is_refused_before_the_upgrade(limited):
    stack, signer = limited
    first, second = signer.token("streamer"), signer.token("someone-else")
    url = f"ws://127.0.0.1:{stack.gateway_port}/api/v1/ws/anomalies/all?access_token="
    async with aiohttp.ClientSession() as session:
        held = await session.ws_connect(url + first)
        assert (await held.receive_json(timeout=10))["type"] == "hello"
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await session.ws_connect(url + first)
        assert refused.value.status == 429
        other = await session.ws_connect(url + second)  # another tenant is not affected
        assert (await other.receive_json(timeout=10))["type"] == "hello"
        await other.close()
        await held.close()
    # Its slot is free again once the server has seen the first stream close.
    deadline = time.monotonic() + 10
    async with aiohttp.ClientSession() as session:
        while True:
            try:
                again = await session.ws_connect(url + first)
                break
            except aiohttp.WSServerHandshakeError as still:
                assert still.status == 429 and time.monotonic() < deadline
                await asyncio.sleep(0.1)
        assert (await again.receive_json(timeout=10))["type"] == "hello"
        await again.close()
