"""The OpenAI-compatible HTTP API (api/, which the gateway forwards /v1 to) against the real stack.

Driven with the official ``openai`` client and with plain HTTP (urllib / http.client) through the
gateway, as clients reach it, and on the api process directly (no gateway); responses are validated
against the API's own OpenAPI document, whose paths must be exactly the API's routes. Every request
carries tenant alpha's API key (``Authorization: Bearer``) unless a test says otherwise.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Generator, Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import openai
import pytest
from aiohttp import web
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate as validate_spec

from api.app import API, Backends
from api.app import create_app as create_api
from api.identity import Identity
from api.openapi import openapi_document
from api.settings import Settings as ApiSettings
from authorizer.service import Authorizer
from chat.service import ChatService
from chat.settings import Settings as ChatSettings
from gateway.app import create_app
from gateway.settings import Settings
from ingestion.handler import build_service as build_ingestion
from ingestion.settings import Settings as IngestionSettings
from shared.bedrock import ChatEvent, StreamDone, TextDelta
from shared.serving import listening_socket
from shared.settings import AuthSettings
from shared.stack import Stack
from shared.vector_store import VectorStore
from tests.conftest import DEFAULT, TIMEOUT_FACTOR, StackFactory, WsClient, stack_keys
from tests.stack.test_e2e import BREAD, VOLCANO
from tests.support.auth import default_key, remember
from tests.support.paths import ARTIFACTS
from tests.support.procs import start_service

TIDES_MD = b"""# Ocean tides

## Causes

Tides are the regular rise and fall of the sea level. They are caused by the gravitational pull of the
Moon and, to a lesser degree, the Sun on the Earth's oceans. Most coasts see two high tides and two low
tides every lunar day. Spring tides, the largest, happen when the Sun and the Moon line up.
"""
REEFS_MD = b"""# Coral reefs

Coral reefs are underwater structures built by colonies of tiny animals called polyps, which secrete
calcium carbonate skeletons. Reefs grow in warm, shallow, clear tropical water.
"""
TIDES_QUESTION = "What causes the ocean tides to rise and fall?"
VOLCANO_QUESTION = "How do volcanoes erupt?"


@pytest.fixture(scope="module")
def stack(start_stack: StackFactory) -> Stack:
    s = start_stack("http", RAG_MAX_DISTANCE="0.7")
    ws = WsClient(s.ws_url, timeout=180)
    try:
        for i, doc in enumerate((VOLCANO, BREAD)):
            reply = ws.request({"action": "ingest", "request_id": f"i{i}", "document": doc})
            assert reply["type"] == "ingest_result", reply
    finally:
        ws.close()
    return s


@pytest.fixture(scope="module")
def base(stack: Stack) -> str:
    return stack.by_name["gateway"].url


@pytest.fixture(scope="module")
def client(base: str) -> openai.OpenAI:
    key = default_key(base)
    assert key
    return openai.OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0, timeout=180 * TIMEOUT_FACTOR)


def auth(base: str, key: str | None = DEFAULT) -> dict[str, str]:
    """Authorization for the gateway at ``base``: tenant alpha's key by default, ``key`` if given."""
    key = default_key(base) if key is DEFAULT else key
    if key is None:
        return {}
    remember(key)
    return {"Authorization": f"Bearer {key}"}


# ---------------------------------------------------------------------- helpers


def call(
    base: str,
    method: str,
    path: str,
    body: Any = None,
    *,
    raw: bytes | None = None,
    headers: dict[str, str] | None = None,
    key: str | None = DEFAULT,
) -> tuple[int, Any]:
    """(status, parsed JSON body) of one request, with ``key`` (default: tenant alpha's)."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    hdrs = {"Content-Type": "application/json", **auth(base, key), **(headers or {})}
    req = urllib.request.Request(base + path, data=data, method=method, headers=hdrs)
    try:
        with urllib.request.urlopen(req, timeout=180 * TIMEOUT_FACTOR) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


_DOC = openapi_document()


def conforms(schema: str, data: Any) -> Any:
    """Validate `data` against components.schemas[schema] of the gateway's OpenAPI document."""
    validator = Draft202012Validator({"$ref": f"#/components/schemas/{schema}", "components": _DOC["components"]})
    errors = sorted(validator.iter_errors(data), key=str)
    assert not errors, f"{schema}: {[e.message for e in errors[:3]]}"
    return data


