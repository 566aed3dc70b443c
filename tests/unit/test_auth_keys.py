"""The development key pair and its tokens (libs/auth_keys.py, `analytics token`), the gateway's auth
and TLS config (gateway/envoy_config.py, checked by Envoy's own validation), and the start-up refusal
of an open, unauthenticated bind."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from pathlib import Path

import jwt
import pytest
import yaml

from gateway.envoy_config import render
from libs.auth_keys import ensure_dev_keys, load_private_key, mint_token
from libs.config import load_settings, refuse_open_exposure
from libs.errors import ConfigError
from services.launcher import envoy_binary
from tests.helpers import REPO_ROOT

ANALYTICS = str(Path(sys.executable).with_name("analytics"))
DESCRIPTOR = REPO_ROOT / "build" / "descriptor.binpb"


def _verify(token: str, jwks_path: Path, **options: object) -> dict:
    keys = jwt.PyJWKSet.from_json(jwks_path.read_text())
    kid = jwt.get_unverified_header(token)["kid"]
    (key,) = [k for k in keys.keys if k.key_id == kid]
    return jwt.decode(token, key.key, algorithms=["RS256"], **options)


def test_the_key_pair_is_private_and_made_once(tmp_path):
    keys = ensure_dev_keys(tmp_path)
    assert keys.private_key.parent == tmp_path / "auth"
    assert stat.S_IMODE(keys.private_key.stat().st_mode) == 0o600
    pem, jwks = keys.private_key.read_bytes(), keys.jwks.read_text()
    assert b"PRIVATE" not in keys.jwks.read_bytes() and '"d"' not in jwks
    ensure_dev_keys(tmp_path)
    assert (keys.private_key.read_bytes(), keys.jwks.read_text()) == (pem, jwks)


def test_a_minted_token_verifies_against_the_jwks_with_its_claims(tmp_path):
    keys = ensure_dev_keys(tmp_path)
    token = mint_token(
        load_private_key(keys.private_key),
        tenant="acme",
        scopes="read  admin",
        ttl_seconds=120,
        audience="aud-1",
        issuer="https://issuer.test",
        tenant_claim="org.id",
    )
    claims = _verify(token, keys.jwks, audience="aud-1", issuer="https://issuer.test")
    assert claims["org"] == {"id": "acme"} and claims["scope"] == "read admin"
    assert 115 <= claims["exp"] - claims["iat"] <= 120
    with pytest.raises(jwt.InvalidAudienceError):
        _verify(token, keys.jwks, audience="someone-else")


def test_analytics_token_prints_only_a_token_that_verifies(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "DATA_DIR": str(tmp_path), "AUTH_AUDIENCES": "first,second"}
    minted = subprocess.run(
        [ANALYTICS, "token", "--tenant", "acme", "--scopes", "read", "--ttl", "60"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    token = minted.stdout.strip()
    assert minted.stdout == token + "\n"
    claims = _verify(token, tmp_path / "auth" / "jwks.json", audience="first")
    assert (claims["tenant"], claims["scope"], claims["aud"]) == ("acme", "read", "first")
    bad = subprocess.run([ANALYTICS, "token", "--ttl", "0"], env=env, capture_output=True, text=True)
    assert bad.returncode == 2 and "--ttl" in bad.stderr


@pytest.mark.parametrize(
    ("env", "refused"),
    [
        ({"BIND_HOST": "0.0.0.0"}, True),
        ({"BIND_HOST": "10.1.2.3"}, True),
        ({"BIND_HOST": "gateway.internal"}, True),
        ({"BIND_HOST": "0.0.0.0", "AUTH_ALLOW_INSECURE": "1"}, False),
        ({"BIND_HOST": "0.0.0.0", "AUTH_MODE": "jwt"}, False),
        ({"BIND_HOST": "127.0.0.2"}, False),
        ({"BIND_HOST": "::1"}, False),
        ({"BIND_HOST": "localhost"}, False),
    ],
)
def test_an_open_bind_needs_auth_or_an_explicit_yes(monkeypatch, env, refused):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    if refused:
        with pytest.raises(ConfigError, match="AUTH_ALLOW_INSECURE=1") as error:
            refuse_open_exposure(load_settings())
        assert f"BIND_HOST={env['BIND_HOST']}" in str(error.value)
    else:
        refuse_open_exposure(load_settings())


def _filters(text: str) -> dict[str, list[dict]]:
    listener = yaml.safe_load(text)["static_resources"]["listeners"][0]
    chain = listener["filter_chains"][0]
    manager = chain["filters"][0]["typed_config"]
    by_name: dict[str, list[dict]] = {}
    for f in manager["http_filters"]:
        by_name.setdefault(f["name"], []).append(f["typed_config"])
    return {"order": [f["name"] for f in manager["http_filters"]], "chain": chain, **by_name}


def _validate(text: str, tmp_path: Path) -> None:
    """Envoy's own check of a rendered config (every field name and type)."""
    config = tmp_path / "envoy.yaml"
    config.write_text(text)
    checked = subprocess.run(
        [envoy_binary(), "--mode", "validate", "-c", str(config)], capture_output=True, text=True, timeout=60
    )
    assert checked.returncode == 0, checked.stdout[-2000:] + checked.stderr[-2000:]


