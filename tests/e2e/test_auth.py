"""Authentication at the real Envoy (AUTH_MODE=jwt): tokens signed by a key this module makes, on REST,
native gRPC and the WebSocket upgrade; refused tokens are a 401 with the reason and touch nothing;
/health and the console stay open; a caller's own identity headers never reach a service, in either
mode; the start-up refusal of an open, unauthenticated gateway; `analytics token`."""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import aiohttp
import grpc
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from libs.auth_keys import dev_keys, key_id
from platformq.analytics.v1 import query_service_pb2, query_service_pb2_grpc
from tests.e2e.conftest import ANALYTICS, running_stack, stack_env
from tests.helpers import REPO_ROOT

pytestmark = pytest.mark.e2e

AUDIENCE = "platformq-analytics"
ISSUER = "https://issuer.test"


def call(
    base: str,
    method: str,
    path: str,
    body: dict | None = None,
    token: str | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict]:
    """An HTTP call through the gateway; its status and JSON body."""
    request = urllib.request.Request(
        base + path,
        data=json.dumps(body).encode() if body is not None else None,
        method=method,
        headers={"content-type": "application/json", **(headers or {})},
    )
    if token is not None:
        request.add_header("authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return reply.status, json.loads(reply.read() or b"{}")
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


def ingest_body(metric: str) -> dict:
    return {"points": [{"name": metric, "value": 7.5, "timestamp_ms": int(time.time() * 1000)}]}


def stored_count(base: str, metric: str, token: str | None) -> int:
    """How many points of `metric` the caller's tenant holds (SQL over its own views)."""
    status, reply = call(
        base,
        "POST",
        "/api/v1/query",
        {"sql": "SELECT count(*) AS n FROM metrics WHERE metric = ?", "params": [metric]},
        token,
    )
    assert status == 200, reply
    return reply["rows"][0][0]


class Signer:
    """The module's signing key, written where `make up` keeps the development key pair (so the
    launcher makes its JWKS and Envoy uses it with AUTH_JWKS unset)."""

    def __init__(self, data_dir: Path) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        path = dev_keys(data_dir).private_key
        path.parent.mkdir(parents=True)
        path.write_bytes(
            self.key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        path.chmod(0o600)

    def token(self, tenant: str = "acme", scopes: str = "read write", **changes: object) -> str:
        return jwt.encode(
            claims(tenant, scopes, **changes),
            self.key,
            algorithm="RS256",
            headers={"kid": key_id(self.key.public_key())},
        )


def claims(tenant: str = "acme", scopes: str = "read write", **changes: object) -> dict[str, object]:
    """A token's claims as the module's gateway expects them (valid for 10 minutes), with `changes`."""
    return {
        "tenant": tenant,
        "scope": scopes,
        "aud": AUDIENCE,
        "iss": ISSUER,
        "exp": int(time.time()) + 600,
        **changes,
    }


@pytest.fixture(scope="module")
def authed(tmp_path_factory):
    """A stack with AUTH_MODE=jwt whose gateway trusts the module's key; yields (stack, signer)."""
    data_dir = tmp_path_factory.mktemp("auth") / "data"
    signer = Signer(data_dir)
    env = stack_env(
        data_dir, AUTH_MODE="jwt", AUTH_AUDIENCES=f"{AUDIENCE},other", AUTH_ISSUER=ISSUER, DEMO="0"
    )
    with (data_dir / "stack.log").open("w") as log, running_stack(env, log) as stack:
        yield stack, signer


def test_a_valid_token_is_served_on_rest_and_native_grpc(authed):
    stack, signer = authed
    token = signer.token()
    status, reply = call(stack.base, "GET", "/api/v1/analytics/capabilities", token=token)
    assert status == 200 and "engines" in reply, reply
    with grpc.insecure_channel(f"127.0.0.1:{stack.gateway_port}") as channel:
        refused = grpc_serves_only_with(channel, token)
    assert "Jwt is missing" in refused.details()


def grpc_serves_only_with(channel: grpc.Channel, token: str) -> grpc.RpcError:
    """GetCapabilities answers on `channel` with `token` and is UNAUTHENTICATED without; returns that refusal."""
    stub = query_service_pb2_grpc.QueryServiceStub(channel)
    request = query_service_pb2.GetCapabilitiesRequest()
    answer = stub.GetCapabilities(request, metadata=[("authorization", f"Bearer {token}")], timeout=10)
    assert "hot" in answer.engines
    with pytest.raises(grpc.RpcError) as refused:
        stub.GetCapabilities(request, timeout=10)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    return refused.value


def _wrong_key_token() -> str:
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return jwt.encode(claims(scopes="write"), stranger, algorithm="RS256")


def _unsigned_token() -> str:
    return jwt.encode(claims(scopes="write"), None, algorithm="none")


REFUSED = {
    "missing": (lambda s: None, "Jwt is missing"),
    "expired": (lambda s: s.token(exp=int(time.time()) - 600), "Jwt is expired"),
    "wrong signature": (lambda s: _wrong_key_token(), "Jwt verification fails"),
    "wrong audience": (lambda s: s.token(aud="someone-else"), "Audiences in Jwt are not allowed"),
    "wrong issuer": (lambda s: s.token(iss="https://elsewhere.test"), "Jwt issuer is not configured"),
    "alg none": (lambda s: _unsigned_token(), "Jwt is not in the form of Header.Payload.Signature"),
    "garbage": (lambda s: "not-a-token", "Jwt is not in the form of Header.Payload.Signature"),
}


@pytest.mark.parametrize("case", REFUSED)
def test_a_refused_token_is_a_401_naming_why_and_stores_nothing(authed, case):
    stack, signer = authed
    make_token, reason = REFUSED[case]
    metric = f"refused_{uuid.uuid4().hex[:8]}"
    status, reply = call(
        stack.base, "POST", "/api/v1/metrics/ingest", ingest_body(metric), make_token(signer)
    )
    assert (status, reply["code"]) == (401, 401), reply
    assert reply["message"].startswith(reason), reply
    assert stored_count(stack.base, metric, signer.token()) == 0


def test_other_gateway_refusals_keep_their_status_with_a_valid_token(authed):
    """Only token refusals become 401: an unknown path stays a 404, a bad body a 400."""
    stack, signer = authed
    status, reply = call(stack.base, "GET", "/api/v1/nothing-here", token=signer.token())
    assert (status, reply["code"]) == (404, 404), reply
    status, reply = call(stack.base, "POST", "/api/v1/query", {"metrics": 5}, signer.token())
    assert status == 400 and "metrics" in reply["message"], reply


def test_health_and_the_console_need_no_token(authed):
    stack, _ = authed
    assert call(stack.base, "GET", "/health")[0] == 200
    with urllib.request.urlopen(stack.base + "/", timeout=10) as page:
        assert page.status == 200 and b"<html" in page.read().lower()


def test_the_tenant_and_scopes_come_from_the_token_not_from_the_callers_headers(authed):
    stack, signer = authed
    metric = f"forged_{uuid.uuid4().hex[:8]}"
    forged = {"x-platformq-tenant": "victim", "x-platformq-scopes": "read write admin"}
    status, reply = call(
        stack.base, "POST", "/api/v1/metrics/ingest", ingest_body(metric), signer.token(), forged
    )
    assert status == 200, reply
    assert stored_count(stack.base, metric, signer.token("acme")) == 1
    assert stored_count(stack.base, metric, signer.token("victim")) == 0
    # A read-only token stays read-only whatever scopes the caller claims beside it.
    status, reply = call(
        stack.base, "POST", "/api/v1/metrics/ingest", ingest_body(metric), signer.token(scopes="read"), forged
    )
    assert status == 403 and "write" in reply["message"], reply
    assert stored_count(stack.base, metric, signer.token("acme")) == 1


def test_a_token_without_the_tenant_claim_is_refused(authed):
    stack, signer = authed
    token = signer.token()
    claims = jwt.decode(token, options={"verify_signature": False})
    del claims["tenant"]
    untenanted = jwt.encode(
        claims, signer.key, algorithm="RS256", headers={"kid": key_id(signer.key.public_key())}
    )
    status, reply = call(stack.base, "GET", "/api/v1/analytics/capabilities", token=untenanted)
    assert status == 401, reply


def test_scopes_given_as_a_json_list_are_honoured(authed):
    stack, signer = authed
    metric = f"listed_{uuid.uuid4().hex[:8]}"
    token = signer.token(scope=["read", "write"])
    status, reply = call(stack.base, "POST", "/api/v1/metrics/ingest", ingest_body(metric), token)
    assert status == 200, reply
    assert stored_count(stack.base, metric, token) == 1


def test_an_es256_token_verifies_against_an_ec_key_in_the_jwks(tmp_path):
    """ES256 as well as RS256: a JWKS file given by AUTH_JWKS holding an EC P-256 key."""
    key = ec.generate_private_key(ec.SECP256R1())
    jwk = {**json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key())), "kid": "ec-1", "alg": "ES256"}
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [jwk]}))
    env = stack_env(tmp_path / "data", AUTH_MODE="jwt", AUTH_JWKS=str(jwks), DEMO="0")
    token = jwt.encode(
        {"tenant": "acme", "scope": "read", "exp": int(time.time()) + 600},
        key,
        algorithm="ES256",
        headers={"kid": "ec-1"},
    )
    with running_stack(env) as stack:
        assert call(stack.base, "GET", "/api/v1/analytics/capabilities", token=token)[0] == 200
        assert call(stack.base, "GET", "/api/v1/analytics/capabilities")[0] == 401


