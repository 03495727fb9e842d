"""LanceDB adapter: the chunks table (vectors + text) and the messages table (chat history).

The URI is a local folder, ``s3://bucket/prefix`` (with ``storage_options`` for MinIO or another
S3-compatible endpoint), or S3 itself. Search uses cosine distance: ``_distance`` = 1 - cos, in [0, 2].

Three search modes (see ``VectorStore.search``): ``vector`` (cosine), ``fts`` (BM25 on LanceDB's native
full-text index over the chunk text) and ``hybrid`` (both lists fused by reciprocal rank fusion). Every
result carries its cosine distance, so one ``max_distance`` threshold gates all three modes the same way.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, get_args

import lancedb
import numpy as np
import pyarrow as pa
from lancedb.index import FTS

from shared.protocol import SearchMode

log = logging.getLogger(__name__)

CHUNKS_TABLE = "chunks"
MESSAGES_TABLE = "messages"

SEARCH_MODES: tuple[str, ...] = get_args(SearchMode)

# Reciprocal rank fusion constant: score = sum 1 / (k + rank). Cormack et al. (2009) and LanceDB's
# RRFReranker use 60; on the SciFact train split 10 gives nDCG@10 0.721 vs 0.711 for 60 (50-deep lists).
RRF_K = 10
# Each list fused by hybrid search is at least this deep (and at least top_k), so a passage ranked
# moderately by both retrievers can still win.
HYBRID_CANDIDATES = 50
# The full-text index: the chunk text, English stemming, stop words removed, case/accents folded.
FTS_COLUMN = "text"
# Rows written since the full-text index was last updated are still searched (by a flat scan, so they
# are findable at once); past this many such rows a write folds them into the index (Table.optimize).
FTS_REINDEX_ROWS = 256


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
        full_text: bool = True,
        fts_reindex_rows: int = FTS_REINDEX_ROWS,
    ) -> None:
        self.uri = uri
        self.dimension = dimension
        self.model_id = model_id
        # full_text: keep a native full-text (BM25) index on the chunk text, for the fts and hybrid modes.
        self.full_text = full_text
        self.fts_reindex_rows = fts_reindex_rows
        # timedelta(0): always see other processes' writes (ingestion writes, chat reads).
        self.db = lancedb.connect(uri, read_consistency_interval=timedelta(0), storage_options=storage_options or None)
        self._lock = threading.Lock()
        self._optimize_lock = threading.Lock()
        self._chunks: Any = None
        self._messages: Any = None
        self._fts_index: str | None = None
        # Unindexed rows as far as this process knows (its own writes since it last read the index
        # statistics); starts at the threshold so that the first write looks at the real number.
        self._written = fts_reindex_rows

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
                if self.full_text:
                    self._fts_index = self._ensure_fts_index(table)
                self._chunks = table
            return self._chunks

    def messages(self) -> Any:
        with self._lock:
            if self._messages is None:
                self._messages = self._open_or_create(MESSAGES_TABLE, MESSAGES_SCHEMA)
            return self._messages

    @staticmethod
    def _fts_index_name(table: Any) -> str | None:
        for idx in table.list_indices():
            if str(idx.index_type).upper() == "FTS" and list(idx.columns) == [FTS_COLUMN]:
                return str(idx.name)
        return None

    def _ensure_fts_index(self, table: Any) -> str | None:
        """The full-text index on the chunk text: found, or created (it indexes the rows present now).

        Created on an empty table it costs nothing; on a table written by an older version it indexes
        what is there. Another process may create it at the same moment: then we use theirs.
        """
        name = self._fts_index_name(table)
        if name is not None:
            return name
        try:
            table.create_index(FTS_COLUMN, config=FTS(), replace=False)
        except Exception as exc:  # a concurrent creator, or a store that refuses: re-check, else no FTS
            log.debug("creating the full-text index failed: %s", exc)
        name = self._fts_index_name(table)
        if name is None:
            log.warning("no full-text index on %s.%s: fts/hybrid search fall back to vector", CHUNKS_TABLE, FTS_COLUMN)
        return name

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
        data = pa.Table.from_pylist([_row_dict(r, now) for r in rows], schema=table.schema)
        result = (
            table.merge_insert("id")
            .when_matched_update_all()
            .when_not_matched_insert_all()
            .when_not_matched_by_source_delete(f"doc_id = {sql_str(doc_id)}")
            .execute(data)
        )
        # The chunks it had: the ones this commit updated (same id) or deleted (no longer there), as
        # counted by the commit itself (no extra scan, and exact even with a concurrent writer).
        before = int(result.num_updated_rows) + int(result.num_deleted_rows)
        log.debug("replace_document %s: %d rows written, %d before: %s", doc_id, len(rows), before, result)
        self._after_write(table, len(rows))
        return len(rows), before

    def replace_documents(self, docs: Mapping[str, Sequence[ChunkRow]]) -> dict[str, tuple[int, int]]:
        """``replace_document`` for many documents in ONE commit (bulk ingestion).

        Same guarantees per document (its new chunks replace all its old ones; a reader sees each
        document either before or after), but one merge_insert for the whole batch instead of one per
        document. Returns {doc_id: (written, chunks it had before)}.
        """
        if not docs:
            return {}
        table = self.chunks()
        now = _now()
        payload: list[dict[str, Any]] = []
        for doc_id, rows in docs.items():
            for r in rows:
                if r.doc_id != doc_id:
                    raise ValueError("every row must belong to its doc_id")
                if len(r.vector) != self.dimension:
                    raise ValueError(f"vector dimension {len(r.vector)} != {self.dimension}")
                payload.append(_row_dict(r, now))
        ids = ", ".join(sql_str(d) for d in docs)
        before: dict[str, int] = dict.fromkeys(docs, 0)
        counted = table.search().where(f"doc_id IN ({ids})").select(["doc_id"]).limit(None).to_arrow()
        for d in counted.column("doc_id").to_pylist():
            before[d] += 1
        (
            table.merge_insert("id")
            .when_matched_update_all()
            .when_not_matched_insert_all()
            .when_not_matched_by_source_delete(f"doc_id IN ({ids})")
            .execute(pa.Table.from_pylist(payload, schema=table.schema))
        )
        self._after_write(table, len(payload))
        return {d: (len(rows), before[d]) for d, rows in docs.items()}

    # ------------------------------------------------------------------ full-text index upkeep

    def unindexed_rows(self) -> int:
        """Rows not yet in the full-text index (searched by a flat scan until the next optimize)."""
        table = self.chunks()
        if self._fts_index is None:
            return 0
        stats = table.index_stats(self._fts_index)
        return int(stats.num_unindexed_rows) if stats is not None else 0

    def optimize(self, attempts: int = 3) -> None:
        """Fold new rows into the full-text index and compact small files (LanceDB Table.optimize).

        Old versions are kept (LanceDB's default: 7 days), so readers on another process are safe. A
        concurrent write can preempt the compaction commit ("Retryable commit conflict"; the write
        itself always wins): then it is retried, up to ``attempts`` times.
        """
        table = self.chunks()
        with self._optimize_lock:
            self._optimize(table, attempts)

    def _optimize(self, table: Any, attempts: int) -> None:
        t0 = time.perf_counter()
        for attempt in range(1, attempts + 1):
            try:
                table.optimize()
                break
            except Exception as exc:
                if attempt == attempts or "retryable" not in str(exc).lower():
                    raise
                log.debug("optimize preempted by a concurrent write (attempt %d): %s", attempt, exc)
                time.sleep(0.05 * attempt)
        log.info("optimized %s in %.0f ms", CHUNKS_TABLE, (time.perf_counter() - t0) * 1000)

    def _after_write(self, table: Any, rows: int) -> None:
        """Keep the flat-scanned tail of the full-text index short: every unindexed row costs each
        full-text query ~0.2 ms, while an optimize costs ~0.5-1 s (measured on 10k SciFact chunks).

        The index statistics (~10 ms) are read only when this process's own count of unindexed rows
        reaches fts_reindex_rows (and on its first write), not after every write."""
        if self._fts_index is None or self.fts_reindex_rows <= 0:
            return
        with self._lock:
            self._written += rows
            if self._written < self.fts_reindex_rows:
                return
        if not self._optimize_lock.acquire(blocking=False):
            return  # another thread is optimizing right now
        try:
            unindexed = self.unindexed_rows()
            if unindexed >= self.fts_reindex_rows:
                self._optimize(table, attempts=3)
                unindexed = 0
            with self._lock:
                self._written = unindexed
        except Exception as exc:  # best effort: the rows stay searchable by the flat scan
            log.warning("updating the full-text index failed (will retry after a later write): %s", exc)
        finally:
            self._optimize_lock.release()

    def document_stats(self) -> dict[str, tuple[int, str | None]]:
        """doc_id -> (chunk count, when it was last indexed)."""
        return _document_stats(self.chunks())

    def delete_document(self, doc_id: str) -> int:
        table = self.chunks()
        n = self.count_chunks(doc_id)
        if n:
            table.delete(f"doc_id = {sql_str(doc_id)}")
        return n

    def count_chunks(self, doc_id: str | None = None) -> int:
        table = self.chunks()
        return int(table.count_rows(f"doc_id = {sql_str(doc_id)}" if doc_id is not None else None))

    def search(
        self,
        vector: Sequence[float],
        *,
        top_k: int,
        max_distance: float,
        mode: SearchMode = "vector",
        query_text: str | None = None,
        rrf_k: int = RRF_K,
        candidates: int = HYBRID_CANDIDATES,
    ) -> list[Match]:
        """The top_k chunks for a query, each with its cosine distance to ``vector``.

        ``mode``:

        - ``vector``: nearest chunks by cosine distance (``_distance`` = 1 - cos, 0 .. 2).
        - ``fts``: BM25 ranking of ``query_text`` on the native full-text index of the chunk text (rows
          written since the index was last updated are scanned too, so a new chunk is found at once).
        - ``hybrid``: the vector list and the full-text list (each ``max(top_k, candidates)`` deep) fused
          by reciprocal rank fusion: score = sum over the lists of 1 / (rrf_k + rank), rank from 1.
          Without ``query_text`` (or without a full-text index) it is the vector search.

        The threshold gates every mode the same way: each candidate's cosine distance to ``vector`` is
        known (LanceDB's ``_distance`` for vector hits; computed from the stored vector for full-text
        hits), candidates with distance > ``max_distance`` are dropped, and the first ``top_k`` of what
        is left are returned in the mode's order (nearest first; BM25 score; RRF score). So a full-text
        hit on a rare word is kept only if its chunk is also semantically close enough to the question,
        and a question with no relevant chunk gets no results in any mode. For ``vector`` this is the
        same as filtering the top_k.
        """
        if mode not in SEARCH_MODES:
            raise ValueError(f"unknown search mode {mode!r}; expected one of {SEARCH_MODES}")
        table = self.chunks()
        query_vec = [float(x) for x in vector]
        text = (query_text or "").strip()
        if mode != "vector" and not text:
            if mode == "fts":
                raise ValueError("full-text search needs query_text")
            mode = "vector"
        if mode != "vector" and self._fts_index is None:
            if self.full_text:
                self._fts_index = self._fts_index_name(table)  # made since by another process?
            if self._fts_index is None:
                log.warning("%s search requested but there is no full-text index: using vector search", mode)
                mode = "vector"
        depth = top_k if mode == "vector" else max(top_k, candidates)
        ranked: list[tuple[dict[str, Any], float | None]]
        if mode == "vector":
            ranked = [(r, None) for r in self._vector_hits(table, query_vec, depth)]
        elif mode == "fts":
            ranked = [(r, float(r["_score"])) for r in self._fts_hits(table, query_vec, text, depth)]
        else:
            vector_hits = self._vector_hits(table, query_vec, depth)
            try:
                fts_hits = self._fts_hits(table, query_vec, text, depth)
            except Exception as exc:  # e.g. the index was dropped: degrade to the vector list
                log.warning("full-text search failed; hybrid search uses the vector list only: %s", exc)
                fts_hits = []
            ranked = rrf_fuse([vector_hits, fts_hits], k=rrf_k)
        out: list[Match] = []
        for r, score in ranked:
            d = float(r["_distance"])
            if d > max_distance:
                continue
            out.append(_match(r, d, score))
            if len(out) >= top_k:
                break
        return out

    _COLUMNS = ("id", "doc_id", "chunk", "title", "text", "date", "source", "metadata")

    def _vector_hits(self, table: Any, vector: list[float], limit: int) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = (
            table.search(vector, vector_column_name="vector")
            .distance_type("cosine")
            .limit(limit)
            .select([*self._COLUMNS, "_distance"])
            .to_list()
        )
        return rows

    def _fts_hits(self, table: Any, vector: list[float], text: str, limit: int) -> list[dict[str, Any]]:
        """BM25 hits, best first, each with ``_distance`` computed from its stored vector."""
        rows: list[dict[str, Any]] = (
            table.search(text, query_type="fts", fts_columns=FTS_COLUMN)
            .limit(limit)
            .select([*self._COLUMNS, "vector", "_score"])
            .to_list()
        )
        if not rows:
            return rows
        q = np.asarray(vector, dtype=np.float32)
        m = np.asarray([r["vector"] for r in rows], dtype=np.float32)
        cos = (m @ q) / np.maximum(np.linalg.norm(m, axis=1) * np.linalg.norm(q), 1e-12)
        for r, c in zip(rows, cos, strict=True):
            r["_distance"] = float(1.0 - c)
            del r["vector"]
        return rows

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


def rrf_fuse(lists: Sequence[Sequence[dict[str, Any]]], *, k: int = RRF_K) -> list[tuple[dict[str, Any], float | None]]:
    """Reciprocal rank fusion of ranked row lists (rows keyed by ``id``): score = sum 1 / (k + rank).

    Ranks count from 1. A row in several lists keeps the first list's copy (the vector list's, with
    LanceDB's own ``_distance``). Ties keep first-seen order (the first list's order, then the next).
    """
    if k <= 0:
        raise ValueError("k must be positive")
    scores: dict[str, float] = {}
    rows: dict[str, dict[str, Any]] = {}
    for ranked in lists:
        for rank, row in enumerate(ranked, start=1):
            key = row["id"]
            scores[key] = scores.get(key, 0.0) + 1.0 / (k + rank)
            rows.setdefault(key, row)
    order = sorted(scores, key=lambda key: -scores[key])  # stable: ties keep first-seen order
    return [(rows[key], scores[key]) for key in order]


def _row_dict(r: ChunkRow, now: str) -> dict[str, Any]:
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
        "ingested_at": now,
    }


def _match(r: dict[str, Any], distance: float, score: float | None) -> Match:
    metadata: dict[str, Any] = json.loads(r["metadata"] or "{}")
    page = metadata.get("page")
    heading = metadata.get("heading")
    return Match(
        doc_id=r["doc_id"],
        chunk=int(r["chunk"]),
        title=r["title"] or "",
        text=r["text"] or "",
        distance=distance,
        date=r["date"],
        source=r["source"],
        metadata=metadata,
        score=score,
        page=_page(page),
        heading=str(heading) if isinstance(heading, str) and heading else None,
    )


def _page(value: Any) -> int | None:
    """metadata["page"] as an int (an int, a whole float or a digit string), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None


def _document_stats(table: Any) -> dict[str, tuple[int, str | None]]:
    """doc_id -> (chunks, latest ingested_at) over the whole chunks table."""
    stats: dict[str, tuple[int, str | None]] = {}
    rows = table.search().select(["doc_id", "ingested_at"]).limit(None).to_arrow().to_pylist()
    for r in rows:
        n, at = stats.get(r["doc_id"], (0, None))
        stats[r["doc_id"]] = (n + 1, max(at or "", r["ingested_at"] or "") or None)
    return stats


def timed_ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000, 2)
