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
    authorizer: dict[str, Any] | None = Field(
        default=None,
        description="What the $connect authorizer established: its principalId and the keys of its context "
        "(API Gateway adds it to every event of an authorized connection; shared.identity reads it).",
    )


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
    authorizer: dict[str, Any] | None = None,
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
        authorizer=authorizer,
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


# ---------------------------------------------------------------------- Lambda REQUEST authorizers
#
# What API Gateway sends a Lambda REQUEST authorizer, and what the authorizer answers. WebSocket APIs
# authorize $connect (methodArn ".../{stage}/$connect", requestContext.eventType "CONNECT"); the local
# /v1 HTTP API sends the same event for each request (methodArn ".../{stage}/{METHOD}/v1/...", routeKey
# "{METHOD} /v1/...", the request's httpMethod and path), as an HTTP API's REQUEST authorizer with
# payload format 1.0 does.

ACCOUNT_ID = "000000000000"  # the account in local ARNs (no AWS account behind a local stack)


def method_arn(region: str, api_id: str, stage: str, route: str, *, account: str = ACCOUNT_ID) -> str:
    """``arn:aws:execute-api:{region}:{account}:{apiId}/{stage}/{route}``; route is ``$connect`` or
    ``{METHOD}/{path without its leading slash}``."""
    return f"arn:aws:execute-api:{region}:{account}:{api_id}/{stage}/{route}"


class AuthorizerRequestContext(_Aws):
    route_key: str = Field(alias="routeKey")
    stage: str
    request_id: str = Field(alias="requestId")
    domain_name: str = Field(alias="domainName")
    api_id: str = Field(alias="apiId")
    identity: Identity = Field(default_factory=Identity)
    extended_request_id: str | None = Field(default=None, alias="extendedRequestId")
    request_time: str | None = Field(default=None, alias="requestTime")
    request_time_epoch: int | None = Field(default=None, alias="requestTimeEpoch")
    # WebSocket $connect
    event_type: EventType | None = Field(default=None, alias="eventType")
    connection_id: str | None = Field(default=None, alias="connectionId")
    connected_at: int | None = Field(default=None, alias="connectedAt")
    message_direction: str | None = Field(default=None, alias="messageDirection")
    # HTTP API request
    http_method: str | None = Field(default=None, alias="httpMethod")
    path: str | None = None


class RequestAuthorizerEvent(_Aws):
    """The event a Lambda REQUEST authorizer receives (``type: REQUEST``)."""

    type: Literal["REQUEST"] = "REQUEST"
    method_arn: str = Field(alias="methodArn")
    headers: dict[str, str] = Field(default_factory=dict)
    multi_value_headers: dict[str, list[str]] = Field(default_factory=dict, alias="multiValueHeaders")
    query_string_parameters: dict[str, str] = Field(default_factory=dict, alias="queryStringParameters")
    multi_value_query_string_parameters: dict[str, list[str]] = Field(
        default_factory=dict, alias="multiValueQueryStringParameters"
    )
    stage_variables: dict[str, str] = Field(default_factory=dict, alias="stageVariables")
    request_context: AuthorizerRequestContext = Field(alias="requestContext")
    # HTTP API (payload 1.0) requests also carry these at the top level.
    resource: str | None = None
    path: str | None = None
    http_method: str | None = Field(default=None, alias="httpMethod")

    def to_aws(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, exclude_none=True)


def _multi(items: list[tuple[str, str]]) -> tuple[dict[str, str], dict[str, list[str]]]:
    """(single-value: the last value of each name, as API Gateway does; multi-value: all of them)."""
    single: dict[str, str] = {}
    multi: dict[str, list[str]] = {}
    for k, v in items:
        single[k] = v
        multi.setdefault(k, []).append(v)
    return single, multi


def build_authorizer_event(
    *,
    method_arn: str,
    route_key: str,
    domain_name: str,
    stage: str,
    api_id: str,
    source_ip: str,
    headers: list[tuple[str, str]],
    query: list[tuple[str, str]],
    connection_id: str | None = None,
    connected_at: int | None = None,
    http_method: str | None = None,
    path: str | None = None,
) -> RequestAuthorizerEvent:
    """The REQUEST authorizer event for a WebSocket $connect (``connection_id`` given) or an HTTP API request
    (``http_method`` and ``path`` given). ``headers`` and ``query`` are (name, value) pairs, repeats kept."""
    now_ms = int(time.time() * 1000)
    request_id = _aws_id()
    websocket = connection_id is not None
    context = AuthorizerRequestContext(
        route_key=route_key,
        stage=stage,
        request_id=request_id,
        extended_request_id=request_id,
        domain_name=domain_name,
        api_id=api_id,
        identity=Identity(source_ip=source_ip),
        request_time=_request_time(now_ms),
        request_time_epoch=now_ms,
        event_type="CONNECT" if websocket else None,
        connection_id=connection_id,
        connected_at=connected_at,
        message_direction="IN" if websocket else None,
        http_method=http_method,
        path=path,
    )
    single_h, multi_h = _multi(headers)
    single_q, multi_q = _multi(query)
    return RequestAuthorizerEvent(
        method_arn=method_arn,
        headers=single_h,
        multi_value_headers=multi_h,
        query_string_parameters=single_q,
        multi_value_query_string_parameters=multi_q,
        request_context=context,
        resource=None if websocket else route_key.partition(" ")[2],
        path=path,
        http_method=http_method,
    )


class PolicyStatement(_Aws):
    action: str | list[str] = Field(alias="Action")
    effect: Literal["Allow", "Deny"] = Field(alias="Effect")
    resource: str | list[str] = Field(alias="Resource")


class PolicyDocument(_Aws):
    version: str = Field(default="2012-10-17", alias="Version")
    statement: list[PolicyStatement] = Field(alias="Statement")


class AuthorizerResponse(_Aws):
    """A REQUEST authorizer's answer: the principal, an IAM policy for the methodArn, and the context API
    Gateway passes on in ``requestContext.authorizer`` (string, number or boolean values only)."""

    principal_id: str = Field(alias="principalId", min_length=1)
    policy_document: PolicyDocument = Field(alias="policyDocument")
    context: dict[str, str | int | float | bool] = Field(default_factory=dict)

    def authorizer_context(self) -> dict[str, Any]:
        """What later events carry as ``requestContext.authorizer``."""
        return {"principalId": self.principal_id, **self.context}

    def to_aws(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True)


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