def test_without_auth_the_identity_headers_are_still_stripped_first(monkeypatch, tmp_path):
    monkeypatch.setenv("DATA_DIR", str(tmp_path))
    text = render(load_settings(), DESCRIPTOR)
    filters = _filters(text)
    assert filters["order"][0] == "envoy.filters.http.header_mutation"
    removed = [
        m["remove"]
        for m in filters["envoy.filters.http.header_mutation"][0]["mutations"]["request_mutations"]
    ]
    assert removed == ["x-platformq-tenant", "x-platformq-scopes"]
    assert "envoy.filters.http.jwt_authn" not in filters and "transport_socket" not in filters["chain"]
    _validate(text, tmp_path)


def test_jwt_mode_checks_tokens_except_on_open_paths(monkeypatch, tmp_path):
    ensure_dev_keys(tmp_path)
    for name, value in {
        "DATA_DIR": str(tmp_path),
        "AUTH_MODE": "jwt",
        "AUTH_ISSUER": "https://issuer.test",
        "AUTH_AUDIENCES": "a, b",
        "AUTH_TENANT_CLAIM": "org.tenant",
    }.items():
        monkeypatch.setenv(name, value)
    text = render(load_settings(), DESCRIPTOR)
    filters = _filters(text)
    assert filters["order"][:3] == [
        "envoy.filters.http.header_mutation",
        "envoy.filters.http.jwt_authn",
        "envoy.filters.http.lua",
    ]
    jwt_authn = filters["envoy.filters.http.jwt_authn"][0]
    bearer, websocket = jwt_authn["providers"]["bearer"], jwt_authn["providers"]["websocket"]
    assert bearer["local_jwks"] == {"filename": str((tmp_path / "auth" / "jwks.json").resolve())}
    assert (bearer["issuer"], bearer["audiences"]) == ("https://issuer.test", ["a", "b"])
    assert {"header_name": "x-platformq-tenant", "claim_name": "org.tenant"} in bearer["claim_to_headers"]
    # Only the WebSocket upgrade takes a token from the query string.
    assert "from_params" not in bearer and websocket["from_params"] == ["access_token"]
    rules = [(r["match"], r.get("requires")) for r in jwt_authn["rules"]]
    assert rules[-2:] == [
        ({"prefix": "/api/v1/ws/"}, {"provider_name": "websocket"}),
        ({"prefix": "/"}, {"provider_name": "bearer"}),
    ]
    assert ({"path": "/health"}, None) in rules and ({"prefix": "/ui/"}, None) in rules
    _validate(text, tmp_path)


def test_a_jwks_url_gets_a_cluster_and_tls_is_served_when_configured(monkeypatch, tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_text("x")
    key.write_text("x")
    for name, value in {
        "DATA_DIR": str(tmp_path),
        "AUTH_MODE": "jwt",
        "AUTH_JWKS": "https://idp.example.com/.well-known/jwks.json",
        "TLS_CERT": str(cert),
        "TLS_KEY": str(key),
    }.items():
        monkeypatch.setenv(name, value)
    text = render(load_settings(), DESCRIPTOR)
    filters = _filters(text)
    remote = filters["envoy.filters.http.jwt_authn"][0]["providers"]["bearer"]["remote_jwks"]
    assert remote["http_uri"]["cluster"] == "jwks"
    (cluster,) = [c for c in yaml.safe_load(text)["static_resources"]["clusters"] if c["name"] == "jwks"]
    assert cluster["transport_socket"]["typed_config"]["sni"] == "idp.example.com"
    endpoint = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
    assert endpoint["socket_address"] == {"address": "idp.example.com", "port_value": 443}
    tls = filters["chain"]["transport_socket"]["typed_config"]["common_tls_context"]
    assert tls["alpn_protocols"] == ["h2", "http/1.1"]
    assert tls["tls_certificates"][0]["certificate_chain"]["filename"] == str(cert.resolve())


def test_bad_auth_and_tls_settings_name_the_variable(monkeypatch, tmp_path):
    monkeypatch.setenv("DATA_DIR", str(tmp_path))
    monkeypatch.setenv("AUTH_MODE", "jwt")
    with pytest.raises(ConfigError, match="AUTH_JWKS"):
        render(load_settings(), DESCRIPTOR)  # no key pair made, no AUTH_JWKS
    ensure_dev_keys(tmp_path)
    monkeypatch.setenv("TLS_CERT", str(tmp_path / "auth" / "jwks.json"))
    with pytest.raises(ConfigError, match="TLS_CERT and TLS_KEY"):
        render(load_settings(), DESCRIPTOR)
    monkeypatch.setenv("TLS_KEY", str(tmp_path / "missing.key"))
    with pytest.raises(ConfigError, match="TLS_KEY"):
        render(load_settings(), DESCRIPTOR)


def test_the_jwks_written_is_a_json_key_set(tmp_path):
    keys = ensure_dev_keys(tmp_path)
    (key,) = json.loads(keys.jwks.read_text())["keys"]
    assert (key["kty"], key["alg"], key["use"]) == ("RSA", "RS256", "sig") and key["kid"]
