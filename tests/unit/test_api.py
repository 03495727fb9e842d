"""The HTTP API application (api/app.py) in process, no process started: its error shaping, identity
(the authorizer's own logic over a real key store in a folder), Origin/CORS/Host and body rules, the
per-tenant uploads and jobs, the web chat's config, and the OpenAPI document generated from the models.

The chat and ingestion logic are the real services over a LanceDB folder, with a 4-dimension query
embedder and an LLM that answers a fixed text (what is checked here is the HTTP edge, not the answers).
"""

from __future__ import annotations

import ast
import asyncio
import io
import json
import logging
import uuid
from collections.abc import AsyncIterator, Coroutine, Generator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate as validate_spec

from api.app import OPEN, ROUTES, Backends, create_app
from api.identity import CredentialCache, Identity, Unidentified
from api.openapi import API_PREFIX, openapi_document
from api.settings import Settings
from authorizer.service import build_authorizer
from authorizer.settings import Settings as AuthorizerSettings
from chat.service import ChatService
from chat.settings import Settings as ChatSettings
from ingestion.handler import build_service as build_ingestion
from ingestion.settings import Settings as IngestionSettings
from shared.api_keys import KeyStore
from shared.bedrock import ChatEvent, StreamDone, TextDelta
from shared.logs import JsonFormatter
from shared.object_store import LocalObjectStore
from shared.settings import AuthSettings
from shared.vector_store import VectorStore

API = Path(__file__).resolve().parents[2] / "api"


class QueryEmbedder:
    def embed_query(self, text: str) -> list[float]:
        return [1.0, 0.0, 0.0, 0.0]

    def embed_documents(self, texts: Sequence[str]) -> list[list[float]]:
        return [[1.0, 0.0, 0.0, 0.0] for _ in texts]


class FixedLLM:
    def stream(self, system: str, messages: Sequence[dict[str, str]]) -> Generator[ChatEvent, None, None]:
        yield TextDelta("An answer.")
        yield StreamDone("end_turn", 3, 2)


@dataclass
class Harness:
    client: TestClient[Any, Any]
    keys: dict[str, str]

    async def call(self, method: str, path: str, key: str | None = None, **kw: Any) -> tuple[int, Any, Any]:
        headers = dict(kw.pop("headers", {}))
        if key is not None:
            headers["Authorization"] = f"Bearer {self.keys.get(key, key)}"
        async with self.client.request(method, path, headers=headers, **kw) as resp:
            text = await resp.text()
            return resp.status, (json.loads(text) if text else None), resp.headers


@asynccontextmanager
async def harness(tmp: Path, *, auth: str = "api_key", **settings: Any) -> AsyncIterator[Harness]:
    documents = tmp / "documents"
    keys = KeyStore.open(str(documents), s3_endpoint_url=None, region="us-east-1")
    plain = {"alpha": keys.create("alpha", "a")[1], "beta": keys.create("beta", "b")[1]}
    revoked, plain["revoked"] = keys.create("alpha", "r")
    keys.revoke(revoked.key_id)
    store = VectorStore(str(tmp / "lancedb"), dimension=4, model_id="test", full_text=False)
    backends = Backends(
        chat=ChatService(
            ChatSettings(intent_routing=False, search_mode="vector"),
            embedder=QueryEmbedder(),
            store=store,
            llm=FixedLLM(),
        ),
        ingestion=build_ingestion(
            IngestionSettings(documents_uri=str(documents), upload_secret="s"), embedder=QueryEmbedder(), store=store
        ),
        identity=Identity(build_authorizer(AuthorizerSettings(auth=AuthSettings(auth=[auth])), key_store=keys)),
    )
    settings.setdefault("uploads_url", "http://127.0.0.1:1/local")
    app = create_app(Settings(**settings), backends)
    async with TestClient(TestServer(app)) as client:
        yield Harness(client, plain)


def run(scenario: Coroutine[Any, Any, None]) -> None:
    asyncio.run(scenario)


