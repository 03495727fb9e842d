"""Events Lambda receives — API Gateway WebSocket events, S3 notifications, Kinesis batches — defined once, here.

The local gateway builds these; the lambda handlers parse them. Field names follow AWS's JSON
(camelCase aliases), so captured AWS events in tests/events/ parse unchanged.
"""

from __future__ import annotations

import base64
import time
import uuid
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import unquote_plus

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


# ---------------------------------------------------------------------- S3 event notifications
#
# What S3 sends Lambda for ObjectCreated:* / ObjectRemoved:* (event structure version 2.x), and what
# MinIO's webhook target posts (the same Records; eventSource "minio:s3", eventName "s3:ObjectCreated:Put",
# plus top-level EventName/Key). Object keys arrive URL-encoded, with '+' for spaces.


class S3Bucket(_Aws):
    name: str
    arn: str | None = None


class S3Object(_Aws):
    key: str
    size: int | None = None
    e_tag: str | None = Field(default=None, alias="eTag")
    version_id: str | None = Field(default=None, alias="versionId")
    sequencer: str | None = None

    @property
    def decoded_key(self) -> str:
        """The key as stored: S3 URL-encodes keys in notifications ('+' for a space)."""
        return unquote_plus(self.key)


class S3Entity(_Aws):
    bucket: S3Bucket
    object: S3Object
    configuration_id: str | None = Field(default=None, alias="configurationId")


class S3EventRecord(_Aws):
    event_source: Literal["aws:s3", "minio:s3"] = Field(alias="eventSource")
    event_name: str = Field(alias="eventName")
    event_time: str | None = Field(default=None, alias="eventTime")
    aws_region: str | None = Field(default=None, alias="awsRegion")
    s3: S3Entity

    @property
    def action(self) -> Literal["created", "removed", "other"]:
        name = self.event_name.removeprefix("s3:")
        if name.startswith("ObjectCreated:"):
            return "created"
        if name.startswith("ObjectRemoved:"):
            return "removed"
        return "other"


# ---------------------------------------------------------------------- Kinesis batches


class KinesisData(_Aws):
    kinesis_schema_version: str | None = Field(default=None, alias="kinesisSchemaVersion")
    partition_key: str = Field(alias="partitionKey")
    sequence_number: str = Field(alias="sequenceNumber")
    data: str = Field(description="The record's payload, base64.")
    approximate_arrival_timestamp: float | None = Field(default=None, alias="approximateArrivalTimestamp")

    def payload(self) -> bytes:
        return base64.b64decode(self.data, validate=True)


class KinesisEventRecord(_Aws):
    event_source: Literal["aws:kinesis"] = Field(alias="eventSource")
    kinesis: KinesisData
    event_id: str | None = Field(default=None, alias="eventID")
    event_name: str | None = Field(default=None, alias="eventName")
    event_source_arn: str | None = Field(default=None, alias="eventSourceARN")
    aws_region: str | None = Field(default=None, alias="awsRegion")


class KinesisDocument(BaseModel):
    """The JSON in a Kinesis record's data: upsert (default) or delete one document by id."""

    model_config = ConfigDict(extra="ignore")

    doc_id: str = Field(min_length=1, max_length=256)
    op: Literal["upsert", "delete"] = "upsert"
    text: str | None = None
    title: str = Field(default="", max_length=1024)
    source: str | None = Field(default=None, max_length=1024)
    ts: str | float | None = Field(default=None, description="When it was written: ISO 8601 or Unix seconds.")
    metadata: dict[str, str | int | float | bool | None] = Field(default_factory=dict)

    def date(self) -> str | None:
        if self.ts is None or self.ts == "":
            return None
        if isinstance(self.ts, int | float):
            return datetime.fromtimestamp(float(self.ts), tz=UTC).isoformat(timespec="seconds")
        return self.ts[:64]


class BatchItemFailure(BaseModel):
    item_identifier: str = Field(serialization_alias="itemIdentifier")


class BatchResponse(BaseModel):
    """Partial batch response (ReportBatchItemFailures): only the failed records are retried."""

    batch_item_failures: list[BatchItemFailure] = Field(default_factory=list, serialization_alias="batchItemFailures")

    def to_aws(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True)


EventKind = Literal["websocket", "s3", "kinesis", "s3_test", "unknown"]


def event_kind(event: dict[str, Any]) -> EventKind:
    """Which trigger sent this event, by its shape."""
    if isinstance(event.get("requestContext"), dict):
        return "websocket"
    if event.get("Event") == "s3:TestEvent":
        return "s3_test"  # sent once when a bucket notification is configured
    records = event.get("Records")
    if isinstance(records, list) and records and all(isinstance(r, dict) for r in records):
        sources = {r.get("eventSource") for r in records}
        if sources <= {"aws:s3", "minio:s3"}:
            return "s3"
        if sources == {"aws:kinesis"}:
            return "kinesis"
    return "unknown"
