"""The WebSocket API: ``GET /{stage}`` (and ``/``).

Before the handshake completes, in API Gateway's order: the Origin check (``gateway/security.py``), the
``$connect`` REQUEST authorizer (``gateway/authorization.py``: 401/403/500 refuse the handshake before
any other function runs), then the ``$connect`` route's function (a failing or refusing ``$connect``
rejects it). Each message is checked against API Gateway's limits and handed to the Lambda integration
(``gateway/integration.py``); ``$disconnect`` is invoked when the socket closes, however it closes. Every
event carries the authorizer's context in ``requestContext.authorizer``.

API Gateway's quotas, by default at AWS's values (``gateway/settings.py`` loosens them):

- new connections over GATEWAY_CONNECT_RATE_LIMIT: the handshake gets 429 ``{"message": "Too Many
  Requests"}`` before the authorizer runs;
- a frame over 32 KB, or a message over 128 KB in all its frames: the connection closes with 1009;
- a message over the stage's throttle (rate and burst): ``{"message": "Too Many Requests", "connectionId",
  "requestId"}``, nothing is invoked, the connection stays open. Not to be confused with our protocol's
  ``throttled`` error (``{"type": "error", "code": "throttled", "request_id"}``): that one means the
  *function* is busy (its concurrency is used up, or GATEWAY_MAX_INFLIGHT_PER_CONNECTION is reached);
- a function that has not answered within the integration timeout (29 s): ``{"message": "Endpoint request
  timed out", ...}`` while the function runs on (``gateway/integration.py``);
- idle for 10 minutes, or open for 2 hours: closed with 1001 (Going away); $disconnect runs as usual.

Subprotocol: browsers cannot set headers on a WebSocket, so the web chat offers ``localrag.v1`` and
``localrag.bearer.<credential>``; the handshake answers ``localrag.v1`` only (never the credential).
"""

from __future__ import annotations

import asyncio
import logging
import time

from aiohttp import WSMsgType, web

from gateway.authorization import Call, Refused
from gateway.connections import Connection, new_connection_id, new_request_id
from gateway.integration import InvokeFailed, LambdaIntegration, apigw_message, connect_refusal
from gateway.keys import AUTHORIZER, CONNECTIONS, INTEGRATION, POLICY, SETTINGS
from gateway.limits import FrameLimitedResponse
from gateway.settings import Settings
from shared.protocol import ErrorCode, encode, error, request_id_of

log = logging.getLogger(__name__)

SUBPROTOCOL = "localrag.v1"
_MESSAGES = {401: "Unauthorized", 403: "Forbidden", 429: "Too Many Requests", 500: "Internal server error"}


def refusal(status: int, code: str) -> web.Response:
    """A refused handshake, as API Gateway answers it ({"message"}), with our stable code."""
    return web.json_response({"message": _MESSAGES.get(status, "Forbidden"), "code": code}, status=status)


def offered_subprotocols(request: web.BaseRequest) -> list[str]:
    return [p.strip() for h in request.headers.getall("Sec-WebSocket-Protocol", []) for p in h.split(",") if p.strip()]


def handshake_request(request: web.Request) -> web.Request:
    """The request to complete the handshake with: its Sec-WebSocket-Protocol cut down to ``localrag.v1``
    (or removed), so that no credential offered as a subprotocol is echoed, or logged by aiohttp."""
    if "Sec-WebSocket-Protocol" not in request.headers:
        return request
    headers = request.headers.copy()
    del headers["Sec-WebSocket-Protocol"]
    if SUBPROTOCOL in offered_subprotocols(request):
        headers["Sec-WebSocket-Protocol"] = SUBPROTOCOL
    return request.clone(headers=headers)


