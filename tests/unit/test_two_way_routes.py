"""Two-way routes: a function's single reply goes back in the Invoke's answer (API Gateway's route response),
not through an @connections post; other routes post, and the gateway drops their response bodies.

The lambda is a real WebSocketLambda with boto3's @connections client stubbed (botocore's Stubber), as in
test_ws_identity.py, so every post it would make is seen."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import BaseModel

from shared.connections import Connections
from shared.identity import Principal
from shared.protocol import ACTION_REGISTRY, MAX_MESSAGE_BYTES, ErrorCode, actions_of, two_way_routes
from shared.ws_lambda import Emit, WebSocketLambda
from tests.unit.test_ws_identity import event, posted


class Hello(BaseModel):
    type: str = "hello"
    n: int
    pad: str = ""


def lam(replies: list[BaseModel]) -> WebSocketLambda:
    def serve(_request: Any, emit: Emit, _caller: Principal) -> None:
        for r in replies:
            emit(r)

    connections = Connections(endpoint_url="http://127.0.0.1:1/prod", region="eu-west-1")
    return WebSocketLambda(connections, dict.fromkeys(actions_of("chat"), serve), function="chat")


def message(route: str) -> dict[str, Any]:
    raw = event("websocket_message_chat.json")
    body = {"action": route, "request_id": "q-1"}
    body |= {"query": "lava"} if route == "search" else {}
    body |= {"conversation_id": "c-1"} if route == "history" else {}
    body |= {"question": "lava?"} if route == "chat" else {}
    raw["requestContext"]["routeKey"] = route
    raw["body"] = json.dumps(body)
    return raw


def test_the_registry_marks_the_single_reply_reads_of_the_chat_function() -> None:
    assert two_way_routes() == {"search", "history", "sample_chunks"}
    assert all(ACTION_REGISTRY[r].function == "chat" for r in two_way_routes())


def test_a_two_way_reply_is_the_response_body_and_nothing_is_posted() -> None:
    result, sent = posted(lam([Hello(n=1)]), message("search"))
    assert sent == []
    assert result["statusCode"] == 200 and json.loads(result["body"]) == {"type": "hello", "n": 1, "pad": ""}


def test_a_one_way_route_posts_and_returns_no_body() -> None:
    result, sent = posted(lam([Hello(n=1), Hello(n=2)]), message("chat"), posts=2)
    assert result == {"statusCode": 200}
    assert [m["n"] for m in sent] == [1, 2]


def test_two_replies_on_a_two_way_route_post_the_first_and_return_the_last() -> None:
    result, sent = posted(lam([Hello(n=1), Hello(n=2), Hello(n=3)]), message("history"), posts=2)
    assert [m["n"] for m in sent] == [1, 2]
    assert json.loads(result["body"])["n"] == 3


def test_a_reply_over_the_message_limit_becomes_an_error_in_the_body() -> None:
    result, sent = posted(lam([Hello(n=1, pad="x" * MAX_MESSAGE_BYTES)]), message("search"))
    assert sent == []
    reply = json.loads(result["body"])
    assert reply["type"] == "error" and reply["code"] == ErrorCode.REPLY_TOO_LARGE and reply["request_id"] == "q-1"


@pytest.mark.parametrize("route", ["search", "chat"])
def test_an_unauthorized_message_is_told_the_way_its_route_replies(route: str) -> None:
    raw = message(route)
    del raw["requestContext"]["authorizer"]
    result, sent = posted(lam([Hello(n=1)]), raw)
    assert result["statusCode"] == 403
    if route == "search":
        assert sent == [] and json.loads(result["body"])["code"] == ErrorCode.UNAUTHORIZED
    else:
        assert "body" not in result and [m["code"] for m in sent] == [ErrorCode.UNAUTHORIZED]
