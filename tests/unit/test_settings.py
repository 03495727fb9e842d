"""Every documented setting changes what the built service does, and each value two processes need has one
definition.

For each service a table maps every variable the README documents (``shared.settings_doc.variables``) to a
non-default value and an observable on the objects built from the environment the way the entry point
builds them: the service, its adapters and clients, its lambda, its local runtime. The test builds twice,
with and without the value, and the observable must differ; a documented variable missing from the table
fails the completeness test (wire it or remove it). No process is started and no model is loaded: the
embedder, the vector store and the LLM are test doubles where behaviour is driven (retrieval, prompts,
streaming), and real clients where their configuration is observed.
"""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from shared.identity import anonymous
from shared.settings_doc import settings_class, variables

PREFIXES = ("RAG_", "CHAT_", "INGESTION_", "GATEWAY_", "EMBEDDING_", "LLM_")
TIMEOUT = "7.5"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only what a test sets: no variable of the developer's shell leaks into a build."""
    import os

    for var in list(os.environ):
        if var.upper().startswith(PREFIXES):
            monkeypatch.delenv(var)

    # One botocore session for every client the builds make: loading the service models once keeps this
    # fast, and a client's configuration does not depend on its session.
    import boto3

    shared = _session()
    monkeypatch.setattr(boto3.session, "Session", lambda: shared)


@functools.cache
def _session() -> Any:
    import boto3

    return boto3.session.Session()


# ---------------------------------------------------------------------------------------------- doubles


@dataclass
class RecordingStore:
    """Stands in for VectorStore (whose S3 connection does I/O at construction): records how it was built
    and how it is searched, and returns one long match."""

    uri: str
    dimension: int
    model_id: str
    storage_options: dict[str, str] | None = None
    vector_index: Any = None  # the VectorIndexPolicy
    read_consistency_s: float = 0.0
    searches: list[dict[str, Any]] = field(default_factory=list)

    def search(self, vector: Sequence[float], **kwargs: Any) -> list[Any]:
        from shared.vector_store import Match

        self.searches.append(kwargs)
        text = "Lava is molten rock that erupts from a volcano and cools into basalt. " * 3
        return [Match("volcano", 0, "Volcano", text, 0.1, None, None, {})]

    def conversation(self, conversation_id: str, **_: Any) -> list[Any]:
        return []

    def document_leases(self) -> Any:
        """Real document leases, in a LanceDB folder at ``uri``."""
        from shared.vector_store import VectorStore

        return VectorStore(self.uri, dimension=self.dimension, model_id=self.model_id).document_leases()


class ConstantEmbedder:
    def embed_query(self, text: str) -> list[float]:
        return [0.0] * 384

    def embed_documents(self, texts: Sequence[str]) -> list[list[float]]:
        return [[0.0] * 384 for _ in texts]


