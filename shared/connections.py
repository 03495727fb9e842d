"""Replies to WebSocket clients through the API Gateway Management API (@connections).

The requests are SigV4-signed by boto3: on AWS with the function's role, locally with the stack's
internal key (``InternalAuthSettings``), the only key the local gateway's @connections accepts."""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from typing import Any

import boto3
from botocore.exceptions import BotoCoreError, ClientError
from pydantic import BaseModel

from shared.aws_clients import client_config, make_client
from shared.errors import RagError
from shared.events import WebSocketEvent
from shared.protocol import MAX_MESSAGE_BYTES, ErrorCode, encode
from shared.sigv4 import SigningKey

log = logging.getLogger(__name__)


class ConnectionGone(Exception):
    """The client disconnected (GoneException): stop working for it, don't retry."""


def reply_too_large(size: int) -> RagError:
    """A reply over API Gateway's 128 KB is never posted: the client gets this typed error instead (the
    paged and capped replies cannot reach it; this is the guard for anything that still would)."""
    log.error("a reply of %d bytes is over the %d-byte message limit; sending reply_too_large", size, MAX_MESSAGE_BYTES)
    return RagError(
        f"the reply ({size} bytes) is larger than the {MAX_MESSAGE_BYTES}-byte message limit",
        ErrorCode.REPLY_TOO_LARGE,
    )


# Connection ids seen gone, remembered so that other replies for them (concurrent requests on the same
# connection, error reports) are dropped without another call. Ids are never reused, so this is safe.
_GONE_MEMORY = 1024


def encoded(message: BaseModel) -> bytes:
    """``message`` as sent to a client (a post's Data, or a two-way route's body): reply_too_large over the
    128 KB a WebSocket message may carry."""
    data = encode(message)
    if len(data) > MAX_MESSAGE_BYTES:
        raise reply_too_large(len(data))
    return data


class Connections:
    """post_to_connection with one cached client per endpoint.

    The endpoint is ``endpoint_url`` when configured (local gateway), else derived from the event as
    AWS documents it: ``https://{domainName}/{stage}``. ``signing_key``: the credentials to sign with
    (the stack's internal key); None: boto3's own (the function's role on AWS).
    """

    def __init__(
        self,
        *,
        endpoint_url: str | None,
        region: str,
        timeout_s: float = 10.0,
        signing_key: SigningKey | None = None,
    ) -> None:
        self.endpoint_url = endpoint_url
        self.region = region
        self.timeout_s = timeout_s
        self.signing_key = signing_key
        self._clients: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._gone: OrderedDict[str, None] = OrderedDict()

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
                    session=self._session(),
                )
            return self._clients[endpoint]

    def _session(self) -> boto3.session.Session | None:
        if self.signing_key is None:
            return None
        return boto3.session.Session(
            aws_access_key_id=self.signing_key.access_key_id,
            aws_secret_access_key=self.signing_key.secret_access_key,
        )

    def post(self, event: WebSocketEvent, message: BaseModel) -> None:
        """Send one message; raise ConnectionGone if the client has left.

        GoneException (410) is final: botocore's retry policy does not retry it, and the connection is
        remembered as gone, so later posts to it raise ConnectionGone without calling the API again.
        Throttling (429 LimitExceededException) and 5xx are retried by the client's 'standard' policy."""
        self.post_data(event, encoded(message))

    def post_data(self, event: WebSocketEvent, data: bytes) -> None:
        """``post`` of a message already encoded (and within MAX_MESSAGE_BYTES)."""
        connection_id = event.request_context.connection_id
        if connection_id in self._gone:
            raise ConnectionGone(connection_id)
        client = self.client(self.endpoint_for(event))
        try:
            client.post_to_connection(ConnectionId=connection_id, Data=data)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code")
            if code == "GoneException":
                self._remember_gone(connection_id)
                raise ConnectionGone(connection_id) from exc
            if code == "PayloadTooLargeException":  # an endpoint with a lower limit than ours
                raise reply_too_large(len(data)) from exc
            raise
        except BotoCoreError:
            raise

    def _remember_gone(self, connection_id: str) -> None:
        with self._lock:
            self._gone[connection_id] = None
            while len(self._gone) > _GONE_MEMORY:
                self._gone.popitem(last=False)
