"""VectorStore: the LanceDB connection, the chunks and messages tables, and the operations on them."""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Any

import lancedb
import pyarrow as pa

from shared.protocol import SearchMode
from shared.timing import iso_utc
from shared.vector_store.fulltext import FTS_REINDEX_ROWS, FullTextIndex
from shared.vector_store.schema import (
    CHUNKS_TABLE,
    MESSAGES_SCHEMA,
    MESSAGES_TABLE,
    ChunkRow,
    MessageRow,
    check_embedding,
    chunk_record,
    chunks_schema,
    message_record,
    message_row,
    sql_str,
)
from shared.vector_store.search import HYBRID_CANDIDATES, RRF_K, SEARCH_MODES, SearchHits, search_table

log = logging.getLogger(__name__)


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
        self.full_text_index = FullTextIndex(enabled=full_text, reindex_rows=fts_reindex_rows)
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
        """The chunks table, opened (or created) on first use; raises EmbeddingMismatch when it was built
        with another embedding model or dimension."""
        with self._lock:
            if self._chunks is None:
                table = self._open_or_create(CHUNKS_TABLE, chunks_schema(self.dimension, self.model_id))
                check_embedding(table, uri=self.uri, model_id=self.model_id, dimension=self.dimension)
                self.full_text_index.open(table)
                self._chunks = table
            return self._chunks

    def messages(self) -> Any:
        with self._lock:
            if self._messages is None:
                self._messages = self._open_or_create(MESSAGES_TABLE, MESSAGES_SCHEMA)
            return self._messages

    # ------------------------------------------------------------------ chunks

    def replace_document(self, doc_id: str, rows: Sequence[ChunkRow]) -> tuple[int, int]:
        """Atomically make `rows` the document's only chunks. Returns (written, chunks it had before).

        One merge_insert commit: upsert by id and delete this document's chunks that are not in the
        new version, so a reader never sees a half-replaced document.
        """
        table = self.chunks()
        now = iso_utc()
        for r in rows:
            if r.doc_id != doc_id:
                raise ValueError("every row must belong to doc_id")
            if len(r.vector) != self.dimension:
                raise ValueError(f"vector dimension {len(r.vector)} != {self.dimension}")
        data = pa.Table.from_pylist([chunk_record(r, now) for r in rows], schema=table.schema)
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
        self.full_text_index.after_write(table, len(rows))
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
        now = iso_utc()
        payload: list[dict[str, Any]] = []
        for doc_id, rows in docs.items():
            for r in rows:
                if r.doc_id != doc_id:
                    raise ValueError("every row must belong to its doc_id")
                if len(r.vector) != self.dimension:
                    raise ValueError(f"vector dimension {len(r.vector)} != {self.dimension}")
                payload.append(chunk_record(r, now))
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
        self.full_text_index.after_write(table, len(payload))
        return {d: (len(rows), before[d]) for d, rows in docs.items()}

    def document_stats(self) -> dict[str, tuple[int, str | None]]:
        """doc_id -> (chunk count, when it was last indexed), over the whole chunks table."""
        stats: dict[str, tuple[int, str | None]] = {}
        rows = self.chunks().search().select(["doc_id", "ingested_at"]).limit(None).to_arrow().to_pylist()
        for r in rows:
            n, at = stats.get(r["doc_id"], (0, None))
            stats[r["doc_id"]] = (n + 1, max(at or "", r["ingested_at"] or "") or None)
        return stats

    def delete_document(self, doc_id: str) -> int:
        table = self.chunks()
        n = self.count_chunks(doc_id)
        if n:
            table.delete(f"doc_id = {sql_str(doc_id)}")
        return n

    def count_chunks(self, doc_id: str | None = None) -> int:
        table = self.chunks()
        return int(table.count_rows(f"doc_id = {sql_str(doc_id)}" if doc_id is not None else None))

    # ------------------------------------------------------------------ full-text index upkeep

    def unindexed_rows(self) -> int:
        """Rows not yet in the full-text index (searched by a flat scan until the next optimize)."""
        return self.full_text_index.unindexed_rows(self.chunks())

    def optimize(self, attempts: int = 3) -> None:
        """Fold new rows into the full-text index and compact small files (see FullTextIndex.optimize)."""
        self.full_text_index.optimize(self.chunks(), attempts)

    # ------------------------------------------------------------------ search

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
    ) -> SearchHits:
        """The top_k chunks for a query, each with its cosine distance to ``vector``.

        ``mode``:

        - ``vector``: nearest chunks by cosine distance (``_distance`` = 1 - cos, 0 .. 2).
        - ``fts``: BM25 ranking of ``query_text`` on the native full-text index of the chunk text (rows
          written since the index was last updated are scanned too, so a new chunk is found at once).
          A failing full-text query raises FullTextSearchFailed.
        - ``hybrid``: the vector list and the full-text list (each ``max(top_k, candidates)`` deep) fused
          by reciprocal rank fusion: score = sum over the lists of 1 / (rrf_k + rank), rank from 1.
          Without ``query_text``, without a full-text index, or when the full-text query fails, it is the
          vector search (the result's ``mode`` says ``vector``, its ``fallback`` why).

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
        text = (query_text or "").strip()
        fallback: str | None = None
        if mode != "vector" and not text:
            if mode == "fts":
                raise ValueError("full-text search needs query_text")
            mode, fallback = "vector", "no query text"
        if mode != "vector" and not self.full_text_index.available(table):
            log.warning("%s search requested but there is no full-text index: using vector search", mode)
            mode, fallback = "vector", "no full-text index"
        return search_table(
            table,
            vector,
            mode=mode,
            query_text=text,
            top_k=top_k,
            max_distance=max_distance,
            rrf_k=rrf_k,
            candidates=candidates,
            fallback=fallback,
        )

    # ------------------------------------------------------------------ messages

    def conversation_exists(self, conversation_id: str) -> bool:
        return bool(self.messages().count_rows(f"conversation_id = {sql_str(conversation_id)}"))

    def conversation(self, conversation_id: str) -> list[MessageRow]:
        table = self.messages()
        rows = table.search().where(f"conversation_id = {sql_str(conversation_id)}").limit(None).to_list()
        rows.sort(key=lambda r: r["seq"])
        return [message_row(r) for r in rows]

    def append_messages(self, messages: Sequence[MessageRow]) -> None:
        """Append a turn's messages in one commit (both or neither)."""
        now = iso_utc()
        self.messages().add([message_record(m, now) for m in messages])