async def websocket_handler(request: web.Request) -> web.StreamResponse:
    app = request.app
    settings, integration, connections = app[SETTINGS], app[INTEGRATION], app[CONNECTIONS]
    if not app[POLICY].request_origin_allowed(request):
        return refusal(403, "origin_not_allowed")
    if not integration.connect_throttle.take():
        integration.stats.throttled_connects += 1
        return refusal(429, "throttled")
    peer = request.transport.get_extra_info("peername") if request.transport else None
    ws = FrameLimitedResponse(
        max_frame_bytes=settings.max_frame_bytes,
        # aiohttp refuses a message of exactly max_msg_size bytes: the limit itself is allowed.
        max_msg_size=settings.hard_max_message_bytes + 1,
        heartbeat=30.0,
        protocols=(SUBPROTOCOL,),
    )
    conn = Connection(
        id=new_connection_id(),
        ws=ws,
        source_ip=peer[0] if peer else "127.0.0.1",
        user_agent=request.headers.get("User-Agent", ""),
    )
    call = Call("$connect", "$connect", connection_id=conn.id, connected_at_ms=int(conn.connected_at * 1000))
    try:
        conn.authorizer = await app[AUTHORIZER].authorize(request, call)
    except Refused as exc:
        log.info("$connect refused (%s %s) from %s", exc.status, exc.code, conn.source_ip)
        return refusal(exc.status, exc.code)
    try:
        result = await integration.connect(conn, request)
    except InvokeFailed as exc:
        log.warning("$connect failed for %s: %s", conn.id, exc.message)
        return refusal(*connect_refusal(exc))
    if result is not None and int(result.get("statusCode", 200)) >= 300:
        status = int(result.get("statusCode", 403))
        return web.json_response({"message": _MESSAGES.get(status, "Forbidden")}, status=status)

    await ws.prepare(handshake_request(request))
    connections.add(conn)
    log.info("connected %s from %s", conn.id, conn.source_ip)
    tasks: set[asyncio.Task[None]] = set()
    idle = asyncio.create_task(_lifetime_watch(conn, settings.idle_timeout_s, settings.max_connection_s))
    try:
        async for msg in ws:
            conn.touch()
            if msg.type == WSMsgType.TEXT:
                data = msg.data.encode("utf-8")
                binary = False
            elif msg.type == WSMsgType.BINARY:
                data = msg.data
                binary = True
            elif msg.type == WSMsgType.ERROR:
                log.info("connection %s error: %s", conn.id, ws.exception())
                break
            else:
                continue
            task = asyncio.create_task(_on_message(settings, integration, conn, data, binary))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
    finally:
        close_code = conn.closed_with or ws.close_code
        idle.cancel()
        connections.remove(conn.id)
        log.info("disconnected %s (%s)", conn.id, close_code)
        # In-flight invocations finish on their own; their replies then get 410 Gone.
        await integration.disconnect(conn, close_code or 1005)
    return ws


async def _lifetime_watch(conn: Connection, idle_timeout_s: float, max_connection_s: float) -> None:
    """Close the connection when it has been idle for `idle_timeout_s`, or open for `max_connection_s`."""
    opened = time.monotonic()
    while not conn.ws.closed:
        now = time.monotonic()
        idle_left = idle_timeout_s - (now - conn.last_active)
        age_left = max_connection_s - (now - opened)
        if age_left <= 0:
            log.info("closing connection %s: open for %.0fs, the longest a connection lasts", conn.id, max_connection_s)
            conn.closed_with = 1001
            await conn.ws.close(code=1001, message=b"Going away")
            return
        if idle_left <= 0:
            log.info("closing idle connection %s", conn.id)
            conn.closed_with = 1001
            await conn.ws.close(code=1001, message=b"Going away: idle timeout")
            return
        await asyncio.sleep(min(idle_left, age_left, 5.0))


async def _on_message(
    settings: Settings, integration: LambdaIntegration, conn: Connection, data: bytes, binary: bool
) -> None:
    """API Gateway's checks on one message, then the integration; a refused message gets an error reply."""

    async def refuse(code: ErrorCode, message: str, request_id: str | None) -> None:
        await integration.reply(conn, encode(error(code, message, request_id)))

    if len(data) > settings.max_message_bytes:
        await refuse(
            ErrorCode.MESSAGE_TOO_LARGE,
            f"message is {len(data)} bytes; the limit is {settings.max_message_bytes} "
            "(upload large documents to the documents bucket instead)",
            None,
        )
        return
    if binary:
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            await refuse(ErrorCode.INVALID_UTF8, "the message is not valid UTF-8", None)
            return
    if not integration.message_throttle.take():
        # API Gateway's answer to a throttled message (the stage's rate/burst): no function runs.
        integration.stats.throttled_messages += 1
        await integration.reply(conn, apigw_message("Too Many Requests", conn.id, new_request_id()))
        return
    request_id = request_id_of(data)
    if not data.strip():
        await refuse(ErrorCode.EMPTY_MESSAGE, "the message is empty", request_id)
        return
    if conn.inflight >= settings.max_inflight_per_connection:
        await refuse(
            ErrorCode.THROTTLED,
            f"at most {settings.max_inflight_per_connection} requests may be in flight per connection",
            request_id,
        )
        return
    conn.inflight += 1
    try:
        await integration.message(
            conn, data, binary=binary, request_id=request_id, timeout_s=settings.integration_timeout_s
        )
    finally:
        conn.inflight -= 1
