"""The functions take the caller from ``requestContext.authorizer`` and refuse an event without it.

The lambda is a real WebSocketLambda; its @connections client is boto3's, stubbed (botocore's Stubber)
so the replies it posts are seen. The @connections client signs with the internal key when one is set.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from botocore.stub import ANY, Stubber
from pydantic import BaseModel

from shared.connections import Connections
from shared.events import WebSocketEvent
from shared.identity import Principal
from shared.protocol import ErrorCode, actions_of
from shared.sigv4 import SigningKey
from shared.ws_lambda import Emit, WebSocketLambda
from tests.support.paths import EVENTS


class Hello(BaseModel):
    type: str = "hello"
    n: int


def event(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((EVENTS / name).read_text())
    return data


def serving(calls: list[Principal]) -> WebSocketLambda:
    def serve(_request: Any, emit: Emit, caller: Principal) -> None:
        calls.append(caller)
        emit(Hello(n=1))

    connections = Connections(endpoint_url="http://127.0.0.1:1/prod", region="eu-west-1")
    return WebSocketLambda(connections, dict.fromkeys(actions_of("chat"), serve), function="chat")


def posted(lam: WebSocketLambda, raw: dict[str, Any], *, posts: int = 1) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Invoke ``lam`` with ``raw``; its result and the messages it posted to @connections (at most ``posts``)."""
    client = lam.connections.client(lam.connections.endpoint_for(WebSocketEvent.model_validate(raw)))
    sent: list[dict[str, Any]] = []

    def record(params: dict[str, Any], **_: Any) -> None:
        sent.append(json.loads(params["Data"]))

    client.meta.events.register("before-parameter-build.apigatewaymanagementapi.PostToConnection", record)
    with Stubber(client) as stub:
        for _ in range(posts):
            stub.add_response("post_to_connection", {}, {"ConnectionId": ANY, "Data": ANY})
        result = lam(raw, None)
    return result, sent


def test_a_message_with_the_authorizers_context_reaches_its_route_with_that_principal() -> None:
    calls: list[Principal] = []
    result, sent = posted(serving(calls), event("websocket_message_chat.json"))
    assert result == {"statusCode": 200}
    assert calls == [Principal("default", "key:7GQ2KM4XWB", "api_key")]
    assert sent == [{"type": "hello", "n": 1}]


@pytest.mark.parametrize(
    "authorizer",
    [None, {}, {"principalId": "key:x"}, {"tenant": "Bad Tenant", "principal": "p", "auth": "api_key"}],
)
def test_a_message_without_it_gets_unauthorized_and_nothing_runs(authorizer: dict[str, Any] | None) -> None:
    raw = event("websocket_message_chat.json")
    if authorizer is None:
        del raw["requestContext"]["authorizer"]
    else:
        raw["requestContext"]["authorizer"] = authorizer
    calls: list[Principal] = []
    result, sent = posted(serving(calls), raw)
    assert result == {"statusCode": 403} and calls == []
    assert len(sent) == 1 and sent[0]["type"] == "error" and sent[0]["code"] == ErrorCode.UNAUTHORIZED
    assert sent[0]["request_id"] == "q-1"


def test_connect_without_it_is_refused() -> None:
    calls: list[Principal] = []
    lam = serving(calls)
    assert lam(event("websocket_connect.json"), None) == {"statusCode": 200}
    raw = event("websocket_connect.json")
    del raw["requestContext"]["authorizer"]
    assert lam(raw, None) == {"statusCode": 403}
    assert calls == []


def test_the_connections_client_signs_with_the_internal_key() -> None:
    key = SigningKey("LRINTUNITTEST0001", "s" * 40)
    connections = Connections(endpoint_url="http://127.0.0.1:1/prod", region="eu-west-1", signing_key=key)
    client = connections.client("http://127.0.0.1:1/prod")
    assert client._request_signer._credentials.access_key == key.access_key_id
    unsigned = Connections(endpoint_url="http://127.0.0.1:1/prod", region="eu-west-1").client("http://127.0.0.1:1/prod")
    assert unsigned._request_signer._credentials is None or (
        unsigned._request_signer._credentials.access_key != key.access_key_id
    )
