"""The development signing key: an RSA key pair under DATA_DIR/auth/, its JWKS, and tokens it signs.

`make up` makes the pair once (`ensure_dev_keys`): `signing-key.pem` (mode 0600) and `jwks.json`
beside it, which Envoy's jwt_authn reads when AUTH_MODE=jwt and AUTH_JWKS is unset. `analytics token`
(`make token`) mints RS256 tokens with it (`mint_token`). A production deployment points AUTH_JWKS at
its identity provider instead; docs/security.md.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

KEY_FILE = "signing-key.pem"
JWKS_FILE = "jwks.json"


@dataclass(frozen=True)
class DevKeys:
    """Where the development key pair lives: the private key (PEM) and the public JWKS."""

    private_key: Path
    jwks: Path


def auth_dir(data_dir: Path) -> Path:
    """The folder of the development key pair."""
    return data_dir / "auth"


def dev_keys(data_dir: Path) -> DevKeys:
    """The development key pair's paths under DATA_DIR (whether or not they exist yet)."""
    folder = auth_dir(data_dir)
    return DevKeys(folder / KEY_FILE, folder / JWKS_FILE)


def ensure_dev_keys(data_dir: Path) -> DevKeys:
    """The development key pair, made on first use: a 2048-bit RSA key written with mode 0600
    (created that way, never readable by others even for a moment) and its JWKS beside it."""
    keys = dev_keys(data_dir)
    keys.private_key.parent.mkdir(parents=True, exist_ok=True)
    if not keys.private_key.exists():
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        # Written beside, then renamed: a concurrent `make token` sees no key or a whole one.
        partial = keys.private_key.with_name(f".{KEY_FILE}.{os.getpid()}")
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(pem)
        try:
            os.link(partial, keys.private_key)  # fails if another process made the pair first: keep theirs
        except FileExistsError:
            pass
        finally:
            partial.unlink()
    if not keys.jwks.exists():
        private = load_private_key(keys.private_key)
        partial = keys.jwks.with_name(f".{JWKS_FILE}.{os.getpid()}")
        partial.write_text(json.dumps(public_jwks(private.public_key()), indent=2) + "\n")
        partial.replace(keys.jwks)
    return keys


def load_private_key(path: Path) -> rsa.RSAPrivateKey:
    """The RSA private key in a PEM file."""
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError(f"{path} does not hold an RSA private key")
    return key


def key_id(public_key: rsa.RSAPublicKey) -> str:
    """The key's RFC 7638 thumbprint (SHA-256 of its canonical JWK), used as its `kid`."""
    jwk = RSAAlgorithm.to_jwk(public_key, as_dict=True)
    canonical = json.dumps({k: jwk[k] for k in ("e", "kty", "n")}, separators=(",", ":"), sort_keys=True)
    return base64.urlsafe_b64encode(hashlib.sha256(canonical.encode()).digest()).rstrip(b"=").decode()


def public_jwks(public_key: rsa.RSAPublicKey) -> dict[str, object]:
    """A JWKS holding the one public key, for RS256 signatures."""
    jwk = RSAAlgorithm.to_jwk(public_key, as_dict=True)
    return {"keys": [{**jwk, "kid": key_id(public_key), "use": "sig", "alg": "RS256"}]}


def mint_token(
    private_key: rsa.RSAPrivateKey,
    *,
    tenant: str,
    scopes: str,
    ttl_seconds: float,
    audience: str = "",
    issuer: str = "",
    tenant_claim: str = "tenant",
    scopes_claim: str = "scope",
) -> str:
    """An RS256 token for `tenant` with space-separated `scopes`, valid for `ttl_seconds`; `aud`
    and `iss` only when given (the gateway checks them only when AUTH_AUDIENCES/AUTH_ISSUER are set)."""
    now = int(time.time())
    claims: dict[str, object] = {"iat": now, "exp": now + int(ttl_seconds), "sub": f"dev:{tenant}"}
    _set_claim(claims, tenant_claim, tenant)
    _set_claim(claims, scopes_claim, " ".join(scopes.split()))
    if audience:
        claims["aud"] = audience
    if issuer:
        claims["iss"] = issuer
    return jwt.encode(
        claims, private_key, algorithm="RS256", headers={"kid": key_id(private_key.public_key())}
    )


def _set_claim(claims: dict[str, object], name: str, value: str) -> None:
    # Envoy's claim_to_headers reads nested claims by a dotted path (a.b); write them the same way.
    *parents, leaf = name.split(".")
    node = claims
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ValueError(f"claim {part!r} of {name!r} is not an object")
        node = child
    node[leaf] = value
