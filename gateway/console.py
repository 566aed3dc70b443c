"""The web console's static files (gateway/console/), served by the ws bridge behind Envoy.

`GET /` is the console's page and `GET /ui/<path>` its assets, straight from the repo: no build
step and no Node.js at run time. Every answer carries a weak ETag (a hash of the file; weak so
that it survives the gateway's gzip) and a browser revalidates with `If-None-Match` and gets 304;
the console's own files are `no-cache` (always revalidated, so a new release shows at once) and
the vendored chart library, whose path names its version, is `immutable` for a year.

The same bridge serves the REST API's OpenAPI document, `gateway/openapi.json` (generated from the
protos by `make openapi`, docs/openapi.md), at `GET /api/v1/openapi.json`, revalidated like the console.
"""

from __future__ import annotations

import hashlib
import mimetypes
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

CONSOLE_ROOT = Path(__file__).with_name("console")
OPENAPI_DOCUMENT = Path(__file__).with_name("openapi.json")
OPENAPI_PATH = "/api/v1/openapi.json"
INDEX = "index.html"
VENDOR_PREFIX = "vendor/"
REVALIDATE = "no-cache"
IMMUTABLE = "public, max-age=31536000, immutable"
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".txt": "text/plain; charset=utf-8",
}
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    # Everything the console loads is its own: scripts and styles from /ui/, data from the API and
    # its WebSocket streams on the same origin.
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self' ws: wss:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    ),
}


@dataclass(frozen=True)
class Asset:
    body: bytes
    content_type: str
    etag: str
    cache_control: str


class ConsoleFiles:
    """Reads the console's files from `root` (re-read when a file's size or mtime changes)."""

    def __init__(self, root: Path = CONSOLE_ROOT) -> None:
        self.root = root.resolve()
        self._assets: dict[Path, tuple[tuple[int, int], Asset]] = {}

    def asset(self, relative: str) -> Asset | None:
        """The file at `relative` under the root, or None (missing, a folder, or outside the root)."""
        path = (self.root / relative).resolve()
        if not path.is_relative_to(self.root) or not path.is_file():
            return None
        stat = path.stat()
        stamp = (stat.st_size, stat.st_mtime_ns)
        kept = self._assets.get(path)
        if kept is not None and kept[0] == stamp:
            return kept[1]
        body = path.read_bytes()
        content_type = CONTENT_TYPES.get(path.suffix) or mimetypes.guess_type(path.name)[0]
        asset = Asset(
            body=body,
            content_type=content_type or "application/octet-stream",
            # Weak: Envoy's gzip keeps a weak ETag and drops a strong one (the bytes change).
            etag='W/"' + hashlib.sha256(body).hexdigest()[:32] + '"',
            cache_control=IMMUTABLE if relative.startswith(VENDOR_PREFIX) else REVALIDATE,
        )
        self._assets[path] = (stamp, asset)
        return asset

    def respond(self, request: web.Request, relative: str) -> web.Response:
        asset = self.asset(relative)
        if asset is None:
            raise web.HTTPNotFound(
                text='{"code": 404, "message": "no console file at this path"}',
                content_type="application/json",
            )
        headers = {"ETag": asset.etag, "Cache-Control": asset.cache_control, **SECURITY_HEADERS}
        if asset.etag.removeprefix("W/") in _etags(request.headers.get("If-None-Match", "")):
            return web.Response(status=304, headers=headers)
        return web.Response(body=asset.body, headers={**headers, "Content-Type": asset.content_type})

    async def index(self, request: web.Request) -> web.Response:
        return self.respond(request, INDEX)

    async def file(self, request: web.Request) -> web.Response:
        return self.respond(request, request.match_info["path"])

    def add_routes(self, application: web.Application) -> None:
        application.router.add_get("/", self.index)
        application.router.add_get("/ui/{path:.+}", self.file)
        OpenApiDocument().add_routes(application)


class OpenApiDocument:
    """The REST API's OpenAPI document (`document`, checked in), served at OPENAPI_PATH."""

    def __init__(self, document: Path = OPENAPI_DOCUMENT) -> None:
        # A ConsoleFiles rooted at the document's folder gives it the same ETag and 304 handling;
        # only the one file name is ever asked of it.
        self.files = ConsoleFiles(document.parent)
        self.name = document.name

    async def serve(self, request: web.Request) -> web.Response:
        return self.files.respond(request, self.name)

    def add_routes(self, application: web.Application) -> None:
        application.router.add_get(OPENAPI_PATH, self.serve)


def _etags(header: str) -> set[str]:
    return {tag.strip().removeprefix("W/") for tag in header.split(",") if tag.strip()}