class ScriptedLLM:
    """Three text deltas; records the system prompt and the messages it is given."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[dict[str, str]]]] = []

    def stream(self, system: str, messages: Sequence[dict[str, str]]) -> Generator[Any, None, None]:
        from shared.bedrock import StreamDone, TextDelta

        self.calls.append((system, list(messages)))
        for part in ("Lava ", "is ", "hot."):
            yield TextDelta(part)
        yield StreamDone("end_turn", 5, 3)


@dataclass
class Runtime:
    """What the local Lambda runtime was started with (run_local, with serving stubbed out)."""

    create: dict[str, Any] = field(default_factory=dict)
    serve: dict[str, Any] = field(default_factory=dict)
    log_level: str | None = None


def runtime_of(monkeypatch: pytest.MonkeyPatch, settings: Any) -> Runtime:
    from shared import lambda_runtime, logs

    rt = Runtime()
    monkeypatch.setattr(logs, "configure_logging", lambda level="INFO", service=None: setattr(rt, "log_level", level))
    monkeypatch.setattr(lambda_runtime, "create_runtime_app", lambda handler, **kw: rt.create.update(kw) or object())
    monkeypatch.setattr(lambda_runtime, "serve", lambda app, host, port, **kw: rt.serve.update(host=host, port=port))
    lambda_runtime.run_local(lambda e, c: {}, lambda: None, settings)
    return rt


def read_timeouts(*clients: Any) -> tuple[float, ...]:
    return tuple(c.meta.config.read_timeout for c in clients)


# ---------------------------------------------------------------------------------------------- builds


@dataclass
class Built:
    settings: Any
    service: Any
    lam: Any
    embedder: Any  # the embedder build_service makes when none is passed
    store: RecordingStore
    runtime: Runtime
    tmp: Path


def build_lambda_objects(kind: str, monkeypatch: pytest.MonkeyPatch, tmp: Path) -> Built:
    """As the lambda's cold start builds them (handler.build_service / build_lambda, __main__.run_local),
    with the vector store recorded and the embedder replaced by a double where it would be called."""
    import importlib

    from shared import wiring

    handler = importlib.import_module(f"{kind}.handler")
    settings = importlib.import_module(f"{kind}.settings").Settings()
    stores: list[RecordingStore] = []

    def record(uri: str, **kwargs: Any) -> RecordingStore:
        stores.append(RecordingStore(uri, **kwargs))
        return stores[-1]

    monkeypatch.setattr(wiring, "VectorStore", record)
    service = handler.build_service(settings, embedder=ConstantEmbedder())
    return Built(
        settings=settings,
        service=service,
        lam=handler.build_lambda(settings, service),
        embedder=wiring.embedder(settings),
        store=stores[-1],
        runtime=runtime_of(monkeypatch, settings),
        tmp=tmp,
    )


@dataclass(frozen=True)
class Effect:
    value: str  # the non-default value
    observe: Callable[[Built], Any]  # differs between the build with and without the value
    base: dict[str, str] = field(default_factory=dict)  # environment both builds share (e.g. an S3 URI)


S3_INDEX = {"RAG_LANCEDB_URI": "s3://bucket/lancedb"}
S3_DOCS = {"RAG_DOCUMENTS_URI": "s3://bucket/documents", "RAG_S3_ENDPOINT_URL": "http://minio:9000"}


def _chat_retrieve(b: Built) -> dict[str, Any]:
    b.service.retrieve("what is lava?", tenant="default")
    return b.store.searches[-1]


def _chat(b: Built, question: str, **fields: Any) -> tuple[ScriptedLLM, list[Any]]:
    from shared.protocol import ChatRequest

    llm, out = ScriptedLLM(), list[Any]()
    b.service.llm = llm
    b.service.chat(ChatRequest(action="chat", request_id="r", question=question, **fields), out.append, anonymous())
    return llm, out


def _history_sent(b: Built) -> int:
    earlier = [{"role": "user", "content": "Tell me about rocks."}, {"role": "assistant", "content": "Which ones?"}]
    llm, _ = _chat(b, "What is lava?", messages=earlier)
    return len(llm.calls[-1][1])


def _token_messages(b: Built) -> int:
    from shared.protocol import Token

    _, out = _chat(b, "What is lava?", messages=[])
    return sum(isinstance(m, Token) for m in out)


def _followup_query(b: Built) -> str:
    """What a follow-up question is retrieved on."""
    earlier = [{"role": "user", "content": "How do volcanoes erupt?"}, {"role": "assistant", "content": "Lava."}]
    _chat(b, "And how hot is it?", messages=earlier)
    return str(b.store.searches[-1]["query_text"])


def _prompt_for_small_talk(b: Built) -> str:
    llm, _ = _chat(b, "hello!", messages=[])
    return llm.calls[-1][0]


def _cache_point(b: Built) -> list[Any]:
    """The system blocks the chat function sends in ConverseStream."""
    sent: list[dict[str, Any]] = []

    class Client:
        def converse_stream(self, **params: Any) -> dict[str, Any]:
            sent.append(params)
            return {"stream": _Events([{"messageStop": {"stopReason": "end_turn"}}])}

    class _Events(list[Any]):
        def close(self) -> None:
            pass

    b.service.llm.client = Client()
    list(b.service.llm.stream("Answer.", [{"role": "user", "content": "What is lava?"}]))
    return sent[-1]["system"]


def _lambda_timeouts(b: Built) -> tuple[Any, ...]:
    """The read timeout of every client to another service this lambda has."""
    clients = [b.embedder.client, b.lam.connections.client("http://gateway.invalid/local")]
    if hasattr(b.service, "llm"):
        clients.append(b.service.llm.client)
    objects = getattr(b.service, "objects", None)
    if objects is not None and hasattr(objects, "client"):
        clients += [objects.client, objects.presign_client]
    return (*read_timeouts(*clients), (b.store.storage_options or {}).get("timeout"))


def _metrics_namespace(b: Built) -> str:
    """The namespace of the EMF metrics the handler's entry point (handler.handler) publishes."""
    import importlib

    handler = importlib.import_module(f"{b.settings.function_name}.handler")
    handler._settings.cache_clear()
    handler._observed.cache_clear()
    try:
        return str(handler._observed().namespace)
    finally:
        handler._settings.cache_clear()
        handler._observed.cache_clear()


