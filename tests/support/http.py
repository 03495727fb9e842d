"""Plain HTTP for the security tests: any method, any Host header, signed (SigV4) or not; and an aiohttp app
served in a thread (``served``)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import http.client
import json
import os
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from shared.sigv4 import SigningKey, sign
from tests.support.timeouts import scaled


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None

    def code(self) -> str | None:
        """The stable error code: ``{"code"}`` (a refused handshake) or ``{"error": {"code"}}`` (/v1)."""
        try:
            data = self.json()
        except ValueError:
            return None
        if not isinstance(data, dict):
            return None
        if isinstance(data.get("error"), dict):
            return data["error"].get("code")
        code = data.get("code")
        return str(code) if code is not None else None


def request(
    base: str,
    method: str,
    path: str,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
    *,
    signed_with: SigningKey | None = None,
    service: str = "execute-api",
    timeout: float = 30,
) -> Response:
    """``method base+path`` with exactly these headers (a ``Host`` given here replaces the real one)."""
    url = base + path
    parts = urlsplit(url)
    hdrs = dict(headers or {})
    if signed_with is not None:
        hdrs = sign(method, url, hdrs, body, key=signed_with, service=service, region="us-east-1")
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=scaled(timeout))
    try:
        conn.request(method, path, body=body or None, headers=hdrs)
        resp = conn.getresponse()
        return Response(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
    finally:
        conn.close()


def upgrade_headers(**extra: str) -> dict[str, str]:
    """A WebSocket upgrade request's headers (the handshake's answer is read as plain HTTP)."""
    return {
        "Connection": "Upgrade",
        "Upgrade": "websocket",
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode(),
        **extra,
    }


@contextlib.contextmanager
def served(app: web.Application) -> Iterator[str]:
    """``app`` served on 127.0.0.1 (any free port) by an event loop in a thread: yields its base URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(app)
    loop.run_until_complete(runner.setup())
    loop.run_until_complete(web.SockSite(runner, sock).start())
    thread = threading.Thread(target=loop.run_forever, name="served-app", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(scaled(10))
        loop.call_soon_threadsafe(loop.stop)
        thread.join(scaled(10))
        loop.close()
