"""Renders gateway/envoy.yaml.tmpl into a runnable Envoy config from Settings.

AUTH_MODE=jwt adds the jwt_authn filter (tokens checked against AUTH_JWKS, claims copied into the
identity headers) and, for a JWKS URL, a cluster that fetches it; TLS_CERT/TLS_KEY add the
listener's TLS. docs/security.md.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from string import Template
from urllib.parse import urlsplit

from google.protobuf import descriptor_pb2

from libs.auth_keys import dev_keys
from libs.config import SERVICES, Settings
from libs.errors import ConfigError

TEMPLATE = Path(__file__).with_name("envoy.yaml.tmpl")
REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DESCRIPTOR = REPO_ROOT / "build" / "descriptor.binpb"


def _streaming_services(descriptor: Path) -> set[str]:
    """Full names of the services in the descriptor set that have a streaming RPC."""
    files = descriptor_pb2.FileDescriptorSet.FromString(descriptor.read_bytes()).file
    return {
        f"{f.package}.{service.name}"
        for f in files
        for service in f.service
        if any(m.client_streaming or m.server_streaming for m in service.method)
    }


def _service_routes(request_timeout: str, streaming: set[str]) -> str:
    """A route per service of the table to its cluster (named by the service's ident); a service
    with a streaming RPC has no timeout (a stream lasts as long as its client wants)."""
    routes = []
    for info in SERVICES:
        timeout = "0s" if info.full_name in streaming else request_timeout
        routes.append(
            f"                        - match: {{ prefix: /{info.full_name}/ }}\n"
            f"                          route: {{ cluster: {info.ident}, timeout: {timeout} }}\n"
            "                          typed_per_filter_config: *no_buffer"
        )
    return "\n".join(routes)


def _endpoints(addresses: str) -> str:
    lines = []
    for address in addresses.split(","):
        host, _, port = address.strip().rpartition(":")
        if not host or not port.isdigit():
            raise ConfigError(f"invalid service address {address!r}: expected host:port")
        lines.append(
            "              - endpoint: { address: { socket_address: "
            f"{{ address: {host}, port_value: {port} }} }} }}"
        )
    return "\n".join(lines)


def _cluster(name: str, addresses: str, http2: bool) -> str:
    protocol = "http2_protocol_options: {}" if http2 else "http_protocol_options: {}"
    return f"""    - name: {name}
      type: STRICT_DNS
      connect_timeout: 1s
      typed_extension_protocol_options:
        envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
          "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
          explicit_http_config:
            {protocol}
      load_assignment:
        cluster_name: {name}
        endpoints:
          - lb_endpoints:
{_endpoints(addresses)}"""


OPEN_PATHS = ({"path": "/health"}, {"path": "/"}, {"prefix": "/ui/"}, {"prefix": "/grpc.health.v1.Health/"})
"""Paths that need no token with AUTH_MODE=jwt: health (HTTP and gRPC) and the web console's page and
static files (they hold no data; the console's API calls carry the token)."""

WS_PREFIX = "/api/v1/ws/"
TOKEN_PARAM = "access_token"
"""The query parameter a browser's WebSocket upgrade carries its token in (browsers cannot set
headers on one); accepted on WS_PREFIX only, removed before the request goes on."""

JWKS_CLUSTER = "jwks"

IDENTITY_LUA = """
-- Scopes as a JSON list: claim_to_headers joins a list claim with commas, the services read
-- scopes space-separated (as OAuth writes them), so a list is joined with spaces here, from the
-- payload jwt_authn verified.
function set_list_scopes(handle, headers)
  local verified = handle:streamInfo():dynamicMetadata():get("envoy.filters.http.jwt_authn")
  if verified == nil then
    return
  end
  local value = verified["jwt_payload"]
  for part in string.gmatch(SCOPES_CLAIM, "[^.]+") do
    if type(value) ~= "table" then
      return
    end
    value = value[part]
  end
  if type(value) == "table" then
    headers:replace("x-platformq-scopes", table.concat(value, " "))
  end
end

-- A WebSocket's ?access_token= is not a stream parameter (the bridge would read it as a label
-- filter), and jwt_authn leaves a token it read from the query in place: drop it here.
function drop_token_param(headers)
  local path = headers:get(":path")
  if path == nil or string.sub(path, 1, string.len(WS_PREFIX)) ~= WS_PREFIX then
    return
  end
  local base, query = string.match(path, "^([^?]*)%?(.*)$")
  if query == nil then
    return
  end
  local kept = {}
  for part in string.gmatch(query, "[^&]+") do
    if string.match(part, "^([^=]*)") ~= TOKEN_PARAM then
      table.insert(kept, part)
    end
  end
  if #kept == 0 then
    headers:replace(":path", base)
  else
    headers:replace(":path", base .. "?" .. table.concat(kept, "&"))
  end
end

function envoy_on_request(handle)
  local headers = handle:headers()
  set_list_scopes(handle, headers)
  drop_token_param(headers)
end
"""


def _identity_lua(settings: Settings) -> str:
    # JSON string literals are valid Lua string literals for these names (no escapes beyond \").
    constants = "\n".join(
        f"local {name} = {json.dumps(value)}"
        for name, value in (
            ("SCOPES_CLAIM", settings.auth_scopes_claim),
            ("WS_PREFIX", WS_PREFIX),
            ("TOKEN_PARAM", TOKEN_PARAM),
        )
    )
    return constants + "\n" + IDENTITY_LUA


def jwks_source(settings: Settings) -> str:
    """AUTH_JWKS, or the development key pair's JWKS file when it is unset."""
    return settings.auth_jwks or str(dev_keys(settings.data_dir).jwks)


def _is_url(source: str) -> bool:
    return source.startswith(("http://", "https://"))


def _jwks_yaml(source: str) -> dict[str, object]:
    if not _is_url(source):
        path = Path(source)
        if not path.is_file():
            raise ConfigError(f"AUTH_JWKS: {source} is not a file (a JWKS file or an http(s) URL)")
        return {"local_jwks": {"filename": str(path.resolve())}}
    return {
        "remote_jwks": {
            "http_uri": {"uri": source, "cluster": JWKS_CLUSTER, "timeout": "5s"},
            "cache_duration": "300s",
            # Fetched before the listener opens, so the first requests do not wait for it.
            "async_fetch": {},
            "retry_policy": {"num_retries": 3},
        }
    }


def _provider(settings: Settings, source: str, from_params: bool) -> dict[str, object]:
    provider: dict[str, object] = {
        **_jwks_yaml(source),
        "from_headers": [{"name": "authorization", "value_prefix": "Bearer "}],
        # The token does not travel on to the services: they get the identity headers instead.
        "forward": False,
        # For the Lua filter (list scopes) and the 401 mapping of refusals (local_reply_config).
        "payload_in_metadata": "jwt_payload",
        "failed_status_in_metadata": "jwt_failure",
        "claim_to_headers": [
            {"header_name": "x-platformq-tenant", "claim_name": settings.auth_tenant_claim},
            {"header_name": "x-platformq-scopes", "claim_name": settings.auth_scopes_claim},
        ],
    }
    if from_params:
        provider["from_params"] = [TOKEN_PARAM]
    if settings.auth_issuer:
        provider["issuer"] = settings.auth_issuer
    audiences = [a.strip() for a in settings.auth_audiences.split(",") if a.strip()]
    if audiences:
        provider["audiences"] = audiences
    return provider


def _auth_filters(settings: Settings) -> str:
    """The jwt_authn filter (and the removal of a WebSocket's token parameter) for AUTH_MODE=jwt;
    nothing otherwise. JSON is YAML, so the filters are written as JSON flow mappings."""
    if settings.auth_mode != "jwt":
        return ""
    source = jwks_source(settings)
    rules: list[dict[str, object]] = [{"match": match} for match in OPEN_PATHS]
    rules.append({"match": {"prefix": WS_PREFIX}, "requires": {"provider_name": "websocket"}})
    rules.append({"match": {"prefix": "/"}, "requires": {"provider_name": "bearer"}})
    jwt_authn = {
        "name": "envoy.filters.http.jwt_authn",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
            "providers": {
                "bearer": _provider(settings, source, from_params=False),
                "websocket": _provider(settings, source, from_params=True),
            },
            "rules": rules,
        },
    }
    # Envoy 1.40's header_mutation cannot edit query parameters, nor join a list claim with spaces:
    # Lua does both.
    identity_lua = {
        "name": "envoy.filters.http.lua",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua",
            "default_source_code": {"inline_string": _identity_lua(settings)},
        },
    }
    lines = [
        "# AUTH_MODE=jwt: a bearer token (RS256/ES256, AUTH_JWKS) is required but on OPEN_PATHS;",
        "# its tenant and scopes claims become the identity headers (gateway/envoy_config.py).",
        f"- {json.dumps(jwt_authn)}",
        "# Scopes given as a list, and a WebSocket's ?access_token= (see IDENTITY_LUA).",
        f"- {json.dumps(identity_lua)}",
    ]
    return textwrap.indent("\n".join(lines), " " * 18)


