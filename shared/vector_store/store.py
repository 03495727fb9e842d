"""VectorStore: the LanceDB connection, the chunks and messages tables, and the operations on them.

Every operation on rows takes the tenant (keyword ``tenant``, required) and filters by it: reads with a
prefilter (``tenant = '...'``, served by a BITMAP index), writes with the tenant in the merge key and in
the delete condition. Document ids are thus a namespace per tenant, and so are conversation ids, which
are also filtered by the principal who started the conversation.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Any

import lancedb
import pyarrow as pa
from lancedb.index import Bitmap, BTree

from shared.protocol import SearchMode
from shared.timing import iso_utc
from shared.vector_store.fulltext import FTS_REINDEX_ROWS, FullTextIndex
from shared.vector_store.schema import (
    CHUNKS_MERGE_KEY,
    CHUNKS_MIGRATION,
    CHUNKS_TABLE,
    MESSAGES_MIGRATION,
    MESSAGES_SCHEMA,
    MESSAGES_TABLE,
    PRINCIPAL_COLUMN,
    TENANT_COLUMN,
    ChunkRow,
    MessageRow,
    check_embedding,
    chunk_record,
    chunks_schema,
    message_record,
    message_row,
    sql_str,
    tenant_filter,
)
from shared.vector_store.search import HYBRID_CANDIDATES, RRF_K, SEARCH_MODES, SearchHits, search_table

log = logging.getLogger(__name__)

# Scalar indexes each table keeps (created on open when missing): the tenant of every filter (few
# distinct values: a bitmap), and the id column a filter names with it (many values: a B-tree).
CHUNKS_INDEXES: dict[str, Any] = {TENANT_COLUMN: Bitmap(), "doc_id": BTree()}
MESSAGES_INDEXES: dict[str, Any] = {TENANT_COLUMN: Bitmap(), "conversation_id": BTree()}


def migrate(table: Any, columns: Mapping[str, str]) -> bool:
    """Add the ``columns`` (name -> SQL default) a table written by an older version lacks.

    Safe when several processes open the table at once: a concurrent migration that added them first
    makes ours fail; the table is then re-read and the columns are there. Returns whether columns were
    missing."""
    missing = {name: default for name, default in columns.items() if name not in table.schema.names}
    if not missing:
        return False
    try:
        table.add_columns(missing)
        log.warning("migrated table %s: added %s", table.name, ", ".join(f"{k} = {v}" for k, v in missing.items()))
    except Exception as exc:
        table.checkout_latest()
        if any(name not in table.schema.names for name in missing):
            raise
        log.info("table %s was migrated by another process (%s)", table.name, type(exc).__name__)
    return True


def ensure_scalar_indexes(table: Any, indexes: Mapping[str, Any]) -> None:
    """Create the scalar indexes ``indexes`` names (column -> config) that the table lacks.

    An index only speeds filters up (rows it does not hold yet are scanned), so failing to create one
    (another process creating it at the same moment, a store that refuses) is logged, not raised."""
    have = {tuple(idx.columns) for idx in table.list_indices()}
    for column, config in indexes.items():
        if (column,) in have:
            continue
        try:
            table.create_index(column, config=config, replace=False)
        except Exception as exc:
            log.debug("creating the %s index on %s.%s failed: %s", type(config).__name__, table.name, column, exc)


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
        """The table, opened or created; another process may be doing the same."""
        if name in self._table_names():
            table = self.db.open_table(name)
        else:
            try:
                table = self.db.create_table(name, schema=schema, exist_ok=True)
            except Exception:
                # Another process may have created it between the check and the create.
                table = self.db.open_table(name)
        return table

    def chunks(self) -> Any:
        """The chunks table, opened (or created) on first use; raises EmbeddingMismatch when it was built
        with another embedding model or dimension (before touching it). A table written before tenants
        existed is migrated: its rows become the default tenant's."""
        with self._lock:
            if self._chunks is None:
                table = self._open_or_create(CHUNKS_TABLE, chunks_schema(self.dimension, self.model_id))
                check_embedding(table, uri=self.uri, model_id=self.model_id, dimension=self.dimension)
                migrate(table, CHUNKS_MIGRATION)
                ensure_scalar_indexes(table, CHUNKS_INDEXES)
                self.full_text_index.open(table)
                self._chunks = table
            return self._chunks

    def messages(self) -> Any:
        with self._lock:
            if self._messages is None:
                table = self._open_or_create(MESSAGES_TABLE, MESSAGES_SCHEMA)
                migrate(table, MESSAGES_MIGRATION)
                ensure_scalar_indexes(table, MESSAGES_INDEXES)
                self._messages = table
            return self._messages

    # ------------------------------------------------------------------ chunks

    def replace_document(self, doc_id: str, rows: Sequence[ChunkRow], *, tenant: str) -> tuple[int, int]:
        """Atomically make `rows` the only chunks of ``tenant``'s document ``doc_id``. Returns (written,
        chunks it had before).

        One merge_insert commit: upsert by (tenant, id) and delete this document's chunks that are not in
        the new version, so a reader never sees a half-replaced document. Another tenant's document of the
        same id is another document: neither matched nor deleted.
        """
        where = tenant_filter(tenant, f"doc_id = {sql_str(doc_id)}")
        table = self.chunks()
        now = iso_utc()
        for r in rows:
            if r.doc_id != doc_id:
                raise ValueError("every row must belong to doc_id")
            if len(r.vector) != self.dimension:
                raise ValueError(f"vector dimension {len(r.vector)} != {self.dimension}")
        data = pa.Table.from_pylist([chunk_record(r, now, tenant) for r in rows], schema=table.schema)
        result = (
            table.merge_insert(CHUNKS_MERGE_KEY)
            .when_matched_update_all()
            .when_not_matched_insert_all()
            .when_not_matched_by_source_delete(where)
            .execute(data)
        )
        # The chunks it had: the ones this commit updated (same id) or deleted (no longer there), as
        # counted by the commit itself (no extra scan, and exact even with a concurrent writer).
        before = int(result.num_updated_rows) + int(result.num_deleted_rows)
        log.debug("replace_document %s: %d rows written, %d before: %s", doc_id, len(rows), before, result)
        self.full_text_index.after_write(table, len(rows))
        return len(rows), before

    def replace_documents(self, docs: Mapping[str, Sequence[ChunkRow]], *, tenant: str) -> dict[str, tuple[int, int]]:
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
                payload.append(chunk_record(r, now, tenant))
        where = tenant_filter(tenant, "doc_id IN ({})".format(", ".join(sql_str(d) for d in docs)))
        before: dict[str, int] = dict.fromkeys(docs, 0)
        counted = table.search().where(where).select(["doc_id"]).limit(None).to_arrow()
        for d in counted.column("doc_id").to_pylist():
            before[d] += 1
        (
            table.merge_insert(CHUNKS_MERGE_KEY)
            .when_matched_update_all()
            .when_not_matched_insert_all()
            .when_not_matched_by_source_delete(where)
            .execute(pa.Table.from_pylist(payload, schema=table.schema))
        )
        self.full_text_index.after_write(table, len(payload))
        return {d: (len(rows), before[d]) for d, rows in docs.items()}

    def document_stats(self, *, tenant: str) -> dict[str, tuple[int, str | None]]:
        """doc_id -> (chunk count, when it was last indexed), over the tenant's chunks."""
        stats: dict[str, tuple[int, str | None]] = {}
        query = self.chunks().search().where(tenant_filter(tenant)).select(["doc_id", "ingested_at"])
        rows = query.limit(None).to_arrow().to_pylist()
        for r in rows:
            n, at = stats.get(r["doc_id"], (0, None))
            stats[r["doc_id"]] = (n + 1, max(at or "", r["ingested_at"] or "") or None)
        return stats

    def delete_document(self, doc_id: str, *, tenant: str) -> int:
        """Delete the tenant's document's chunks; returns how many there were."""
        table = self.chunks()
        n = self.count_chunks(doc_id, tenant=tenant)
        if n:
            table.delete(tenant_filter(tenant, f"doc_id = {sql_str(doc_id)}"))
        return n

    def count_chunks(self, doc_id: str | None = None, *, tenant: str) -> int:
        """The tenant's chunks (of ``doc_id`` only, when given)."""
        table = self.chunks()
        return int(
            table.count_rows(tenant_filter(tenant, f"doc_id = {sql_str(doc_id)}" if doc_id is not None else None))
        )

    def indexed_doc_ids(self, *, tenant: str) -> set[str]:
        """The ids of the tenant's documents that have chunks."""
        rows = self.chunks().search().where(tenant_filter(tenant)).select(["doc_id"]).limit(None).to_arrow()
        return {str(v) for v in rows.column("doc_id").unique().to_pylist()}

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
        tenant: str,
        top_k: int,
        max_distance: float,
        mode: SearchMode = "vector",
        query_text: str | None = None,
        rrf_k: int = RRF_K,
        candidates: int = HYBRID_CANDIDATES,
    ) -> SearchHits:
        """The top_k of the tenant's chunks for a query, each with its cosine distance to ``vector``.

        Only the tenant's rows are candidates, in every mode (a prefilter on the vector and the full-text
        list alike): another tenant's chunk is never ranked, let alone returned.

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
        where = tenant_filter(tenant)
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
            where=where,
            rrf_k=rrf_k,
            candidates=candidates,
            fallback=fallback,
        )

    # ------------------------------------------------------------------ messages

    @staticmethod
    def _conversation_filter(conversation_id: str, tenant: str, principal: str) -> str:
        return tenant_filter(
            tenant, f"{PRINCIPAL_COLUMN} = {sql_str(principal)} AND conversation_id = {sql_str(conversation_id)}"
        )

    def conversation_exists(self, conversation_id: str, *, tenant: str, principal: str) -> bool:
        """Whether ``principal`` of ``tenant`` has a conversation of this id (another's is not theirs)."""
        return bool(self.messages().count_rows(self._conversation_filter(conversation_id, tenant, principal)))

    def conversation(self, conversation_id: str, *, tenant: str, principal: str) -> list[MessageRow]:
        """The messages of ``principal``'s conversation, in order; empty when they have no such conversation
        (whether it does not exist or is someone else's: the two are indistinguishable)."""
        table = self.messages()
        where = self._conversation_filter(conversation_id, tenant, principal)
        rows = table.search().where(where).limit(None).to_list()
        rows.sort(key=lambda r: r["seq"])
        return [message_row(r) for r in rows]

    def append_messages(self, messages: Sequence[MessageRow], *, tenant: str, principal: str) -> None:
        """Append a turn's messages of ``principal`` in ``tenant`` in one commit (both or neither)."""
        tenant_filter(tenant)  # validates it
        if not principal:
            raise ValueError("a message needs its principal")
        now = iso_utc()
        self.messages().add([message_record(m, now, tenant, principal) for m in messages])
