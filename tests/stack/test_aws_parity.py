"""boto3's own clients work unchanged against the local stand-ins, and AWS-format events pass
through the handlers."""

from __future__ import annotations

import json
import time
import urllib.request
from typing import Any

import boto3
import pytest
from botocore.config import Config

from shared.stack import Stack
from tests.conftest import StackFactory, WsClient
from tests.support.paths import EVENTS
from tests.support.timeouts import scaled

CREDS = {"region_name": "us-east-1", "aws_access_key_id": "test", "aws_secret_access_key": "test"}


@pytest.fixture(scope="module")
def stack(start_stack: StackFactory) -> Stack:
    return start_stack("e2e-local", RAG_MAX_DISTANCE="0.7")


def lambda_client(stack: Stack, name: str) -> Any:
    return boto3.client(
        "lambda", endpoint_url=stack.by_name[name].url, config=Config(read_timeout=scaled(120)), **CREDS
    )


def mgmt_client(stack: Stack) -> Any:
    return boto3.client("apigatewaymanagementapi", endpoint_url=f"{stack.by_name['gateway'].url}/local", **CREDS)


def event(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((EVENTS / name).read_text())
    return data


def invoke(client: Any, name: str, payload: dict[str, Any], **kw: Any) -> dict[str, Any]:
    resp = client.invoke(FunctionName=name, Payload=json.dumps(payload).encode(), **kw)
    body = resp["Payload"].read()
    return {
        "status": resp["StatusCode"],
        "error": resp.get("FunctionError"),
        "body": json.loads(body) if body else None,
    }


def test_lambda_invoke_with_captured_websocket_events(stack: Stack) -> None:
    ing, chat = lambda_client(stack, "ingestion"), lambda_client(stack, "chat")
    assert invoke(chat, "chat", event("websocket_connect.json"))["body"] == {"statusCode": 200}
    assert invoke(chat, "chat", event("websocket_disconnect.json"))["body"] == {"statusCode": 200}
    # The captured connection does not exist here: the document is ingested, and the reply finds the
    # connection gone (410), which the handler reports without failing.
    out = invoke(ing, "ingestion", event("websocket_message_ingest.json"))
    assert out["status"] == 200 and out["error"] is None and out["body"] == {"statusCode": 410}
    c = WsClient(stack.ws_url)
    try:
        r = c.request({"action": "search", "request_id": "s", "query": "magma reaches the surface"})
        assert r["results"] and r["results"][0]["doc_id"] == "volcanoes"
    finally:
        c.close()
    out = invoke(chat, "chat", event("websocket_message_chat.json"))
    assert out["error"] is None and out["body"] == {"statusCode": 410}


def test_lambda_invocation_types_and_function_errors(stack: Stack) -> None:
    chat = lambda_client(stack, "chat")
    resp = chat.invoke(FunctionName="chat", InvocationType="DryRun", Payload=b"{}")
    assert resp["StatusCode"] == 204
    resp = chat.invoke(FunctionName="chat", InvocationType="Event", Payload=json.dumps(event("websocket_connect.json")))
    assert resp["StatusCode"] == 202
    # Not an API Gateway event: the handler refuses it, as a 400 result (not a crash).
    assert invoke(chat, "chat", {"hello": "world"})["body"]["statusCode"] == 400
    with pytest.raises(chat.exceptions.InvalidRequestContentException):
        chat.invoke(FunctionName="chat", Payload=b"{not json")


def _connection_ids(stack: Stack) -> list[str]:
    with urllib.request.urlopen(f"{stack.by_name['gateway'].url}/health", timeout=scaled(5)) as r:
        ids: list[str] = json.loads(r.read())["connection_ids"]
        return ids


def test_management_api_post_get_delete(stack: Stack) -> None:
    mgmt = mgmt_client(stack)
    before = set(_connection_ids(stack))
    c = WsClient(stack.ws_url, timeout=10)
    try:
        (cid,) = set(_connection_ids(stack)) - before
        mgmt.post_to_connection(ConnectionId=cid, Data=b'{"type": "hello"}')
        assert c.recv() == {"type": "hello"}
        info = mgmt.get_connection(ConnectionId=cid)
        assert info["Identity"]["SourceIp"] == "127.0.0.1" and info["ConnectedAt"].year >= 2025
        mgmt.delete_connection(ConnectionId=cid)
        deadline = time.monotonic() + scaled(5)
        while cid in _connection_ids(stack) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert cid not in _connection_ids(stack)
        with pytest.raises(mgmt.exceptions.GoneException):
            mgmt.post_to_connection(ConnectionId=cid, Data=b"{}")
    finally:
        c.close()


def test_management_api_unknown_connection_is_gone(stack: Stack) -> None:
    mgmt = mgmt_client(stack)
    for call in (
        lambda: mgmt.post_to_connection(ConnectionId="Zm9vYmFyYmF6cXV4", Data=b"{}"),
        lambda: mgmt.get_connection(ConnectionId="Zm9vYmFyYmF6cXV4"),
        lambda: mgmt.delete_connection(ConnectionId="Zm9vYmFyYmF6cXV4"),
    ):
        with pytest.raises(mgmt.exceptions.GoneException):
            call()
