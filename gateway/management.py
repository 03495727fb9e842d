"""The API Gateway Management API the lambdas reply through, and the gateway's ``/health``.

``POST|GET|DELETE /{stage}/@connections/{id}`` (and without the stage), on the gateway's *internal*
listener only (GATEWAY_MANAGEMENT_HOST/PORT, loopback by default), and only for requests SigV4-signed
(service ``execute-api``) with the stack's internal key, as AWS accepts only IAM-signed calls: the lambdas'
boto3 clients sign with it; nothing a client of the public listener has can. Unsigned or wrongly signed
requests get AWS's 403 (MissingAuthenticationToken, UnrecognizedClientException,
InvalidSignatureException). A connection that is closed (or a pseudo-connection whose HTTP request is
over) answers 410 GoneException, as AWS does. Connection ids may contain ``/`` and ``+`` (they are base64,
like AWS's): clients percent-encode them in the path, as botocore does, and aiohttp decodes them before
the lookup. Data over 128 KB (GATEWAY_MAX_MESSAGE_BYTES) gets 413 PayloadTooLargeException; calls over
GATEWAY_MANAGEMENT_RATE_LIMIT get 429 LimitExceededException (botocore's 'standard' retry mode retries it).

``GET /health`` (public listener) tells counts only: connections, invocations in flight, and so on.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import asdict

import aiohttp
from aiohttp import web

from gateway.keys import AUTHORIZER, CONNECTIONS, INTEGRATION, SETTINGS
from shared.aws_http import aws_error_response
from shared.sigv4 import SignatureError, verify
from shared.timing import iso_utc

log = logging.getLogger(__name__)


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
    request.app[INTEGRATION].stats.posts += 1
    return web.Response(status=200)


async def get_connection(request: web.Request) -> web.Response:
    cid = request.match_info["connection_id"]
    conn = request.app[CONNECTIONS].get(cid)
    if conn is None:
        return _gone(cid)
    return web.json_response(
        {
            "connectedAt": iso_utc(conn.connected_at, z=True),
            "identity": {"sourceIp": conn.source_ip, "userAgent": conn.user_agent},
            "lastActiveAt": iso_utc(conn.last_active_wall, z=True),
        }
    )


async def delete_connection(request: web.Request) -> web.Response:
    cid = request.match_info["connection_id"]
    conn = request.app[CONNECTIONS].get(cid)
    if conn is None:
        return _gone(cid)
    await conn.ws.close(code=1000, message=b"Closed by the server")
    return web.Response(status=204)


async def health(request: web.Request) -> web.Response:
    """Counts only: never a connection id (an id is what @connections acts on)."""
    body: dict[str, object] = {"status": "ok", "connections": len(request.app[CONNECTIONS])}
    body.update(asdict(request.app[INTEGRATION].stats))
    body.update(asdict(request.app[AUTHORIZER].stats))
    return web.json_response(body)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def sigv4_only(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every request of the internal listener must be signed (SigV4, ``execute-api``) with the internal key."""
    try:
        body = await request.read()  # the payload is signed too; read() keeps it for the handler
    except web.HTTPRequestEntityTooLarge:  # over the application's client_max_size: AWS's 413, in its shape
        return aws_error_response(413, "PayloadTooLargeException", "Message too large")
    host = request.headers.get("Host", request.host)
    url = f"{request.scheme}://{host}{request.raw_path}"
    keys = request.app[SETTINGS].internal.verification_keys()
    try:
        verify(request.method, url, request.headers, body, keys=keys, service="execute-api")
    except SignatureError as exc:
        log.warning("@connections %s refused: %s", request.method, exc.code)
        return aws_error_response(403, exc.code, exc.message)
    return await handler(request)


def add_health_route(app: web.Application) -> None:
    app.router.add_get("/health", health)


def throttled(handler: Handler) -> Handler:
    """The @connections rate (API Gateway's account-level throttle): over it, 429 LimitExceededException."""

    async def limited(request: web.Request) -> web.StreamResponse:
        integration = request.app[INTEGRATION]
        if not integration.management_throttle.take():
            integration.stats.throttled_posts += 1
            return aws_error_response(429, "LimitExceededException", "Rate exceeded")
        return await handler(request)

    return limited


def add_management_routes(app: web.Application, stage: str) -> None:
    """@connections, with and without the stage prefix (on the internal application, behind sigv4_only)."""
    for prefix in ("", f"/{stage}"):
        app.router.add_post(prefix + "/@connections/{connection_id}", throttled(post_to_connection))
        app.router.add_get(prefix + "/@connections/{connection_id}", throttled(get_connection))
        app.router.add_delete(prefix + "/@connections/{connection_id}", throttled(delete_connection))
