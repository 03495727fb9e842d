"""The LanceDB tables: their names and Arrow schemas, the row shapes, and the checks on an existing table."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from shared.identity import ANONYMOUS, DEFAULT_TENANT, valid_tenant

CHUNKS_TABLE = "chunks"
MESSAGES_TABLE = "messages"

# Every row belongs to a tenant; every read and write filters by it (see store.py). Tables written before
# tenants existed get the column on open (``migrations``): their rows are the default tenant's, and their
# conversations the anonymous principal's (who wrote them: there was no identity then).
TENANT_COLUMN = "tenant"
PRINCIPAL_COLUMN = "principal"
# The columns (and their SQL default) that opening a table adds when it lacks them (MESSAGES_MIGRATION:
# below).
# Every write of a document has a fresh version id: in its raw copy (key RAW_VERSION_KEY) and in each of its
# chunk rows (DOC_VERSION_COLUMN), so a drift check can tell whether the index holds the raw copy's
# version. Rows written before versions existed have NULL.
RAW_VERSION_KEY = "version"
DOC_VERSION_COLUMN = "doc_version"
CHUNKS_MIGRATION = {TENANT_COLUMN: f"'{DEFAULT_TENANT}'", DOC_VERSION_COLUMN: "CAST(NULL AS STRING)"}
# Chunks are upserted by (tenant, id): a document id names one document per tenant.
CHUNKS_MERGE_KEY = [TENANT_COLUMN, "id"]

# Conversation turns (see VectorStore.begin_turn). A message is identified by (tenant, principal,
# conversation_id, seq): a turn's two messages are inserted by this key, never over a row that has it.
MESSAGES_MERGE_KEY = [TENANT_COLUMN, PRINCIPAL_COLUMN, "conversation_id", "seq"]
# Every conversation starts with an anchor row at seq -1 (role "anchor", no content; never shown): the
# row the first turn's claim is on. Messages are seq 0, 1, 2, ...: user at even seqs, assistant at odd.
ANCHOR_SEQ = -1
ANCHOR_ROLE = "anchor"
# The claim columns, on a conversation's last row: NULL while no turn holds it; a turn's token and the
# claim's expiry (epoch ms) while one does; CLOSED once a turn was stored after it (it is no longer last).
CLAIM_COLUMN = "claim"
CLAIM_UNTIL_COLUMN = "claim_until"
CLOSED = "closed"
MESSAGES_MIGRATION = {
    TENANT_COLUMN: f"'{DEFAULT_TENANT}'",
    PRINCIPAL_COLUMN: f"'{ANONYMOUS}'",
    # Older conversations have no anchor and no claims: their last message is free to claim.
    CLAIM_COLUMN: "CAST(NULL AS STRING)",
    CLAIM_UNTIL_COLUMN: "CAST(NULL AS BIGINT)",
}


class EmbeddingMismatch(Exception):
    """The table was built with another embedding model or dimension."""


class ConversationBusy(Exception):
    """Another turn holds the conversation (its answer is being generated)."""

    def __init__(self, conversation_id: str, until_ms: int | None) -> None:
        super().__init__(f"conversation {conversation_id!r} is busy")
        self.conversation_id = conversation_id
        self.until_ms = until_ms  # when that turn's claim expires, if it is known


@dataclass(frozen=True)
class ChunkRow:
    doc_id: str
    chunk: int
    title: str
    text: str
    vector: Sequence[float]
    date: str | None = None
    source: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    doc_version: str | None = None  # the write's version id (the raw copy's "version")

    @property
    def id(self) -> str:
        return f"{self.doc_id}#{self.chunk}"


@dataclass(frozen=True)
class Match:
    doc_id: str
    chunk: int
    title: str
    text: str
    distance: float  # cosine distance between the query vector and this chunk's vector, in every mode
    date: str | None
    source: str | None
    metadata: dict[str, Any]
    score: float | None = None  # fts: BM25 score; hybrid: RRF score; vector: None
    page: int | None = None  # from metadata["page"] (PDF pages), when the parser set it
    heading: str | None = None  # from metadata["heading"] (Markdown/PDF section), when set


@dataclass(frozen=True)
class MessageRow:
    id: str
    conversation_id: str
    seq: int
    role: str
    content: str
    created_at: str
    rag_context: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TurnClaim:
    """A turn's hold on a conversation: it may store the messages at ``seq`` (the question) and ``seq + 1``
    (the answer). Made by VectorStore.begin_turn, used by commit_turn and release_turn."""

    conversation_id: str
    token: str
    seq: int
    prior: tuple[MessageRow, ...]  # the conversation's messages before the turn, in order
    anchor: dict[str, Any] = field(repr=False)  # the stored row at seq - 1 that holds the claim, as read

    @property
    def anchor_id(self) -> str:
        return str(self.anchor["id"])


def sql_str(value: str) -> str:
    """Quote a string for a LanceDB SQL filter."""
    return "'" + value.replace("'", "''") + "'"


def tenant_filter(tenant: str, condition: str | None = None) -> str:
    """``tenant = '...'`` (AND ``condition``): the filter every read and write of a tenant's rows carries."""
    if not valid_tenant(tenant):
        raise ValueError("invalid tenant id")
    where = f"{TENANT_COLUMN} = {sql_str(tenant)}"
    return f"{where} AND ({condition})" if condition else where