def assert_openai_error(status: int, body: Any, expected_status: int, code: str | None = None) -> None:
    assert status == expected_status, body
    conforms("Error", body)
    if code is not None:
        assert body["error"]["code"] == code, body


def sse_events(base: str, body: dict[str, Any], key: str | None = DEFAULT) -> list[Any]:
    """POST a streaming chat completion; every `data:` event, parsed ("[DONE]" kept as a string)."""
    req = urllib.request.Request(
        f"{base}/v1/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", **auth(base, key)},
    )
    events: list[Any] = []
    with urllib.request.urlopen(req, timeout=180 * TIMEOUT_FACTOR) as resp:
        assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/event-stream")
        for line in resp:
            text = line.decode().rstrip("\n")
            if text.startswith("data: "):
                payload = text.removeprefix("data: ")
                events.append(payload if payload == "[DONE]" else json.loads(payload))
    return events


def ask(client: openai.OpenAI, question: str) -> tuple[str, list[dict[str, Any]]]:
    resp = client.chat.completions.create(model="localrag", messages=[{"role": "user", "content": question}])
    citations = (resp.model_extra or {}).get("citations")
    assert isinstance(citations, list)
    return resp.choices[0].message.content or "", citations


def _not_started() -> Backends:
    raise AssertionError("the application is only inspected, never started")


def api_routes() -> set[tuple[str, str]]:
    app = create_api(ApiSettings(), _not_started)
    return {
        (r.method.lower(), r.resource.canonical)
        for r in app.router.routes()
        if r.resource is not None
        and r.method != "HEAD"
        and (r.resource.canonical.startswith("/v1/") or r.resource.canonical == "/openapi.json")
    }


def forwarded_by_the_gateway(path: str) -> bool:
    """The gateway's route for ``path`` is its proxy to the api function."""
    app = create_app(Settings())
    for resource in app.router.resources():
        info = resource.get_info()
        pattern = info.get("pattern")
        matched = pattern.fullmatch(path) if pattern is not None else info.get("path") == path
        if matched:
            return any(getattr(r.handler, "__name__", "") == "forward" for r in resource)
    return False


# ---------------------------------------------------------------------- the description


def test_openapi_document_matches_the_routes() -> None:
    validate_spec(_DOC)  # a valid OpenAPI 3.1 document
    documented = {(m, path) for path, ops in _DOC["paths"].items() for m in ops}
    assert documented == api_routes()
    # and the gateway forwards every one of them to the api function
    for _, path in documented:
        assert forwarded_by_the_gateway(path.replace("{id}", "x")), path
    assert forwarded_by_the_gateway("/ui/") and forwarded_by_the_gateway("/ui/config.json")


def test_openapi_is_served(base: str) -> None:
    status, body = call(base, "GET", "/openapi.json")
    assert status == 200 and body == json.loads(json.dumps(_DOC))


# ---------------------------------------------------------------------- models


def test_identity_is_required(base: str, stack: Stack) -> None:
    """Everything that reads or writes data needs a key; the model list and the OpenAPI document do not."""
    for method, path in (
        ("GET", "/v1/documents"),
        ("GET", "/v1/kb/status"),
        ("POST", "/v1/kb/sync"),
        ("POST", "/v1/chat/completions"),
        ("POST", "/v1/documents"),
        ("DELETE", "/v1/documents/volcanoes"),
    ):
        status, body = call(base, method, path, {}, key=None)
        assert_openai_error(status, body, 401, "missing_credentials")
        status, body = call(base, method, path, {}, key="lrk_nosuchkey_0000000000000000000000000000")
        assert_openai_error(status, body, 401, "invalid_credentials")
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{base}/v1", api_key="lrk_bad", max_retries=0).chat.completions.create(
            model="localrag", messages=[{"role": "user", "content": "hi"}]
        )
    assert call(base, "GET", "/v1/models", key=None)[0] == 200
    assert call(base, "GET", "/openapi.json", key=None)[0] == 200
    # A body a page could post cross-site without a preflight is not taken.
    status, body = call(base, "POST", "/v1/kb/sync", raw=b"{}", headers={"Content-Type": "text/plain"})
    assert_openai_error(status, body, 415, "unsupported_media_type")
    # Another tenant sees none of alpha's documents; a second principal of alpha sees them all.
    keys = stack_keys(stack)
    status, body = call(base, "GET", "/v1/documents", key=keys.beta)
    assert status == 200 and body["data"] == [], body
    status, body = call(base, "GET", "/v1/documents", key=keys.alpha2)
    assert status == 200 and {"volcanoes", "sourdough"} <= {d["id"] for d in body["data"]}