def _jwks_cluster(settings: Settings) -> list[str]:
    """The cluster that fetches a JWKS URL (TLS for https), or none."""
    source = jwks_source(settings)
    if settings.auth_mode != "jwt" or not _is_url(source):
        return []
    url = urlsplit(source)
    if not url.hostname:
        raise ConfigError(f"AUTH_JWKS: {source!r} has no host")
    tls = url.scheme == "https"
    port = url.port or (443 if tls else 80)
    cluster = _cluster(JWKS_CLUSTER, f"{url.hostname}:{port}", http2=False)
    if tls:
        cluster += textwrap.indent(
            "\ntransport_socket:\n"
            "  name: envoy.transport_sockets.tls\n"
            "  typed_config:\n"
            '    "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext\n'
            f"    sni: {url.hostname}",
            " " * 6,
        )
    return [cluster]


def _transport_socket(settings: Settings) -> str:
    """The listener's TLS block when TLS_CERT and TLS_KEY are set; empty otherwise."""
    if settings.tls_cert is None and settings.tls_key is None:
        return ""
    if settings.tls_cert is None or settings.tls_key is None:
        raise ConfigError(
            "TLS_CERT and TLS_KEY: set both (a PEM certificate chain and its private key) or neither"
        )
    for name, path in (("TLS_CERT", settings.tls_cert), ("TLS_KEY", settings.tls_key)):
        if not path.is_file():
            raise ConfigError(f"{name}: {path} is not a file")
    socket = {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
            "common_tls_context": {
                "alpn_protocols": ["h2", "http/1.1"],
                "tls_certificates": [
                    {
                        "certificate_chain": {"filename": str(settings.tls_cert.resolve())},
                        "private_key": {"filename": str(settings.tls_key.resolve())},
                    }
                ],
            },
        },
    }
    return f"          transport_socket: {json.dumps(socket)}"


