"""A local API Gateway: the gateway's aiohttp application, composed from its parts.

- ``GET /{stage}`` (and ``/``): the WebSocket API (``gateway/websocket.py``). ``$connect``/``$disconnect``
  and every message become the event API Gateway sends Lambda and go to the route's function through the
  Lambda Invoke API (``gateway/integration.py``). Route selection: ``$request.body.action``, else ``$default``.
- ``POST|GET|DELETE /{stage}/@connections/{id}`` (and without the stage): the Management API the lambdas
  reply through, and ``GET /health`` (``gateway/management.py``).
- ``PUT /{stage}/uploads/...``: the presigned S3 PUT stand-in for a local documents folder
  (``gateway/uploads.py``).
- ``/v1/...``: the OpenAI-compatible HTTP API, a sub-application over the same integration
  (``gateway/http_api.py``); ``GET /openapi.json`` describes it (``gateway/openapi.py``).
- ``/ui/``: the web chat (``gateway/web.py``).
"""

from __future__ import annotations

from aiohttp import web

from gateway.connections import ConnectionTable
from gateway.http_api import API_PREFIX, create_http_api
from gateway.integration import LambdaIntegration
from gateway.keys import CONNECTIONS, INTEGRATION, SETTINGS
from gateway.management import add_management_routes
from gateway.openapi import openapi_json
from gateway.settings import Settings
from gateway.uploads import add_upload_routes
from gateway.web import add_web_routes
from gateway.websocket import websocket_handler


def create_app(settings: Settings) -> web.Application:
    app = web.Application(client_max_size=settings.hard_max_message_bytes)
    integration = LambdaIntegration(settings)
    connections = ConnectionTable()
    app[SETTINGS] = settings
    app[INTEGRATION] = integration
    app[CONNECTIONS] = connections
    app.cleanup_ctx.append(integration.client_ctx)

    async def close_all(app: web.Application) -> None:
        for conn in connections.all():
            await conn.ws.close(code=1001, message=b"Server shutting down")

    app.on_shutdown.append(close_all)
    add_management_routes(app, settings.stage)
    add_web_routes(app, settings.stage)
    app.add_subapp(API_PREFIX, create_http_api(settings, integration, connections))
    app.router.add_get("/openapi.json", openapi_json)
    add_upload_routes(app, settings.stage)
    app.router.add_get(f"/{settings.stage}", websocket_handler)
    app.router.add_get("/", websocket_handler)
    return app
