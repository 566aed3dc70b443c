"""Renders gateway/envoy.yaml.tmpl into a runnable Envoy config from Settings."""

from __future__ import annotations

from pathlib import Path
from string import Template

from google.protobuf import descriptor_pb2

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


def render(settings: Settings, descriptor: Path = DEFAULT_DESCRIPTOR) -> str:
    """The Envoy YAML for these settings: one listener, the four gRPC clusters, the ws bridge."""
    if not descriptor.is_file():
        raise ConfigError(f"proto descriptor {descriptor} is missing: run `make gen` first")
    clusters = [_cluster(s.ident, settings.address_of(s.name), http2=True) for s in SERVICES]
    request_timeout = f"{settings.request_timeout_seconds:g}s"
    clusters.append(_cluster("ws_bridge", f"127.0.0.1:{settings.ws_bridge_port}", http2=False))
    return Template(TEMPLATE.read_text()).substitute(
        admin_host="127.0.0.1",
        admin_port=settings.envoy_admin_port,
        listen_host=settings.bind_host,
        gateway_port=settings.gateway_port,
        descriptor=str(descriptor.resolve()),
        max_request_bytes=settings.max_request_bytes,
        train_timeout=f"{settings.train_timeout_seconds:g}s",
        service_routes=_service_routes(request_timeout, _streaming_services(descriptor)),
        transcoded_services="\n".join(f"                        - {s.full_name}" for s in SERVICES),
        clusters="\n".join(clusters),
    )


def write(settings: Settings, out: Path, descriptor: Path = DEFAULT_DESCRIPTOR) -> Path:
    """Render and write the config; returns its path."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render(settings, descriptor))
    return out