def render(settings: Settings, descriptor: Path = DEFAULT_DESCRIPTOR) -> str:
    """The Envoy YAML for these settings: one listener, the four gRPC clusters, the ws bridge."""
    if not descriptor.is_file():
        raise ConfigError(f"proto descriptor {descriptor} is missing: run `make gen` first")
    clusters = [_cluster(s.ident, settings.address_of(s.name), http2=True) for s in SERVICES]
    request_timeout = f"{settings.request_timeout_seconds:g}s"
    clusters.append(_cluster("ws_bridge", f"127.0.0.1:{settings.ws_bridge_port}", http2=False))
    clusters.extend(_jwks_cluster(settings))
    return Template(TEMPLATE.read_text()).substitute(
        admin_host="127.0.0.1",
        admin_port=settings.envoy_admin_port,
        listen_host=settings.bind_host,
        transport_socket=_transport_socket(settings),
        # With tokens, a query string may hold one (?access_token=): the log keeps only the path.
        logged_path="%REQ_WITHOUT_QUERY(X-ENVOY-ORIGINAL-PATH?:PATH)%"
        if settings.auth_mode == "jwt"
        else "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%",
        auth_filters=_auth_filters(settings),
        gateway_port=settings.gateway_port,
        descriptor=str(descriptor.resolve()),
        max_request_bytes=settings.max_request_bytes,
        train_timeout=f"{settings.train_timeout_seconds:g}s",
        headers_timeout=f"{settings.gateway_headers_timeout_seconds:g}s",
        max_connections=settings.gateway_max_connections,
        service_routes=_service_routes(request_timeout, _streaming_services(descriptor)),
        transcoded_services="\n".join(f"                        - {s.full_name}" for s in SERVICES),
        clusters="\n".join(clusters),
    )


def write(settings: Settings, out: Path, descriptor: Path = DEFAULT_DESCRIPTOR) -> Path:
    """Render and write the config; returns its path."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render(settings, descriptor))
    return out
