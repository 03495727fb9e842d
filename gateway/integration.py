"""The Lambda integration: a route becomes an API Gateway event, the event a Lambda Invoke call.

One code path for every caller: the WebSocket API (``gateway/websocket.py``: ``$connect``, each
message, ``$disconnect``) and the OpenAI-compatible HTTP API (``gateway/http_api.py``, whose requests
are messages from a pseudo-connection). For a message, ``LambdaIntegration.message`` selects the route
(``$request.body.action``, else ``$default``), invokes the route's function (RequestResponse), and
forwards a two-way route's response body to the connection, or the failure as a protocol ``error``.

A route with no function (by default ``$connect`` and ``$disconnect``: API Gateway's MOCK integration, or
no route) invokes nothing, so a connect never waits for a function's concurrency. A function that
answers 429 (its concurrency is used up): a message gets a ``throttled`` error at once (the client can
retry); a call made for a connection (the authorizer, a routed ``$connect``/``$disconnect``), whose
client cannot be told in-band, is retried with jittered backoff for up to ``CONNECTION_THROTTLE_WAIT_S``
and only then refused (``connect_refusal``: 429 ``throttled``, never a bare 500).

The integration timeout (GATEWAY_INTEGRATION_TIMEOUT_S, API Gateway's 29 s) has API Gateway's semantics for
a WebSocket message: past it the client gets ``{"message": "Endpoint request timed out", "connectionId",
"requestId"}`` (``timed_out``) and the invocation is *not* cancelled: the function runs on (holding its
concurrency slot), its @connections posts still reach the client, and its return value is dropped. The
gateway waits for it at most ``INVOCATION_CAP_S`` (Lambda's longest timeout). The HTTP API's
pseudo-connections wait for the function to return (a Function URL has no 29 s cap).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import random
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web

from gateway.connections import Connection
from gateway.limits import TokenBucket
from gateway.settings import Settings
from shared.events import EventType, build_event
from shared.logs import bound, error_where
from shared.protocol import ErrorCode, action_of, encode, error
from shared.sigv4 import sign

log = logging.getLogger(__name__)

# How long a call made for a connection waits out a throttled function (429) before it is refused: the
# authorizer's answer decides a handshake, and API Gateway waits at most 10 s for an authorizer.
CONNECTION_THROTTLE_WAIT_S = 10.0
# Backoff between throttled attempts: the first wait, doubling up to the last (each with jitter).
THROTTLE_BACKOFF_S = (0.05, 1.0)
# The longest a function may run (Lambda's largest Timeout): an invocation the client stopped waiting for
# (the integration timeout passed) is awaited at most this long, so that its slot and log line come back.
INVOCATION_CAP_S = 900.0


def apigw_message(message: str, connection_id: str, request_id: str) -> bytes:
    """A message API Gateway itself sends a WebSocket client (integration timeout, throttling, an integration
    failure): ``{"message", "connectionId", "requestId"}``, the requestId being the event's."""
    return json.dumps({"message": message, "connectionId": connection_id, "requestId": request_id}).encode()


def timed_out(connection_id: str, request_id: str) -> bytes:
    """What API Gateway sends when the integration timeout passes before the function answers."""
    return apigw_message("Endpoint request timed out", connection_id, request_id)


