"""The AppKeys of the gateway's root application (set by ``gateway.app.create_app``).

The /v1 HTTP API is a sub-application with keys of its own (``gateway/http_api.py``).
"""

from __future__ import annotations

from aiohttp import web

from gateway.connections import ConnectionTable
from gateway.integration import LambdaIntegration
from gateway.settings import Settings

SETTINGS = web.AppKey("settings", Settings)
CONNECTIONS = web.AppKey("connections", ConnectionTable)
INTEGRATION = web.AppKey("integration", LambdaIntegration)