def test_models(client: openai.OpenAI, base: str) -> None:
    assert [m.id for m in client.models.list()] == ["localrag"]
    model = client.models.retrieve("localrag")
    assert model.id == "localrag" and model.owned_by == "localrag"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4o")
    status, body = call(base, "GET", "/v1/models")
    assert status == 200
    conforms("ModelList", body)
    status, body = call(base, "GET", "/v1/models/nope")
    assert_openai_error(status, body, 404, "model_not_found")


# ---------------------------------------------------------------------- chat


def test_chat_completion(client: openai.OpenAI, base: str) -> None:
    resp = client.chat.completions.create(
        model="localrag",
        messages=[
            {"role": "system", "content": "You are terse."},  # ignored: the RAG prompt is the system prompt
            {"role": "user", "content": VOLCANO_QUESTION},
        ],
    )
    assert resp.object == "chat.completion" and resp.model == "localrag"
    assert resp.choices[0].message.role == "assistant" and resp.choices[0].message.content
    assert resp.choices[0].finish_reason in ("stop", "length")
    assert resp.usage is not None and resp.usage.completion_tokens >= 1
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens
    citations = (resp.model_extra or {})["citations"]
    doc_ids = {c["doc_id"] for c in citations}
    assert "volcanoes" in doc_ids and "sourdough" not in doc_ids
    assert [c["n"] for c in citations] == list(range(1, len(citations) + 1))

    # The raw response, validated against the OpenAPI schema; extensions go through to retrieval.
    status, body = call(
        base,
        "POST",
        "/v1/chat/completions",
        {"model": "localrag", "messages": [{"role": "user", "content": VOLCANO_QUESTION}], "top_k": 1},
    )
    assert status == 200, body
    conforms("ChatCompletion", body)
    assert [c["doc_id"] for c in body["citations"]] == ["volcanoes"]
    # An off-topic question: nothing passes the threshold.
    _, citations = ask(client, "Who won the 1998 football World Cup?")
    assert citations == []


def test_stateless_history(client: openai.OpenAI) -> None:
    """Earlier turns come from the request (text content parts too); the last user message is the question."""
    resp = client.chat.completions.create(
        model="localrag",
        messages=[
            {"role": "user", "content": "Tell me about bread."},
            {"role": "assistant", "content": "Sourdough uses a starter."},
            {"role": "user", "content": [{"type": "text", "text": "What is the starter of sourdough made of?"}]},
        ],
    )
    assert resp.choices[0].message.content
    assert "sourdough" in {c["doc_id"] for c in (resp.model_extra or {})["citations"]}


