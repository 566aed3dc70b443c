"""The web console's static files: safe paths, content types, caching, and the vendored chart
library exactly as scripts/vendor-ui recorded it."""

from __future__ import annotations

import hashlib
import json
import re

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from gateway.console import CONSOLE_ROOT, IMMUTABLE, REVALIDATE, ConsoleFiles


def test_paths_outside_the_console_folder_are_not_served(tmp_path):
    root = tmp_path / "console"
    root.mkdir()
    (root / "index.html").write_text("<!doctype html>")
    (tmp_path / "secret.txt").write_text("no")
    files = ConsoleFiles(root)
    assert files.asset("index.html") is not None
    for path in ("../secret.txt", "/etc/passwd", "js/../../secret.txt", "", "."):
        assert files.asset(path) is None, path


def test_an_edited_file_is_read_again(tmp_path):
    (tmp_path / "a.js").write_text("one")
    files = ConsoleFiles(tmp_path)
    first = files.asset("a.js")
    (tmp_path / "a.js").write_text("two, longer")
    second = files.asset("a.js")
    assert first.body == b"one" and second.body == b"two, longer" and first.etag != second.etag


@pytest.fixture
async def client():
    application = web.Application()
    ConsoleFiles().add_routes(application)
    async with TestClient(TestServer(application)) as test_client:
        yield test_client


async def test_index_and_assets_carry_types_etags_and_cache_policy(client):
    index = await client.get("/")
    assert index.status == 200 and index.headers["Content-Type"] == "text/html; charset=utf-8"
    assert (
        index.headers["Cache-Control"] == REVALIDATE
        and "default-src 'self'" in index.headers["Content-Security-Policy"]
    )
    again = await client.get("/", headers={"If-None-Match": index.headers["ETag"]})
    assert again.status == 304 and not await again.read()

    script = await client.get("/ui/js/main.js")
    assert script.headers["Content-Type"] == "text/javascript; charset=utf-8"
    assert script.headers["X-Content-Type-Options"] == "nosniff"
    css = await client.get("/ui/app.css")
    assert css.headers["Content-Type"] == "text/css; charset=utf-8"

    missing = await client.get("/ui/js/nothing.js")
    assert missing.status == 404 and (await missing.json())["code"] == 404
    escape = await client.get("/ui/%2E%2E/console.py")
    assert escape.status == 404


async def test_the_vendored_library_is_immutable_and_what_vendor_ui_recorded(client):
    record = json.loads((CONSOLE_ROOT / "vendor" / "uplot.json").read_text())
    folder = CONSOLE_ROOT / "vendor" / record["folder"]
    assert record["folder"] == f"uplot-{record['version']}"
    for name, digest in record["files"].items():
        assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == digest, name
    assert "MIT License" in (folder / "LICENSE").read_text()
    # The page loads the recorded version, and the browser may keep it for a year.
    index = (CONSOLE_ROOT / "index.html").read_text()
    assert set(re.findall(r"/ui/vendor/(uplot-[^/]+)/", index)) == {record["folder"]}
    reply = await client.get(f"/ui/vendor/{record['folder']}/uPlot.iife.min.js")
    assert reply.status == 200 and reply.headers["Cache-Control"] == IMMUTABLE
