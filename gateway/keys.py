"""The AppKeys of the gateway's applications (set by ``gateway.app.create_app``).

The /v1 HTTP API is not the gateway's: it forwards it to the api function (``gateway/http_api.py``).
"""

from __future__ import annotations

from aiohttp import web

from gateway.authorization import Authorizer
from gateway.connections import ConnectionTable
from gateway.integration import LambdaIntegration
from gateway.security import OriginPolicy
from gateway.settings import Settings

SETTINGS = web.AppKey("settings", Settings)
CONNECTIONS = web.AppKey("connections", ConnectionTable)
INTEGRATION = web.AppKey("integration", LambdaIntegration)
AUTHORIZER = web.AppKey("authorizer", Authorizer)
POLICY = web.AppKey("origin_policy", OriginPolicy)
# The internal listener's application (@connections), served by ``python -m gateway`` on its own socket.
MANAGEMENT_APP = web.AppKey("management_app", web.Application)
