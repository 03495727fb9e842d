"""The Lambda integration: a route becomes an API Gateway event, the event a Lambda Invoke call.

One code path for every caller: the WebSocket API (``gateway/websocket.py``: ``$connect``, each
message, ``$disconnect``) and the OpenAI-compatible HTTP API (``gateway/http_api.py``, whose requests
are messages from a pseudo-connection). For a message, ``LambdaIntegration.message`` selects the route
(``$request.body.action``, else ``$default``), invokes the route's function (RequestResponse), and
forwards a two-way route's response body to the connection, or the failure as a protocol ``error``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web

from gateway.connections import Connection
from gateway.settings import Settings
from shared.events import EventType, build_event
from shared.protocol import ErrorCode, action_of, encode, error

log = logging.getLogger(__name__)


class InvokeFailed(Exception):
    """The function could not be invoked, or failed: `code` and `message` are safe to show the client."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class Stats:
    invocations: int = 0
    posts: int = 0


def _error_type(body: bytes) -> str:
    try:
        return str(json.loads(body).get("errorType", ""))
    except (ValueError, AttributeError):
        return ""


class LambdaIntegration:
    """Routes, the Lambda Invoke client and per-function concurrency; `client_ctx` opens the HTTP client."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.stats = Stats()
        self._slots: Mapping[str, asyncio.Semaphore] = {
            name: asyncio.Semaphore(n) for name, n in settings.function_concurrency.items()
        }
        self._http: aiohttp.ClientSession | None = None

    async def client_ctx(self, app: web.Application) -> AsyncIterator[None]:
        """A cleanup context: the pooled HTTP client the invocations share, open while the app runs."""
        connector = aiohttp.TCPConnector(limit=64, keepalive_timeout=60)
        self._http = aiohttp.ClientSession(connector=connector)
        try:
            yield
        finally:
            await self._http.close()
            self._http = None

    # ------------------------------------------------------------------ events

    def route_for(self, action: str | None) -> str:
        """API Gateway's route selection: the body's action when a route has that key, else $default."""
        return action if action is not None and action in self.settings.routes else "$default"

    def event(
        self,
        conn: Connection,
        route_key: str,
        event_type: EventType,
        *,
        body: bytes | None = None,
        binary: bool = False,
        request: web.Request | None = None,
        close_code: int | None = None,
    ) -> dict[str, Any]:
        """The event API Gateway sends the route's function, as JSON."""
        settings = self.settings
        text: str | None = None
        if body is not None:
            text = base64.b64encode(body).decode() if binary else body.decode("utf-8")
        return build_event(
            route_key=route_key,
            event_type=event_type,
            connection_id=conn.id,
            connected_at=int(conn.connected_at * 1000),
            domain_name=settings.public_domain(),
            stage=settings.stage,
            api_id=settings.api_id,
            source_ip=conn.source_ip,
            body=text,
            is_base64_encoded=binary,
            headers=dict(request.headers) if request is not None else None,
            query=dict(request.query) if request is not None else None,
            disconnect_status_code=close_code,
            disconnect_reason="" if close_code is not None else None,
        ).to_aws()

    # ------------------------------------------------------------------ the connection's life

    async def connect(self, conn: Connection, request: web.Request) -> dict[str, Any] | None:
        """Invoke $connect (before the handshake completes); its result decides whether to accept."""
        return await self.invoke("$connect", self.event(conn, "$connect", "CONNECT", request=request))

    async def disconnect(self, conn: Connection, close_code: int) -> None:
        try:
            await self.invoke("$disconnect", self.event(conn, "$disconnect", "DISCONNECT", close_code=close_code))
        except InvokeFailed as exc:
            log.warning("$disconnect failed for %s: %s", conn.id, exc.message)

    async def message(self, conn: Connection, data: bytes, *, binary: bool = False, request_id: str | None) -> None:
        """Invoke the message's route and forward the two-way reply (or the failure) to the connection.

        The function's other replies reach the connection through @connections while this waits."""
        route_key = self.route_for(action_of(data))
        try:
            result = await self.invoke(route_key, self.event(conn, route_key, "MESSAGE", body=data, binary=binary))
            # A two-way route: the integration's response body goes back to the client.
            if result is not None and result.get("body"):
                body = result["body"]
                await self.reply(conn, body.encode("utf-8") if isinstance(body, str) else json.dumps(body).encode())
        except InvokeFailed as exc:
            await self.reply(conn, encode(error(exc.code, exc.message, request_id)))
        except Exception:
            log.exception("message on %s (route %s) failed", conn.id, route_key)
            await self.reply(conn, encode(error(ErrorCode.INTERNAL_ERROR, "internal error", request_id)))

    @staticmethod
    async def reply(conn: Connection, data: bytes) -> None:
        """Send to the connection unless it has gone (then there is no one to tell)."""
        if conn.ws.closed:
            return
        with contextlib.suppress(ConnectionResetError, aiohttp.ClientConnectionResetError):
            await conn.send(data)

    # ------------------------------------------------------------------ Lambda Invoke

    async def invoke(self, route_key: str, event: dict[str, Any]) -> dict[str, Any] | None:
        """Invoke the function behind `route_key` (Lambda Invoke API, RequestResponse); its result, or None
        when no route has that key."""
        settings = self.settings
        function = settings.routes.get(route_key)
        if function is None:
            return None
        url = settings.functions.get(function)
        if url is None:
            log.error("route %s names function %s, which has no invoke URL", route_key, function)
            raise InvokeFailed(ErrorCode.UPSTREAM_UNAVAILABLE, "this route is not configured")
        self.stats.invocations += 1
        slot = self._slots.get(function)
        try:
            async with asyncio.timeout(settings.integration_timeout_s), slot or contextlib.nullcontext():
                return await self._post(function, route_key, url, event)
        except TimeoutError:
            log.error("invoke %s timed out after %.0fs", function, settings.integration_timeout_s)
            raise InvokeFailed(ErrorCode.UPSTREAM_TIMEOUT, "the function did not answer in time") from None

    async def _post(self, function: str, route_key: str, url: str, event: dict[str, Any]) -> dict[str, Any] | None:
        if self._http is None:
            raise RuntimeError("the Lambda integration's HTTP client is not open (client_ctx)")
        timeout = aiohttp.ClientTimeout(total=self.settings.integration_timeout_s, connect=5)
        try:
            async with self._http.post(url, json=event, timeout=timeout) as resp:
                body = await resp.read()
                if resp.status == 429:
                    raise InvokeFailed(ErrorCode.THROTTLED, "too many requests in flight; retry shortly")
                if resp.status >= 300:
                    log.error("invoke %s -> HTTP %s: %s", function, resp.status, body[:500])
                    raise InvokeFailed(ErrorCode.FUNCTION_ERROR, "the function could not be invoked")
                if resp.headers.get("X-Amz-Function-Error"):
                    log.error("function %s failed on %s: %s", function, route_key, body[:2000])
                    if _error_type(body) == "Sandbox.Timedout":
                        raise InvokeFailed(ErrorCode.UPSTREAM_TIMEOUT, "the function timed out")
                    raise InvokeFailed(ErrorCode.FUNCTION_ERROR, "the function failed; see its log")
                result = json.loads(body) if body else None
                return result if isinstance(result, dict) else None
        except aiohttp.ClientError as exc:
            log.error("invoke %s unreachable: %s", function, exc)
            raise InvokeFailed(ErrorCode.UPSTREAM_UNAVAILABLE, f"the {function} service is unavailable") from None
