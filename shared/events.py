"""API Gateway WebSocket events, as API Gateway delivers them to Lambda — defined once, here.

The local gateway builds these; the lambda handlers parse them. Field names follow AWS's JSON
(camelCase aliases), so captured AWS events in tests/events/ parse unchanged.
"""

from __future__ import annotations

import base64
import time
import uuid
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

EventType = Literal["CONNECT", "MESSAGE", "DISCONNECT"]


class _Aws(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="allow")


class Identity(_Aws):
    source_ip: str = Field(default="", alias="sourceIp")
    user_agent: str | None = Field(default=None, alias="userAgent")


class WebSocketRequestContext(_Aws):
    route_key: str = Field(alias="routeKey")
    event_type: EventType = Field(alias="eventType")
    connection_id: str = Field(alias="connectionId")
    domain_name: str = Field(alias="domainName")
    stage: str
    request_id: str = Field(alias="requestId")
    connected_at: int = Field(alias="connectedAt")
    api_id: str = Field(default="local", alias="apiId")
    message_id: str | None = Field(default=None, alias="messageId")
    extended_request_id: str | None = Field(default=None, alias="extendedRequestId")
    request_time: str | None = Field(default=None, alias="requestTime")
    request_time_epoch: int | None = Field(default=None, alias="requestTimeEpoch")
    message_direction: str = Field(default="IN", alias="messageDirection")
    identity: Identity = Field(default_factory=Identity)
    disconnect_status_code: int | None = Field(default=None, alias="disconnectStatusCode")
    disconnect_reason: str | None = Field(default=None, alias="disconnectReason")


class WebSocketEvent(_Aws):
    """The event a WebSocket route's Lambda integration receives."""

    request_context: WebSocketRequestContext = Field(alias="requestContext")
    body: str | None = None
    is_base64_encoded: bool = Field(default=False, alias="isBase64Encoded")
    headers: dict[str, str] | None = None
    multi_value_headers: dict[str, list[str]] | None = Field(default=None, alias="multiValueHeaders")
    query_string_parameters: dict[str, str] | None = Field(default=None, alias="queryStringParameters")

    def body_bytes(self) -> bytes:
        if self.body is None:
            return b""
        return base64.b64decode(self.body) if self.is_base64_encoded else self.body.encode("utf-8")

    def to_aws(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, exclude_none=True)


def _request_time(now_ms: int) -> str:
    return datetime.fromtimestamp(now_ms / 1000, tz=UTC).strftime("%d/%b/%Y:%H:%M:%S +0000")


def _aws_id() -> str:
    return base64.b64encode(uuid.uuid4().bytes[:10]).decode()


def build_event(
    *,
    route_key: str,
    event_type: EventType,
    connection_id: str,
    connected_at: int,
    domain_name: str,
    stage: str,
    api_id: str = "local",
    source_ip: str = "127.0.0.1",
    body: str | None = None,
    is_base64_encoded: bool = False,
    headers: dict[str, str] | None = None,
    query: dict[str, str] | None = None,
    disconnect_status_code: int | None = None,
    disconnect_reason: str | None = None,
) -> WebSocketEvent:
    """Build the event API Gateway would send for one connect, message or disconnect."""
    now_ms = int(time.time() * 1000)
    request_id = _aws_id()
    context = WebSocketRequestContext(
        route_key=route_key,
        event_type=event_type,
        connection_id=connection_id,
        domain_name=domain_name,
        stage=stage,
        request_id=request_id,
        extended_request_id=request_id,
        connected_at=connected_at,
        api_id=api_id,
        message_id=_aws_id() if event_type == "MESSAGE" else None,
        request_time=_request_time(now_ms),
        request_time_epoch=now_ms,
        identity=Identity(source_ip=source_ip),
        disconnect_status_code=disconnect_status_code,
        disconnect_reason=disconnect_reason,
    )
    with_headers = event_type != "MESSAGE"
    return WebSocketEvent(
        request_context=context,
        body=body,
        is_base64_encoded=is_base64_encoded,
        headers=headers if with_headers else None,
        multi_value_headers={k: [v] for k, v in headers.items()} if with_headers and headers else None,
        query_string_parameters=query or None,
    )