async def _hello(url: str, headers: dict[str, str] | None = None) -> dict:
    async with aiohttp.ClientSession() as session, session.ws_connect(url, headers=headers) as ws:
        while True:
            frame = await ws.receive_json(timeout=10)
            if frame["type"] != "heartbeat":
                return frame


async def test_the_websocket_upgrade_takes_the_token_in_its_header_or_its_query(authed):
    stack, signer = authed
    token = signer.token()
    metric = f"ws_{uuid.uuid4().hex[:8]}"
    body = {
        "points": [
            {"name": metric, "value": 1.0, "timestamp_ms": int(time.time() * 1000), "labels": {"host": "h1"}}
        ]
    }
    assert call(stack.base, "POST", "/api/v1/metrics/ingest", body, token)[0] == 200
    url = f"ws://127.0.0.1:{stack.gateway_port}/api/v1/ws/metrics/{metric}?host=h1"
    by_header = await _hello(url, {"authorization": f"Bearer {token}"})
    assert by_header["type"] == "hello", by_header
    # A browser cannot set headers on an upgrade: ?access_token=, which Envoy takes out of the query
    # (the stream sees only its own parameters, the same as with the header).
    by_param = await _hello(f"{url}&access_token={token}")
    assert by_param["type"] == "hello" and by_param["request"] == by_header["request"], by_param
    assert "access_token" not in json.dumps(by_param)
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await session.ws_connect(url)
        assert refused.value.status == 401
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await session.ws_connect(f"{url}&access_token={signer.token(exp=int(time.time()) - 600)}")
        assert refused.value.status == 401


