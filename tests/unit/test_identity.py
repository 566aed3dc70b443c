"""The caller's identity from the gateway's headers, and the scope table."""

from __future__ import annotations

import grpc
import pytest

from libs.config import SERVICES
from libs.identity import (
    ADMIN,
    ALL_SCOPES,
    READ,
    REQUIRED_SCOPES,
    WRITE,
    Identity,
    PermissionDenied,
    Unauthenticated,
    acting_as,
    current_identity,
    identity_from_metadata,
    outgoing_metadata,
    required_scope,
)
from platformq.analytics.v1 import (
    ml_service_pb2,
    monitoring_service_pb2,
    query_service_pb2,
    realtime_service_pb2,
)

MODULES = {
    "QueryService": query_service_pb2,
    "RealtimeService": realtime_service_pb2,
    "MLService": ml_service_pb2,
    "MonitoringService": monitoring_service_pb2,
}


def test_mode_none_without_headers_is_tenant_default_with_every_scope():
    identity = identity_from_metadata([("user-agent", "grpc-python")], "none")
    assert identity == Identity("default", ALL_SCOPES)


def test_the_headers_give_tenant_and_known_scopes_in_either_mode():
    metadata = [("x-platformq-tenant", "team-7"), ("x-platformq-scopes", "read  write openid")]
    for mode in ("none", "jwt"):
        assert identity_from_metadata(metadata, mode) == Identity("team-7", frozenset({READ, WRITE}))
    # A tenant without scopes is allowed nothing.
    assert identity_from_metadata([("x-platformq-tenant", "t")], "jwt").scopes == frozenset()


def test_mode_jwt_without_a_tenant_is_unauthenticated_naming_the_header():
    with pytest.raises(Unauthenticated) as caught:
        identity_from_metadata([("x-platformq-scopes", "read")], "jwt")
    assert caught.value.field == "x-platformq-tenant"


@pytest.mark.parametrize("tenant", ["", "../x", "a/b", "tenant=x", "-lead", "a" * 64, "é", "a b"])
def test_an_unsafe_tenant_id_is_refused(tenant):
    with pytest.raises(Unauthenticated) as caught:
        identity_from_metadata([("x-platformq-tenant", tenant)], "none")
    assert caught.value.message.startswith("x-platformq-tenant: must be 1 to 63")


def test_an_unknown_auth_mode_is_a_programming_error():
    with pytest.raises(ValueError, match="AUTH_MODE"):
        identity_from_metadata([], "basic")


def test_every_rpc_of_every_service_has_a_scope():
    methods = set()
    for service in SERVICES:
        descriptor = MODULES[service.proto_service].DESCRIPTOR.services_by_name[service.proto_service]
        methods |= {f"/{service.full_name}/{m.name}" for m in descriptor.methods}
    assert set(REQUIRED_SCOPES) == methods
    assert set(REQUIRED_SCOPES.values()) <= ALL_SCOPES


def test_scopes_that_depend_on_whether_the_request_stores_something():
    detect = "/platformq.analytics.v1.MLService/DetectAnomalies"
    assert required_scope(detect, ml_service_pb2.DetectAnomaliesRequest(metrics={"cpu": 1.0})) == READ
    stored = ml_service_pb2.DetectAnomaliesRequest(selection={"metrics": ["cpu"]})
    assert required_scope(detect, stored) == WRITE
    maintenance = "/platformq.analytics.v1.MLService/PredictMaintenance"
    assert required_scope(maintenance, ml_service_pb2.PredictMaintenanceRequest(entity_id="e")) == READ
    appended = ml_service_pb2.PredictMaintenanceRequest(entity_id="e", sensors={"s2": 1.0})
    assert required_scope(maintenance, appended) == WRITE
    export = "/platformq.analytics.v1.MonitoringService/ExportPrometheus"
    assert required_scope(export, monitoring_service_pb2.ExportPrometheusRequest()) == ADMIN
    assert required_scope(export, monitoring_service_pb2.ExportPrometheusRequest(match=["up"])) == READ
    assert required_scope("/grpc.health.v1.Health/Check") is None


def test_background_work_acts_for_the_tenant_it_names_then_for_the_service_again():
    assert current_identity().tenant == "default"
    with acting_as(Identity("team-7", frozenset({READ}))):
        assert dict(outgoing_metadata()) == {"x-platformq-tenant": "team-7", "x-platformq-scopes": "read"}
    assert dict(outgoing_metadata())["x-platformq-tenant"] == "default"


def test_permission_denied_is_its_own_status():
    assert PermissionDenied("x").status == grpc.StatusCode.PERMISSION_DENIED
    assert Unauthenticated("x").status == grpc.StatusCode.UNAUTHENTICATED
