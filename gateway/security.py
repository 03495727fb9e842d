"""The public listener's browser-facing checks: the Host it is reached by and the Origin of a page.

- **Host** (every public route): only the names in ``Settings.host_names()`` (loopback names,
  GATEWAY_DOMAIN_NAME, GATEWAY_HOST, GATEWAY_ALLOWED_HOSTS); anything else answers 421 Misdirected
  Request. A DNS-rebinding page (``evil.example`` resolving to 127.0.0.1) sends its own name as Host.
- **Origin** (WebSocket upgrades): a request without Origin (CLI, SDKs, curl) passes; a browser's Origin
  must be the gateway's own (same origin as the Host it reached, or one of its host names on GATEWAY_PORT)
  or one of GATEWAY_ALLOWED_ORIGINS; otherwise 403.

CORS belongs to the HTTP API, which the api function answers (api/security.py); the gateway only forwards
``/v1``. Host names are parsed by shared/web_origins.py, as the api function parses them.
The upload PUT (``gateway/uploads.py``) keeps its own rules: the signature in its URL is the credential,
as for a presigned S3 URL.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

from aiohttp import web
from aiohttp.typedefs import Middleware

from gateway.settings import Settings
from shared.web_origins import split_host

_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Refusal = Callable[[web.Request, int, str, str], web.StreamResponse]


class OriginPolicy:
    """Which Host names and Origins the public listener accepts (from the settings, fixed at start)."""

    def __init__(self, settings: Settings) -> None:
        self.hosts = settings.host_names()
        self.port = settings.port
        self.origins = set(settings.allowed_origins)

    def host_allowed(self, host: str | None) -> bool:
        """A Host header names the gateway: one of its names (with an explicit port, that port)."""
        parsed = split_host(host) if host else None
        if parsed is None:
            return False
        name, port = parsed
        return any(n == name and (p is None or p == port) for n, p in self.hosts)

    def origin_allowed(self, origin: str, host: str | None) -> bool:
        """A browser Origin may use the gateway: an allowed origin, the page's own (same origin as the
        allowed Host it reached), or one of the gateway's names on its port."""
        origin = origin.strip().lower()
        if origin in self.origins:
            return True
        parts = urlsplit(origin)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.path or parts.query:
            return False  # "null" (sandboxed frames, file://) included
        if host is not None and parts.netloc == host.strip().lower() and self.host_allowed(host):
            return True
        parsed = split_host(parts.netloc)
        if parsed is None:
            return False
        name, port = parsed
        port = port if port is not None else _DEFAULT_PORTS[parts.scheme]
        return any(n == name and port == (p if p is not None else self.port) for n, p in self.hosts)

    def request_origin_allowed(self, request: web.BaseRequest) -> bool:
        """No Origin (not a browser) or an allowed one."""
        origin = request.headers.get("Origin")
        return origin is None or self.origin_allowed(origin, request.headers.get("Host"))


def json_refusal(request: web.Request, status: int, code: str, message: str) -> web.StreamResponse:
    return web.json_response({"message": message, "code": code}, status=status)


def host_guard(policy: OriginPolicy, refuse_v1: Refusal, v1_prefix: str) -> Middleware:
    """Middleware of the public application: a Host that does not name the gateway gets 421 (in OpenAI's
    error shape under /v1)."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not policy.host_allowed(request.headers.get("Host")):
            refuse = refuse_v1 if request.path.startswith(v1_prefix) else json_refusal
            return refuse(
                request, 421, "host_not_allowed", "this gateway does not answer to that Host (GATEWAY_ALLOWED_HOSTS)"
            )
        return await handler(request)

    return middleware
