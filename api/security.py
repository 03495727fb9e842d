"""The browser-facing checks of the HTTP API, the rules of the gateway's (gateway/security.py):

- **Host**: 127.0.0.1, localhost, [::1] (any port) and API_ALLOWED_HOSTS; anything else answers 421 in
  OpenAI's error shape (a DNS-rebinding page sends its own name as Host). ``*`` answers any Host (on AWS
  a Function URL is reached by AWS's own hostname, which routes by it: rebinding cannot reach it).
- **Origin**: a request without Origin (CLI, SDKs, curl) passes; a browser's Origin must be the page's
  own (same origin as an allowed Host it reached: the gateway forwards the client's Host) or one of
  API_ALLOWED_ORIGINS; otherwise 403.
- **CORS**: a preflight is answered only for an allowed Origin; responses to an allowed cross-origin
  request name that origin (never ``*``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

from aiohttp import web

from api.settings import Settings
from shared.web_origins import LOOPBACK_NAMES, split_host

CORS_METHODS = "GET, POST, DELETE, OPTIONS"
CORS_HEADERS = "Authorization, Content-Type"
CORS_MAX_AGE_S = 600


class OriginPolicy:
    def __init__(self, settings: Settings) -> None:
        self.any_host = "*" in settings.allowed_hosts
        names = [*LOOPBACK_NAMES, *(h for h in settings.allowed_hosts if h != "*")]
        self.hosts = [p for p in (split_host(h) for h in names) if p is not None]
        self.origins = set(settings.allowed_origins)

    def host_allowed(self, host: str | None) -> bool:
        parsed = split_host(host) if host else None
        if parsed is None:
            return False
        if self.any_host:
            return True
        name, port = parsed
        return any(n == name and (p is None or p == port) for n, p in self.hosts)

    def origin_allowed(self, origin: str, host: str | None) -> bool:
        origin = origin.strip().lower()
        if origin in self.origins:
            return True
        parts = urlsplit(origin)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.path or parts.query:
            return False  # "null" (sandboxed frames, file://) included
        return host is not None and parts.netloc == host.strip().lower() and self.host_allowed(host)


def cors_headers(origin: str) -> dict[str, str]:
    return {"Access-Control-Allow-Origin": origin, "Vary": "Origin"}


def preflight_headers(origin: str) -> dict[str, str]:
    return {
        **cors_headers(origin),
        "Access-Control-Allow-Methods": CORS_METHODS,
        "Access-Control-Allow-Headers": CORS_HEADERS,
        "Access-Control-Max-Age": str(CORS_MAX_AGE_S),
    }


def cors_hook(policy: OriginPolicy) -> Callable[[web.Request, web.StreamResponse], Awaitable[None]]:
    """An on_response_prepare handler: name the request's Origin when it is allowed (nothing otherwise)."""

    async def add_cors_headers(request: web.Request, response: web.StreamResponse) -> None:
        origin = request.headers.get("Origin")
        if origin is not None and policy.origin_allowed(origin, request.headers.get("Host")):
            response.headers.update(cors_headers(origin))

    return add_cors_headers
