"""boto3's own clients work unchanged against the local stand-ins, and AWS-format events pass
through the handlers."""

from __future__ import annotations

import json
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed

from shared.stack import Stack
from tests.conftest import StackFactory, WsClient, stack_keys
from tests.support import auth
from tests.support.paths import EVENTS
from tests.support.timeouts import scaled


@pytest.fixture(scope="module")
def stack(start_stack: StackFactory) -> Stack:
    return start_stack("e2e-local", RAG_MAX_DISTANCE="0.7")


def lambda_client(stack: Stack, name: str) -> Any:
    """Signed with the stack's internal key: the Invoke API accepts nothing else."""
    return auth.lambda_client(stack, name)


def mgmt_client(stack: Stack) -> Any:
    """On the gateway's internal listener, signed with the stack's internal key."""
    return auth.management_client(stack)


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
    c = WsClient(stack.ws_url, key=stack_keys(stack).default)  # the captured events' tenant
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


def test_management_api_post_get_delete(stack: Stack) -> None:
    mgmt = mgmt_client(stack)
    before = set(auth.logged_connection_ids(stack))
    c = WsClient(stack.ws_url, timeout=10)
    try:
        (cid,) = set(auth.logged_connection_ids(stack)) - before  # /health tells counts, never ids
        mgmt.post_to_connection(ConnectionId=cid, Data=b'{"type": "hello"}')
        assert c.recv() == {"type": "hello"}
        info = mgmt.get_connection(ConnectionId=cid)
        assert info["Identity"]["SourceIp"] == "127.0.0.1" and info["ConnectedAt"].year >= 2025
        mgmt.delete_connection(ConnectionId=cid)
        with pytest.raises(ConnectionClosed):  # the server closed it
            c.ws.recv(timeout=scaled(5))
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