class InvokeFailed(Exception):
    """The function could not be invoked, or failed: `code` and `message` are safe to show the client."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def connect_refusal(exc: InvokeFailed) -> tuple[int, str]:
    """(status, code) of a handshake whose $connect function could not be invoked: 429 ``throttled`` when
    it stayed throttled past CONNECTION_THROTTLE_WAIT_S (the client may retry), else 500 ``connect_failed``."""
    return (429, ErrorCode.THROTTLED.value) if exc.code == ErrorCode.THROTTLED else (500, "connect_failed")


@dataclass
class Stats:
    invocations: int = 0
    posts: int = 0
    in_flight: int = 0  # messages (WebSocket and /v1) whose invocation has not returned yet
    timed_out: int = 0  # messages whose client got "Endpoint request timed out" (their function ran on)
    running_on: int = 0  # of those, invocations still running
    throttled_messages: int = 0  # messages over the stage's throttle ("Too Many Requests"), never invoked
    throttled_connects: int = 0  # handshakes over the new-connection rate (429)
    throttled_posts: int = 0  # @connections calls over their rate (429 LimitExceededException)
    throttled: int = 0  # invocations a function refused with 429 (retried ones included)


@dataclass(frozen=True)
class Invocation:
    """A function's answer through the Invoke API: its payload, and X-Amz-Function-Error if it failed."""

    body: bytes
    function_error: str | None = None

    def error(self) -> tuple[str, str]:
        """(errorMessage, errorType) of a failed invocation's payload ("" when absent)."""
        try:
            data = json.loads(self.body)
        except ValueError:
            return "", ""
        if not isinstance(data, dict):
            return "", ""
        return str(data.get("errorMessage", "")), str(data.get("errorType", ""))


