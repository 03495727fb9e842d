"""A local API Gateway WebSocket API.

- ``GET /{stage}`` (and ``/``): the WebSocket endpoint. ``$connect``/``$disconnect`` and every message
  are turned into the event API Gateway sends Lambda and POSTed to the route's function through the
  Lambda Invoke API. Route selection: ``$request.body.action``, else ``$default``.
- ``POST|GET|DELETE /{stage}/@connections/{id}`` (and without the stage): the Management API the
  lambdas reply through; a closed connection answers 410 GoneException, as AWS does.
- ``PUT /{stage}/uploads/{id}/{filename}?expires=..&signature=..``: stands in for a presigned S3 PUT
  when documents live in a local folder. The ingestion lambda signs (``upload_url``), this checks the
  signature and expiry and streams the body into the documents folder's ``uploads/`` (a temporary file,
  renamed when complete). Errors are S3's: 403 AccessDenied / SignatureDoesNotMatch, 413 EntityTooLarge.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import logging
import os
import time
import uuid
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import aiohttp
from aiohttp import WSMsgType, web

from gateway.connections import Connection, ConnectionTable, new_connection_id
from gateway.settings import Settings
from gateway.web import add_web_routes
from shared.aws_http import aws_error_response
from shared.events import EventType, build_event
from shared.object_store import UPLOADS_PREFIX, is_upload_key, verify_upload
from shared.protocol import ErrorCode, action_of, encode, error, request_id_of

log = logging.getLogger(__name__)

SETTINGS: web.AppKey[Settings] = web.AppKey("settings", Settings)
CONNECTIONS: web.AppKey[ConnectionTable] = web.AppKey("connections", ConnectionTable)
HTTP: web.AppKey[aiohttp.ClientSession] = web.AppKey("http", aiohttp.ClientSession)


@dataclass
class Stats:
    invocations: int = 0
    posts: int = 0


STATS = web.AppKey("stats", Stats)
SLOTS = web.AppKey("function_slots", dict[str, asyncio.Semaphore])


class InvokeFailed(Exception):
    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


# ---------------------------------------------------------------------- lambda integration


async def invoke(app: web.Application, route_key: str, event: dict[str, Any]) -> dict[str, Any] | None:
    """Invoke the function behind `route_key` (Lambda Invoke API, RequestResponse). Returns its result."""
    settings = app[SETTINGS]
    function = settings.routes.get(route_key)
    if function is None:
        return None
    url = settings.functions.get(function)
    if url is None:
        log.error("route %s names function %s, which has no invoke URL", route_key, function)
        raise InvokeFailed(ErrorCode.UPSTREAM_UNAVAILABLE, "this route is not configured")
    timeout = aiohttp.ClientTimeout(total=settings.integration_timeout_s, connect=5)
    app[STATS].invocations += 1
    slot = app[SLOTS].get(function)
    try:
        async with asyncio.timeout(settings.integration_timeout_s), slot or contextlib.nullcontext():
            return await _post_invoke(app, function, route_key, url, event, timeout)
    except TimeoutError:
        log.error("invoke %s timed out after %.0fs", function, settings.integration_timeout_s)
        raise InvokeFailed(ErrorCode.UPSTREAM_TIMEOUT, "the function did not answer in time") from None


async def _post_invoke(
    app: web.Application, function: str, route_key: str, url: str, event: dict[str, Any], timeout: aiohttp.ClientTimeout
) -> dict[str, Any] | None:
    try:
        async with app[HTTP].post(url, json=event, timeout=timeout) as resp:
            body = await resp.read()
            if resp.status == 429:
                raise InvokeFailed(ErrorCode.THROTTLED, "too many requests in flight; retry shortly")
            if resp.status >= 300:
                log.error("invoke %s -> HTTP %s: %s", function, resp.status, body[:500])
                raise InvokeFailed(ErrorCode.FUNCTION_ERROR, "the function could not be invoked")
            if resp.headers.get("X-Amz-Function-Error"):
                log.error("function %s failed on %s: %s", function, route_key, body[:2000])
                err_type = _error_type(body)
                if err_type == "Sandbox.Timedout":
                    raise InvokeFailed(ErrorCode.UPSTREAM_TIMEOUT, "the function timed out")
                raise InvokeFailed(ErrorCode.FUNCTION_ERROR, "the function failed; see its log")
            result = json.loads(body) if body else None
            return result if isinstance(result, dict) else None
    except aiohttp.ClientError as exc:
        log.error("invoke %s unreachable: %s", function, exc)
        raise InvokeFailed(ErrorCode.UPSTREAM_UNAVAILABLE, f"the {function} service is unavailable") from None


def _error_type(body: bytes) -> str:
    try:
        return str(json.loads(body).get("errorType", ""))
    except (ValueError, AttributeError):
        return ""


def _event(
    app: web.Application,
    conn: Connection,
    route_key: str,
    event_type: EventType,
    *,
    body: bytes | None = None,
    binary: bool = False,
    request: web.Request | None = None,
    close_code: int | None = None,
) -> dict[str, Any]:
    settings = app[SETTINGS]
    text: str | None = None
    if body is not None:
        text = base64.b64encode(body).decode() if binary else body.decode("utf-8")
    headers = dict(request.headers) if request is not None else None
    query = dict(request.query) if request is not None else None
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
        headers=headers,
        query=query,
        disconnect_status_code=close_code,
        disconnect_reason="" if close_code is not None else None,
    ).to_aws()


# ---------------------------------------------------------------------- WebSocket API


async def websocket_handler(request: web.Request) -> web.StreamResponse:
    app = request.app
    settings = app[SETTINGS]
    peer = request.transport.get_extra_info("peername") if request.transport else None
    ws = web.WebSocketResponse(max_msg_size=settings.hard_max_message_bytes, heartbeat=30.0)
    conn = Connection(
        id=new_connection_id(),
        ws=ws,
        source_ip=peer[0] if peer else "127.0.0.1",
        user_agent=request.headers.get("User-Agent", ""),
    )
    # $connect runs before the handshake completes: a failing or refusing $connect rejects it.
    try:
        result = await invoke(app, "$connect", _event(app, conn, "$connect", "CONNECT", request=request))
    except InvokeFailed as exc:
        log.warning("$connect failed for %s: %s", conn.id, exc.message)
        return web.json_response({"message": "Internal server error"}, status=500)
    if result is not None and int(result.get("statusCode", 200)) >= 300:
        return web.json_response({"message": "Forbidden"}, status=int(result.get("statusCode", 403)))

    await ws.prepare(request)
    app[CONNECTIONS].add(conn)
    log.info("connected %s from %s", conn.id, conn.source_ip)
    tasks: set[asyncio.Task[None]] = set()
    close_code: int | None = None
    idle = asyncio.create_task(_idle_watch(conn, settings.idle_timeout_s))
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
            task = asyncio.create_task(_on_message(app, conn, data, binary))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
    finally:
        close_code = ws.close_code
        idle.cancel()
        app[CONNECTIONS].remove(conn.id)
        log.info("disconnected %s (%s)", conn.id, close_code)
        # In-flight invocations finish on their own; their replies then get 410 Gone.
        try:
            await invoke(
                app,
                "$disconnect",
                _event(app, conn, "$disconnect", "DISCONNECT", close_code=close_code or 1005),
            )
        except InvokeFailed as exc:
            log.warning("$disconnect failed for %s: %s", conn.id, exc.message)
    return ws


async def _idle_watch(conn: Connection, idle_timeout_s: float) -> None:
    while not conn.ws.closed:
        remaining = idle_timeout_s - (time.monotonic() - conn.last_active)
        if remaining <= 0:
            log.info("closing idle connection %s", conn.id)
            await conn.ws.close(code=1001, message=b"Going away: idle timeout")
            return
        await asyncio.sleep(min(remaining, 5.0))


async def _on_message(app: web.Application, conn: Connection, data: bytes, binary: bool) -> None:
    settings = app[SETTINGS]

    async def reply_error(code: ErrorCode, message: str, request_id: str | None) -> None:
        if not conn.ws.closed:
            await conn.send(encode(error(code, message, request_id)))

    if len(data) > settings.max_message_bytes:
        await reply_error(
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
            await reply_error(ErrorCode.INVALID_UTF8, "the message is not valid UTF-8", None)
            return
    request_id = request_id_of(data)
    if not data.strip():
        await reply_error(ErrorCode.EMPTY_MESSAGE, "the message is empty", request_id)
        return
    if conn.inflight >= settings.max_inflight_per_connection:
        await reply_error(
            ErrorCode.THROTTLED,
            f"at most {settings.max_inflight_per_connection} requests may be in flight per connection",
            request_id,
        )
        return
    action = action_of(data)
    route_key = action if action is not None and action in settings.routes else "$default"
    conn.inflight += 1
    try:
        result = await invoke(app, route_key, _event(app, conn, route_key, "MESSAGE", body=data, binary=binary))
        # A two-way route: the integration's response body goes back to the client.
        if result is not None and result.get("body") and not conn.ws.closed:
            body = result["body"]
            await conn.send(body.encode("utf-8") if isinstance(body, str) else json.dumps(body).encode())
    except InvokeFailed as exc:
        await reply_error(exc.code, exc.message, request_id)
    except Exception:
        log.exception("message on %s failed", conn.id)
        await reply_error(ErrorCode.INTERNAL_ERROR, "internal error", request_id)
    finally:
        conn.inflight -= 1


# ---------------------------------------------------------------------- @connections API


def _gone(connection_id: str) -> web.Response:
    return aws_error_response(410, "GoneException", f"Connection {connection_id} is gone")


async def post_to_connection(request: web.Request) -> web.Response:
    cid = request.match_info["connection_id"]
    conn = request.app[CONNECTIONS].get(cid)
    data = await request.read()
    if len(data) > request.app[SETTINGS].max_message_bytes:
        return aws_error_response(413, "PayloadTooLargeException", "Message too large")
    if conn is None:
        return _gone(cid)
    try:
        await conn.send(data)
    except (ConnectionResetError, RuntimeError, aiohttp.ClientConnectionResetError):
        return _gone(cid)
    request.app[STATS].posts += 1
    return web.Response(status=200)


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


async def get_connection(request: web.Request) -> web.Response:
    cid = request.match_info["connection_id"]
    conn = request.app[CONNECTIONS].get(cid)
    if conn is None:
        return _gone(cid)
    return web.json_response(
        {
            "connectedAt": _iso(conn.connected_at),
            "identity": {"sourceIp": conn.source_ip, "userAgent": conn.user_agent},
            "lastActiveAt": _iso(conn.last_active_wall),
        }
    )


async def delete_connection(request: web.Request) -> web.Response:
    cid = request.match_info["connection_id"]
    conn = request.app[CONNECTIONS].get(cid)
    if conn is None:
        return _gone(cid)
    await conn.ws.close(code=1000, message=b"Closed by the server")
    return web.Response(status=204)


# ---------------------------------------------------------------------- presigned PUT stand-in


# The signature is the credential (as for a presigned S3 URL), so any origin may PUT: a browser page
# served from another origin (the web UI on localhost vs 127.0.0.1) can upload with a CORS preflight.
UPLOAD_CORS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "PUT",
    "Access-Control-Allow-Headers": "Content-Type",
    "Access-Control-Expose-Headers": "ETag",
    "Access-Control-Max-Age": "600",
}


def s3_error(status: int, code: str, message: str) -> web.Response:
    """An S3-style XML error body."""
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>{escape(message)}</Message><RequestId>{uuid.uuid4().hex}</RequestId>"
        "</Error>"
    )
    return web.Response(status=status, body=body.encode(), content_type="application/xml", headers=UPLOAD_CORS)


async def upload_preflight(request: web.Request) -> web.Response:
    return web.Response(status=204, headers=UPLOAD_CORS)


class _TooLarge(Exception):
    pass


async def upload_put(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    if not settings.upload_secret:
        return s3_error(403, "AccessDenied", "Uploads are not enabled on this gateway")
    key = UPLOADS_PREFIX + request.match_info["rest"]
    if not is_upload_key(key):
        return s3_error(400, "InvalidArgument", "Not an upload key")
    try:
        expires = int(request.query["expires"])
        signature = request.query["signature"]
        if not signature:
            raise ValueError("empty signature")
    except (KeyError, ValueError):
        return s3_error(403, "AccessDenied", "Query-string authentication requires expires and signature")
    content_type = request.headers.get("Content-Type", "")
    if not verify_upload(settings.upload_secret, "PUT", key, expires, content_type, signature):
        return s3_error(
            403,
            "SignatureDoesNotMatch",
            "The request signature we calculated does not match the signature you provided "
            "(the key, expiry and Content-Type are signed)",
        )
    if expires < time.time():
        return s3_error(403, "AccessDenied", "Request has expired")
    limit = settings.max_upload_bytes
    if request.content_length is not None and request.content_length > limit:
        return s3_error(413, "EntityTooLarge", f"Your proposed upload exceeds the maximum allowed size ({limit} bytes)")

    path = Path(settings.documents_dir) / key
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".part-{uuid.uuid4().hex}"
    md5 = hashlib.md5(usedforsecurity=False)
    total = 0
    try:
        with tmp.open("wb") as f:
            async for block in request.content.iter_chunked(1 << 16):
                total += len(block)
                if total > limit:
                    raise _TooLarge
                f.write(block)
                md5.update(block)
        os.replace(tmp, path)
    except _TooLarge:
        tmp.unlink(missing_ok=True)
        _remove_empty(path.parent)
        return s3_error(413, "EntityTooLarge", f"Your upload exceeds the maximum allowed size ({limit} bytes)")
    except BaseException:
        # The client went away (or the server is stopping): leave nothing half-written.
        tmp.unlink(missing_ok=True)
        _remove_empty(path.parent)
        raise
    log.info("upload %s: %d bytes", key, total)
    return web.Response(status=200, headers={**UPLOAD_CORS, "ETag": f'"{md5.hexdigest()}"'})


def _remove_empty(folder: Path) -> None:
    with contextlib.suppress(OSError):
        folder.rmdir()


async def health(request: web.Request) -> web.Response:
    conns = request.app[CONNECTIONS].all()
    # Connection ids are listed for local debugging and tests (API Gateway has no such endpoint).
    body: dict[str, object] = {"status": "ok", "connections": len(conns), "connection_ids": [c.id for c in conns]}
    body.update(asdict(request.app[STATS]))
    return web.json_response(body)


# ---------------------------------------------------------------------- app factory


def create_app(settings: Settings) -> web.Application:
    app = web.Application(client_max_size=settings.hard_max_message_bytes)
    app[SETTINGS] = settings
    app[CONNECTIONS] = ConnectionTable()
    app[STATS] = Stats()
    app[SLOTS] = {name: asyncio.Semaphore(n) for name, n in settings.function_concurrency.items()}

    async def http_client(app: web.Application) -> Any:
        connector = aiohttp.TCPConnector(limit=64, keepalive_timeout=60)
        app[HTTP] = aiohttp.ClientSession(connector=connector)
        yield
        await app[HTTP].close()

    async def close_all(app: web.Application) -> None:
        for conn in app[CONNECTIONS].all():
            await conn.ws.close(code=1001, message=b"Server shutting down")

    app.cleanup_ctx.append(http_client)
    app.on_shutdown.append(close_all)
    for prefix in ("", f"/{settings.stage}"):
        app.router.add_post(prefix + "/@connections/{connection_id}", post_to_connection)
        app.router.add_get(prefix + "/@connections/{connection_id}", get_connection)
        app.router.add_delete(prefix + "/@connections/{connection_id}", delete_connection)
    app.router.add_get("/health", health)
    add_web_routes(app, settings.stage)
    from gateway.http_api import add_http_api  # imports this module: import it here, not at the top

    add_http_api(app, settings)
    app.router.add_put(f"/{settings.stage}/{UPLOADS_PREFIX}{{rest:.+}}", upload_put)
    app.router.add_route("OPTIONS", f"/{settings.stage}/{UPLOADS_PREFIX}{{rest:.+}}", upload_preflight)
    app.router.add_get(f"/{settings.stage}", websocket_handler)
    app.router.add_get("/", websocket_handler)
    return app