def test_refusals_are_counted_in_envoys_stats(authed):
    stack, _ = authed
    admin = f"http://127.0.0.1:{stack.env['ENVOY_ADMIN_PORT']}/stats?filter=jwt_authn.denied&format=json"

    def denied() -> int:
        with urllib.request.urlopen(admin, timeout=5) as reply:
            stats = json.loads(reply.read())["stats"]
        return sum(s["value"] for s in stats if s["name"].endswith("jwt_authn.denied"))

    before = denied()
    assert call(stack.base, "GET", "/api/v1/analytics/capabilities", token="not-a-token")[0] == 401
    assert denied() == before + 1


def test_analytics_token_is_accepted_by_the_gateway(authed):
    """`analytics token` signs with DATA_DIR/auth's key, whose JWKS the gateway uses by default."""
    stack, _ = authed
    minted = subprocess.run(
        [ANALYTICS, "token", "--tenant", "acme", "--scopes", "read", "--audience", AUDIENCE],
        env={**stack.env, "LOG_LEVEL": "ERROR"},
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    token = minted.stdout.strip()
    assert "\n" not in token and token.count(".") == 2
    assert call(stack.base, "GET", "/api/v1/analytics/capabilities", token=token)[0] == 200


def test_a_forged_tenant_header_never_reaches_a_service_without_auth(stack):
    """AUTH_MODE=none (the session's stack): Envoy drops the caller's tenant header, so the points
    land in tenant default."""
    metric = f"forged_none_{uuid.uuid4().hex[:8]}"
    forged = {"x-platformq-tenant": "victim", "x-platformq-scopes": "read"}
    status, reply = call(stack.base, "POST", "/api/v1/metrics/ingest", ingest_body(metric), headers=forged)
    assert status == 200, reply
    assert stored_count(stack.base, metric, None) == 1


@pytest.mark.parametrize("command", [["up"], ["serve", "all"]])
def test_start_up_refuses_an_open_bind_without_auth(tmp_path, command):
    env = {**os.environ, "DATA_DIR": str(tmp_path), "BIND_HOST": "0.0.0.0", "AUTH_MODE": "none"}
    env.pop("AUTH_ALLOW_INSECURE", None)
    refused = subprocess.run(
        [ANALYTICS, *command], env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=60
    )
    assert refused.returncode == 2
    for name in ("BIND_HOST=0.0.0.0", "AUTH_MODE=none", "AUTH_MODE=jwt", "AUTH_ALLOW_INSECURE=1"):
        assert name in refused.stderr, refused.stderr
    assert not (tmp_path / "gateway").exists()  # refused before anything was started or written