def chunks_schema(dimension: int, model_id: str) -> pa.Schema:
    return pa.schema(
        [
            pa.field("id", pa.string(), nullable=False),
            pa.field("doc_id", pa.string(), nullable=False),
            pa.field("chunk", pa.int32(), nullable=False),
            pa.field("title", pa.string()),
            pa.field("text", pa.string()),
            pa.field("date", pa.string()),
            pa.field("source", pa.string()),
            pa.field("metadata", pa.string()),
            pa.field("vector", pa.list_(pa.float32(), dimension)),
            pa.field("ingested_at", pa.string()),
            pa.field(TENANT_COLUMN, pa.string(), nullable=False),
            pa.field(DOC_VERSION_COLUMN, pa.string()),
        ],
        metadata={"embedding_model": model_id, "embedding_dimension": str(dimension)},
    )


MESSAGES_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("conversation_id", pa.string(), nullable=False),
        pa.field("seq", pa.int64(), nullable=False),
        pa.field("role", pa.string(), nullable=False),
        pa.field("content", pa.string()),
        pa.field("created_at", pa.string()),
        pa.field("rag_context", pa.string()),
        pa.field(TENANT_COLUMN, pa.string(), nullable=False),
        pa.field(PRINCIPAL_COLUMN, pa.string(), nullable=False),
        pa.field(CLAIM_COLUMN, pa.string()),
        pa.field(CLAIM_UNTIL_COLUMN, pa.int64()),
    ]
)


def check_embedding(table: Any, *, uri: str, model_id: str, dimension: int) -> None:
    """Raise EmbeddingMismatch unless the chunks table holds ``model_id`` vectors of ``dimension``."""
    meta = table.schema.metadata or {}
    model = meta.get(b"embedding_model", b"").decode()
    dim = int(meta.get(b"embedding_dimension", b"0") or 0)
    vec_dim = table.schema.field("vector").type.list_size
    if (model and model != model_id) or (dim or vec_dim) != dimension:
        raise EmbeddingMismatch(
            f"table '{CHUNKS_TABLE}' at {uri} holds {model or 'unknown'} vectors of dimension "
            f"{dim or vec_dim}, but this service embeds with {model_id} ({dimension}); "
            "point it at another LanceDB URI or rebuild the index from the raw documents"
        )


def chunk_record(r: ChunkRow, ingested_at: str, tenant: str) -> dict[str, Any]:
    """A ChunkRow of ``tenant`` as a row of the chunks table."""
    return {
        "id": r.id,
        "doc_id": r.doc_id,
        "chunk": r.chunk,
        "title": r.title,
        "text": r.text,
        "date": r.date,
        "source": r.source,
        "metadata": json.dumps(r.metadata, sort_keys=True),
        "vector": [float(x) for x in r.vector],
        "ingested_at": ingested_at,
        TENANT_COLUMN: tenant,
        DOC_VERSION_COLUMN: r.doc_version,
    }


def message_record(m: MessageRow, created_at: str, tenant: str, principal: str) -> dict[str, Any]:
    """A MessageRow of ``principal`` in ``tenant`` as a row of the messages table (``created_at`` when the
    row has none)."""
    return {
        "id": m.id,
        "conversation_id": m.conversation_id,
        "seq": m.seq,
        "role": m.role,
        "content": m.content,
        "created_at": m.created_at or created_at,
        "rag_context": json.dumps(m.rag_context),
        TENANT_COLUMN: tenant,
        PRINCIPAL_COLUMN: principal,
        CLAIM_COLUMN: None,
        CLAIM_UNTIL_COLUMN: None,
    }


def message_row(r: dict[str, Any]) -> MessageRow:
    """A row of the messages table as a MessageRow."""
    return MessageRow(
        id=r["id"],
        conversation_id=r["conversation_id"],
        seq=int(r["seq"]),
        role=r["role"],
        content=r["content"] or "",
        created_at=r["created_at"] or "",
        rag_context=json.loads(r["rag_context"] or "{}"),
    )


def storage_options_for(
    uri: str, endpoint_url: str | None, region: str | None, extra: dict[str, str] | None = None
) -> dict[str, str]:
    """LanceDB/object_store options for an s3:// URI; empty for local folders."""
    if not uri.startswith("s3://"):
        return {}
    opts: dict[str, str] = {}
    if region:
        opts["region"] = region
    if endpoint_url:
        opts["endpoint"] = endpoint_url
        opts["allow_http"] = str(endpoint_url.startswith("http://")).lower()
        opts["virtual_hosted_style_request"] = "false"
    opts.update(extra or {})
    return opts