def _log_level(b: Built) -> str | None:
    return b.runtime.log_level


SHARED: dict[str, Effect] = {
    "RAG_LANCEDB_URI": Effect("s3://bucket/index", lambda b: b.store.uri),
    "RAG_S3_ENDPOINT_URL": Effect(
        "http://minio:9000", lambda b: (b.store.storage_options or {}).get("endpoint"), S3_INDEX
    ),
    "RAG_AWS_REGION": Effect("eu-west-3", lambda b: (b.embedder.client.meta.region_name, b.lam.connections.region)),
    "RAG_EMBEDDING_ENDPOINT_URL": Effect("http://embedding.invalid:1", lambda b: b.embedder.client.meta.endpoint_url),
    "RAG_EMBEDDING_MODEL_ID": Effect("amazon.titan-embed-text-v2:0", lambda b: (b.embedder.model_id, b.store.model_id)),
    "RAG_EMBEDDING_FORMAT": Effect("titan", lambda b: b.embedder.body_format),
    "RAG_EMBEDDING_DIMENSION": Effect("256", lambda b: b.store.dimension, {"RAG_EMBEDDING_FORMAT": "titan"}),
    "RAG_EMBEDDING_BATCH_SIZE": Effect("8", lambda b: b.embedder.batch_size),
    "RAG_EMBEDDING_CONCURRENCY": Effect("2", lambda b: b.embedder._pool._max_workers),
    "RAG_CONNECTIONS_ENDPOINT_URL": Effect("http://gateway.invalid:1/local", lambda b: b.lam.connections.endpoint_url),
    "RAG_UPSTREAM_TIMEOUT_S": Effect(TIMEOUT, _lambda_timeouts, S3_INDEX),
    "RAG_METRICS_NAMESPACE": Effect("team-rag", _metrics_namespace),
    # (what each vector-index setting then does: tests/unit/test_vector_index.py)
    "RAG_VECTOR_INDEX": Effect("off", lambda b: b.store.vector_index.mode),
    "RAG_VECTOR_INDEX_MIN_ROWS": Effect("1000", lambda b: b.store.vector_index.min_rows),
    "RAG_VECTOR_INDEX_TYPE": Effect("IVF_PQ", lambda b: type(b.store.vector_index.config(10_000, 384)).__name__),
    "RAG_VECTOR_NPROBES": Effect("7", lambda b: b.store.vector_index.nprobes),
    "RAG_VECTOR_REFINE_FACTOR": Effect("1", lambda b: b.store.vector_index.refine_factor),
    "RAG_VECTOR_INDEX_RETRAIN_GROWTH": Effect("8", lambda b: b.store.vector_index.retrain_growth),
    # (what it then does, across processes: tests/service/test_freshness.py)
    "RAG_READ_CONSISTENCY_S": Effect("never", lambda b: b.store.read_consistency_s),
}


def runtime_effects(prefix: str) -> dict[str, Effect]:
    return {
        f"{prefix}_HOST": Effect("0.0.0.0", lambda b: b.runtime.serve["host"]),
        f"{prefix}_PORT": Effect("19999", lambda b: b.runtime.serve["port"]),
        f"{prefix}_FUNCTION_NAME": Effect("renamed", lambda b: b.runtime.create["function_name"]),
        f"{prefix}_TIMEOUT_S": Effect("42", lambda b: b.runtime.create["timeout_s"]),
        f"{prefix}_MAX_CONCURRENCY": Effect("9", lambda b: b.runtime.create["max_concurrency"]),
        f"{prefix}_LOG_LEVEL": Effect("DEBUG", _log_level),
    }