def test_streaming_with_the_openai_client(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="localrag",
        messages=[{"role": "user", "content": VOLCANO_QUESTION}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert len(chunks) >= 4
    assert chunks[0].choices[0].delta.role == "assistant"
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finishes) == 1 and finishes[0] in ("stop", "length")
    # The last chunk carries the citations (and the usage asked for), with no choices.
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None and last.usage.completion_tokens >= 1
    assert "volcanoes" in {c["doc_id"] for c in (last.model_extra or {})["citations"]}


def test_streaming_events(base: str) -> None:
    events = sse_events(
        base, {"model": "localrag", "messages": [{"role": "user", "content": VOLCANO_QUESTION}], "stream": True}
    )
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    for c in chunks:
        conforms("ChatCompletionChunk", c)
    first, *tokens, finish, cites = chunks
    assert first["choices"][0]["delta"]["role"] == "assistant"
    assert tokens and all(t["choices"][0]["delta"].get("content") is not None for t in tokens)
    assert "".join(t["choices"][0]["delta"]["content"] for t in tokens)
    assert finish["choices"][0]["finish_reason"] in ("stop", "length") and finish["choices"][0]["delta"] == {}
    assert cites["choices"] == [] and "usage" not in cites
    assert {c["doc_id"] for c in cites["citations"]} == {"volcanoes"}
    assert len({c["id"] for c in chunks}) == 1


def api_health(stack: Stack) -> dict[str, Any]:
    with urllib.request.urlopen(f"{stack.api_url}/health", timeout=10 * TIMEOUT_FACTOR) as resp:
        body: dict[str, Any] = json.loads(resp.read())
        return body


def test_client_leaving_mid_stream_leaves_nothing_running(base: str, stack: Stack) -> None:
    """Through the gateway: the client leaves after the first event; the answer is stopped (or had ended)
    and nothing is left generating. (That leaving stops a generation that would go on: the in-process
    test at the end of this file.)"""
    url = urlsplit(base)
    conn = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port, timeout=60 * TIMEOUT_FACTOR)
    body = {"model": "localrag", "messages": [{"role": "user", "content": VOLCANO_QUESTION}], "stream": True}
    conn.request("POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json", **auth(base)})
    resp = conn.getresponse()
    assert resp.status == 200
    assert resp.readline().startswith(b"data: ")  # the stream has started
    if conn.sock is not None:
        conn.sock.close()
    resp.close()
    conn.close()
    deadline = time.monotonic() + 10 * TIMEOUT_FACTOR
    while api_health(stack)["chats_in_flight"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert api_health(stack)["chats_in_flight"] == 0


def test_the_api_process_directly(stack: Stack) -> None:
    """The api process without the gateway in front: the same API, the same identity, the web chat."""
    api = stack.api_url
    key = default_key(stack.http_url)
    assert key
    status, body = call(api, "GET", "/v1/documents", key=None)
    assert_openai_error(status, body, 401, "missing_credentials")
    status, body = call(api, "GET", "/v1/documents", key=key)
    assert status == 200 and {"volcanoes", "sourdough"} <= {d["id"] for d in body["data"]}
    client = openai.OpenAI(base_url=f"{api}/v1", api_key=key, max_retries=0, timeout=180 * TIMEOUT_FACTOR)
    _, citations = ask(client, VOLCANO_QUESTION)
    assert "volcanoes" in {c["doc_id"] for c in citations}
    events = sse_events(
        api, {"model": "localrag", "messages": [{"role": "user", "content": VOLCANO_QUESTION}], "stream": True}, key
    )
    assert events[-1] == "[DONE]" and {c["doc_id"] for c in events[-2]["citations"]} == {"volcanoes"}
    status, body = call(api, "GET", "/openapi.json", key=None)
    assert status == 200 and body == json.loads(json.dumps(_DOC))
    status, config = call(api, "GET", "/ui/config.json", key=None)
    assert status == 200 and config == {"websocket_path": "/local", "gateways": []}
    # A name that is not the API's (DNS rebinding) is refused before anything runs.
    status, body = call(api, "GET", "/v1/models", key=None, headers={"Host": "evil.example"})
    assert_openai_error(status, body, 421, "host_not_allowed")


# ---------------------------------------------------------------------- documents and sync


def put(url: str, data: bytes, headers: dict[str, str]) -> int:
    req = urllib.request.Request(url, data=data, method="PUT", headers=headers)
    with urllib.request.urlopen(req, timeout=60 * TIMEOUT_FACTOR) as resp:
        return int(resp.status)


def wait_for_job(base: str, job_id: str, key: str | None = DEFAULT) -> dict[str, Any]:
    deadline = time.monotonic() + 180 * TIMEOUT_FACTOR
    while time.monotonic() < deadline:
        status, body = call(base, "GET", "/v1/kb/status", key=key)
        assert status == 200
        conforms("SyncJobList", body)
        job = next(j for j in body["data"] if j["id"] == job_id)
        if job["status"] in ("done", "failed"):
            return dict(job)
        time.sleep(0.2)
    raise AssertionError(f"sync job {job_id} did not finish")


def documents(base: str, key: str | None = DEFAULT) -> dict[str, dict[str, Any]]:
    status, body = call(base, "GET", "/v1/documents", key=key)
    assert status == 200
    conforms("DocumentList", body)
    return {d["id"]: d for d in body["data"]}


def test_upload_sync_ask_delete(base: str, client: openai.OpenAI) -> None:
    status, ticket = call(
        base, "POST", "/v1/documents", {"filename": "tides.md", "content_type": "text/markdown", "size": len(TIDES_MD)}
    )
    assert status == 201, ticket
    conforms("UploadTicket", ticket)
    assert ticket["id"] == "tides.md" and ticket["method"] == "PUT"
    assert put(ticket["upload_url"], TIDES_MD, ticket["headers"]) == 200
    listed = documents(base)
    assert listed["tides.md"]["status"] == "uploaded" and listed["tides.md"]["name"] == "tides.md"
    assert listed["volcanoes"]["status"] == "indexed"

    status, job = call(base, "POST", "/v1/kb/sync")
    assert status == 202, job
    conforms("SyncJobAccepted", job)
    assert job["status"] == "queued" and job["total"] == 1
    done = wait_for_job(base, job["job_id"])
    assert done["status"] == "done" and done["succeeded"] == 1 and done["failed"] == 0 and done["errors"] == []
    assert done["started_at"] and done["finished_at"]
    listed = documents(base)
    assert listed["tides.md"]["status"] == "indexed" and listed["tides.md"]["chunks"] >= 1

    _, citations = ask(client, TIDES_QUESTION)
    tides = [c for c in citations if c["doc_id"] == "tides.md"]
    assert tides and tides[0]["heading"] and "Causes" in tides[0]["heading"]

    status, body = call(base, "DELETE", "/v1/documents/tides.md")
    assert status == 200, body
    conforms("DocumentDeleted", body)
    assert body["deleted"] is True and body["chunks_deleted"] >= 1
    assert "tides.md" not in documents(base)
    _, citations = ask(client, TIDES_QUESTION)
    assert "tides.md" not in {c["doc_id"] for c in citations}
    status, body = call(base, "DELETE", "/v1/documents/tides.md")
    assert_openai_error(status, body, 404, "document_not_found")


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_sync_jobs_outlive_the_api_process(stack: Stack, base: str) -> None:
    """Two api processes (as two Lambda execution environments): a sync started on one, which is killed at
    once, runs on in the ingestion function and is seen done on the other; the pending upload too."""
    key = default_key(base)
    env = dict(stack.by_name["api"].env)
    logs = ARTIFACTS / "logs" / "http-two-apis"
    one = start_service("api-one", "api", env, logs, settings_prefix="API")
    two = start_service("api-two", "api", env, logs, settings_prefix="API")
    try:
        body = {"filename": "reefs.md", "content_type": "text/markdown", "size": len(REEFS_MD)}
        status, ticket = call(one.url, "POST", "/v1/documents", body, key=key)
        assert status == 201, ticket
        assert put(ticket["upload_url"], REEFS_MD, ticket["headers"]) == 200
        assert documents(two.url, key)["reefs.md"]["status"] == "uploaded"  # the other process knows it
        correlation = f"sync-test-{time.monotonic_ns()}"
        status, job = call(one.url, "POST", "/v1/kb/sync", key=key, headers={"X-Request-Id": correlation})
        assert status == 202 and job["total"] == 1, job
        one.kill()
        done = wait_for_job(two.url, job["job_id"], key)
        assert done["status"] == "done" and done["succeeded"] == 1, done
        # The request's correlation id: on the api's request line, and on the ingestion function's lines
        # about the job it started.
        assert any(
            line.get("correlation_id") == correlation and line["message"].startswith("POST /v1/kb/sync -> 202")
            for line in json_lines(one.log())
        )
        ingestion = [x for x in json_lines(stack.by_name["ingestion"].log()) if job["job_id"] in x["message"]]
        assert ingestion and all(x.get("correlation_id") == correlation for x in ingestion), ingestion
        assert documents(two.url, key)["reefs.md"]["status"] == "indexed"
        assert documents(base)["reefs.md"]["status"] == "indexed"  # and the stack's own api process
        status, body = call(two.url, "DELETE", "/v1/documents/reefs.md", key=key)
        assert status == 200 and body["chunks_deleted"] >= 1
    finally:
        one.stop()
        two.stop()


def test_sync_failure_is_reported(base: str) -> None:
    """An upload URL that was never used: the sync job fails for it, and the list says why."""
    status, ticket = call(base, "POST", "/v1/documents", {"filename": "ghost.txt", "size": 10})
    assert status == 201, ticket
    status, job = call(base, "POST", "/v1/kb/sync")
    assert status == 202
    done = wait_for_job(base, job["job_id"])
    assert done["status"] == "failed" and done["failed"] == 1
    assert done["errors"] == [
        {"document": "ghost.txt", "code": "object_not_found", "message": done["errors"][0]["message"]}
    ]
    ghost = documents(base)["ghost.txt"]
    assert ghost["status"] == "failed" and ghost["error"]["code"] == "object_not_found"
    # Not retried by the next sync (the failure is not transient); deleting forgets it.
    status, job = call(base, "POST", "/v1/kb/sync")
    assert status == 202 and job["total"] == 0
    assert wait_for_job(base, job["job_id"])["status"] == "done"
    status, body = call(base, "DELETE", "/v1/documents/ghost.txt")
    assert status == 200 and body["chunks_deleted"] == 0
    assert "ghost.txt" not in documents(base)


# ---------------------------------------------------------------------- errors


def test_errors(base: str, client: openai.OpenAI) -> None:
    path = "/v1/chat/completions"
    status, body = call(base, "POST", path, raw=b"{not json")
    assert_openai_error(status, body, 400, "malformed_json")
    status, body = call(base, "POST", path, raw=b"[1, 2]")
    assert_openai_error(status, body, 400, "malformed_json")
    status, body = call(base, "POST", path, {"model": "localrag"})
    assert_openai_error(status, body, 400, "invalid_request")
    assert body["error"]["param"] == "messages" and body["error"]["type"] == "invalid_request_error"
    status, body = call(base, "POST", path, {"model": "localrag", "messages": [{"role": "assistant", "content": "x"}]})
    assert_openai_error(status, body, 400, "invalid_request")
    # Validated by the chat function itself (the protocol's ChatRequest), as on the WebSocket.
    status, body = call(
        base, "POST", path, {"model": "localrag", "messages": [{"role": "user", "content": "hi"}], "top_k": 0}
    )
    assert_openai_error(status, body, 400, "invalid_request")
    assert "top_k" in body["error"]["message"]
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(
            model="localrag", messages=[{"role": "user", "content": "x"}], extra_body={"top_k": 0}
        )

    status, body = call(base, "POST", path, {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]})
    assert_openai_error(status, body, 404, "model_not_found")
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])

    big = json.dumps({"model": "localrag", "messages": [{"role": "user", "content": "x" * (1024 * 1024 + 10)}]})
    status, body = call(base, "POST", path, raw=big.encode())
    assert_openai_error(status, body, 413, "request_too_large")

    status, body = call(base, "POST", "/v1/documents", {"filename": "tool.exe", "size": 10})
    assert_openai_error(status, body, 415, "unsupported_type")
    status, body = call(base, "POST", "/v1/documents", {"filename": "a.txt"})
    assert_openai_error(status, body, 400, "invalid_request")
    status, body = call(base, "DELETE", "/v1/documents/no-such-doc")
    assert_openai_error(status, body, 404, "document_not_found")
    status, body = call(base, "GET", "/v1/nothing-here")
    assert_openai_error(status, body, 404, "not_found")
    status, body = call(base, "POST", "/v1/kb/sync", raw=b"nope")
    assert_openai_error(status, body, 400, "malformed_json")