class LambdaIntegration:
    """Routes, the Lambda Invoke client and per-function concurrency; `client_ctx` opens the HTTP client."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.stats = Stats()
        self._slots: Mapping[str, asyncio.Semaphore] = {
            name: asyncio.Semaphore(n) for name, n in settings.function_concurrency.items()
        }
        self._http: aiohttp.ClientSession | None = None
        self._running_on: set[asyncio.Task[dict[str, Any] | None]] = set()
        # API Gateway's throttles: the stage's messages, new connections, @connections calls.
        self.message_throttle = TokenBucket(settings.throttling_rate_limit, settings.throttling_burst_limit)
        self.connect_throttle = TokenBucket(settings.connect_rate_limit, settings.connect_rate_limit)
        self.management_throttle = TokenBucket(settings.management_rate_limit, settings.management_rate_limit)
        if settings.internal.signing_key() is None:
            log.warning(
                "no internal key (LOCALRAG_INTERNAL_ACCESS_KEY_ID/_SECRET_ACCESS_KEY): Invoke calls go unsigned "
                "and @connections refuses every request"
            )

    async def client_ctx(self, app: web.Application) -> AsyncIterator[None]:
        """A cleanup context: the pooled HTTP client the invocations share, open while the app runs."""
        connector = aiohttp.TCPConnector(limit=64, keepalive_timeout=60)
        self._http = aiohttp.ClientSession(connector=connector)
        try:
            yield
        finally:
            for task in list(self._running_on):  # the gateway is stopping: nobody is left to drop it for
                task.cancel()
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
        request: web.BaseRequest | None = None,
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
            authorizer=conn.authorizer,
        ).to_aws()

    # ------------------------------------------------------------------ the connection's life

    async def connect(self, conn: Connection, request: web.BaseRequest) -> dict[str, Any] | None:
        """Invoke $connect's function, if it has one (before the handshake completes); its result decides
        whether to accept. None (accept): no function ($connect's MOCK integration)."""
        if "$connect" not in self.settings.routes:
            return None
        event = self.event(conn, "$connect", "CONNECT", request=request)
        return await self.invoke("$connect", event, throttle_wait_s=CONNECTION_THROTTLE_WAIT_S)

    async def disconnect(self, conn: Connection, close_code: int) -> None:
        if "$disconnect" not in self.settings.routes:
            return
        try:
            event = self.event(conn, "$disconnect", "DISCONNECT", close_code=close_code)
            await self.invoke("$disconnect", event, throttle_wait_s=CONNECTION_THROTTLE_WAIT_S)
        except InvokeFailed as exc:
            log.warning("$disconnect failed for %s: %s", conn.id, exc.message)

    async def message(
        self,
        conn: Connection,
        data: bytes,
        *,
        binary: bool = False,
        request_id: str | None,
        timeout_s: float | None = None,
    ) -> None:
        """Invoke the message's route and forward the two-way reply (or the failure) to the connection.

        The function's other replies reach the connection through @connections while this waits.
        `timeout_s`: the integration timeout (the WebSocket API's): past it the client gets API Gateway's
        timeout message and the function runs on unawaited. None: wait for the function (the HTTP API)."""
        route_key = self.route_for(action_of(data))
        event = self.event(conn, route_key, "MESSAGE", body=data, binary=binary)
        # The correlation id of everything this message causes: the event's requestId (fresh per message, as
        # API Gateway's), which the function's log lines and its Bedrock calls carry too.
        with bound(
            correlation_id=event["requestContext"]["requestId"],
            connection_id=conn.id,
            request_id=request_id,
            route=route_key,
        ):
            log.info("message on %s: route %s", conn.id, route_key)
            await self._message(conn, route_key, event, request_id, timeout_s)

    async def _message(
        self, conn: Connection, route_key: str, event: dict[str, Any], request_id: str | None, timeout_s: float | None
    ) -> None:
        self.stats.in_flight += 1
        try:
            invocation = asyncio.create_task(self.invoke(route_key, event, timeout_s=INVOCATION_CAP_S))
            try:
                result = await asyncio.wait_for(asyncio.shield(invocation), timeout_s)
            except TimeoutError:
                if invocation.done():  # it ended just as the wait did: forward it after all
                    result = invocation.result()
                else:
                    self._run_on(invocation, conn.id, route_key)
                    await self.reply(conn, timed_out(conn.id, event["requestContext"]["requestId"]))
                    return
            # A two-way route: the integration's response body goes back to the client (elsewhere it is dropped).
            if result is not None and result.get("body") and route_key in self.settings.two_way_routes:
                body = result["body"]
                await self.reply(conn, body.encode("utf-8") if isinstance(body, str) else json.dumps(body).encode())
        except InvokeFailed as exc:
            await self.reply(conn, encode(error(exc.code, exc.message, request_id)))
        except Exception as exc:
            log.error(
                "message on %s (route %s) failed: %s at %s",
                conn.id,
                route_key,
                type(exc).__name__,
                error_where(exc.__traceback__),
                extra={"error_type": type(exc).__name__},
            )
            await self.reply(conn, encode(error(ErrorCode.INTERNAL_ERROR, "internal error", request_id)))
        finally:
            self.stats.in_flight -= 1

    def _run_on(self, invocation: asyncio.Task[dict[str, Any] | None], connection_id: str, route_key: str) -> None:
        """The integration timeout passed: the client has been told; the function runs on, and whatever it
        returns (or how it fails) is only logged."""
        self.stats.timed_out += 1
        self.stats.running_on += 1
        self._running_on.add(invocation)
        log.warning(
            "message on %s (route %s): no answer within the %.1fs integration timeout; the function runs on",
            connection_id,
            route_key,
            self.settings.integration_timeout_s,
        )

        def done(task: asyncio.Task[dict[str, Any] | None]) -> None:
            self._running_on.discard(task)
            self.stats.running_on -= 1
            if task.cancelled():
                return
            exc = task.exception()
            outcome = type(exc).__name__ if exc is not None else "returned"
            log.info(
                "the run-on invocation for %s (route %s) ended (%s); its result is dropped",
                connection_id,
                route_key,
                outcome,
            )

        invocation.add_done_callback(done)

    @staticmethod
    async def reply(conn: Connection, data: bytes) -> None:
        """Send to the connection unless it has gone (then there is no one to tell)."""
        if conn.ws.closed:
            return
        with contextlib.suppress(ConnectionResetError, aiohttp.ClientConnectionResetError):
            await conn.send(data)

    # ------------------------------------------------------------------ Lambda Invoke

    async def invoke(
        self, route_key: str, event: dict[str, Any], *, throttle_wait_s: float = 0.0, timeout_s: float | None = None
    ) -> dict[str, Any] | None:
        """Invoke the function behind `route_key` (Lambda Invoke API, RequestResponse); its result, or None
        when no route has that key. `timeout_s`: see ``call``."""
        function = self.settings.routes.get(route_key)
        if function is None:
            return None
        self.stats.invocations += 1
        result = await self.call(function, event, throttle_wait_s=throttle_wait_s, timeout_s=timeout_s)
        if result.function_error:
            _, error_type = result.error()
            # The type only: the payload's errorMessage and stackTrace stay out of the log (house rule).
            log.error("function %s failed on %s: %s", function, route_key, error_type or result.function_error)
            if error_type == "Sandbox.Timedout":
                raise InvokeFailed(ErrorCode.UPSTREAM_TIMEOUT, "the function timed out")
            raise InvokeFailed(ErrorCode.FUNCTION_ERROR, "the function failed; see its log")
        try:
            payload = json.loads(result.body) if result.body else None
        except ValueError:
            log.error("function %s answered %s with a payload that is not JSON", function, route_key)
            raise InvokeFailed(ErrorCode.FUNCTION_ERROR, "the function's answer is not JSON") from None
        return payload if isinstance(payload, dict) else None

    async def call(
        self, function: str, event: dict[str, Any], *, throttle_wait_s: float = 0.0, timeout_s: float | None = None
    ) -> Invocation:
        """POST the event to the function's Invoke URL, signed (SigV4, service ``lambda``) with the stack's
        internal key, within its concurrency slot and `timeout_s` (default: the integration timeout, as for
        the authorizer and $connect; a message's invocation passes INVOCATION_CAP_S and is timed by
        ``message``).

        A throttled invocation (429) is retried with jittered exponential backoff for up to
        `throttle_wait_s` seconds (0: not retried), then fails with ``throttled``."""
        settings = self.settings
        url = settings.functions.get(function)
        if url is None:
            log.error("function %s has no invoke URL (GATEWAY_FUNCTIONS)", function)
            raise InvokeFailed(ErrorCode.UPSTREAM_UNAVAILABLE, "this route is not configured")
        slot = self._slots.get(function)
        loop = asyncio.get_running_loop()
        give_up = loop.time() + throttle_wait_s
        backoff, backoff_max = THROTTLE_BACKOFF_S
        limit_s = settings.integration_timeout_s if timeout_s is None else timeout_s
        try:
            async with asyncio.timeout(limit_s):
                while True:
                    try:
                        async with slot or contextlib.nullcontext():
                            return await self._post(function, url, event, limit_s)
                    except InvokeFailed as exc:
                        if exc.code != ErrorCode.THROTTLED:
                            raise
                        self.stats.throttled += 1
                        log.warning("function %s throttled (429 TooManyRequestsException)", function)
                        wait = backoff / 2 + random.uniform(0, backoff / 2)
                        if loop.time() + wait > give_up:
                            if throttle_wait_s > 0:
                                log.warning("%s still throttled after %.1fs; giving up", function, throttle_wait_s)
                            raise
                    await asyncio.sleep(wait)
                    backoff = min(backoff * 2, backoff_max)
        except TimeoutError:
            log.error("invoke %s timed out after %.1fs", function, limit_s)
            raise InvokeFailed(ErrorCode.UPSTREAM_TIMEOUT, "the function did not answer in time") from None

    async def _post(self, function: str, url: str, event: dict[str, Any], limit_s: float) -> Invocation:
        if self._http is None:
            raise RuntimeError("the Lambda integration's HTTP client is not open (client_ctx)")
        timeout = aiohttp.ClientTimeout(total=limit_s, connect=5)
        body = json.dumps(event).encode("utf-8")
        headers = {"Content-Type": "application/json"}
        key = self.settings.internal.signing_key()
        if key is not None:
            headers = sign("POST", url, headers, body, key=key, service="lambda", region=self.settings.region)
        try:
            async with self._http.post(url, data=body, headers=headers, timeout=timeout) as resp:
                payload = await resp.read()
                if resp.status == 429:
                    raise InvokeFailed(ErrorCode.THROTTLED, "too many requests in flight; retry shortly")
                if resp.status >= 300:
                    log.error("invoke %s -> HTTP %s", function, resp.status)
                    raise InvokeFailed(ErrorCode.FUNCTION_ERROR, "the function could not be invoked")
                return Invocation(payload, resp.headers.get("X-Amz-Function-Error") or None)
        except aiohttp.ClientError as exc:
            log.error("invoke %s unreachable: %s", function, type(exc).__name__)
            raise InvokeFailed(ErrorCode.UPSTREAM_UNAVAILABLE, f"the {function} service is unavailable") from None
