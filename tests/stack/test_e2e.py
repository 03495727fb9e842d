"""The whole RAG loop, five real processes, real MiniLM, real llama.cpp, real LanceDB.

Run once with LanceDB and raw documents on a local folder and once on an S3-compatible server
(moto's standalone server here; docker-compose runs MinIO).
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shared.protocol import SERVER_MESSAGE
from shared.stack import Stack
from tests.conftest import StackFactory, WsClient, s3_client
from tests.support.auth import TENANT_A

VOLCANO = {
    "id": "volcanoes",
    "title": "Volcanoes",
    "date": "2025-01-10",
    "text": (
        "A volcano forms where molten rock called magma rises through the Earth's crust. "
        "When pressure from dissolved gases builds up, the volcano erupts, sending lava, ash and "
        "volcanic gases into the air. Most volcanoes sit along tectonic plate boundaries, such as the "
        "Pacific Ring of Fire. Shield volcanoes like Mauna Loa have gentle slopes built by runny basalt lava."
    ),
}
BREAD = {
    "id": "sourdough",
    "title": "Baking sourdough bread",
    "text": (
        "Sourdough bread is leavened with a starter culture of wild yeast and lactic acid bacteria. "
        "Mix flour, water and salt with the starter, let the dough ferment slowly for many hours, "
        "shape it, and bake it in a very hot oven until the crust is dark and crisp."
    ),
}
# MiniLM puts unrelated texts at cosine distance ~0.85-1.05 and related ones at ~0.3-0.4 (measured),
# so the test stacks run with 0.7; the product default (1.2) lets almost everything through.
MAX_DISTANCE = "0.7"


@pytest.fixture(scope="module", params=["local", "s3"])
def stack(request: pytest.FixtureRequest, start_stack: StackFactory) -> Stack:
    if request.param == "s3":
        return start_stack("e2e-s3", s3_endpoint=request.getfixturevalue("moto_s3"), RAG_MAX_DISTANCE=MAX_DISTANCE)
    return start_stack("e2e-local", RAG_MAX_DISTANCE=MAX_DISTANCE)


@pytest.fixture
def client(stack: Stack) -> Iterator[WsClient]:
    c = WsClient(stack.ws_url)
    yield c
    c.close()


def _validate(messages: list[dict[str, Any]]) -> None:
    for m in messages:
        SERVER_MESSAGE.validate_python(m)  # every reply is a documented protocol message


def test_ingest_ask_and_history(client: WsClient) -> None:
    for i, doc in enumerate((VOLCANO, BREAD)):
        reply = client.request({"action": "ingest", "request_id": f"ing-{i}", "document": doc})
        _validate([reply])
        assert reply["type"] == "ingest_result", reply
        assert reply["request_id"] == f"ing-{i}"
        assert reply["doc_id"] == doc["id"] and reply["chunks"] >= 1 and reply["tokens"] > 10

    replies = client.chat({"action": "chat", "request_id": "q1", "question": "How do volcanoes erupt?"})
    _validate(replies)
    assert all(r["request_id"] == "q1" for r in replies)
    start, tokens, end = replies[0], replies[1:-1], replies[-1]
    assert start["type"] == "stream_start" and end["type"] == "stream_end", [r["type"] for r in replies]
    assert tokens and all(t["type"] == "token" for t in tokens)
    assert [t["index"] for t in tokens] == list(range(len(tokens)))  # in order, none missing
    assert end["answer"] == "".join(t["text"] for t in tokens)
    assert end["usage"]["output_tokens"] >= 1
    assert end["prompt"] == "context"
    doc_ids = {s["doc_id"] for s in end["sources"]}
    assert "volcanoes" in doc_ids and "sourdough" not in doc_ids
    assert all(s["distance"] <= 1.2 for s in end["sources"])
    assert start["sources"] == end["sources"]
    assert [s["n"] for s in end["sources"]] == list(range(1, len(end["sources"]) + 1))
    conversation = end["conversation_id"]

    # An off-topic question: nothing survives the threshold, so the no-context prompt answers.
    replies = client.chat(
        {
            "action": "chat",
            "request_id": "q2",
            "conversation_id": conversation,
            "question": "Who won the 1998 World Cup?",
        }
    )
    end2 = replies[-1]
    assert end2["type"] == "stream_end" and end2["sources"] == [] and end2["prompt"] == "no_context"
    assert end2["conversation_id"] == conversation

    history = client.request({"action": "history", "request_id": "h1", "conversation_id": conversation})
    _validate([history])
    assert history["type"] == "history" and history["request_id"] == "h1"
    msgs = history["messages"]
    assert [m["role"] for m in msgs] == ["user", "assistant", "user", "assistant"]
    assert msgs[0]["content"] == "How do volcanoes erupt?"
    assert msgs[1]["content"] == end["answer"]
    assert msgs[1]["sources"] == end["sources"] and msgs[1]["prompt"] == "context"
    assert msgs[1]["max_distance"] == pytest.approx(float(MAX_DISTANCE))
    assert msgs[3]["sources"] == [] and msgs[3]["prompt"] == "no_context"


def _posts(stack: Stack) -> int:
    """@connections posts the gateway has delivered (its /health counts)."""
    with urllib.request.urlopen(f"{stack.http_url}/health", timeout=30) as resp:
        return int(json.loads(resp.read())["posts"])


def test_search_threshold_and_override(client: WsClient, stack: Stack) -> None:
    client.request({"action": "ingest", "request_id": "i", "document": VOLCANO})
    client.request({"action": "ingest", "request_id": "j", "document": BREAD})
    posts = _posts(stack)
    r = client.request({"action": "search", "request_id": "s1", "query": "sourdough starter and yeast"})
    assert r["type"] == "search_result" and [s["doc_id"] for s in r["results"]] == ["sourdough"]
    # A two-way route: the result came back in the Invoke's answer (API Gateway's route response), not
    # through an @connections post.
    assert _posts(stack) == posts
    assert r["max_distance"] == pytest.approx(float(MAX_DISTANCE))
    # The whole range: every chunk comes back, nearest first.
    r = client.request({"action": "search", "request_id": "s2", "query": "sourdough starter", "max_distance": 2.0})
    dists = [s["distance"] for s in r["results"]]
    assert {s["doc_id"] for s in r["results"]} >= {"sourdough", "volcanoes"} and dists == sorted(dists)
    r = client.request({"action": "search", "request_id": "s3", "query": "sourdough", "max_distance": 0.0})
    assert r["results"] == []


def test_reingest_replaces_and_delete_removes(client: WsClient) -> None:
    long_text = " ".join(f"Sentence {i} is about glaciers carving valleys over long ages." for i in range(120))
    doc = {"id": "glaciers", "title": "Glaciers", "text": long_text}
    first = client.request({"action": "ingest", "request_id": "g1", "document": doc})
    assert first["chunks"] > 2
    short = {**doc, "text": "Glaciers are slow rivers of ice."}
    second = client.request({"action": "ingest", "request_id": "g2", "document": short})
    assert second["chunks"] == 1 and second["replaced_chunks"] == first["chunks"]
    r = client.request({"action": "search", "request_id": "g3", "query": "glaciers", "top_k": 50, "max_distance": 2.0})
    assert [s["chunk"] for s in r["results"] if s["doc_id"] == "glaciers"] == [0]  # no stale chunks

    gone = client.request({"action": "delete_document", "request_id": "g4", "doc_id": "glaciers"})
    assert gone == {"type": "document_deleted", "request_id": "g4", "doc_id": "glaciers", "chunks_deleted": 1}
    r = client.request({"action": "search", "request_id": "g5", "query": "glaciers", "top_k": 50, "max_distance": 2.0})
    assert all(s["doc_id"] != "glaciers" for s in r["results"])
    again = client.request({"action": "delete_document", "request_id": "g6", "doc_id": "glaciers"})
    assert again["type"] == "error" and again["code"] == "document_not_found"


def test_raw_documents_are_kept_in_the_object_store(client: WsClient, stack: Stack) -> None:
    # Under the client's tenant's folder (tenants/alpha/; the default tenant's is the store's root).
    client.request({"action": "ingest", "request_id": "r", "document": VOLCANO})
    cfg = stack.config
    assert cfg is not None
    if cfg.s3_endpoint_url:
        s3 = s3_client(cfg.s3_endpoint_url)
        bucket = (cfg.documents_uri or "").removeprefix("s3://").split("/")[0]
        raw = json.loads(
            s3.get_object(Bucket=bucket, Key=f"documents/tenants/{TENANT_A}/volcanoes.json")["Body"].read()
        )
        assert s3.list_objects_v2(Bucket=bucket, Prefix="lancedb/")["KeyCount"] > 0  # vectors in the bucket too
    else:
        raw = json.loads((Path(cfg.documents_uri or "") / "tenants" / TENANT_A / "volcanoes.json").read_text())
        assert any((Path(cfg.lancedb_uri or "")).iterdir())
    assert raw["id"] == "volcanoes" and raw["text"] == VOLCANO["text"] and raw["title"] == "Volcanoes"
