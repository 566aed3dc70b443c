"""Renders gateway/envoy.yaml.tmpl into a runnable Envoy config from Settings."""

from __future__ import annotations

from pathlib import Path
from string import Template

from libs.config import Settings
from libs.errors import ConfigError

TEMPLATE = Path(__file__).with_name("envoy.yaml.tmpl")
REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DESCRIPTOR = REPO_ROOT / "build" / "descriptor.binpb"

# Cluster name in the template -> service whose address it routes to.
GRPC_CLUSTERS = {
    "query_router": "query-router",
    "realtime": "realtime",
    "ml": "ml",
    "monitoring": "monitoring",
}


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


def render(settings: Settings, descriptor: Path = DEFAULT_DESCRIPTOR) -> str:
    """The Envoy YAML for these settings: one listener, the four gRPC clusters, the ws bridge."""
    if not descriptor.is_file():
        raise ConfigError(f"proto descriptor {descriptor} is missing: run `make gen` first")
    clusters = [_cluster(c, settings.address_of(s), http2=True) for c, s in GRPC_CLUSTERS.items()]
    clusters.append(_cluster("ws_bridge", f"127.0.0.1:{settings.ws_bridge_port}", http2=False))
    return Template(TEMPLATE.read_text()).substitute(
        admin_host="127.0.0.1",
        admin_port=settings.envoy_admin_port,
        listen_host=settings.bind_host,
        gateway_port=settings.gateway_port,
        descriptor=str(descriptor.resolve()),
        max_request_bytes=settings.max_request_bytes,
        request_timeout=f"{settings.request_timeout_seconds:g}s",
        train_timeout=f"{settings.train_timeout_seconds:g}s",
        clusters="\n".join(clusters),
    )


def write(settings: Settings, out: Path, descriptor: Path = DEFAULT_DESCRIPTOR) -> Path:
    """Render and write the config; returns its path."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render(settings, descriptor))
    return out
