"""The REST API's OpenAPI document: generated from the protos, checked in, served through Envoy.

Whether gateway/openapi.json is exactly what the protos give is `make openapi-check` (run by
`make test`; it needs Go to build protoc-gen-openapiv2). These tests need no Go: the document the
gateway serves is the checked-in file, and it has one operation for every google.api.http rule of
the descriptor Envoy transcodes with, so an RPC added without `make openapi` fails here too.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request

from google.api import annotations_pb2
from google.protobuf import descriptor_pb2

from gateway.console import OPENAPI_DOCUMENT
from gateway.envoy_config import DEFAULT_DESCRIPTOR

PATTERNS = ("get", "put", "post", "delete", "patch")


def http_rules() -> set[tuple[str, str]]:
    """(method, path template) of every google.api.http rule in the descriptor set."""
    files = descriptor_pb2.FileDescriptorSet.FromString(DEFAULT_DESCRIPTOR.read_bytes()).file
    rules = set()
    for proto in files:
        for service in proto.service:
            for method in service.method:
                rule = method.options.Extensions[annotations_pb2.http]
                for pattern in PATTERNS:
                    if getattr(rule, pattern):
                        rules.add((pattern, getattr(rule, pattern)))
    return rules


def test_the_gateway_serves_the_checked_in_document(stack):
    with urllib.request.urlopen(f"{stack.base}/api/v1/openapi.json", timeout=10) as reply:
        assert reply.status == 200
        assert reply.headers["Content-Type"] == "application/json"
        assert reply.headers["ETag"].startswith('W/"')
        served = json.loads(reply.read())
    assert served == json.loads(OPENAPI_DOCUMENT.read_text())
    assert served["swagger"] == "2.0"
    assert served["info"]["title"] == "platformQ analytics REST API"


def test_a_known_etag_is_answered_304(stack):
    with urllib.request.urlopen(f"{stack.base}/api/v1/openapi.json", timeout=10) as reply:
        etag = reply.headers["ETag"]
    request = urllib.request.Request(f"{stack.base}/api/v1/openapi.json", headers={"If-None-Match": etag})
    try:
        urllib.request.urlopen(request, timeout=10)
        raise AssertionError("a matching If-None-Match was answered with the body")
    except urllib.error.HTTPError as reply:
        assert reply.code == 304


def test_every_annotated_rpc_has_its_operation():
    paths = json.loads(OPENAPI_DOCUMENT.read_text())["paths"]
    documented = {(method, path) for path, item in paths.items() for method in item}
    rules = http_rules()
    assert ("post", "/api/v1/query") in rules
    assert documented == rules


def test_field_names_are_the_proto_names_the_gateway_prints():
    definitions = json.loads(OPENAPI_DOCUMENT.read_text())["definitions"]
    assert "time_range" in definitions["v1QueryRequest"]["properties"]
    assert "timeRange" not in definitions["v1QueryRequest"]["properties"]


def test_ingest_documents_the_json_body_the_service_parses():
    document = json.loads(OPENAPI_DOCUMENT.read_text())
    operation = document["paths"]["/api/v1/metrics/ingest"]["post"]
    (body,) = [p for p in operation["parameters"] if p["in"] == "body"]
    schema = document["definitions"][body["schema"]["$ref"].rsplit("/", 1)[1]]
    assert set(schema["properties"]) == {"datasource", "points", "series"}


def test_the_prometheus_export_is_documented_as_text():
    operation = json.loads(OPENAPI_DOCUMENT.read_text())["paths"]["/api/v1/export/prometheus"]["get"]
    assert operation["produces"] == ["text/plain"]
    assert operation["responses"]["200"]["schema"] == {"type": "string"}
