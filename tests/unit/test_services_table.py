"""The one table of services (libs.config.SERVICES) agrees with the protos and the service packages,
and what config, runner, launcher, gateway and ws bridge derive from it is what they had by hand."""

from __future__ import annotations

import importlib

import pytest

from gateway.envoy_config import DEFAULT_DESCRIPTOR, render
from libs.config import SERVICE_NAMES, SERVICES, load_settings, service_info
from libs.errors import ConfigError
from libs.peers import HEALTH_NAMES
from services.launcher import distributed_ports
from services.runner import binder


def test_each_row_names_its_package_and_the_proto_service_it_serves():
    assert SERVICE_NAMES == ("query-router", "realtime", "ml", "monitoring")
    for info in SERVICES:
        package = importlib.import_module(f"services.{info.ident}")
        assert info.full_name == package.FULL_NAME  # read from the generated descriptor
        assert binder(info.name) is package.binding
        assert HEALTH_NAMES[info.name] == info.full_name


def test_ports_and_addresses_come_from_the_table():
    settings = load_settings()
    assert [settings.port_for(s.name) for s in SERVICES] == [50051, 50052, 50053, 50054]
    assert settings.grpc_bind_port == 50051
    assert settings.address_of("query-router") == "127.0.0.1:50051"
    assert load_settings(realtime_address="10.0.0.1:7000").address_of("realtime") == "10.0.0.1:7000"
    assert load_settings(grpc_port=6000).port_for("ml") == 6000
    with pytest.raises(ConfigError, match="unknown service 'nope'"):
        service_info("nope")


def test_distributed_ports_follow_grpc_port_with_realtimes_second_replica_after_the_last():
    assert distributed_ports(load_settings()) == {
        "query-router": [50051],
        "realtime": [50052, 50055],
        "ml": [50053],
        "monitoring": [50054],
    }
    assert distributed_ports(load_settings(grpc_port=6000))["realtime"] == [6001, 6004]


@pytest.mark.skipif(not DEFAULT_DESCRIPTOR.is_file(), reason="needs `make gen` (build/descriptor.binpb)")
def test_the_gateway_transcodes_and_routes_every_service_of_the_table():
    text = render(load_settings(request_timeout_seconds=42), DEFAULT_DESCRIPTOR)
    transcoded = text[text.index("      services:\n") :].split("convert_grpc_status")[0]
    assert [line.strip("- ") for line in transcoded.splitlines()[1:] if line.strip()] == [
        s.full_name for s in SERVICES
    ]
    for info in SERVICES:
        route = text.index(f"prefix: /{info.full_name}/")
        # Realtime has streaming RPCs (client-streaming ingest, Subscribe): no timeout on its route.
        timeout = "0s" if info.name == "realtime" else "42s"
        assert f"cluster: {info.ident}, timeout: {timeout} }}" in text[route : route + 200]
        assert f"- name: {info.ident}\n" in text
