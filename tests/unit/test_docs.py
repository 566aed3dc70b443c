"""The README documents every setting and every REST endpoint the contracts define."""

import re
from urllib.parse import urlsplit

from google.api import annotations_pb2

from libs.config import Settings
from platformq.analytics.v1 import (
    ml_service_pb2,
    monitoring_service_pb2,
    query_service_pb2,
    realtime_service_pb2,
)
from tests.helpers import REPO_ROOT, curl_examples

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


def _curl_commands() -> list[tuple[str, str]]:
    """(file, command) for every curl command the README and the docs show: inline or in a block."""
    pages = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]
    pages += sorted((REPO_ROOT / "deploy").glob("**/README.md"))
    found = []
    for page in pages:
        text = page.read_text()
        commands = curl_examples(text)
        commands += re.findall(r"^\s*(curl .+)$", text, flags=re.MULTILINE)
        found += [(page.name, c) for c in commands]
    return found


def test_every_curl_example_names_the_host():
    # `curl :8080/health` is HTTPie's shorthand: curl 7.88 refuses it ("URL using bad/illegal
    # format"), so a reader copying the example gets nothing.
    commands = _curl_commands()
    assert len(commands) > 30
    for page, command in commands:
        for url in re.findall(r"""[\s'"]([^\s'"]*:\d+/[^\s'"]*)""", command):
            host = urlsplit(url if "://" in url else f"http://{url}").hostname
            assert host, f"{page}: {command[:80]}: {url} has no host"