CHAT: dict[str, Effect] = {
    **SHARED,
    **runtime_effects("CHAT"),
    "RAG_TOP_K": Effect("3", lambda b: _chat_retrieve(b)["top_k"]),
    "RAG_MAX_DISTANCE": Effect("0.3", lambda b: _chat_retrieve(b)["max_distance"]),
    "RAG_EXCERPT_CHARS": Effect("40", lambda b: len(b.service.retrieve("lava", tenant="default").sources[0].excerpt)),
    "RAG_SEARCH_MODE": Effect("fts", lambda b: _chat_retrieve(b)["mode"]),
    "RAG_RRF_K": Effect("7", lambda b: _chat_retrieve(b)["rrf_k"]),
    "RAG_INTENT_ROUTING": Effect("false", _prompt_for_small_talk),
    "RAG_FOLLOWUP_REWRITE": Effect("false", _followup_query),
    "RAG_LLM_ENDPOINT_URL": Effect("http://llm.invalid:1", lambda b: b.service.llm.client.meta.endpoint_url),
    "RAG_LLM_MODEL_ID": Effect("anthropic.claude-3-haiku", lambda b: b.service.llm.model_id),
    "RAG_MAX_TOKENS": Effect("64", lambda b: b.service.llm.max_tokens),
    "RAG_TEMPERATURE": Effect("0.9", lambda b: b.service.llm.temperature),
    "RAG_HISTORY_TOKEN_BUDGET": Effect("0", _history_sent),
    "RAG_PROMPT_CACHE_POINT": Effect("true", _cache_point),
    "RAG_TOKEN_FLUSH_MS": Effect("0", _token_messages),
    "RAG_TOKEN_FLUSH_BYTES": Effect("1", _token_messages),
}


def _upload(b: Built, size: int = 100) -> Any:
    """upload_url's outcome as the lambda answers it through the gateway at http://gw.test/local."""
    try:
        return b.service.upload_url(
            "notes.md", "text/markdown", size, tenant="default", gateway_url="http://gw.test/local"
        )
    except Exception as exc:
        return type(exc).__name__


def _signed_with(secret: str) -> Callable[[Built], bool]:
    from shared.object_store import verify_upload

    def observe(b: Built) -> bool:
        ticket = _upload(b)
        q = parse_qs(urlsplit(ticket.url).query)
        return verify_upload(secret, "PUT", ticket.key, int(q["expires"][0]), "text/markdown", q["signature"][0])

    return observe


def _text_outcome(b: Built) -> str:
    from shared.protocol import Document

    try:
        b.service._text_job(
            Document(id="d", title="t", text="Lava is molten rock. " * 5), b.service.tenant_objects("default")
        )
    except Exception as exc:
        return type(exc).__name__
    return "accepted"


def _parse_outcome(data: bytes, filename: str) -> Callable[[Built], str]:
    """Whether the service's parser limits let ``data`` through (else the error's name)."""

    def observe(b: Built) -> str:
        from ingestion.parsers import parse_document

        try:
            parse_document(data, filename, limits=b.service.parse_limits())
        except Exception as exc:
            return type(exc).__name__
        return "accepted"

    return observe


def _lease_length_s(b: Built) -> int:
    """How long a document lease the service takes lasts (seconds, rounded)."""
    import time

    with b.service.writing("default", ["d"]):
        lease = b.service._held()[("default", "d")]
        return round((lease.until_ms - time.time() * 1000) / 1000)


def _outcome_while_held_briefly(b: Built) -> str:
    """Whether a write of a document gets its lease while another writer holds it for another 0.5 s."""
    import threading

    leases = b.service.store.document_leases()
    lease = leases.try_acquire("default", ["d"], lease_s=60)
    threading.Timer(0.5, leases.release, args=(lease,)).start()
    try:
        with b.service.writing("default", ["d"]):
            return "written"
    except Exception as exc:
        return type(exc).__name__


def _tokenizer_without_volcano(tmp: Path) -> str:
    from ingestion.chunker import DEFAULT_TOKENIZER

    data = json.loads(Path(DEFAULT_TOKENIZER).read_text(encoding="utf-8"))
    del data["model"]["vocab"]["volcano"]
    path = tmp / "tokenizer.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    return str(path)


