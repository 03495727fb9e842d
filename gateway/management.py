"""The API Gateway Management API the lambdas reply through, and the gateway's ``/health``.

``POST|GET|DELETE /{stage}/@connections/{id}`` (and without the stage). A connection that is closed (or
a pseudo-connection whose HTTP request is over) answers 410 GoneException, as AWS does. Connection ids
may contain ``/`` and ``+`` (they are base64, like AWS's): clients percent-encode them in the path, as
botocore does, and aiohttp decodes them before the lookup.
"""

from __future__ import annotations

from dataclasses import asdict

import aiohttp
from aiohttp import web

from gateway.keys import CONNECTIONS, INTEGRATION, SETTINGS
from shared.aws_http import aws_error_response
from shared.timing import iso_utc


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
    conns = request.app[CONNECTIONS].all()
    # Connection ids are listed for local debugging and tests (API Gateway has no such endpoint).
    body: dict[str, object] = {"status": "ok", "connections": len(conns), "connection_ids": [c.id for c in conns]}
    body.update(asdict(request.app[INTEGRATION].stats))
    return web.json_response(body)


def add_management_routes(app: web.Application, stage: str) -> None:
    """@connections (with and without the stage prefix) and /health."""
    for prefix in ("", f"/{stage}"):
        app.router.add_post(prefix + "/@connections/{connection_id}", post_to_connection)
        app.router.add_get(prefix + "/@connections/{connection_id}", get_connection)
        app.router.add_delete(prefix + "/@connections/{connection_id}", delete_connection)
    app.router.add_get("/health", health)
