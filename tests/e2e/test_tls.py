"""TLS at the real Envoy (TLS_CERT/TLS_KEY) with a certificate this module makes: HTTPS REST, native
gRPC over TLS (HTTP/2 chosen by ALPN) and WebSocket over TLS on the one port, with AUTH_MODE=jwt
whose JWKS Envoy fetches from a URL (AUTH_JWKS=http://...)."""

from __future__ import annotations

import datetime
import ipaddress
import json
import socket
import ssl
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import aiohttp
import grpc
import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from libs.auth_keys import key_id, public_jwks
from tests.e2e.conftest import running_stack, stack_env
from tests.e2e.test_auth import grpc_serves_only_with

pytestmark = pytest.mark.e2e


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_certificates(folder: Path) -> tuple[Path, Path, bytes]:
    """A test CA and a server certificate it signs for localhost and 127.0.0.1: (cert, key, CA PEM)."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("platformQ test CA"))
        .issuer_name(_name("platformQ test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("localhost"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    cert_path, key_path = folder / "server.pem", folder / "server.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path, ca.public_bytes(serialization.Encoding.PEM)


@contextmanager
def serving_jwks(jwks: dict) -> Iterator[str]:
    """A JWKS served over HTTP on loopback (an identity provider's endpoint); yields its URL."""
    body = json.dumps(jwks).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            return  # keep the test output to the test's own

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/.well-known/jwks.json"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture(scope="module")
def tls_stack(tmp_path_factory):
    """A stack serving TLS with jwt auth; yields (stack, CA PEM, a valid token)."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key, ca = make_certificates(folder)
    signing = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    token = jwt.encode(
        {"tenant": "acme", "scope": "read write", "exp": int(time.time()) + 600},
        signing,
        algorithm="RS256",
        headers={"kid": key_id(signing.public_key())},
    )
    with serving_jwks(public_jwks(signing.public_key())) as url:
        env = stack_env(
            folder / "data", TLS_CERT=str(cert), TLS_KEY=str(key), AUTH_MODE="jwt", AUTH_JWKS=url, DEMO="0"
        )
        with (folder / "stack.log").open("w") as log, running_stack(env, log) as stack:
            yield stack, ca, token


def _client_context(ca: bytes) -> ssl.SSLContext:
    context = ssl.create_default_context(cadata=ca.decode())
    context.set_alpn_protocols(["h2", "http/1.1"])
    return context


def test_https_rest_with_the_tests_ca(tls_stack):
    stack, ca, token = tls_stack
    assert stack.base.startswith("https://")
    request = urllib.request.Request(
        f"{stack.base}/api/v1/analytics/capabilities", headers={"authorization": f"Bearer {token}"}
    )
    with urllib.request.urlopen(
        request, timeout=10, context=ssl.create_default_context(cadata=ca.decode())
    ) as reply:
        assert reply.status == 200 and "engines" in json.loads(reply.read())
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(
            f"{stack.base}/api/v1/analytics/capabilities",
            timeout=10,
            context=ssl.create_default_context(cadata=ca.decode()),
        )
    assert refused.value.code == 401
    assert json.loads(refused.value.read())["message"] == "Jwt is missing"


def test_alpn_offers_http2_and_plaintext_is_not_served(tls_stack):
    stack, ca, _ = tls_stack
    with (
        socket.create_connection(("127.0.0.1", stack.gateway_port), timeout=10) as raw,
        _client_context(ca).wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        assert tls.selected_alpn_protocol() == "h2"
    with pytest.raises((urllib.error.URLError, ConnectionError)):
        urllib.request.urlopen(f"http://127.0.0.1:{stack.gateway_port}/health", timeout=5)


def test_native_grpc_over_tls(tls_stack):
    stack, ca, token = tls_stack
    credentials = grpc.ssl_channel_credentials(root_certificates=ca)
    with grpc.secure_channel(f"localhost:{stack.gateway_port}", credentials) as channel:
        grpc_serves_only_with(channel, token)


async def test_websocket_over_tls(tls_stack):
    stack, ca, token = tls_stack
    metric = f"wss_{uuid.uuid4().hex[:8]}"
    context = ssl.create_default_context(cadata=ca.decode())
    body = {"points": [{"name": metric, "value": 1.0, "timestamp_ms": int(time.time() * 1000)}]}
    async with aiohttp.ClientSession() as session:
        async with session.post(
            f"{stack.base}/api/v1/metrics/ingest",
            json=body,
            headers={"authorization": f"Bearer {token}"},
            ssl=context,
        ) as reply:
            assert reply.status == 200, await reply.text()
        url = f"wss://localhost:{stack.gateway_port}/api/v1/ws/metrics/{metric}?access_token={token}"
        async with session.ws_connect(url, ssl=context) as ws:
            frame = await ws.receive_json(timeout=10)
            while frame["type"] == "heartbeat":
                frame = await ws.receive_json(timeout=10)
            assert frame["type"] == "hello", frame
