"""Every reply fits one 128 KB message: pages built by serialized size, sources capped, and the emitter's
guard (a reply that would still be too large becomes a typed ``reply_too_large`` error, never posted).

The worst cases are the protocol's own limits with the costliest characters: a document id of 256
astral-plane characters (4 UTF-8 bytes each), titles and names of 1024 control characters (6 bytes each
as JSON escapes them: ``\\u0001``)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from botocore.stub import ANY, Stubber
from pydantic import BaseModel

from shared.connections import Connections
from shared.events import WebSocketEvent
from shared.identity import Principal
from shared.paging import (
    ENVELOPE_BYTES,
    PAGE_BUDGET_BYTES,
    SOURCES_BUDGET_BYTES,
    fit_history_message,
    fit_sources,
    json_size,
    listed_document,
    take_page,
)
from shared.protocol import (
    MAX_DOCUMENTS_LIMIT,
    MAX_HISTORY_LIMIT,
    MAX_MESSAGE_BYTES,
    DocumentInfo,
    DocumentList,
    ErrorCode,
    History,
    HistoryMessage,
    SearchResult,
    Source,
    StreamEnd,
    StreamStart,
    Usage,
    actions_of,
    encode,
)
from shared.ws_lambda import Emit, WebSocketLambda
from tests.support.paths import EVENTS

ASTRAL = "\U0001f600"  # 4 bytes of UTF-8
CONTROL = "\x01"  # 6 bytes as a JSON escape
WORST_REQUEST_ID = CONTROL * 128
WORST_CONVERSATION = CONTROL * 128


def size(message: BaseModel) -> int:
    return len(encode(message))


def worst_document(i: int) -> DocumentInfo:
    return DocumentInfo(
        id=f"{i:06d}" + ASTRAL * 250,
        title=CONTROL * 5000,  # a parsed title is not bounded: the listing clips it
        name=CONTROL * 5000,
        size=2**62,
        status="indexed",
        chunks=2**31,
        uploaded_at="2025-01-31T12:00:00.000000+00:00",
        indexed_at="2025-01-31T12:00:00.000000+00:00",
    )


def worst_source(n: int, excerpt_chars: int = 300) -> Source:
    return Source(
        n=n,
        doc_id=ASTRAL * 256,
        title=CONTROL * 5000,
        chunk=2**31,
        distance=1.2345,
        excerpt=CONTROL * excerpt_chars,
        date=CONTROL * 64,
        source=CONTROL * 5000,
        page=2**31,
        heading=CONTROL * 5000,
    )


def test_a_page_of_the_worst_documents_fits_and_says_there_is_more() -> None:
    docs = [listed_document(worst_document(i)) for i in range(MAX_DOCUMENTS_LIMIT)]
    page, more = take_page(docs, limit=MAX_DOCUMENTS_LIMIT)
    assert more and 1 <= len(page) < MAX_DOCUMENTS_LIMIT
    reply = DocumentList(request_id=WORST_REQUEST_ID, documents=page, next=page[-1].id)
    assert size(reply) <= MAX_MESSAGE_BYTES
    # The bound: one worst document is under 14 KB, so a page holds at least 8 of them.
    assert json_size(page[0]) < 14 * 1024 and len(page) >= PAGE_BUDGET_BYTES // (14 * 1024)


def test_take_page_stops_at_the_limit_or_the_budget_whichever_first() -> None:
    small = [DocumentInfo(id=f"d{i:05d}", status="indexed", chunks=1) for i in range(300)]
    page, more = take_page(small, limit=100)
    assert [d.id for d in page] == [f"d{i:05d}" for i in range(100)] and more
    page, more = take_page(small[:100], limit=100)
    assert len(page) == 100 and not more
    page, more = take_page(small, limit=1000, budget=1000)
    assert more and 0 < len(page) < 300
    assert (
        json_size(DocumentList(request_id=None, documents=page))
        - json_size(DocumentList(request_id=None, documents=[]))
        <= 1000
    )
    page, more = take_page([], limit=10)
    assert page == [] and not more


def test_sources_are_a_ranked_prefix_within_their_budget() -> None:
    sources = [worst_source(n) for n in range(1, 101)]
    kept = fit_sources(sources)
    assert 1 <= len(kept) < 100 and [s.n for s in kept] == list(range(1, len(kept) + 1))
    assert sum(json_size(s) + 1 for s in kept) + 1 <= SOURCES_BUDGET_BYTES
    start = StreamStart(request_id=WORST_REQUEST_ID, conversation_id=WORST_CONVERSATION, sources=kept)
    assert size(start) <= MAX_MESSAGE_BYTES
    # stream_end: the sources plus an answer of 8192 tokens of 8 bytes each still fit.
    end = StreamEnd(
        request_id=WORST_REQUEST_ID,
        conversation_id=WORST_CONVERSATION,
        answer="é" * 4 * 8192,
        sources=kept,
        usage=Usage(input_tokens=2**31, output_tokens=2**31, total_tokens=2**32),
        stop_reason="max_tokens",
        prompt="context",
        timings_ms={"retrieval": 1e9, "first_token": 1e9, "generation": 1e9, "total": 1e9},
    )
    assert size(end) <= MAX_MESSAGE_BYTES
    # Ordinary sources (300-character excerpts, short titles): all 50 of a top_k of 50 are kept.
    plain = [
        Source(n=n, doc_id=f"doc-{n}", title=f"Title {n}", chunk=n, distance=0.5, excerpt="word " * 60)
        for n in range(1, 51)
    ]
    assert fit_sources(plain) == plain


def test_a_huge_excerpt_is_cut_rather_than_dropping_every_source() -> None:
    kept = fit_sources([worst_source(1, excerpt_chars=100_000)], budget=20_000)
    assert len(kept) == 1 and 0 < len(kept[0].excerpt) < 100_000 and json_size(kept[0]) + 2 <= 20_000


def test_search_results_fit_next_to_the_largest_query() -> None:
    empty = SearchResult(request_id=WORST_REQUEST_ID, query=CONTROL * 16_000, max_distance=2.0, results=[])
    budget = MAX_MESSAGE_BYTES - ENVELOPE_BYTES - json_size(empty)
    kept = fit_sources([worst_source(n) for n in range(1, 101)], budget)
    assert kept
    assert size(empty.model_copy(update={"results": kept, "max_distance": 0.30000000000000004})) <= MAX_MESSAGE_BYTES


def test_a_history_page_fits_whatever_its_messages() -> None:
    huge = HistoryMessage(
        id="m-huge",
        role="assistant",
        content=CONTROL * 64_000,
        created_at="2025-01-31T12:00:00+00:00",
        sources=[worst_source(n, excerpt_chars=4000) for n in range(1, 51)],
        max_distance=0.7,
        prompt="context",
    )
    fitted = fit_history_message(huge)
    assert fitted.truncated and json_size(fitted) <= PAGE_BUDGET_BYTES
    assert fitted.sources and fitted.content.startswith(CONTROL) and len(fitted.content) < 64_000
    small = HistoryMessage(id="m1", role="user", content="hello", created_at="2025-01-31T12:00:00+00:00")
    assert fit_history_message(small) is small
    messages = [fitted, small] * MAX_HISTORY_LIMIT
    page, more = take_page(messages, limit=MAX_HISTORY_LIMIT)
    assert more and page
    reply = History(request_id=WORST_REQUEST_ID, conversation_id=WORST_CONVERSATION, messages=page, next=page[-1].id)
    assert size(reply) <= MAX_MESSAGE_BYTES


# ---------------------------------------------------------------------- the emitter's guard


class Blob(BaseModel):
    type: str = "blob"
    data: str


def _posted(emit_size: int) -> list[dict[str, Any]]:
    """Invoke a real WebSocketLambda whose route emits ``emit_size`` characters; what it posted."""

    def route(_request: Any, emit: Emit, _caller: Principal) -> None:
        emit(Blob(data="x" * emit_size))

    connections = Connections(endpoint_url="http://127.0.0.1:1/prod", region="eu-west-1")
    lam = WebSocketLambda(connections, dict.fromkeys(actions_of("chat"), route), function="chat")
    raw = json.loads((EVENTS / "websocket_message_chat.json").read_text())
    client = connections.client(connections.endpoint_for(WebSocketEvent.model_validate(raw)))
    sent: list[dict[str, Any]] = []
    client.meta.events.register(
        "before-parameter-build.apigatewaymanagementapi.PostToConnection",
        lambda params, **_: sent.append(json.loads(params["Data"])),
    )
    with Stubber(client) as stub:
        stub.add_response("post_to_connection", {}, {"ConnectionId": ANY, "Data": ANY})
        assert lam(raw, None) == {"statusCode": 200}
        stub.assert_no_pending_responses()
    return sent


@pytest.mark.parametrize("n", [MAX_MESSAGE_BYTES - 100, MAX_MESSAGE_BYTES, 5 * MAX_MESSAGE_BYTES])
def test_a_reply_over_128_kb_becomes_reply_too_large(n: int) -> None:
    sent = _posted(n)
    overhead = len(encode(Blob(data="")))
    if n + overhead <= MAX_MESSAGE_BYTES:
        assert sent == [{"type": "blob", "data": "x" * n}]
    else:
        assert len(sent) == 1 and sent[0]["type"] == "error", sent[0].get("type")
        assert sent[0]["code"] == ErrorCode.REPLY_TOO_LARGE and str(MAX_MESSAGE_BYTES) in sent[0]["message"]
