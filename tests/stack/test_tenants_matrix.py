"""Tenant isolation on the real six processes: every WebSocket action and every ``/v1`` route, tried by
tenant B and by a second principal of tenant A with tenant A's document ids, conversation ids, upload keys
and search terms.

- 0 cross-tenant reads or writes: B never sees, changes or deletes anything of A's; an id of A's answers
  B exactly as a missing id does (``document_not_found``, ``unknown_conversation``).
- Documents are shared within a tenant (A's second principal sees them); conversations are per principal
  (A's second principal cannot read or continue A's first principal's conversation).
- 100 searches by B, with A's own words, never return an A chunk.

Each "B sees nothing" check is paired with A (or A2) seeing the same thing, so the check can fail.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import pytest

from shared.stack import Stack
from tests.conftest import StackFactory, WsClient, stack_keys
from tests.stack.test_upload import http_put
from tests.support import auth
from tests.support.http import request
from tests.support.timeouts import scaled

A_DOCS = {
    "alpha-ledger": (
        "The zorblax quartermaster hides the turquoise ledger beneath the old lighthouse. Every winter the "
        "quartermaster counts the zorblax coins twice and writes the total in turquoise ink."
    ),
    "alpha-orchard": (
        "Our plumquist orchard grows seventeen rows of violet pears. The plumquist harvest starts when the "
        "pears turn violet and the orchard smells of cinnamon."
    ),
    "shared-name": "Tenant alpha's version: the glimmerwick recipe needs three spoons of saffron honey.",
}
A_TERMS = [
    "zorblax quartermaster",
    "turquoise ledger lighthouse",
    "zorblax coins counted twice in turquoise ink",
    "plumquist orchard",
    "violet pears cinnamon harvest",
    "glimmerwick recipe saffron honey",
    "Who hides the ledger beneath the lighthouse?",
    "how many rows of pears grow in the orchard",
    "quartermaster",
    "saffron",
]
B_DOC = ("shared-name", "Tenant beta's version: the glimmerwick is a lamp wick made of beeswax and linen.")
UPLOAD_TEXT = b"The snarfle upload describes a moss-green kettle that whistles in seven-eighths time."


@dataclass
class Seeded:
    stack: Stack
    a_docs: set[str]
    conversation: str  # tenant A, first principal
    upload_key: str  # uploaded by A, not yet ingested
    v1_pending: str  # /v1 upload of A's, not yet synced


def ws(stack: Stack, key: str) -> WsClient:
    return WsClient(stack.ws_url, timeout=180, key=key)


def ok(reply: dict[str, Any], kind: str) -> dict[str, Any]:
    assert reply["type"] == kind, reply
    return reply


def refused(reply: dict[str, Any], code: str) -> None:
    assert reply["type"] == "error" and reply["code"] == code, reply


def chat(c: WsClient, question: str, **fields: Any) -> list[dict[str, Any]]:
    return c.chat({"action": "chat", "request_id": "c", "question": question, **fields})


def search_ids(c: WsClient, query: str, **fields: Any) -> set[str]:
    reply = ok(c.request({"action": "search", "request_id": "s", "query": query, **fields}), "search_result")
    return {r["doc_id"] for r in reply["results"]}


def listed(c: WsClient) -> dict[str, dict[str, Any]]:
    reply = ok(c.request({"action": "list_documents", "request_id": "l"}), "document_list")
    return {d["id"]: d for d in reply["documents"]}


def texts(stack: Stack, key: str, doc_id: str) -> set[str]:
    """The excerpts of ``doc_id``'s chunks that ``key``'s tenant finds (a search for the document's words)."""
    with ws(stack, key) as c:
        reply = c.request(
            {"action": "search", "request_id": "t", "query": "glimmerwick", "top_k": 100, "max_distance": 2.0}
        )
    return {r["excerpt"] for r in reply["results"] if r["doc_id"] == doc_id}


def is_only(excerpts: set[str], marker: str) -> bool:
    """Some excerpts, every one of them with ``marker`` (the version of the document expected)."""
    return bool(excerpts) and all(marker in e for e in excerpts)


def v1(stack: Stack, key: str, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else b""
    headers = {"Content-Type": "application/json", **auth.bearer(key)} if body is not None else auth.bearer(key)
    resp = request(stack.http_url, method, path, data, headers, timeout=180)
    return resp.status, resp.json()


@pytest.fixture(scope="module")
def seeded(start_stack: StackFactory) -> Iterator[Seeded]:
    stack = start_stack("security", RAG_MAX_DISTANCE="0.7", GATEWAY_AUTHORIZER_TTL_S="2")
    keys = stack_keys(stack)
    with ws(stack, keys.alpha) as a:
        for doc_id, text in A_DOCS.items():
            doc = {"id": doc_id, "title": doc_id, "text": text}
            ok(a.request({"action": "ingest", "request_id": doc_id, "document": doc}), "ingest_result")
        ticket = ok(
            a.request(
                {
                    "action": "upload_url",
                    "request_id": "u",
                    "filename": "snarfle.txt",
                    "content_type": "text/plain",
                    "size": len(UPLOAD_TEXT),
                }
            ),
            "upload_url",
        )
        status, body = http_put(ticket["url"], UPLOAD_TEXT, ticket["headers"])
        assert status == 200, body
        replies = chat(a, "Who hides the turquoise ledger?")
        end = replies[-1]
        assert end["type"] == "stream_end", replies
        assert "alpha-ledger" in {s["doc_id"] for s in end["sources"]}
    status, pending = v1(
        stack,
        keys.alpha,
        "POST",
        "/v1/documents",
        {"filename": "v1-alpha.txt", "content_type": "text/plain", "size": 20},
    )
    assert status == 201, pending
    status, _ = http_put(pending["upload_url"], b"alpha pending upload", pending["headers"])
    assert status == 200
    yield Seeded(stack, set(A_DOCS), end["conversation_id"], ticket["key"], pending["id"])


# ---------------------------------------------------------------------- WebSocket actions


def test_search_and_list_documents(seeded: Seeded) -> None:
    keys = stack_keys(seeded.stack)
    with ws(seeded.stack, keys.beta) as b, ws(seeded.stack, keys.alpha2) as a2:
        for query in A_TERMS[:4]:
            assert not search_ids(b, query, max_distance=2.0, top_k=100) & seeded.a_docs, query
            assert search_ids(a2, query, max_distance=2.0, top_k=100) & seeded.a_docs, query  # shared in A
        assert not set(listed(b)) & seeded.a_docs
        assert set(listed(a2)) >= seeded.a_docs


def test_a_hundred_searches_by_b_never_return_an_a_chunk(seeded: Seeded) -> None:
    keys = stack_keys(seeded.stack)
    modes = ("vector", "fts", "hybrid")
    with ws(seeded.stack, keys.beta) as b:
        leaked: list[tuple[str, str]] = []
        for i in range(100):
            query = A_TERMS[i % len(A_TERMS)]
            mode = modes[i % len(modes)]
            reply = ok(
                b.request(
                    {
                        "action": "search",
                        "request_id": f"s{i}",
                        "query": query,
                        "top_k": 100,
                        "max_distance": 2.0,
                        "search_mode": mode,
                    }
                ),
                "search_result",
            )
            leaked += [(query, r["doc_id"]) for r in reply["results"] if r["doc_id"] in seeded.a_docs]
            leaked += [(query, r["doc_id"]) for r in reply["results"] if "zorblax" in r["excerpt"].lower()]
        assert leaked == []


def test_history_and_chat_with_a_conversation_of_another_principal(seeded: Seeded) -> None:
    keys = stack_keys(seeded.stack)
    for key in (keys.beta, keys.alpha2):
        with ws(seeded.stack, key) as c:
            refused(
                c.request({"action": "history", "request_id": "h", "conversation_id": seeded.conversation}),
                "unknown_conversation",
            )
            replies = chat(c, "And what else?", conversation_id=seeded.conversation)
            refused(replies[-1], "unknown_conversation")
            assert not any(r["type"] == "token" for r in replies)
    with ws(seeded.stack, keys.alpha) as a:  # the owner still has it, unchanged
        history = ok(
            a.request({"action": "history", "request_id": "h", "conversation_id": seeded.conversation}), "history"
        )
        assert [m["role"] for m in history["messages"]] == ["user", "assistant"]


def test_chat_by_b_cites_no_a_document(seeded: Seeded) -> None:
    keys = stack_keys(seeded.stack)
    with ws(seeded.stack, keys.beta) as b:
        replies = chat(b, "Who hides the turquoise ledger beneath the lighthouse?", max_distance=2.0, top_k=50)
        end = replies[-1]
        assert end["type"] == "stream_end", replies
        assert not {s["doc_id"] for s in end["sources"]} & seeded.a_docs


def test_delete_by_b_finds_nothing_and_deletes_nothing(seeded: Seeded) -> None:
    keys = stack_keys(seeded.stack)
    with ws(seeded.stack, keys.beta) as b:
        for doc_id in sorted(seeded.a_docs - {"shared-name"}):
            refused(b.request({"action": "delete_document", "request_id": "d", "doc_id": doc_id}), "document_not_found")
        # Exactly what a missing id answers (no existence leak).
        refused(
            b.request({"action": "delete_document", "request_id": "d", "doc_id": "never-was"}), "document_not_found"
        )
    with ws(seeded.stack, keys.alpha) as a:
        assert set(listed(a)) >= seeded.a_docs


def test_ingest_with_an_a_document_id_writes_only_bs_own(seeded: Seeded) -> None:
    keys = stack_keys(seeded.stack)
    doc_id, text = B_DOC
    orchard = "Tenant beta's orchard grows only walnut trees."
    try:
        with ws(seeded.stack, keys.beta) as b:
            ok(
                b.request({"action": "ingest", "request_id": "i", "document": {"id": doc_id, "text": text}}),
                "ingest_result",
            )
            batch = b.request(
                {"action": "ingest_batch", "request_id": "ib", "documents": [{"id": "alpha-orchard", "text": orchard}]}
            )
            assert batch["type"] == "ingest_batch_result" and batch["ingested"] == 1, batch
        assert is_only(texts(seeded.stack, keys.alpha, doc_id), "Tenant alpha's version")
        assert is_only(texts(seeded.stack, keys.beta, doc_id), "Tenant beta's version")
        with ws(seeded.stack, keys.alpha) as a:
            hits = a.request({"action": "search", "request_id": "o", "query": "plumquist orchard walnut", "top_k": 100})
            assert is_only({r["excerpt"] for r in hits["results"] if r["doc_id"] == "alpha-orchard"}, "plumquist")
    finally:
        # B deletes its own copies: A's documents of the same ids stay.
        with ws(seeded.stack, keys.beta) as b:
            for own in (doc_id, "alpha-orchard"):
                b.request({"action": "delete_document", "request_id": "d", "doc_id": own})
    assert is_only(texts(seeded.stack, keys.alpha, doc_id), "Tenant alpha's version")
    with ws(seeded.stack, keys.alpha) as a:
        assert set(listed(a)) >= seeded.a_docs


def test_ingest_object_with_an_a_upload_key(seeded: Seeded) -> None:
    keys = stack_keys(seeded.stack)
    with ws(seeded.stack, keys.beta) as b:
        reply = b.request({"action": "ingest_object", "request_id": "io", "key": seeded.upload_key, "doc_id": "stolen"})
        assert reply["type"] == "error" and reply["code"] in ("object_not_found", "invalid_request"), reply
        assert "stolen" not in listed(b)
        assert not search_ids(b, "snarfle moss-green kettle", max_distance=2.0, top_k=100)
    # The owner's upload is still there for the owner.
    with ws(seeded.stack, keys.alpha) as a:
        reply = a.request(
            {"action": "ingest_object", "request_id": "io", "key": seeded.upload_key, "doc_id": "snarfle"}
        )
        ok(reply, "ingest_result")
        assert "snarfle" in search_ids(a, "snarfle moss-green kettle", max_distance=2.0, top_k=100)


# ---------------------------------------------------------------------- /v1 routes


def test_v1_documents_are_per_tenant(seeded: Seeded) -> None:
    keys = stack_keys(seeded.stack)
    stack = seeded.stack
    status, b_list = v1(stack, keys.beta, "GET", "/v1/documents")
    assert status == 200
    b_ids = {d["id"] for d in b_list["data"]}
    assert not b_ids & (seeded.a_docs | {seeded.v1_pending}), b_ids
    status, a2_list = v1(stack, keys.alpha2, "GET", "/v1/documents")
    assert status == 200 and {d["id"] for d in a2_list["data"]} >= seeded.a_docs

    for doc_id in ("alpha-ledger", seeded.v1_pending):
        status, body = v1(stack, keys.beta, "DELETE", f"/v1/documents/{quote(doc_id, safe='')}")
        assert status == 404 and body["error"]["code"] == "document_not_found", (doc_id, body)
    status, a_list = v1(stack, keys.alpha, "GET", "/v1/documents")
    a_ids = {d["id"] for d in a_list["data"]}
    assert {"alpha-ledger", seeded.v1_pending} <= a_ids, a_ids


def test_v1_sync_and_status_are_per_tenant(seeded: Seeded) -> None:
    keys = stack_keys(seeded.stack)
    stack = seeded.stack
    # B's sync claims none of A's pending uploads.
    status, job = v1(stack, keys.beta, "POST", "/v1/kb/sync", {})
    assert status == 202, job
    assert job.get("total", 0) == 0, job
    status, a_list = v1(stack, keys.alpha, "GET", "/v1/documents")
    pending = {d["id"]: d for d in a_list["data"]}[seeded.v1_pending]
    assert pending["status"] == "uploaded", pending
    # A syncs it; B's status lists none of A's jobs.
    status, a_job = v1(stack, keys.alpha, "POST", "/v1/kb/sync", {})
    assert status == 202, a_job
    deadline = time.monotonic() + scaled(120)
    while time.monotonic() < deadline:
        status, jobs = v1(stack, keys.alpha, "GET", "/v1/kb/status")
        mine = {j["id"]: j for j in jobs["data"]}
        if mine.get(a_job["job_id"], {}).get("status") in ("done", "failed"):
            break
        time.sleep(0.2)
    job = mine[a_job["job_id"]]
    assert job["status"] in ("done", "failed"), job
    # Other tests on this stack may leave uploads of tenant alpha's too; this one must have gone in.
    assert seeded.v1_pending not in {e.get("document") for e in job.get("errors", [])}, job
    status, a_list = v1(stack, keys.alpha, "GET", "/v1/documents")
    assert {d["id"]: d for d in a_list["data"]}[seeded.v1_pending]["status"] == "indexed", a_list
    status, b_jobs = v1(stack, keys.beta, "GET", "/v1/kb/status")
    assert status == 200 and a_job["job_id"] not in {j["id"] for j in b_jobs["data"]}
    status, b_list = v1(stack, keys.beta, "GET", "/v1/documents")
    assert seeded.v1_pending not in {d["id"] for d in b_list["data"]}
