"""The README documents every setting and every REST endpoint the contracts define."""

import re

from google.api import annotations_pb2

from libs.config import Settings
from platformq.analytics.v1 import (
    ml_service_pb2,
    monitoring_service_pb2,
    query_service_pb2,
    realtime_service_pb2,
)
from tests.helpers import REPO_ROOT

README = (REPO_ROOT / "README.md").read_text()


def test_every_setting_is_in_the_configuration_table():
    for name in Settings.model_fields:
        assert f"`{name.upper()}`" in README, name


def test_every_unary_rest_endpoint_is_in_the_readme():
    for module in (query_service_pb2, realtime_service_pb2, ml_service_pb2, monitoring_service_pb2):
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                if method.client_streaming or method.server_streaming:
                    continue
                rule = method.GetOptions().Extensions[annotations_pb2.http]
                verb = rule.WhichOneof("pattern")
                path = getattr(rule, verb)
                assert re.search(rf"`{verb.upper()} {re.escape(path)}`", README), f"{verb} {path}"