@pytest.fixture(autouse=True)
def _no_leftover_connections(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if "base" in request.fixturenames:  # the HTTP API holds no connection in the gateway's table
        base = request.getfixturevalue("base")
        deadline = time.monotonic() + 2 * TIMEOUT_FACTOR  # (the fixture's WebSocket client may be closing)
        while True:
            with urllib.request.urlopen(f"{base}/health", timeout=10 * TIMEOUT_FACTOR) as resp:
                n = json.loads(resp.read())["connections"]
            if n == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert n == 0


# ---------------------------------------------------------------------- streaming and leaving, deterministically

DIM = 4


class QueryEmbedder:
    def embed_query(self, text: str) -> list[float]:
        return [1.0, 0.0, 0.0, 0.0]

    def embed_documents(self, texts: Sequence[str]) -> list[list[float]]:
        return [[1.0, 0.0, 0.0, 0.0] for _ in texts]


class EndlessLLM:
    """An answer that never ends on its own: a token every 20 ms until the stream is closed."""

    def __init__(self) -> None:
        self.tokens = 0
        self.closed = threading.Event()

    def stream(self, system: str, messages: Sequence[dict[str, str]]) -> Generator[ChatEvent, None, None]:
        try:
            while self.tokens < 100_000:
                self.tokens += 1
                yield TextDelta(f"t{self.tokens} ")
                time.sleep(0.02)
            yield StreamDone("end_turn", 1, self.tokens)
        finally:
            self.closed.set()


def test_through_the_gateway_sse_streams_and_leaving_stops_the_generation(tmp_path: Path) -> None:
    """In process: the gateway forwards to the api application, whose chat logic streams an answer that
    never ends. The first token reaches the client through the gateway while the answer goes on (the proxy
    streams, it does not buffer); the client leaves; the generation is stopped (the LLM stream closed)."""
    llm = EndlessLLM()

    async def scenario() -> tuple[int, int]:
        store = VectorStore(str(tmp_path / "lancedb"), dimension=DIM, model_id="test", full_text=False)
        chat = ChatService(
            ChatSettings(intent_routing=False, search_mode="vector", token_flush_ms=0),
            embedder=QueryEmbedder(),
            store=store,
            llm=llm,
        )
        ingestion = build_ingestion(
            IngestionSettings(documents_uri=str(tmp_path / "documents")), embedder=QueryEmbedder(), store=store
        )
        backends = Backends(chat=chat, ingestion=ingestion, identity=Identity(Authorizer(methods={"none"})))
        api_app = create_api(ApiSettings(), backends)
        api_sock, gw_sock = listening_socket("127.0.0.1", 0), listening_socket("127.0.0.1", 0)
        api_runner = web.AppRunner(api_app)
        await api_runner.setup()
        await web.SockSite(api_runner, api_sock).start()
        gw_port = gw_sock.getsockname()[1]
        settings = Settings(
            port=gw_port,
            api_url=f"http://127.0.0.1:{api_sock.getsockname()[1]}",
            auth=AuthSettings(auth=["none"]),
        )
        gw_runner = web.AppRunner(create_app(settings))
        await gw_runner.setup()
        await web.SockSite(gw_runner, gw_sock).start()
        try:
            body = {"model": "localrag", "messages": [{"role": "user", "content": "q"}], "stream": True}
            async with aiohttp.ClientSession() as s:
                resp = await s.post(f"http://127.0.0.1:{gw_port}/v1/chat/completions", json=body)
                assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/event-stream")
                seen: list[dict[str, Any]] = []
                while len(seen) < 2:  # the role chunk, then the first token
                    line = await asyncio.wait_for(resp.content.readline(), 30 * TIMEOUT_FACTOR)
                    if line.startswith(b"data: "):
                        seen.append(json.loads(line[6:]))
                assert seen[1]["choices"][0]["delta"]["content"].startswith("t1")
                assert not llm.closed.is_set()  # it is still generating: the token came through as it was made
                resp.close()  # leave
            stopped = await asyncio.to_thread(llm.closed.wait, 10 * TIMEOUT_FACTOR)
            assert stopped, "the generation went on after the client left"
            at_stop = llm.tokens
            await asyncio.sleep(0.2)
            stats = api_app[API].stats
            return llm.tokens - at_stop, stats.chats_cancelled
        finally:
            await gw_runner.cleanup()
            await api_runner.cleanup()

    more, cancelled = asyncio.run(scenario())
    assert more == 0 and cancelled == 1
