"""A local API Gateway: the gateway's aiohttp applications, composed from their parts.

The public application (``create_app``'s result; GATEWAY_HOST/PORT):

- ``GET /{stage}`` (and ``/``): the WebSocket API (``gateway/websocket.py``), authorized at ``$connect``
  by the REQUEST authorizer (``gateway/authorization.py``). ``$connect``/``$disconnect`` and every message
  become the event API Gateway sends Lambda and go to the route's function through the Lambda Invoke API
  (``gateway/integration.py``). Route selection: ``$request.body.action``, else ``$default``.
- ``/v1/...``, ``GET /openapi.json`` and the web chat under ``/ui/``: forwarded to the HTTP API function
  (``python -m api``, GATEWAY_API_URL) as API Gateway proxies, the response streamed through
  (``gateway/http_api.py``).
- ``PUT /{stage}/uploads/...``: the presigned S3 PUT stand-in for a local documents folder
  (``gateway/uploads.py``).
- ``GET /health``: counts (``gateway/management.py``).
- Every request's Host must name the gateway (``gateway/security.py``: 421 otherwise).

The internal application (``app[MANAGEMENT_APP]``; GATEWAY_MANAGEMENT_HOST/PORT, served by
``python -m gateway`` on a listener of its own): ``POST|GET|DELETE /{stage}/@connections/{id}``, the
Management API the lambdas reply through, for SigV4-signed requests only (``gateway/management.py``).
The public listener has no @connections route at all (404).
"""

from __future__ import annotations

from aiohttp import web

from gateway.authorization import Authorizer
from gateway.connections import ConnectionTable
from gateway.http_api import API_PREFIX, ApiProxy, add_proxy_routes, v1_refusal
from gateway.integration import LambdaIntegration
from gateway.keys import AUTHORIZER, CONNECTIONS, INTEGRATION, MANAGEMENT_APP, POLICY, SETTINGS
from gateway.management import add_health_route, add_management_routes, sigv4_only
from gateway.security import OriginPolicy, host_guard
from gateway.settings import Settings
from gateway.uploads import add_upload_routes
from gateway.websocket import websocket_handler


def create_app(settings: Settings) -> web.Application:
    integration = LambdaIntegration(settings)
    connections = ConnectionTable()
    authorizer = Authorizer(settings, integration)
    policy = OriginPolicy(settings)
    app = web.Application(
        client_max_size=settings.hard_max_message_bytes, middlewares=[host_guard(policy, v1_refusal, API_PREFIX)]
    )
    management = web.Application(client_max_size=settings.hard_max_message_bytes, middlewares=[sigv4_only])
    for a in (app, management):
        a[SETTINGS] = settings
        a[INTEGRATION] = integration
        a[CONNECTIONS] = connections
        a[AUTHORIZER] = authorizer
        a[POLICY] = policy
    app[MANAGEMENT_APP] = management
    app.cleanup_ctx.append(integration.client_ctx)

    async def close_all(app: web.Application) -> None:
        for conn in connections.all():
            await conn.ws.close(code=1001, message=b"Server shutting down")

    app.on_shutdown.append(close_all)
    add_management_routes(management, settings.stage)
    add_health_route(app)
    add_proxy_routes(app, ApiProxy(settings))
    add_upload_routes(app, settings.stage)
    app.router.add_get(f"/{settings.stage}", websocket_handler)
    app.router.add_get("/", websocket_handler)
    return app