def test_app_module_imports_no_gateway() -> None:
    """The api function is deployed on its own: it imports the logic it runs, never the gateway."""
    for path in sorted(API.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            names += [a.name for a in node.names] if isinstance(node, ast.Import) else []
            assert not any(n.split(".")[0] == "gateway" for n in names), path.name


def test_v1_errors_are_openai_shaped_and_only_there(tmp_path: Path) -> None:
    async def scenario() -> None:
        error_schema = Draft202012Validator(
            {"$ref": "#/components/schemas/Error", "components": openapi_document()["components"]}
        )
        async with harness(tmp_path) as h:
            for method, path, status, code in [
                ("GET", "/v1/nothing-here", 404, "not_found"),
                ("PUT", "/v1/models", 405, "method_not_allowed"),
                ("GET", "/v1/models/gpt-4o", 404, "model_not_found"),
            ]:
                got, body, _ = await h.call(method, path, "alpha")
                assert got == status, body
                assert not list(error_schema.iter_errors(body)), body
                assert body["error"]["code"] == code
            async with h.client.get("/nothing-here") as resp:  # outside /v1: aiohttp's own 404
                assert resp.status == 404 and "error" not in (await resp.text())
            got, body, _ = await h.call("GET", "/v1/models")
            assert got == 200 and [m["id"] for m in body["data"]] == ["localrag"]

    run(scenario())


def test_v1_needs_identity_except_models(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with harness(tmp_path) as h:
            status, body, headers = await h.call("GET", "/v1/documents")
            assert (status, body["error"]["code"]) == (401, "missing_credentials")
            assert body["error"]["type"] == "invalid_request_error"
            assert headers["WWW-Authenticate"].startswith("Bearer")
            for key, status_, code in [
                ("lrk_nosuchkey_0000000000000000000000000000", 401, "invalid_credentials"),
                ("not a key", 401, "invalid_credentials"),
                ("revoked", 403, "access_denied"),
            ]:
                status, body, _ = await h.call("GET", "/v1/documents", key)
                assert (status, body["error"]["code"]) == (status_, code), body
                assert h.keys.get(key, key) not in body["error"]["message"]
            for path in ("/v1/documents", "/v1/kb/status", "/v1/nothing-here"):
                status, body, _ = await h.call("GET", path)
                assert status == 401, path
            for method, path in (("POST", "/v1/chat/completions"), ("POST", "/v1/documents"), ("POST", "/v1/kb/sync")):
                status, body, _ = await h.call(method, path, json={})
                assert status == 401, path
            status, body, _ = await h.call("DELETE", "/v1/documents/x")
            assert status == 401
            # The WebSocket subprotocol is no credential for HTTP.
            sub = {"Sec-WebSocket-Protocol": f"localrag.bearer.{h.keys['alpha']}"}
            assert (await h.call("GET", "/v1/documents", headers=sub))[0] == 401
            # Open: the model list, and the OpenAPI document.
            assert (await h.call("GET", "/v1/models"))[0] == 200
            assert (await h.call("GET", "/v1/models/localrag"))[0] == 200
            async with h.client.get("/openapi.json") as resp:
                assert resp.status == 200
            status, body, _ = await h.call("GET", "/v1/documents", "alpha")
            assert status == 200 and body["data"] == []
            status, body, _ = await h.call("GET", f"/v1/documents?token={h.keys['alpha']}")
            assert status == 200

    run(scenario())


def test_rag_auth_none_lets_everyone_in_as_anonymous_and_warns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        async with harness(tmp_path, auth="none") as h:
            status, body, _ = await h.call("GET", "/v1/kb/status")
            assert status == 200, body
            status, body, _ = await h.call("GET", "/v1/kb/status", headers={"Origin": "http://evil.example"})
            assert status == 403  # every other check stays

    with caplog.at_level(logging.WARNING):
        run(scenario())
    assert any("RAG_AUTH=none" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)


def test_chat_completion_through_the_logic(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with harness(tmp_path) as h:
            body = {"model": "localrag", "messages": [{"role": "user", "content": "hello?"}]}
            status, out, _ = await h.call("POST", "/v1/chat/completions", "alpha", json=body)
            assert status == 200, out
            assert out["choices"][0]["message"]["content"] == "An answer." and out["citations"] == []
            assert out["usage"] == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
            # Checked by the protocol's own ChatRequest, as the chat function checks it.
            status, out, _ = await h.call("POST", "/v1/chat/completions", "alpha", json={**body, "top_k": 0})
            assert (status, out["error"]["code"]) == (400, "invalid_request") and "top_k" in out["error"]["message"]
            async with h.client.post(
                "/v1/chat/completions",
                json={**body, "stream": True},
                headers={"Authorization": f"Bearer {h.keys['alpha']}"},
            ) as resp:
                assert resp.headers["Content-Type"].startswith("text/event-stream")
                events = [line for line in (await resp.text()).split("\n") if line.startswith("data: ")]
            assert events[-1] == "data: [DONE]" and len(events) == 5

    run(scenario())


def test_v1_bodies_only_as_application_json(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with harness(tmp_path) as h:
            for content_type in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"):
                status, body, _ = await h.call(
                    "POST", "/v1/kb/sync", "alpha", data=b"{}", headers={"Content-Type": content_type}
                )
                assert (status, body["error"]["code"]) == (415, "unsupported_media_type"), content_type
            status, _, _ = await h.call(
                "POST", "/v1/kb/sync", "alpha", data=b"{}", headers={"Content-Type": "application/json; charset=utf-8"}
            )
            assert status == 202
            status, _, _ = await h.call("POST", "/v1/kb/sync", "alpha")  # no body, no type: fine
            assert status == 202

    run(scenario())


def test_v1_origin_and_cors(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with harness(tmp_path, allowed_origins=["https://app.example"]) as h:
            preflight = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST"}
            async with h.client.options("/v1/chat/completions", headers=preflight) as resp:
                assert resp.status == 204
                assert resp.headers["Access-Control-Allow-Origin"] == "https://app.example"
                assert "POST" in resp.headers["Access-Control-Allow-Methods"]
                assert "Authorization" in resp.headers["Access-Control-Allow-Headers"]
                assert "Origin" in resp.headers["Vary"]
            async with h.client.options(
                "/v1/chat/completions", headers={**preflight, "Origin": "http://evil.example"}
            ) as resp:
                assert resp.status == 403
                assert "Access-Control-Allow-Origin" not in resp.headers
            for origin in ("http://evil.example", "null", f"http://127.0.0.1.evil.example:{h.client.port}"):
                status, body, _ = await h.call("GET", "/v1/kb/status", "alpha", headers={"Origin": origin})
                assert (status, body["error"]["code"]) == (403, "origin_not_allowed"), origin
            status, _, headers = await h.call(
                "GET", "/v1/kb/status", "alpha", headers={"Origin": "https://app.example"}
            )
            assert status == 200 and headers["Access-Control-Allow-Origin"] == "https://app.example"
            # The page's own origin (as the gateway forwards the client's Host): allowed.
            own = f"http://127.0.0.1:{h.client.port}"
            assert (await h.call("GET", "/v1/kb/status", "alpha", headers={"Origin": own}))[0] == 200
            status, _, headers = await h.call("GET", "/v1/kb/status", "alpha")
            assert status == 200 and "Access-Control-Allow-Origin" not in headers
            # The refusal of an allowed origin is readable by its page.
            status, _, headers = await h.call("GET", "/v1/kb/status", headers={"Origin": "https://app.example"})
            assert status == 401 and headers["Access-Control-Allow-Origin"] == "https://app.example"

    run(scenario())


def test_host_must_name_the_api(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with harness(tmp_path, allowed_hosts=["api.example"]) as h:
            for host in ("evil.example", f"evil.example:{h.client.port}", "127.0.0.1.evil.example"):
                status, body, _ = await h.call("GET", "/v1/models", headers={"Host": host})
                assert status == 421 and body["error"]["code"] == "host_not_allowed"
                async with h.client.get("/ui/", headers={"Host": host}) as resp:
                    assert resp.status == 421
            for host in ("api.example", "localhost:8000", "[::1]:1234"):
                assert (await h.call("GET", "/v1/models", headers={"Host": host}))[0] == 200, host
        async with harness(tmp_path / "any", allowed_hosts=["*"]) as h:  # a Function URL: any Host
            assert (await h.call("GET", "/v1/models", headers={"Host": "abc.lambda-url.us-east-1.on.aws"}))[0] == 200

    run(scenario())


def test_v1_uploads_and_sync_jobs_are_per_tenant(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with harness(tmp_path) as h:
            status, body, _ = await h.call("POST", "/v1/documents", "alpha", json={"filename": "secret.md", "size": 5})
            assert status == 201, body
            assert body["upload_url"].startswith("http://127.0.0.1:1/local/uploads/")  # API_UPLOADS_URL
            status, body, _ = await h.call("GET", "/v1/documents", "beta")
            assert status == 200 and body["data"] == []
            status, body, _ = await h.call("GET", "/v1/documents", "alpha")
            assert [d["id"] for d in body["data"]] == ["secret.md"]
            status, body, _ = await h.call("POST", "/v1/kb/sync", "beta")
            assert status == 202 and body["total"] == 0  # beta's sync does not take alpha's upload
            status, body, _ = await h.call("GET", "/v1/kb/status", "alpha")
            assert body["data"] == []  # nor does alpha see beta's job

    run(scenario())


def test_web_chat_config(tmp_path: Path) -> None:
    async def scenario() -> None:
        gateways = ["wss://other.example:8443"]
        async with harness(tmp_path, web_chat_gateways=gateways) as h, h.client.get("/ui/config.json") as r:
            assert await r.json() == {"websocket_path": "/local", "gateways": ["wss://other.example:8443"]}
        wss = "wss://abc123.execute-api.us-east-1.amazonaws.com/prod"
        async with (
            harness(tmp_path / "aws", websocket_url=wss, stage="prod") as h,
            h.client.get("/ui/config.json") as r,
        ):
            assert await r.json() == {"websocket_path": "/prod", "gateways": [], "websocket_url": wss}

    run(scenario())


def test_settings_refuse_what_they_cannot_mean() -> None:
    bads: tuple[dict[str, Any], ...] = (
        {"allowed_origins": "*"},
        {"allowed_origins": "http://x.example/path"},
        {"web_chat_gateways": "http://not-ws.example"},
        {"websocket_url": "https://not-ws.example/prod"},
    )
    for bad in bads:
        with pytest.raises(ValueError):
            Settings(**bad)
    s = Settings(allowed_origins="https://A.example, http://b.example:81")
    assert s.allowed_origins == ["https://a.example", "http://b.example:81"]


def test_openapi_paths_are_the_v1_routes() -> None:
    doc = openapi_document()
    validate_spec(doc)
    documented = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops if p != "/openapi.json"}
    assert documented == {(m, API_PREFIX + p) for m, p, _ in ROUTES}


def test_openapi_marks_exactly_the_open_routes_as_open() -> None:
    doc = openapi_document()
    assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    documented_open = {
        (method.upper(), path)
        for path, ops in doc["paths"].items()
        for method, op in ops.items()
        if path != "/openapi.json" and "security" not in op
    }
    assert documented_open == {(m, API_PREFIX + p) for m, p, handler in ROUTES if handler in OPEN}
    assert documented_open == {("GET", "/v1/models"), ("GET", "/v1/models/{id}")}


def test_startup_builds_the_backends_once_and_health_counts(tmp_path: Path) -> None:
    """Given a builder, the app builds its logic at startup (the cold start), not per request."""
    built: list[int] = []

    async def scenario() -> None:
        def build() -> Backends:
            built.append(1)
            store = VectorStore(str(tmp_path / "lancedb2"), dimension=4, model_id="test", full_text=False)
            return Backends(
                chat=ChatService(ChatSettings(), embedder=QueryEmbedder(), store=store, llm=FixedLLM()),
                ingestion=build_ingestion(
                    IngestionSettings(documents_uri=str(tmp_path / "d2")), embedder=QueryEmbedder(), store=store
                ),
                identity=Identity(build_authorizer(AuthorizerSettings(auth=AuthSettings(auth=["none"])))),
            )

        app = create_app(Settings(), build)
        async with TestClient(TestServer(app)) as client:
            for _ in range(3):
                async with client.get("/v1/kb/status") as resp:
                    assert resp.status == 200
            async with client.get("/health") as resp:
                assert await resp.json() == {
                    "status": "ok",
                    "chats_in_flight": 0,
                    "chats_cancelled": 0,
                    "credential_cache_hits": 0,  # identity off: nothing to check
                }

    run(scenario())
    assert built == [1]


def test_every_request_is_logged_with_its_correlation_id(tmp_path: Path) -> None:
    """One JSON line per request (shared/logs.py's), with the request's correlation id -- the caller's
    X-Request-Id, X-Ray's trace root, Lambda Web Adapter's request context, or a new one -- echoed in
    X-Request-Id; the worker threads' lines carry it too; no credential in any line."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter("api"))
    root, access = logging.getLogger(), logging.getLogger("aiohttp.access")
    old_level, old_access = root.level, access.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    access.setLevel(logging.WARNING)  # as configure_logging() sets it in every service: it would log ?token=

    async def scenario() -> dict[str, Any]:
        seen: dict[str, Any] = {}
        async with harness(tmp_path) as h:
            _, _, headers = await h.call("GET", "/v1/kb/status", "alpha", headers={"X-Request-Id": "req-123.abc"})
            seen["given"] = headers["X-Request-Id"]
            trace = {"X-Amzn-Trace-Id": "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1"}
            _, _, headers = await h.call("GET", "/v1/documents", "alpha", headers=trace)
            seen["trace"] = headers["X-Request-Id"]
            lwa = {
                "x-amzn-request-context": json.dumps({"requestId": "c6af9ac6-7b61-11e6-9a41-93e8deadbeef"}),
                "x-amzn-lambda-context": json.dumps({"request_id": "8476a536-e9f4-11e8-9739-2dfe598c3fcd"}),
            }
            _, _, headers = await h.call("GET", "/v1/models", headers=lwa)
            seen["lwa"] = headers["X-Request-Id"]
            bad = {"X-Request-Id": "two words\tand " + "x" * 200}
            _, _, headers = await h.call("GET", "/v1/kb/status", "nope-not-a-key", headers=bad)  # refused: 401
            seen["fresh"] = headers["X-Request-Id"]
            async with h.client.get("/v1/kb/status", params={"token": h.keys["beta"]}) as resp:
                seen["query_token"] = (resp.status, resp.headers["X-Request-Id"])
            body = {"model": "localrag", "messages": [{"role": "user", "content": "q"}], "stream": True}
            async with h.client.post("/v1/chat/completions", json=body, headers={"Authorization": "Bearer x"}) as r:
                seen["stream"] = r.headers.get("X-Request-Id")
            seen["keys"] = dict(h.keys)
        return seen

    try:
        seen = asyncio.run(scenario())
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
        access.setLevel(old_access)
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    requests = [x for x in lines if x["logger"] == "requests"]

    def request_line(correlation: str) -> dict[str, Any]:
        return next(x for x in requests if x.get("correlation_id") == correlation)

    assert seen["given"] == "req-123.abc"
    assert request_line("req-123.abc")["message"].startswith("GET /v1/kb/status -> 200 in ")
    assert seen["trace"] == "1-5759e988-bd862e3fe1be46a994272793"
    assert request_line(seen["trace"])["http_status"] == 200
    assert seen["lwa"] == "c6af9ac6-7b61-11e6-9a41-93e8deadbeef"
    assert request_line(seen["lwa"])["aws_request_id"] == "8476a536-e9f4-11e8-9739-2dfe598c3fcd"
    assert str(uuid.UUID(seen["fresh"])) == seen["fresh"]  # the bad one replaced by a new id
    assert request_line(seen["fresh"])["http_status"] == 401
    # The refusal was logged by the identity check, in a worker thread: with the request's id.
    refusals = [x for x in lines if x["logger"] == "api.identity" and x.get("correlation_id") == seen["fresh"]]
    assert refusals and "refused" in refusals[0]["message"]
    status, correlation = seen["query_token"]
    assert status == 200 and request_line(correlation)["message"].startswith("GET /v1/kb/status -> 200")
    assert seen["stream"] is not None  # a refused stream has it too (401 before any event)
    assert len({seen[k] for k in ("given", "trace", "lwa", "fresh")} | {correlation}) == 5
    text = out.getvalue()
    assert "two words" not in text and "nope-not-a-key" not in text
    assert all(key not in text for key in seen["keys"].values())


def test_api_keys_are_cached_briefly_and_revocation_is_honoured_within_the_ttl(tmp_path: Path) -> None:
    """A valid key's principal and a revoked key's 403 are reused for the TTL (the key store is not read);
    an unknown key's 401 is never cached; a key revoked meanwhile passes until its entry expires, then 403;
    the cache is bounded (least recently used first)."""
    reads: list[str] = []

    class CountingStore(LocalObjectStore):
        """The documents folder, counting the key store's reads (one per check that is not cached)."""

        def read(self, key: str) -> bytes:
            reads.append(key)
            return super().read(key)

    keys = KeyStore(CountingStore(tmp_path / "documents"))
    identity = Identity(build_authorizer(AuthorizerSettings(auth=AuthSettings(auth=["api_key"])), key_store=keys))
    now = [1000.0]
    cache = CredentialCache(ttl_s=60, size=2, clock=lambda: now[0])
    a_record, a = keys.create("alpha", "a")
    b_record, b = keys.create("beta", "b")
    _, c = keys.create("beta", "c")
    ghost = "lrk_" + "0" * 16 + "_" + "x" * 43
    reads.clear()

    def who(key: str) -> str | int:
        try:
            return identity.principal([("Authorization", f"Bearer {key}")], {}, "GET /v1/x", cache).tenant
        except Unidentified as exc:
            return exc.status

    assert [who(a), who(a), who(a)] == ["alpha"] * 3 and len(reads) == 1 and cache.hits == 2
    assert [who(ghost), who(ghost)] == [401, 401] and len(reads) == 3  # 401s are not cached
    keys.revoke(a_record.key_id)
    now[0] += 59.0
    assert who(a) == "alpha"  # revoked, but within the TTL of its cached Allow (as on API Gateway)
    now[0] += 1.0
    assert who(a) == 403  # expired: checked again, refused, and that Deny is cached
    reads.clear()
    assert who(a) == 403 and reads == []
    # Bounded: a, b, then c pushes out the least recently used (a's Deny).
    assert who(b) == "beta" and who(c) == "beta" and len(reads) == 2
    assert who(a) == 403 and len(reads) == 3
    keys.revoke(b_record.key_id)
    reads.clear()
    assert who(b) == 403 and len(reads) == 1  # b was pushed out by a: checked again
    off = CredentialCache(ttl_s=0, size=10)
    reads.clear()
    assert [identity.principal([("Authorization", f"Bearer {c}")], {}, "w", off).tenant for _ in range(2)] == [
        "beta",
        "beta",
    ]
    assert len(reads) == 2 and off.hits == 0
