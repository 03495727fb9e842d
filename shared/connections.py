"""Replies to WebSocket clients through the API Gateway Management API (@connections)."""

from __future__ import annotations

import logging
import threading
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError
from pydantic import BaseModel

from shared.aws_clients import client_config, make_client
from shared.events import WebSocketEvent
from shared.protocol import encode

log = logging.getLogger(__name__)


class ConnectionGone(Exception):
    """The client disconnected (GoneException): stop working for it, don't retry."""


class Connections:
    """post_to_connection with one cached client per endpoint.

    The endpoint is ``endpoint_url`` when configured (local gateway), else derived from the event as
    AWS documents it: ``https://{domainName}/{stage}``.
    """

    def __init__(self, *, endpoint_url: str | None, region: str, timeout_s: float = 10.0) -> None:
        self.endpoint_url = endpoint_url
        self.region = region
        self.timeout_s = timeout_s
        self._clients: dict[str, Any] = {}
        self._lock = threading.Lock()

    def endpoint_for(self, event: WebSocketEvent) -> str:
        if self.endpoint_url:
            return self.endpoint_url
        ctx = event.request_context
        return f"https://{ctx.domain_name}/{ctx.stage}"

    def client(self, endpoint: str) -> Any:
        with self._lock:
            if endpoint not in self._clients:
                self._clients[endpoint] = make_client(
                    "apigatewaymanagementapi",
                    endpoint_url=endpoint,
                    region=self.region,
                    config=client_config(connect_timeout=3, read_timeout=self.timeout_s, max_attempts=3),
                )
            return self._clients[endpoint]

    def post(self, event: WebSocketEvent, message: BaseModel) -> None:
        """Send one message; raise ConnectionGone if the client has left."""
        client = self.client(self.endpoint_for(event))
        try:
            client.post_to_connection(ConnectionId=event.request_context.connection_id, Data=encode(message))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "GoneException":
                raise ConnectionGone(event.request_context.connection_id) from exc
            raise
        except BotoCoreError:
            raise
