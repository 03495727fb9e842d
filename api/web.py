"""The web chat: a static single-page app served by the HTTP API function under ``/ui/`` (locally the
gateway forwards ``/ui`` to it, so the page is reached on the gateway's address).

- ``GET /ui/`` -> ``index.html``; ``GET /ui/{file}`` -> one of the files in ``api/static/``
  (only those: the set is fixed when the routes are added, so no path ever reaches the file system).
- ``GET /ui/config.json`` -> ``{"websocket_path": "/{stage}", "gateways": [...]}``: the page builds its
  WebSocket URL from its own origin and this path, so it works behind whatever host and port the gateway
  is reached on; ``?ws=`` may name another gateway only if its origin is in ``gateways``
  (API_WEB_CHAT_GATEWAYS), since the page sends it its key. With API_WEBSOCKET_URL set (on AWS: the
  deployed WebSocket API, another origin than the page's), config.json also has ``"websocket_url"``,
  which the page connects to instead.

The page talks to the gateway only through the WebSocket protocol (``shared/protocol.py``) and the
presigned upload URLs it is given; it has no build step and loads nothing from the network but this.
Its key arrives in the URL's fragment (``/ui/#key=...``, never sent to a server), moves to the tab's
sessionStorage, and goes to the gateway as the ``localrag.bearer.<key>`` WebSocket subprotocol.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from aiohttp import web

STATIC_DIR = Path(__file__).resolve().parent / "static"
UI_PREFIX = "/ui"

_CONTENT_TYPES = {
    ".html": "text/html",
    ".js": "text/javascript",
    ".css": "text/css",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".json": "application/json",
}

# Only this origin's files; connections to any ws/http(s) endpoint (the gateway, ?ws=, presigned upload
# URLs that may point at S3 or MinIO). No inline script or style: every server string goes in as text.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self' ws: wss: http: https:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
    "form-action 'none'"
)
_HEADERS = {
    "Cache-Control": "no-cache",
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def _static_files() -> dict[str, Path]:
    """File name -> path of every servable file in the static folder."""
    if not STATIC_DIR.is_dir():
        return {}
    return {p.name: p for p in sorted(STATIC_DIR.iterdir()) if p.is_file() and p.suffix in _CONTENT_TYPES}


def add_web_routes(
    app: web.Application, stage: str, *, gateways: Sequence[str] = (), websocket_url: str | None = None
) -> None:
    """Serve the web chat at /ui/ and its config at /ui/config.json (WebSocket path /{stage}, the other
    gateways' origins ``?ws=`` may name, and the WebSocket URL when it is not the page's own origin)."""
    files = _static_files()

    def file_response(name: str) -> web.StreamResponse:
        path = files.get(name)
        if path is None:
            raise web.HTTPNotFound(text="not found")
        headers = {**_HEADERS, "Content-Type": _CONTENT_TYPES[path.suffix]}
        return web.FileResponse(path, headers=headers)

    async def redirect(request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound(f"{UI_PREFIX}/")

    async def index(request: web.Request) -> web.StreamResponse:
        return file_response("index.html")

    async def config_json(request: web.Request) -> web.StreamResponse:
        config: dict[str, object] = {"websocket_path": f"/{stage}", "gateways": list(gateways)}
        if websocket_url is not None:
            config["websocket_url"] = websocket_url
        return web.json_response(config, headers={"Cache-Control": "no-cache"})

    async def static_file(request: web.Request) -> web.StreamResponse:
        return file_response(request.match_info["file"])

    # config.json first: routes resolve in the order they are added.
    app.router.add_get(UI_PREFIX, redirect)
    app.router.add_get(f"{UI_PREFIX}/", index)
    app.router.add_get(f"{UI_PREFIX}/config.json", config_json)
    app.router.add_get(f"{UI_PREFIX}/{{file}}", static_file)
