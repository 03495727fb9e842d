"""Tenant isolation in the functions and the data: documents, chunks, raw objects, originals, uploads,
conversations and messages all belong to a tenant; another tenant's (or another principal's) ids answer as
missing ones do.

The services are built the way their cold start builds them (handler.build_service), with the real
all-MiniLM-L6-v2 model in this process, a real LanceDB index and a real object store: a folder, and S3
(moto's server). The LLM is a scripted streamer (the chat's isolation does not depend on what it says).
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lancedb
import pyarrow as pa
import pytest
from lancedb.index import FTS

from shared.bedrock import ChatEvent, StreamDone, TextDelta
from shared.errors import RagError
from shared.identity import DEFAULT_TENANT, Principal
from tests.conftest import S3_ENV, s3_client
from tests.support.embedder import InProcessEmbedder
from tests.support.paths import ROOT
from tests.support.timeouts import scaled

A_DOCS = {
    "notes": "Basalt lava flows from the Kilauea caldera cooled into pahoehoe ropes near the Halemaumau crater.",
    "plan": "The quarterly merger with Zephyrion Holdings closes after the board approves the Obsidian budget.",
    "only-a": "Secret recipe: saffron, cardamom and rosewater folded into the brioche dough overnight.",
}
B_DOCS = {
    "notes": "The migrating arctic terns rest on the tidal flats of the Wadden Sea before the autumn storms.",
    "plan": "Football training moves to the indoor hall on Tuesdays while the pitch is reseeded.",
}
# Queries made of A's words (and meaning): B must never get one of A's chunks back.
A_QUERIES = [
    "Kilauea basalt lava pahoehoe",
    "Halemaumau crater caldera",
    "Zephyrion Holdings merger",
    "Obsidian budget board approves",
    "saffron cardamom rosewater brioche",
    "secret recipe dough overnight",
    "lava flows cooled into ropes",
    "quarterly merger closes",
    "What is in the secret recipe?",
    "Which company is part of the merger?",
]
ALICE = Principal("acme", "key:alice", "api_key")
ALBERT = Principal("acme", "key:albert", "api_key")  # a second principal of tenant A
BOB = Principal("globex", "jwt:bob", "jwt")
NOBODY = Principal("initech", "key:nobody", "api_key")  # a tenant with nothing at all


class ScriptedLLM:
    def stream(self, system: str, messages: Sequence[dict[str, str]]) -> Generator[ChatEvent, None, None]:
        yield TextDelta("Noted.")
        yield StreamDone("end_turn", 3, 1)


@pytest.fixture(scope="module")
def embedder() -> InProcessEmbedder:
    return InProcessEmbedder()


@dataclass
class Services:
    ingestion: Any
    chat: Any
    env: dict[str, str]


def _only(m: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    for var in list(os.environ):
        if var.startswith(("RAG_", "CHAT_", "INGESTION_", "LOCALRAG_")):
            m.delenv(var)
    for k, v in env.items():
        m.setenv(k, v)


def build(env: dict[str, str], embedder: InProcessEmbedder, m: pytest.MonkeyPatch) -> Services:
    import chat.handler
    import ingestion.handler
    from chat.settings import Settings as ChatSettings
    from ingestion.settings import Settings as IngestionSettings

    _only(m, env)
    ing = ingestion.handler.build_service(IngestionSettings(), embedder=embedder)
    cs = chat.handler.build_service(ChatSettings(max_distance=2.0, top_k=8), embedder=embedder, store=ing.store)
    cs.llm = ScriptedLLM()
    return Services(ing, cs, env)


@pytest.fixture(params=["folder", "s3"])
def services(
    request: pytest.FixtureRequest, tmp_path: Path, embedder: InProcessEmbedder, monkeypatch: pytest.MonkeyPatch
) -> Services:
    env = {"RAG_LANCEDB_URI": str(tmp_path / "lancedb"), "RAG_UPLOAD_SECRET": "s3cret-for-tests"}
    if request.param == "folder":
        env["RAG_DOCUMENTS_URI"] = str(tmp_path / "documents")
    else:
        endpoint = request.getfixturevalue("moto_s3")
        bucket = f"tenants-{uuid.uuid4().hex[:12]}"
        s3_client(endpoint).create_bucket(Bucket=bucket)
        env.update(S3_ENV)
        env.update({"RAG_DOCUMENTS_URI": f"s3://{bucket}/documents", "RAG_S3_ENDPOINT_URL": endpoint})
    return build(env, embedder, monkeypatch)


def ingest_both(s: Services) -> None:
    from shared.protocol import Document

    for tenant, docs in ((ALICE.tenant, A_DOCS), (BOB.tenant, B_DOCS)):
        for doc_id, text in docs.items():
            s.ingestion.ingest(Document(id=doc_id, title=doc_id.title(), text=text), tenant=tenant)


def error_of(call: Any, *args: Any, **kwargs: Any) -> tuple[str, str]:
    with pytest.raises(RagError) as caught:
        call(*args, **kwargs)
    return str(caught.value.code), caught.value.message


# ---------------------------------------------------------------------------------------------- documents


def test_two_tenants_with_the_same_doc_ids_never_see_each_other(services: Services) -> None:
    from shared.protocol import SearchRequest

    ingest_both(services)
    ing, chat = services.ingestion, services.chat
    listed = {t: {d.id: d for d in ing.list_documents(tenant=t)} for t in (ALICE.tenant, BOB.tenant, NOBODY.tenant)}
    assert set(listed[ALICE.tenant]) == set(A_DOCS) and set(listed[BOB.tenant]) == set(B_DOCS)
    assert listed[NOBODY.tenant] == {}
    assert all(d.status == "indexed" and d.chunks == 1 for t in (ALICE.tenant, BOB.tenant) for d in listed[t].values())
    # The same id, two documents: each tenant's raw copy is its own.
    assert ing.tenant_objects(ALICE.tenant).get_document("notes")["text"] == A_DOCS["notes"]
    assert ing.tenant_objects(BOB.tenant).get_document("notes")["text"] == B_DOCS["notes"]
    assert ing.tenant_objects(DEFAULT_TENANT).document_ids() == []
    assert ing.store.count_chunks(tenant=ALICE.tenant) == 3 and ing.store.count_chunks(tenant=BOB.tenant) == 2

    # 100 searches by B with A's terms, in every mode: never one of A's chunks (and B's own are found).
    a_texts, b_texts = set(A_DOCS.values()), set(B_DOCS.values())
    seen_b = 0
    for i in range(100):
        query = A_QUERIES[i % len(A_QUERIES)]
        mode = ("vector", "fts", "hybrid")[i % 3]
        hits = chat.retrieve(query, 8, 2.0, mode, tenant=BOB.tenant).passages  # type: ignore[arg-type]
        assert not set(hits) & a_texts, (query, mode, hits)
        assert set(hits) <= b_texts
        seen_b += len(hits)
    assert seen_b > 0  # the searches did run over B's chunks
    # The same searches by A find A's chunks (the test can fail).
    found = chat.search(SearchRequest(action="search", query="saffron cardamom brioche"), tenant=ALICE.tenant)
    assert found.results[0].doc_id == "only-a"
    hybrid = chat.retrieve("Zephyrion merger", 8, 2.0, "hybrid", tenant=ALICE.tenant)
    assert hybrid.passages[0] == A_DOCS["plan"] and not set(hybrid.passages) & b_texts


def test_delete_and_reingest_stay_in_their_tenant(services: Services) -> None:
    from shared.protocol import Document

    ingest_both(services)
    ing = services.ingestion
    # B deleting A's id: exactly what deleting an id nobody has answers; A's document untouched.
    assert error_of(ing.delete, "only-a", tenant=BOB.tenant) == error_of(ing.delete, "only-a", tenant=NOBODY.tenant)
    assert error_of(ing.delete, "only-a", tenant=BOB.tenant)[0] == "document_not_found"
    assert ing.store.count_chunks("only-a", tenant=ALICE.tenant) == 1
    assert ing.tenant_objects(ALICE.tenant).get_document("only-a") is not None
    # B deleting its own "notes" leaves A's "notes".
    assert ing.delete("notes", tenant=BOB.tenant) == 1
    assert ing.store.count_chunks("notes", tenant=BOB.tenant) == 0
    assert ing.store.count_chunks("notes", tenant=ALICE.tenant) == 1
    assert ing.tenant_objects(ALICE.tenant).get_document("notes")["text"] == A_DOCS["notes"]
    # Re-ingesting A's "plan" (a batch) replaces A's chunks only.
    (out,) = ing.ingest_many([Document(id="plan", text="The merger was called off.")], tenant=ALICE.tenant)
    assert out.replaced_chunks == 1
    assert ing.store.document_stats(tenant=BOB.tenant)["plan"][0] == 1
    b_plan = services.chat.retrieve("indoor hall pitch reseeded", 8, 2.0, "fts", tenant=BOB.tenant)
    assert b_plan.passages == [B_DOCS["plan"]]


def test_an_upload_key_is_its_tenants_only(services: Services) -> None:
    from shared.object_store import is_upload_key, upload_key_tenant

    ing = services.ingestion
    data = b"# Field notes\n\nThe Zephyrion caldera vents sulphur at dawn."
    ticket = ing.upload_url("field.md", "text/markdown", len(data), tenant=ALICE.tenant, gateway_url="http://gw/x")
    assert is_upload_key(ticket.key) and upload_key_tenant(ticket.key) == ALICE.tenant
    missing = error_of(ing.ingest_object, ticket.key, tenant=ALICE.tenant)  # not PUT yet
    assert missing[0] == "object_not_found"
    ing.objects.write(ticket.key, data, "text/markdown")  # the client's PUT
    # Another tenant naming it: the very answer of a key never PUT; the upload is left alone.
    assert error_of(ing.ingest_object, ticket.key, tenant=BOB.tenant) == missing
    assert error_of(ing.ingest_object, ticket.key, "stolen", tenant=DEFAULT_TENANT) == missing
    assert ing.tenant_objects(ALICE.tenant).size(ticket.key) == len(data)
    assert ing.tenant_objects(BOB.tenant).document_ids() == []
    # A default-tenant (pre-tenant layout) upload key is not B's either.
    legacy = "uploads/" + "0" * 32 + "/field.md"
    ing.objects.write(legacy, data, "text/markdown")
    assert error_of(ing.ingest_object, legacy, tenant=BOB.tenant)[0] == "object_not_found"
    # Its owner ingests it: the original is kept under the tenant's folder.
    out = ing.ingest_object(ticket.key, tenant=ALICE.tenant)
    assert out.doc_id == "field.md" and out.chunks == 1
    raw = ing.tenant_objects(ALICE.tenant).get_document("field.md")
    assert raw["original"]["key"] == "originals/field.md/field.md"
    assert ing.tenant_objects(ALICE.tenant).read(raw["original"]["key"]) == data
    assert ing.tenant_objects(DEFAULT_TENANT).get_document("field.md") is None
    assert ing.objects.size(f"tenants/{ALICE.tenant}/originals/field.md/field.md") == len(data)
    assert ing.tenant_objects(ALICE.tenant).size(ticket.key) is None  # the upload is gone
    # The default tenant's view cannot reach another tenant's folder by naming it.
    with pytest.raises(RagError):
        ing.tenant_objects(DEFAULT_TENANT).read(f"tenants/{ALICE.tenant}/originals/field.md/field.md")
    assert error_of(ing.delete, "field.md", tenant=BOB.tenant)[0] == "document_not_found"
    assert ing.delete("field.md", tenant=ALICE.tenant) == 1
    assert ing.objects.size(f"tenants/{ALICE.tenant}/originals/field.md/field.md") is None


# ---------------------------------------------------------------------------------------------- conversations


def chat_turn(s: Services, caller: Principal, question: str, conversation_id: str | None = None) -> Any:
    from shared.protocol import ChatRequest, StreamEnd

    out: list[Any] = []
    s.chat.chat(ChatRequest(action="chat", question=question, conversation_id=conversation_id), out.append, caller)
    end = out[-1]
    assert isinstance(end, StreamEnd)
    return end


def test_a_conversation_is_its_principals_only(services: Services) -> None:
    from shared.protocol import ChatRequest, HistoryRequest

    ingest_both(services)
    s = services
    first = chat_turn(s, ALICE, "What is in the secret recipe?")
    cid = first.conversation_id
    assert {src.doc_id for src in first.sources} <= set(A_DOCS) and first.sources
    chat_turn(s, ALICE, "And the merger?", cid)
    history = s.chat.history(HistoryRequest(action="history", conversation_id=cid), ALICE)
    assert [m.role for m in history.messages] == ["user", "assistant"] * 2

    def refused(caller: Principal, what: str) -> tuple[str, str]:
        if what == "history":
            return error_of(s.chat.history, HistoryRequest(action="history", conversation_id=cid), caller)
        req = ChatRequest(action="chat", question="Tell me the recipe", conversation_id=cid)
        return error_of(s.chat.chat, req, lambda _m: None, caller)

    for what in ("history", "chat"):
        missing = refused(NOBODY, what)
        assert missing[0] == "unknown_conversation"
        assert refused(BOB, what) == missing  # another tenant
        assert refused(ALBERT, what) == missing  # another principal of the same tenant
    # Nothing was appended to Alice's conversation by the refused turns, and her history is whole.
    again = s.chat.history(HistoryRequest(action="history", conversation_id=cid), ALICE)
    same_principal = Principal(ALICE.tenant, ALICE.principal, "jwt")
    assert len(s.chat.history(HistoryRequest(action="history", conversation_id=cid), same_principal).messages) == 4
    assert len(again.messages) == 4
    # Bob's chat with Alice's question gets Bob's sources only.
    bobs = chat_turn(s, BOB, "What is in the secret recipe?")
    assert bobs.conversation_id != cid and {src.doc_id for src in bobs.sources} <= set(B_DOCS)
    assert all(src.excerpt not in A_DOCS["only-a"] for src in bobs.sources)


# ---------------------------------------------------------------------------------------------- event sources


def s3_record(bucket: str, key: str, name: str = "ObjectCreated:Put") -> Any:
    from shared.events import S3EventRecord

    return S3EventRecord.model_validate(
        {"eventSource": "aws:s3", "eventName": name, "s3": {"bucket": {"name": bucket}, "object": {"key": key}}}
    )


def kinesis_record(seq: str, data: dict[str, Any]) -> Any:
    from shared.events import KinesisEventRecord

    payload = base64.b64encode(json.dumps(data).encode()).decode()
    return KinesisEventRecord.model_validate(
        {"eventSource": "aws:kinesis", "kinesis": {"partitionKey": "p", "sequenceNumber": seq, "data": payload}}
    )


def test_s3_inbox_and_kinesis_records_name_their_tenant(services: Services) -> None:
    ing = services.ingestion
    bucket = getattr(ing.objects, "bucket", "local")
    prefix = "documents/" if bucket != "local" else ""
    ing.objects.write(f"tenants/{ALICE.tenant}/inbox/field/a.md", b"# A\n\nAcme's inbox note on basalt.")
    ing.objects.write("inbox/field/a.md", b"# D\n\nThe default tenant's inbox note on bread.")
    out = ing.ingest_s3_records(
        [
            s3_record(bucket, f"{prefix}tenants/{ALICE.tenant}/inbox/field/a.md"),
            s3_record(bucket, f"{prefix}inbox/field/a.md"),
        ]
    )
    assert out.batch_item_failures == []
    assert "basalt" in ing.tenant_objects(ALICE.tenant).get_document("field:a.md")["text"]
    assert "bread" in ing.tenant_objects(DEFAULT_TENANT).get_document("field:a.md")["text"]
    assert ing.tenant_objects(BOB.tenant).get_document("field:a.md") is None
    # A notification for a key in no tenant's inbox is ignored.
    ing.objects.write("tenants/Not_A_Tenant/inbox/x.md", b"# X\n\nx")
    assert (
        ing.ingest_s3_records([s3_record(bucket, f"{prefix}tenants/Not_A_Tenant/inbox/x.md")]).batch_item_failures == []
    )
    # ObjectRemoved for the default tenant's inbox file removes the default tenant's document only.
    ing.objects.delete("inbox/field/a.md")
    ing.ingest_s3_records([s3_record(bucket, f"{prefix}inbox/field/a.md", "ObjectRemoved:Delete")])
    assert ing.tenant_objects(DEFAULT_TENANT).get_document("field:a.md") is None
    assert ing.store.count_chunks("field:a.md", tenant=ALICE.tenant) == 1

    # Kinesis: the record's tenant (default when absent), validated; a delete deletes that tenant's only.
    batch = ing.ingest_kinesis_records(
        [
            kinesis_record("1", {"doc_id": "k", "text": "Globex kinesis text about terns.", "tenant": BOB.tenant}),
            kinesis_record("2", {"doc_id": "k", "text": "Default kinesis text about tides."}),
            kinesis_record("3", {"doc_id": "k", "text": "x", "tenant": "../acme"}),
            kinesis_record("4", {"doc_id": "k", "text": "x", "tenant": 7}),
            kinesis_record("5", {"doc_id": "k", "op": "delete", "tenant": ALICE.tenant}),
        ]
    )
    assert [f.item_identifier for f in batch.batch_item_failures] == ["3", "4"]
    assert "terns" in ing.tenant_objects(BOB.tenant).get_document("k")["text"]
    assert "tides" in ing.tenant_objects(DEFAULT_TENANT).get_document("k")["text"]
    ing.ingest_kinesis_records([kinesis_record("6", {"doc_id": "k", "op": "delete", "tenant": BOB.tenant})])
    assert ing.tenant_objects(BOB.tenant).get_document("k") is None
    assert ing.store.count_chunks("k", tenant=DEFAULT_TENANT) == 1


# ---------------------------------------------------------------------------------------------- existing data

OLD_CHUNKS = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("doc_id", pa.string(), nullable=False),
        pa.field("chunk", pa.int32(), nullable=False),
        pa.field("title", pa.string()),
        pa.field("text", pa.string()),
        pa.field("date", pa.string()),
        pa.field("source", pa.string()),
        pa.field("metadata", pa.string()),
        pa.field("vector", pa.list_(pa.float32(), 384)),
        pa.field("ingested_at", pa.string()),
    ],
    metadata={"embedding_model": "sentence-transformers/all-MiniLM-L6-v2", "embedding_dimension": "384"},
)
OLD_MESSAGES = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("conversation_id", pa.string(), nullable=False),
        pa.field("seq", pa.int64(), nullable=False),
        pa.field("role", pa.string(), nullable=False),
        pa.field("content", pa.string()),
        pa.field("created_at", pa.string()),
        pa.field("rag_context", pa.string()),
    ]
)


def write_old_index(uri: Path, embedder: InProcessEmbedder) -> str:
    """An index as the version before tenants wrote it (its schemas, its ids, its FTS index)."""
    db = lancedb.connect(uri)
    chunks = db.create_table("chunks", schema=OLD_CHUNKS)
    rows = []
    for doc_id, text in A_DOCS.items():
        rows.append(
            {
                "id": f"{doc_id}#0",
                "doc_id": doc_id,
                "chunk": 0,
                "title": doc_id,
                "text": text,
                "metadata": "{}",
                "vector": embedder.embed_documents([text])[0],
                "ingested_at": "2025-01-01T00:00:00Z",
            }
        )
    chunks.add(pa.Table.from_pylist(rows, schema=OLD_CHUNKS))
    chunks.create_index("text", config=FTS())
    messages = db.create_table("messages", schema=OLD_MESSAGES)
    cid = str(uuid.uuid4())
    messages.add(
        pa.Table.from_pylist(
            [
                {"id": "m0", "conversation_id": cid, "seq": 0, "role": "user", "content": "Hi", "rag_context": "{}"},
                {
                    "id": "m1",
                    "conversation_id": cid,
                    "seq": 1,
                    "role": "assistant",
                    "content": "Hello",
                    "rag_context": "{}",
                },
            ],
            schema=OLD_MESSAGES,
        )
    )
    return cid


def test_an_index_written_before_tenants_opens_as_the_default_tenant(
    tmp_path: Path, embedder: InProcessEmbedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    from shared.protocol import Document, HistoryRequest
    from shared.vector_store import TENANT_COLUMN

    uri = tmp_path / "lancedb"
    cid = write_old_index(uri, embedder)
    documents = tmp_path / "documents"
    documents.mkdir()
    for doc_id, text in A_DOCS.items():  # the raw documents, as written before (at the folder's root)
        (documents / f"{doc_id}.json").write_text(json.dumps({"id": doc_id, "title": doc_id, "text": text}))
    s = build({"RAG_LANCEDB_URI": str(uri), "RAG_DOCUMENTS_URI": str(documents)}, embedder, monkeypatch)
    table = s.ingestion.store.chunks()
    assert TENANT_COLUMN in table.schema.names
    assert {i.columns[0] for i in table.list_indices()} >= {TENANT_COLUMN, "doc_id", "text"}
    # The old rows are the default tenant's: listed, searched (every mode), deletable; no one else's.
    assert {d.id: d.chunks for d in s.ingestion.list_documents(tenant=DEFAULT_TENANT)} == dict.fromkeys(A_DOCS, 1)
    assert s.ingestion.list_documents(tenant=BOB.tenant) == []
    for mode in ("vector", "fts", "hybrid"):
        assert s.chat.retrieve("saffron brioche", 3, 2.0, mode, tenant=DEFAULT_TENANT).passages[0] == A_DOCS["only-a"]
        assert s.chat.retrieve("saffron brioche", 3, 2.0, mode, tenant=BOB.tenant).passages == []
    # Re-ingesting an old document replaces its old rows (same merge key: no duplicate).
    out = s.ingestion.ingest(Document(id="notes", text="Rewritten notes on pahoehoe."), tenant=DEFAULT_TENANT)
    assert out.replaced_chunks == 1 and s.ingestion.store.count_chunks("notes", tenant=DEFAULT_TENANT) == 1
    # The same id in another tenant is another document.
    s.ingestion.ingest(Document(id="notes", text="Globex notes."), tenant=BOB.tenant)
    assert s.ingestion.store.count_chunks("notes", tenant=DEFAULT_TENANT) == 1
    # Old conversations are the default tenant's anonymous principal's (there was no identity then).
    anonymous = Principal(DEFAULT_TENANT, "anonymous", "none")
    old = s.chat.history(HistoryRequest(action="history", conversation_id=cid), anonymous)
    assert [m.content for m in old.messages] == ["Hi", "Hello"]
    someone = Principal(DEFAULT_TENANT, "key:someone", "api_key")
    assert error_of(s.chat.history, HistoryRequest(action="history", conversation_id=cid), someone)[0] == (
        "unknown_conversation"
    )
    assert s.ingestion.delete("plan", tenant=DEFAULT_TENANT) == 1


OPEN_TABLES = """
import sys
from shared.vector_store import VectorStore
store = VectorStore(sys.argv[1], dimension=384, model_id="sentence-transformers/all-MiniLM-L6-v2")
old = store.conversation(sys.argv[2], tenant="default", principal="anonymous")
print(store.count_chunks(tenant="default"), len(old))
"""


def test_two_processes_migrating_the_same_old_index_at_once(tmp_path: Path, embedder: InProcessEmbedder) -> None:
    uri = tmp_path / "lancedb"
    cid = write_old_index(uri, embedder)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", OPEN_TABLES, str(uri), cid],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    results = [p.communicate(timeout=scaled(120)) for p in procs]
    for p, (out, err) in zip(procs, results, strict=True):
        assert p.returncode == 0, err[-2000:]
        assert out.split() == ["3", "2"], (out, err[-2000:])
    table = lancedb.connect(uri).open_table("chunks")
    assert table.schema.names.count("tenant") == 1
    assert table.count_rows("tenant = 'default'") == 3


# ---------------------------------------------------------------------------------------------- object store


def test_a_documents_folder_written_before_tenants_is_the_default_tenants(tmp_path: Path) -> None:
    from shared.object_store import TenantObjects, open_object_store, tenants_with_documents

    (tmp_path / "old%2Fone.json").write_text(json.dumps({"id": "old/one", "text": "x"}))
    (tmp_path / "originals" / "old%2Fone").mkdir(parents=True)
    (tmp_path / "auth" / "keys").mkdir(parents=True)
    (tmp_path / "auth" / "keys" / "k.json").write_text("{}")
    root = open_object_store(str(tmp_path), None)
    assert TenantObjects(root, DEFAULT_TENANT).document_ids() == ["old/one"]
    assert TenantObjects(root, "acme").document_ids() == []
    TenantObjects(root, "acme").put_document("old/one", {"id": "old/one", "text": "acme's"})
    assert (tmp_path / "tenants" / "acme" / "old%2Fone.json").is_file()
    assert TenantObjects(root, DEFAULT_TENANT).get_document("old/one") == {"id": "old/one", "text": "x"}
    assert tenants_with_documents(root) == [DEFAULT_TENANT, "acme"]
    for reserved in ("auth/keys/k.json", "tenants/acme/old%2Fone.json"):
        with pytest.raises(RagError):
            TenantObjects(root, DEFAULT_TENANT).read(reserved)
    with pytest.raises(ValueError):
        TenantObjects(root, "../acme")