INGESTION: dict[str, Effect] = {
    **SHARED,
    **runtime_effects("INGESTION"),
    "RAG_DOCUMENTS_URI": Effect("{tmp}/elsewhere", lambda b: str(b.service.objects.root)),
    "RAG_MAX_UPLOAD_BYTES": Effect("50", lambda b: _upload(b, 100) if isinstance(_upload(b, 100), str) else "ok"),
    "RAG_UPLOAD_SECRET": Effect("other-secret", _signed_with("other-secret")),
    "RAG_CHUNK_TOKENS": Effect("100", lambda b: b.service.chunker.max_tokens),
    "RAG_CHUNK_OVERLAP_TOKENS": Effect("8", lambda b: b.service.chunker.overlap),
    "RAG_EMBED_MAX_TOKENS": Effect("200", lambda b: b.service.chunker.model_max_tokens),
    "RAG_TOKENIZER_PATH": Effect("{tokenizer}", lambda b: b.service.chunker.count("volcano")),
    "RAG_MAX_DOCUMENT_BYTES": Effect("20", _text_outcome),
    "RAG_PARSE_MAX_DEPTH": Effect("16", _parse_outcome(b"<div>" * 20 + b"x", "deep.html")),
    "RAG_PARSE_MAX_ELEMENTS": Effect("5", _parse_outcome(b"<p>a</p>" * 10, "flat.html")),
    "RAG_PARSE_TIMEOUT_S": Effect("0.000000001", _parse_outcome(b"<p>a</p>" * 2000, "flat.html")),
    "RAG_UPLOAD_URL_EXPIRES_S": Effect("60", lambda b: _upload(b).expires_in),
    "RAG_DOCUMENT_LEASE_S": Effect("5", _lease_length_s),
    "RAG_DOCUMENT_LEASE_WAIT_S": Effect("0", _outcome_while_held_briefly),  # default: waits, then not found
    "RAG_S3_PUBLIC_ENDPOINT_URL": Effect(
        "http://localhost:9000", lambda b: b.service.objects.presign_client.meta.endpoint_url, S3_DOCS
    ),
}
# Where the ingestion lambda's uploads are signed at all (a local folder with the shared secret).
INGESTION_BASE = {"RAG_UPLOAD_SECRET": "base-secret"}

TABLES: dict[str, tuple[str, dict[str, Effect], dict[str, str]]] = {
    "chat": ("chat.settings:Settings", CHAT, {}),
    "ingestion": ("ingestion.settings:Settings", INGESTION, INGESTION_BASE),
}


def documented(ref: str) -> set[str]:
    return {v.env for v in variables(settings_class(ref))}


@pytest.mark.parametrize("service", sorted(TABLES))
def test_the_table_covers_every_documented_variable(service: str) -> None:
    ref, table, _ = TABLES[service]
    missing, unknown = documented(ref) - set(table), set(table) - documented(ref)
    assert not missing, f"{service}: no observable effect checked for {sorted(missing)}"
    assert not unknown, f"{service}: {sorted(unknown)} are not documented settings"


def _cases() -> Iterator[Any]:
    for service, (_, table, _) in sorted(TABLES.items()):
        for var in table:
            yield pytest.param(service, var, id=f"{service}-{var}")


