"""The HTTP routes the gateway proxies to the HTTP API function (``api/``), as API Gateway proxies.

``/v1/...`` (the OpenAI-compatible API), ``GET /openapi.json`` and ``/ui`` (the web chat) are served by
the api process (GATEWAY_API_URL); the gateway forwards each request as an HTTP proxy integration does:
the method, path, query string, headers (the client's Host included, with X-Forwarded-For/-Proto/-Host
added) and body go through as they come, and the response comes back as it is produced -- status,
headers, and the body streamed chunk by chunk (server-sent events reach the client as they are
written). When the client leaves, the upstream request is closed at once, so the function sees its
client gone and stops generating.

The gateway keeps only its own checks in front (the Host, ``gateway/security.py``; 421 in OpenAI's shape
under /v1); the API's identity, Origin, CORS and body rules are the api function's. The api process
unreachable: 502 (OpenAI's shape under /v1).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from aiohttp import web

from gateway.settings import Settings

log = logging.getLogger(__name__)

API_PREFIX = "/v1"
# Paths forwarded to the api function (besides everything under /v1).
FORWARDED = ("/openapi.json", "/ui", "/ui/{tail:.*}", API_PREFIX, API_PREFIX + "/{tail:.*}")
# Hop-by-hop headers (RFC 9110 7.6.1) are the proxy's own: never forwarded either way.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
_WATCH_S = 0.1
_CHUNK = 64 * 1024


def v1_error(status: int, code: str, message: str) -> web.Response:
    """An error in OpenAI's shape (what the api function answers under /v1)."""
    kind = "invalid_request_error" if status < 500 else "api_error"
    return web.json_response({"error": {"message": message, "type": kind, "code": code, "param": None}}, status=status)


def v1_refusal(request: web.Request, status: int, code: str, message: str) -> web.StreamResponse:
    """A refusal made by the gateway itself (e.g. the Host) for a /v1 request, in OpenAI's error shape."""
    return v1_error(status, code, message)


def _request_headers(request: web.Request) -> dict[str, str]:
    headers: dict[str, str] = {}
    for name, value in request.headers.items():
        if name.lower() not in HOP_BY_HOP:
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
    peer = request.remote or ""
    forwarded_for = request.headers.get("X-Forwarded-For")
    headers["X-Forwarded-For"] = f"{forwarded_for}, {peer}" if forwarded_for else peer
    headers["X-Forwarded-Proto"] = request.scheme
    headers["X-Forwarded-Host"] = request.headers.get("Host", "")
    return headers


class ApiProxy:
    """Forwards requests to the api function at ``settings.api_url``."""

    def __init__(self, settings: Settings) -> None:
        self.base = settings.api_url.rstrip("/")
        self.session: aiohttp.ClientSession | None = None

    async def client_ctx(self, app: web.Application) -> AsyncIterator[None]:
        # No total timeout (an answer streams as long as it takes); no pooled-connection limit; the body
        # comes back as sent (no decompression), like a proxy integration.
        self.session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
            connector=aiohttp.TCPConnector(limit=0),
            auto_decompress=False,
        )
        try:
            yield
        finally:
            await self.session.close()

    async def forward(self, request: web.Request) -> web.StreamResponse:
        assert self.session is not None
        url = self.base + request.rel_url.raw_path_qs
        body = request.content.iter_chunked(_CHUNK) if request.body_exists else None
        handler = asyncio.current_task()
        assert handler is not None
        watcher = asyncio.create_task(self._watch(request, handler))
        upstream: aiohttp.ClientResponse | None = None
        try:
            try:
                upstream = await self.session.request(
                    request.method,
                    url,
                    headers=_request_headers(request),
                    data=body,
                    allow_redirects=False,
                    skip_auto_headers=("Accept-Encoding", "User-Agent", "Content-Type"),
                )
            except (aiohttp.ClientError, OSError) as exc:
                log.error("the api function is unreachable at %s: %s", self.base, type(exc).__name__)
                if request.path.startswith(API_PREFIX):
                    return v1_error(502, "upstream_unavailable", "the HTTP API function is unreachable")
                return web.json_response({"message": "Bad Gateway"}, status=502)
            resp = web.StreamResponse(status=upstream.status, reason=upstream.reason)
            for name, value in upstream.raw_headers:
                key = name.decode("latin-1")
                if key.lower() not in HOP_BY_HOP:
                    resp.headers.add(key, value.decode("latin-1"))
            try:
                await resp.prepare(request)
                async for chunk in upstream.content.iter_any():
                    await resp.write(chunk)
                await resp.write_eof()
            except (ConnectionResetError, aiohttp.ClientPayloadError, aiohttp.ClientConnectionError) as exc:
                # The client left (its side reset), or the function's side broke off: close the other side.
                log.info("proxied request ended early: %s", type(exc).__name__)
            return resp
        finally:
            watcher.cancel()
            if upstream is not None:
                upstream.close()  # a no-op once the body was read whole (the connection is back in the pool)

    @staticmethod
    async def _watch(request: web.Request, handler: asyncio.Task[Any]) -> None:
        """When the client goes away -- while the function works on a response not begun, or between two
        chunks of one -- cancel the forwarding, which closes the upstream request."""
        while True:
            transport = request.transport
            if transport is None or transport.is_closing():
                log.info("client left; closing the proxied request")
                handler.cancel()
                return
            await asyncio.sleep(_WATCH_S)


def add_proxy_routes(app: web.Application, proxy: ApiProxy) -> None:
    """Forward /v1, /openapi.json and /ui to the api function (every method)."""
    app.cleanup_ctx.append(proxy.client_ctx)
    for path in FORWARDED:
        app.router.add_route("*", path, proxy.forward)
