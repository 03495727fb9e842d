"""list_documents and history page through the real handlers (the ingestion and chat lambdas, built as
their cold start builds them, on a real folder store and LanceDB): 10,000 documents and a 200-turn
conversation, every page under 128 KB, every item once, in order.

The documents and messages are written straight into the stores (as ingestion and chat write them), so
that the test spends its time on the listing, not on embedding 10,000 documents; the @connections client
is boto3's, stubbed (botocore's Stubber), so each reply is seen exactly as it would be posted (or returned, on a
two-way route).
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from botocore.stub import ANY, Stubber

from shared.events import WebSocketEvent
from shared.identity import Principal
from shared.protocol import (
    DEFAULT_DOCUMENTS_LIMIT,
    DEFAULT_HISTORY_LIMIT,
    MAX_DOCUMENTS_LIMIT,
    MAX_HISTORY_LIMIT,
    MAX_MESSAGE_BYTES,
    SERVER_MESSAGE,
    DocumentList,
    ErrorMessage,
    History,
)
from shared.vector_store import MessageRow
from shared.ws_lambda import WebSocketLambda
from tests.support.paths import EVENTS

DOCUMENTS = 10_000
TURNS = 200
CALLER = Principal("acme", "key:pager", "api_key")
# A few documents with the longest titles and names (the listing clips them) and costly id characters.
LONG = {17, 4_321, 9_998}


def _only(m: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    for var in list(os.environ):
        if var.startswith(("RAG_", "CHAT_", "INGESTION_", "LOCALRAG_")):
            m.delenv(var)
    for k, v in env.items():
        m.setenv(k, v)


def doc_id(i: int) -> str:
    return f"doc-{i:05d}" + ("-\U0001f600" * 10 if i in LONG else "")


@pytest.fixture(scope="module")
def lambdas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[WebSocketLambda, WebSocketLambda, Any]]:
    import chat.handler
    import ingestion.handler
    from chat.settings import Settings as ChatSettings
    from ingestion.settings import Settings as IngestionSettings

    root = tmp_path_factory.mktemp("paging")
    with pytest.MonkeyPatch.context() as m:
        _only(m, {"RAG_LANCEDB_URI": str(root / "lancedb"), "RAG_DOCUMENTS_URI": str(root / "documents")})
        ing_settings = IngestionSettings()
        ing = ingestion.handler.build_service(ing_settings)
        objects = ing.tenant_objects(CALLER.tenant)
        for i in range(DOCUMENTS):
            long = i in LONG
            objects.put_document(
                doc_id(i),
                {"id": doc_id(i), "title": ("\x01" * 3000) if long else f"Document {i}", "text": f"text {i}"}
                | ({"source": "\x02" * 3000} if long else {}),
            )
        chat_settings = ChatSettings()
        chat_service = chat.handler.build_service(chat_settings, store=ing.store)
        yield (
            ingestion.handler.build_lambda(ing_settings, ing),
            chat.handler.build_lambda(chat_settings, chat_service),
            ing.store,
        )


def invoke(lam: WebSocketLambda, body: dict[str, Any]) -> tuple[Any, int]:
    """One WebSocket message through ``lam``; its one reply, parsed, and its size in bytes."""
    raw = json.loads((EVENTS / "websocket_message_chat.json").read_text())
    raw["requestContext"]["authorizer"] = {"principalId": CALLER.principal, **CALLER.context()}
    raw["requestContext"]["routeKey"] = body["action"]
    raw["body"] = json.dumps(body)
    event_client = lam.connections.client(lam.connections.endpoint_for(WebSocketEvent.model_validate(raw)))
    sent: list[bytes] = []

    def record(params: dict[str, Any], **_: Any) -> None:
        sent.append(params["Data"])

    event_client.meta.events.register("before-parameter-build.apigatewaymanagementapi.PostToConnection", record)
    try:
        with Stubber(event_client) as stub:
            stub.add_response("post_to_connection", {}, {"ConnectionId": ANY, "Data": ANY})
            result = lam(raw, None)
    finally:
        event_client.meta.events.unregister("before-parameter-build.apigatewaymanagementapi.PostToConnection", record)
    assert result["statusCode"] == 200
    # history is a two-way route: its reply is the response body (shared/protocol.py two_way_routes)
    replies = [*sent, *([result["body"].encode()] if "body" in result else [])]
    assert len(replies) == 1
    return SERVER_MESSAGE.validate_json(replies[0]), len(replies[0])


def test_ten_thousand_documents_page_through_list_documents(lambdas: tuple[Any, Any, Any]) -> None:
    ingestion_lambda = lambdas[0]
    for limit in (None, MAX_DOCUMENTS_LIMIT):
        seen: list[str] = []
        sizes: list[int] = []
        after: str | None = None
        while True:
            body: dict[str, Any] = {"action": "list_documents", "request_id": "l"}
            if limit is not None:
                body["limit"] = limit
            if after is not None:
                body["after"] = after
            page, n = invoke(ingestion_lambda, body)
            assert isinstance(page, DocumentList), page
            sizes.append(n)
            assert len(page.documents) <= (limit or DEFAULT_DOCUMENTS_LIMIT)
            seen += [d.id for d in page.documents]
            if page.next is None:
                break
            assert page.next == page.documents[-1].id
            after = page.next
        assert seen == sorted(doc_id(i) for i in range(DOCUMENTS))
        assert max(sizes) <= MAX_MESSAGE_BYTES
        if limit is None:  # no limit: pages of the default size (an old client gets the first one)
            assert len(sizes) == DOCUMENTS // DEFAULT_DOCUMENTS_LIMIT
        else:  # 1000 ordinary documents are ~190 KB: the pages were cut by size, not by count
            assert len(sizes) > DOCUMENTS // MAX_DOCUMENTS_LIMIT
        print(f"list_documents limit={limit}: {len(sizes)} pages, largest {max(sizes)} bytes")
    # A title longer than a listing shows is clipped (the raw document keeps it whole).
    page, _ = invoke(ingestion_lambda, {"action": "list_documents", "after": doc_id(16), "limit": 1})
    assert isinstance(page, DocumentList) and page.documents[0].id == doc_id(17)
    assert len(page.documents[0].title) == 1024 and page.documents[0].title.endswith("…")


def test_a_200_turn_conversation_pages_through_history(lambdas: tuple[Any, Any, Any]) -> None:
    _, chat_lambda, store = lambdas
    conversation = str(uuid.uuid4())
    sources = [
        {"n": n, "doc_id": doc_id(n), "title": f"Document {n}", "chunk": 0, "distance": 0.4, "excerpt": "w " * 150}
        for n in range(1, 6)
    ]
    rows = []
    for turn in range(TURNS):
        rows.append(MessageRow(f"u{turn:03d}", conversation, 2 * turn, "user", f"question {turn} " * 40, "t"))
        rows.append(
            MessageRow(
                f"a{turn:03d}",
                conversation,
                2 * turn + 1,
                "assistant",
                f"answer {turn} " * 200,
                "t",
                {"sources": sources, "max_distance": 0.7, "prompt": "context"},
            )
        )
    store.append_messages(rows, tenant=CALLER.tenant, principal=CALLER.principal)
    for limit in (None, MAX_HISTORY_LIMIT):
        seen: list[str] = []
        sizes: list[int] = []
        after: str | None = None
        while True:
            body: dict[str, Any] = {"action": "history", "conversation_id": conversation}
            if limit is not None:
                body["limit"] = limit
            if after is not None:
                body["after"] = after
            page, n = invoke(chat_lambda, body)
            assert isinstance(page, History), page
            assert len(page.messages) <= (limit or DEFAULT_HISTORY_LIMIT)
            sizes.append(n)
            seen += [m.id for m in page.messages]
            if page.next is None:
                break
            after = page.next
        assert seen == [r.id for r in rows]
        assert max(sizes) <= MAX_MESSAGE_BYTES
        print(f"history limit={limit}: {len(sizes)} pages, largest {max(sizes)} bytes")
    # A cursor that is not a message of this conversation is a typed error.
    err, _ = invoke(chat_lambda, {"action": "history", "conversation_id": conversation, "after": "nope"})
    assert isinstance(err, ErrorMessage) and err.code == "invalid_request" and "history.after" in err.message