@pytest.mark.parametrize(("service", "var"), list(_cases()))
def test_every_variable_changes_the_built_service(
    service: str, var: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _, table, service_base = TABLES[service]
    effect = table[var]
    base = {
        "RAG_LANCEDB_URI": str(tmp_path / "lancedb"),
        "RAG_DOCUMENTS_URI": str(tmp_path / "documents"),
        **service_base,
        **effect.base,
    }
    value = effect.value.format(tmp=tmp_path, tokenizer=_tokenizer_without_volcano(tmp_path))

    def observe(env: dict[str, str]) -> Any:
        with monkeypatch.context() as m:
            for k, v in env.items():
                m.setenv(k, v)
            return effect.observe(build_lambda_objects(service, m, tmp_path))

    default, changed = observe(base), observe({**base, var: value})
    assert changed != default, f"{var}={value} changed nothing: {default!r}"


# ---------------------------------------------------------------------------------------------- regressions


def test_the_upstream_timeout_reaches_every_client(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Bedrock (embeddings, LLM), S3 (documents, presigning), LanceDB on S3 and @connections."""
    monkeypatch.setenv("RAG_UPSTREAM_TIMEOUT_S", TIMEOUT)
    for name, value in {**S3_INDEX, **S3_DOCS}.items():
        monkeypatch.setenv(name, value)
    for kind in ("chat", "ingestion"):
        b = build_lambda_objects(kind, monkeypatch, tmp_path)
        *botocore, lance = _lambda_timeouts(b)
        # embeddings and @connections; chat: the LLM; ingestion: S3 and the S3 presigner
        assert botocore == [float(TIMEOUT)] * (4 if kind == "ingestion" else 3), kind
        assert lance == f"{TIMEOUT}s", kind


def test_documents_settings_are_one_definition(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The gateway and the ingestion lambda read the same RAG_* documents variables."""
    from gateway.settings import Settings as GatewaySettings
    from ingestion.settings import Settings as IngestionSettings

    for name, value in {
        "RAG_DOCUMENTS_URI": str(tmp_path),
        "RAG_MAX_UPLOAD_BYTES": "1234",
        "RAG_UPLOAD_SECRET": "s",
    }.items():
        monkeypatch.setenv(name, value)
    ingestion, gateway = IngestionSettings(), GatewaySettings().documents
    assert (gateway.documents_uri, gateway.max_upload_bytes, gateway.upload_secret) == (str(tmp_path), 1234, "s")
    assert (ingestion.documents_uri, ingestion.max_upload_bytes, ingestion.upload_secret) == (
        str(tmp_path),
        1234,
        "s",
    )


def test_the_upload_limit_from_the_shell_is_the_one_both_enforce(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """RAG_MAX_UPLOAD_BYTES alone: upload_url accepts a file of the limit and the gateway's PUT stores it; one
    byte more is refused by both (the gateway used to keep its own limit, and answer 413 to a file
    upload_url had accepted)."""
    from aiohttp.test_utils import TestClient, TestServer

    from gateway.app import create_app
    from gateway.settings import Settings as GatewaySettings

    limit = 5000
    monkeypatch.setenv("RAG_MAX_UPLOAD_BYTES", str(limit))
    monkeypatch.setenv("RAG_UPLOAD_SECRET", "shared-secret")
    monkeypatch.setenv("RAG_DOCUMENTS_URI", str(tmp_path / "documents"))
    monkeypatch.setenv("RAG_LANCEDB_URI", str(tmp_path / "lancedb"))
    service = build_lambda_objects("ingestion", monkeypatch, tmp_path).service

    async def upload(declared: int, body: int) -> int | str:
        """upload_url for ``declared`` bytes, then PUT ``body`` bytes to the gateway: the PUT's status."""
        async with TestClient(TestServer(create_app(GatewaySettings()))) as client:
            try:
                ticket = service.upload_url(
                    "notes.md", "text/markdown", declared, tenant="default", gateway_url=str(client.make_url("/local"))
                )
            except Exception as exc:
                return type(exc).__name__
            url = urlsplit(ticket.url)
            resp = await client.put(f"{url.path}?{url.query}", data=b"x" * body, headers=ticket.headers)
            if resp.status == 200:
                assert service.objects.size(ticket.key) == body
            return resp.status

    assert asyncio.run(upload(limit, limit)) == 200
    assert asyncio.run(upload(limit + 1, limit + 1)) == "DocumentTooLarge"
    assert asyncio.run(upload(limit, limit + 1)) == 413  # more than declared: the gateway holds the line


def test_the_upload_url_is_the_gateway_the_request_came_through(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """No RAG_UPLOAD_BASE_URL: the address is the event's domainName and stage, as @connections' is on AWS."""
    from shared.events import WebSocketEvent
    from tests.support.paths import EVENTS

    event = json.loads((EVENTS / "websocket_message_ingest.json").read_text())
    event["requestContext"].update(domainName="127.0.0.1:8123", stage="dev")
    event["body"] = json.dumps({"action": "upload_url", "request_id": "u", "filename": "a.md", "size": 10})
    monkeypatch.setenv("RAG_UPLOAD_SECRET", "k")
    monkeypatch.setenv("RAG_DOCUMENTS_URI", str(tmp_path / "documents"))
    monkeypatch.setenv("RAG_LANCEDB_URI", str(tmp_path / "lancedb"))
    b = build_lambda_objects("ingestion", monkeypatch, tmp_path)
    sent: list[Any] = []
    monkeypatch.setattr(b.lam.connections, "post", lambda ev, message: sent.append(message))
    b.lam(WebSocketEvent.model_validate(event).to_aws(), None)
    (reply,) = sent
    assert reply.url.startswith("http://127.0.0.1:8123/dev/uploads/"), reply
