"""LanceDB adapter: the chunks table (vectors + text) and the messages table (chat history).

The URI is a local folder, ``s3://bucket/prefix`` (with ``storage_options`` for MinIO or another
S3-compatible endpoint), or S3 itself. Search uses cosine distance: ``_distance`` = 1 - cos, in [0, 2].
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import lancedb
import pyarrow as pa

log = logging.getLogger(__name__)

CHUNKS_TABLE = "chunks"
MESSAGES_TABLE = "messages"


class EmbeddingMismatch(Exception):
    """The table was built with another embedding model or dimension."""


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

    @property
    def id(self) -> str:
        return f"{self.doc_id}#{self.chunk}"


@dataclass(frozen=True)
class Match:
    doc_id: str
    chunk: int
    title: str
    text: str
    distance: float
    date: str | None
    source: str | None
    metadata: dict[str, Any]


@dataclass(frozen=True)
class MessageRow:
    id: str
    conversation_id: str
    seq: int
    role: str
    content: str
    created_at: str
    rag_context: dict[str, Any] = field(default_factory=dict)


def sql_str(value: str) -> str:
    """Quote a string for a LanceDB SQL filter."""
    return "'" + value.replace("'", "''") + "'"


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
    ]
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


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class VectorStore:
    """Chunks and messages in LanceDB. One instance per process; thread-safe for our use."""

    def __init__(
        self,
        uri: str,
        *,
        dimension: int,
        model_id: str,
        storage_options: dict[str, str] | None = None,
    ) -> None:
        self.uri = uri
        self.dimension = dimension
        self.model_id = model_id
        # timedelta(0): always see other processes' writes (ingestion writes, chat reads).
        self.db = lancedb.connect(uri, read_consistency_interval=timedelta(0), storage_options=storage_options or None)
        self._lock = threading.Lock()
        self._chunks: Any = None
        self._messages: Any = None

    # ------------------------------------------------------------------ tables

    def _table_names(self) -> list[str]:
        res = self.db.list_tables()
        names = getattr(res, "tables", res)
        return list(names)

    def _open_or_create(self, name: str, schema: pa.Schema) -> Any:
        if name in self._table_names():
            return self.db.open_table(name)
        try:
            return self.db.create_table(name, schema=schema, exist_ok=True)
        except Exception:
            # Another process may have created it between the check and the create.
            return self.db.open_table(name)

    def chunks(self) -> Any:
        with self._lock:
            if self._chunks is None:
                table = self._open_or_create(CHUNKS_TABLE, chunks_schema(self.dimension, self.model_id))
                self._check_embedding(table)
                self._chunks = table
            return self._chunks

    def messages(self) -> Any:
        with self._lock:
            if self._messages is None:
                self._messages = self._open_or_create(MESSAGES_TABLE, MESSAGES_SCHEMA)
            return self._messages

    def _check_embedding(self, table: Any) -> None:
        meta = table.schema.metadata or {}
        model = meta.get(b"embedding_model", b"").decode()
        dim = int(meta.get(b"embedding_dimension", b"0") or 0)
        vec_dim = table.schema.field("vector").type.list_size
        if (model and model != self.model_id) or (dim or vec_dim) != self.dimension:
            raise EmbeddingMismatch(
                f"table '{CHUNKS_TABLE}' at {self.uri} holds {model or 'unknown'} vectors of dimension "
                f"{dim or vec_dim}, but this service embeds with {self.model_id} ({self.dimension}); "
                "point it at another LanceDB URI or rebuild the index from the raw documents"
            )

    # ------------------------------------------------------------------ chunks

    def replace_document(self, doc_id: str, rows: Sequence[ChunkRow]) -> tuple[int, int]:
        """Atomically make `rows` the document's only chunks. Returns (written, chunks it had before).

        One merge_insert commit: upsert by id and delete this document's chunks that are not in the
        new version, so a reader never sees a half-replaced document.
        """
        table = self.chunks()
        now = _now()
        for r in rows:
            if r.doc_id != doc_id:
                raise ValueError("every row must belong to doc_id")
            if len(r.vector) != self.dimension:
                raise ValueError(f"vector dimension {len(r.vector)} != {self.dimension}")
        data = pa.Table.from_pylist(
            [
                {
                    "id": r.id,
                    "doc_id": r.doc_id,
                    "chunk": r.chunk,
                    "title": r.title,
                    "text": r.text,
                    "date": r.date,
                    "source": r.source,
                    "metadata": json.dumps(r.metadata, sort_keys=True),
                    "vector": [float(x) for x in r.vector],
                    "ingested_at": now,
                }
                for r in rows
            ],
            schema=table.schema,
        )
        before = self.count_chunks(doc_id)
        result = (
            table.merge_insert("id")
            .when_matched_update_all()
            .when_not_matched_insert_all()
            .when_not_matched_by_source_delete(f"doc_id = {sql_str(doc_id)}")
            .execute(data)
        )
        log.debug("replace_document %s: %d rows written, %d before: %s", doc_id, len(rows), before, result)
        return len(rows), before

    def delete_document(self, doc_id: str) -> int:
        table = self.chunks()
        n = self.count_chunks(doc_id)
        if n:
            table.delete(f"doc_id = {sql_str(doc_id)}")
        return n

    def count_chunks(self, doc_id: str | None = None) -> int:
        table = self.chunks()
        return int(table.count_rows(f"doc_id = {sql_str(doc_id)}" if doc_id is not None else None))

    def search(self, vector: Sequence[float], *, top_k: int, max_distance: float) -> list[Match]:
        """Top-k by cosine distance, keeping only matches with distance <= max_distance."""
        table = self.chunks()
        rows = (
            table.search(list(vector), vector_column_name="vector")
            .distance_type("cosine")
            .limit(top_k)
            .select(["doc_id", "chunk", "title", "text", "date", "source", "metadata", "_distance"])
            .to_list()
        )
        out = []
        for r in rows:
            d = float(r["_distance"])
            if d <= max_distance:
                out.append(
                    Match(
                        doc_id=r["doc_id"],
                        chunk=int(r["chunk"]),
                        title=r["title"] or "",
                        text=r["text"] or "",
                        distance=d,
                        date=r["date"],
                        source=r["source"],
                        metadata=json.loads(r["metadata"] or "{}"),
                    )
                )
        return out

    # ------------------------------------------------------------------ messages

    def conversation_exists(self, conversation_id: str) -> bool:
        return bool(self.messages().count_rows(f"conversation_id = {sql_str(conversation_id)}"))

    def conversation(self, conversation_id: str) -> list[MessageRow]:
        table = self.messages()
        rows = table.search().where(f"conversation_id = {sql_str(conversation_id)}").limit(None).to_list()
        rows.sort(key=lambda r: r["seq"])
        return [
            MessageRow(
                id=r["id"],
                conversation_id=r["conversation_id"],
                seq=int(r["seq"]),
                role=r["role"],
                content=r["content"] or "",
                created_at=r["created_at"] or "",
                rag_context=json.loads(r["rag_context"] or "{}"),
            )
            for r in rows
        ]

    def append_messages(self, messages: Sequence[MessageRow]) -> None:
        """Append a turn's messages in one commit (both or neither)."""
        self.messages().add(
            [
                {
                    "id": m.id,
                    "conversation_id": m.conversation_id,
                    "seq": m.seq,
                    "role": m.role,
                    "content": m.content,
                    "created_at": m.created_at or _now(),
                    "rag_context": json.dumps(m.rag_context),
                }
                for m in messages
            ]
        )


def timed_ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000, 2)
