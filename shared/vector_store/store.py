"""VectorStore: the LanceDB connection, the chunks and messages tables, and the operations on them.

Every operation on rows takes the tenant (keyword ``tenant``, required) and filters by it: reads with a
prefilter (``tenant = '...'``, served by a BITMAP index), writes with the tenant in the merge key and in
the delete condition. Document ids are thus a namespace per tenant, and so are conversation ids, which
are also filtered by the principal who started the conversation.

Writers of one document take turns through per-document leases (``document_leases``; see leases.py):
IngestionService holds a document's lease around every write of it.
"""

from __future__ import annotations

import logging
import random
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import lancedb
import pyarrow as pa
from lancedb.index import Bitmap, BTree

from shared.protocol import SearchMode
from shared.timing import iso_utc
from shared.vector_store.freshness import Freshness, open_markers
from shared.vector_store.fulltext import FTS_FOLD_COMMITS, FTS_REINDEX_ROWS, FullTextIndex
from shared.vector_store.leases import LEASES_SCHEMA, LEASES_TABLE, DocumentLeases, has_primary_key
from shared.vector_store.schema import (
    ANCHOR_ROLE,
    ANCHOR_SEQ,
    CHUNKS_MERGE_KEY,
    CHUNKS_MIGRATION,
    CHUNKS_TABLE,
    CLAIM_COLUMN,
    CLAIM_UNTIL_COLUMN,
    CLOSED,
    MESSAGES_MERGE_KEY,
    MESSAGES_MIGRATION,
    MESSAGES_SCHEMA,
    MESSAGES_TABLE,
    PRINCIPAL_COLUMN,
    TENANT_COLUMN,
    ChunkRow,
    ConversationBusy,
    MessageRow,
    TurnClaim,
    check_embedding,
    chunk_record,
    chunks_schema,
    message_record,
    message_row,
    sql_str,
    tenant_filter,
)
from shared.vector_store.search import HYBRID_CANDIDATES, RRF_K, SEARCH_MODES, SearchHits, search_table
from shared.vector_store.upkeep import Upkeep, WriteCounter, scalar_upkeep
from shared.vector_store.vector_index import Action, VectorIndex, VectorIndexPolicy

log = logging.getLogger(__name__)

# Scalar indexes each table keeps (created on open when missing): the tenant of every filter (few
# distinct values: a bitmap), and the id column a filter names with it (many values: a B-tree).
CHUNKS_INDEXES: dict[str, Any] = {TENANT_COLUMN: Bitmap(), "doc_id": BTree()}
MESSAGES_INDEXES: dict[str, Any] = {TENANT_COLUMN: Bitmap(), "conversation_id": BTree()}
# A claim that lost a race to a turn that was then stored is retried on the new last row this many times
# before the conversation is reported busy; a commit that failed (not lost) is retried as often.
TURN_ATTEMPTS = 5
# Opening (or creating) a table while other processes create it is tried this many times.
OPEN_ATTEMPTS = 5
# The messages table's scalar indexes (tenant, conversation_id) are brought up to date (Table.optimize,
# which also compacts the one small file each turn writes) once this many rows were written outside
# them: history, claims and listings then scan at most this many unindexed rows (a few ms), and the
# optimize (a second or so at 1M messages) runs in the background once per this many rows.
MESSAGES_FOLD_ROWS = 2_000
# ... or after this many commits (a turn makes two or three: its claim, its messages), however few rows:
# each commit leaves a small file that every claim, commit and history read of the table then reads
# (make bench-small-commits: unfolded, a turn's claim and commit grew several times over 300 turns).
# Such folds keep to upkeep.FOLD_DUTY of the time.
MESSAGES_FOLD_COMMITS = 32
# The cross-process lease that one vector-index builder at a time holds (leases.py: a reserved key, not
# a tenant's document), and for how long (renewed every third of it while the build runs).
INDEX_LEASE_TENANT = "0-localrag-upkeep"
INDEX_LEASE_KEY = "chunks.vector"
INDEX_LEASE_S = 60.0


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
            kind, error = type(config).__name__, type(exc).__name__
            log.debug("creating the %s index on %s.%s failed: %s", kind, table.name, column, error)


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
        fts_fold_commits: int = FTS_FOLD_COMMITS,
        vector_index: VectorIndexPolicy | None = None,
        messages_fold_rows: int = MESSAGES_FOLD_ROWS,
        messages_fold_commits: int = MESSAGES_FOLD_COMMITS,
        read_consistency_s: float = 0.0,
    ) -> None:
        self.uri = uri
        self.dimension = dimension
        self.model_id = model_id
        # full_text: keep a native full-text (BM25) index on the chunk text, for the fts and hybrid modes.
        self.full_text_index = FullTextIndex(
            enabled=full_text, reindex_rows=fts_reindex_rows, fold_commits=fts_fold_commits
        )
        # vector_index: when the ANN index on the chunk vectors is built, folded, retrained, searched.
        self.vector_index = VectorIndex(
            vector_index or VectorIndexPolicy(), dimension=dimension, lease=self._held_index_lease
        )
        # Index upkeep after writes runs on this store's background thread (the write does not wait).
        self.upkeep = Upkeep(uri.rstrip("/").rsplit("/", 1)[-1] or "store")
        self._messages_written = WriteCounter(messages_fold_rows, commits=messages_fold_commits)
        # Messages and leases: always the latest version (turn claims and leases read-modify-write them).
        self.db = lancedb.connect(uri, read_consistency_interval=timedelta(0), storage_options=storage_options or None)
        # Chunks: at most read_consistency_s seconds stale (inf: never re-checked), except that a tenant sees
        # its own writes at once, from any process (per-tenant version markers: freshness.py).
        self.freshness = Freshness(open_markers(uri, storage_options, CHUNKS_TABLE), read_consistency_s)
        interval = self.freshness.interval
        self.chunks_db = (
            lancedb.connect(uri, read_consistency_interval=interval, storage_options=storage_options or None)
            if self.freshness.bounded
            else self.db
        )
        self._lock = threading.Lock()
        self._chunks: Any = None
        self._messages: Any = None
        self._leases: Any = None
        # Its compactions (~140 ms every 64 commits) run on the upkeep thread, not in a batch's release.
        self._document_leases = DocumentLeases(self._leases_table, background=self.upkeep.submit)

    # ------------------------------------------------------------------ tables

    def _table_names(self, db: Any = None) -> list[str]:
        res = (db or self.db).list_tables()
        names = getattr(res, "tables", res)
        return list(names)

    def _open_or_create(self, name: str, schema: pa.Schema, db: Any = None) -> Any:
        """The table, opened or created; another process may be doing the same (its create may then fail
        here before the other's is visible: tried again, a few times)."""
        for attempt in range(1, OPEN_ATTEMPTS + 1):
            try:
                conn = db or self.db
                if name in self._table_names(conn):
                    return conn.open_table(name)
                return conn.create_table(name, schema=schema, exist_ok=True)
            except Exception as exc:
                if attempt == OPEN_ATTEMPTS:
                    raise
                log.info("opening table %s failed (%s); trying again", name, type(exc).__name__)
                time.sleep(0.05 * attempt)
        raise AssertionError("not reached")

    def chunks(self) -> Any:
        """The chunks table, opened (or created) on first use; raises EmbeddingMismatch when it was built
        with another embedding model or dimension (before touching it). A table written before tenants
        existed is migrated: its rows become the default tenant's."""
        with self._lock:
            if self._chunks is None:
                table = self._open_or_create(CHUNKS_TABLE, chunks_schema(self.dimension, self.model_id), self.chunks_db)
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

    def _leases_table(self) -> Any:
        """The document_leases table, opened (or created, with its primary key) on first use."""
        with self._lock:
            if self._leases is None:
                table = self._open_or_create(LEASES_TABLE, LEASES_SCHEMA)
                if not has_primary_key(table):  # (created by a process that did not set it: set it now)
                    table.set_unenforced_primary_key("key")
                    table.checkout_latest()
                self._leases = table
            return self._leases

    def _read_chunks(self, tenant: str) -> Any:
        """The chunks table for a read of ``tenant``'s rows: moved to its latest version first when the tenant
        wrote since this process last looked (its version marker is newer; see freshness.py)."""
        table = self.chunks()
        self.freshness.before_read(table, tenant)
        return table

    def _write_chunks(self) -> Any:
        """The chunks table for a write, at its latest version (the write reads the rows it replaces)."""
        table = self.chunks()
        self.freshness.before_write(table)
        return table

    def document_leases(self) -> DocumentLeases:
        """Per-document leases (shared.vector_store.leases): one writer of a document at a time."""
        return self._document_leases

    # ------------------------------------------------------------------ chunks

    def replace_document(self, doc_id: str, rows: Sequence[ChunkRow], *, tenant: str) -> tuple[int, int]:
        """Atomically make `rows` the only chunks of ``tenant``'s document ``doc_id``. Returns (written,
        chunks it had before).

        One merge_insert commit: upsert by (tenant, id) and delete this document's chunks that are not in
        the new version, so a reader never sees a half-replaced document. Another tenant's document of the
        same id is another document: neither matched nor deleted.
        """
        where = tenant_filter(tenant, f"doc_id = {sql_str(doc_id)}")
        table = self._write_chunks()
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
        self._after_fts_write(table, len(rows))
        self.freshness.after_write(table, tenant)
        self._after_chunks_write(len(rows))
        return len(rows), before

    def replace_documents(self, docs: Mapping[str, Sequence[ChunkRow]], *, tenant: str) -> dict[str, tuple[int, int]]:
        """``replace_document`` for many documents in ONE commit (bulk ingestion).

        Same guarantees per document (its new chunks replace all its old ones; a reader sees each
        document either before or after), but one merge_insert for the whole batch instead of one per
        document. Returns {doc_id: (written, chunks it had before)}.
        """
        if not docs:
            return {}
        table = self._write_chunks()
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
        self._after_fts_write(table, len(payload))
        self.freshness.after_write(table, tenant)
        self._after_chunks_write(len(payload))
        return {d: (len(rows), before[d]) for d, rows in docs.items()}

    def document_stats(self, *, tenant: str) -> dict[str, tuple[int, str | None]]:
        """doc_id -> (chunk count, when it was last indexed), over the tenant's chunks."""
        stats: dict[str, tuple[int, str | None]] = {}
        query = self._read_chunks(tenant).search().where(tenant_filter(tenant)).select(["doc_id", "ingested_at"])
        rows = query.limit(None).to_arrow().to_pylist()
        for r in rows:
            n, at = stats.get(r["doc_id"], (0, None))
            stats[r["doc_id"]] = (n + 1, max(at or "", r["ingested_at"] or "") or None)
        return stats

    def delete_document(self, doc_id: str, *, tenant: str) -> int:
        """Delete the tenant's document's chunks; returns how many there were."""
        table = self._write_chunks()
        n = self.count_chunks(doc_id, tenant=tenant)
        if n:
            table.delete(tenant_filter(tenant, f"doc_id = {sql_str(doc_id)}"))
            self.freshness.after_write(table, tenant)
        return n

    def count_chunks(self, doc_id: str | None = None, *, tenant: str) -> int:
        """The tenant's chunks (of ``doc_id`` only, when given)."""
        table = self._read_chunks(tenant)
        return int(
            table.count_rows(tenant_filter(tenant, f"doc_id = {sql_str(doc_id)}" if doc_id is not None else None))
        )

    def indexed_doc_ids(self, *, tenant: str) -> set[str]:
        """The ids of the tenant's documents that have chunks."""
        rows = self._read_chunks(tenant).search().where(tenant_filter(tenant)).select(["doc_id"]).limit(None).to_arrow()
        return {str(v) for v in rows.column("doc_id").unique().to_pylist()}

    def sample_chunks(self, count: int, *, tenant: str, seed: int | None = None) -> tuple[int, list[dict[str, Any]]]:
        """(the tenant's chunk count, up to ``count`` of its chunks drawn uniformly at random: id, doc_id,
        chunk, title, text), for threshold calibration. Reads the ids of all the tenant's chunks, then the
        chosen rows."""
        table = self._read_chunks(tenant)
        ids = table.search().where(tenant_filter(tenant)).select(["id"]).limit(None).to_arrow().column("id")
        population = sorted(str(i) for i in ids.to_pylist())  # sorted: a seed draws the same sample
        chosen = random.Random(seed).sample(population, min(count, len(population)))
        if not chosen:
            return len(population), []
        where = tenant_filter(tenant, "id IN (" + ", ".join(sql_str(i) for i in chosen) + ")")
        query = table.search().where(where).select(["id", "doc_id", "chunk", "title", "text"]).limit(None)
        order = {i: n for n, i in enumerate(chosen)}
        return len(population), sorted(query.to_arrow().to_pylist(), key=lambda r: order[r["id"]])

    # ------------------------------------------------------------------ full-text index upkeep

    def unindexed_rows(self) -> int:
        """Rows not yet in the full-text index (searched by a flat scan until the next optimize)."""
        return self.full_text_index.unindexed_rows(self.chunks())

    def optimize(self, attempts: int = 3) -> None:
        """Fold new rows into the full-text index and compact small files (see FullTextIndex.optimize)."""
        self.full_text_index.optimize(self.chunks(), attempts)

    # ------------------------------------------------------------------ vector and scalar index upkeep

    def ensure_vector_index(self, force: bool = False) -> str:
        """Bring the chunks table's vector index up to date now (after a bulk load, say); returns what it
        did: "none", "created" (the table reached the policy's min_rows), "optimized" (rows not yet in the
        index were folded in: any, not only past fold_rows) or "retrained" (the table grew by
        retrain_growth since the index was trained). ``force``: build now whatever the thresholds (create
        from a few hundred rows; else retrain). "none" too when RAG_VECTOR_INDEX is off, or while another
        process holds the build lease (it is building)."""
        action: Action = self.vector_index.upkeep(self.chunks(), force=force, explicit=True)
        return action

    def wait_for_upkeep(self, timeout: float) -> bool:
        """Wait for the background index upkeep to finish what is queued; whether it did in ``timeout`` s."""
        return self.upkeep.wait_idle(timeout)

    def _after_fts_write(self, table: Any, rows: int) -> None:
        """After a write of ``rows`` chunks: let the background upkeep fold them into the full-text index when
        this process's writes say it may be due (FullTextIndex.fold)."""
        if self.full_text_index.due(rows):
            self.upkeep.submit("chunks.fts", lambda: self.full_text_index.fold(table))

    def _after_chunks_write(self, rows: int) -> None:
        """After a write of ``rows`` chunks: let the background upkeep create, fold or retrain the vector
        index (and with it the scalar ones) when this process's writes say it may be due."""
        if self.vector_index.due(rows):
            self.upkeep.submit("chunks", lambda: self.vector_index.upkeep(self.chunks()))

    def _after_messages_write(self, rows: int) -> None:
        """After a write of ``rows`` messages: fold them into the scalar indexes once enough are outside."""
        if self._messages_written.add(rows):
            counter, fold = self._messages_written, self._messages_written.threshold
            self.upkeep.submit("messages", lambda: scalar_upkeep(self.messages(), "conversation_id", counter, fold))

    @contextmanager
    def _held_index_lease(self) -> Iterator[bool]:
        """Hold the vector-index build lease (across processes) for the block; yields whether it was taken.
        A store whose lease table cannot be written builds anyway (a concurrent create then fails)."""
        leases = self.document_leases()
        try:
            lease = leases.try_acquire(INDEX_LEASE_TENANT, [INDEX_LEASE_KEY], lease_s=INDEX_LEASE_S)
        except Exception as exc:
            log.warning("the index build lease could not be taken (%s); building without it", type(exc).__name__)
            yield True
            return
        if not lease.doc_ids:
            yield False
            return
        with leases.kept(lease):
            yield True

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
        table = self._read_chunks(tenant)
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
            params=self.vector_index.search_params(),
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
        (whether it does not exist or is someone else's: the two are indistinguishable), and while its
        first turn is being answered."""
        return [message_row(r) for r in self._conversation_rows(conversation_id, tenant, principal) if r["seq"] >= 0]

    def _conversation_rows(self, conversation_id: str, tenant: str, principal: str) -> list[dict[str, Any]]:
        """Every stored row of the conversation (its anchor too), as stored, by seq."""
        where = self._conversation_filter(conversation_id, tenant, principal)
        rows: list[dict[str, Any]] = self.messages().search().where(where).limit(None).to_list()
        rows.sort(key=lambda r: int(r["seq"]))
        return rows

    def append_messages(self, messages: Sequence[MessageRow], *, tenant: str, principal: str) -> None:
        """Append a turn's messages of ``principal`` in ``tenant`` in one commit (both or neither)."""
        tenant_filter(tenant)  # validates it
        if not principal:
            raise ValueError("a message needs its principal")
        now = iso_utc()
        self.messages().add([message_record(m, now, tenant, principal) for m in messages])
        self._after_messages_write(len(messages))

    # ------------------------------------------------------------------ conversation turns

    def begin_turn(
        self, conversation_id: str, *, tenant: str, principal: str, lease_s: float, new: bool = False
    ) -> TurnClaim | None:
        """Claim the next turn of ``principal``'s conversation, for ``lease_s`` seconds: the claim's holder
        alone may store the next question and answer (commit_turn), or it gives the claim up (release_turn).

        The claim is on the conversation's last row: its anchor (seq -1) before the first turn, else the
        last answer. ``new``: the conversation is being started (its id was just made, nobody else knows
        it): its anchor is written already holding the claim. Otherwise the claim is a conditional update
        of the last row, "free or held by an expired claim": two turns claiming at once both rewrite that
        row, LanceDB lets one commit through and re-runs the other on the new version, where the condition
        no longer holds. So across processes one turn at a time holds a conversation; a turn whose process
        died holds it until its claim expires.

        Returns None when the principal has no such conversation; raises ConversationBusy while another
        turn holds it.
        """
        tenant_filter(tenant)  # validates it
        table = self.messages()
        token = uuid.uuid4().hex
        if new:
            now_iso = iso_utc()
            anchor = message_record(
                MessageRow(str(uuid.uuid4()), conversation_id, ANCHOR_SEQ, ANCHOR_ROLE, "", now_iso),
                now_iso,
                tenant,
                principal,
            )
            anchor.update({CLAIM_COLUMN: token, CLAIM_UNTIL_COLUMN: _now_ms() + int(lease_s * 1000)})
            table.add([anchor])
            self._after_messages_write(1)
            return TurnClaim(conversation_id, token, ANCHOR_SEQ + 1, (), anchor)
        where = self._conversation_filter(conversation_id, tenant, principal)
        for _ in range(TURN_ATTEMPTS):
            rows = self._conversation_rows(conversation_id, tenant, principal)
            if not rows:
                return None
            last = rows[-1]
            now = _now_ms()
            until = now + int(lease_s * 1000)
            if last[CLAIM_COLUMN] != token:  # (a claim that raised after it was committed is ours)
                if _held(last, now):
                    raise ConversationBusy(conversation_id, last[CLAIM_UNTIL_COLUMN])
                free = f"({CLAIM_COLUMN} IS NULL OR ({CLAIM_COLUMN} <> '{CLOSED}' AND {CLAIM_UNTIL_COLUMN} < {now}))"
                try:
                    result = table.update(
                        where=f"{where} AND id = {sql_str(last['id'])} AND {free}",
                        values={CLAIM_COLUMN: token, CLAIM_UNTIL_COLUMN: until},
                    )
                except Exception as exc:  # e.g. the commit's retries ran out: read again
                    log.warning("claiming a turn of a conversation failed (%s); reading it again", type(exc).__name__)
                    continue
                if not int(result.rows_updated):
                    continue  # another turn claimed it, or was stored after it: read again
                self._after_messages_write(1)  # (the claimed row is rewritten: outside the indexes until folded)
            anchor = {**last, CLAIM_COLUMN: token, CLAIM_UNTIL_COLUMN: until}
            prior = tuple(message_row(r) for r in rows if int(r["seq"]) >= 0)
            return TurnClaim(conversation_id, token, int(last["seq"]) + 1, prior, anchor)
        raise ConversationBusy(conversation_id, None)

    def commit_turn(self, claim: TurnClaim, messages: Sequence[MessageRow], *, tenant: str, principal: str) -> bool:
        """Store the turn's messages (at seqs ``claim.seq`` and after) and close the claim's row, in one
        commit; whether they were stored.

        A merge_insert keyed on (tenant, principal, conversation, seq) that inserts the messages and
        rewrites the claim's row unless it is closed already. Two commits after the same row thus both
        rewrite it and LanceDB re-runs the later one, which then finds the seqs taken and the row closed,
        and writes nothing: a seq is written once, and only after the row before it. False when another
        turn was stored at these seqs first (possible only after this claim expired).
        """
        if [m.seq for m in messages] != list(range(claim.seq, claim.seq + len(messages))):
            raise ValueError("a turn's messages take the claimed seqs, in order")
        table = self.messages()
        now = iso_utc()
        closed = {**claim.anchor, CLAIM_COLUMN: CLOSED, CLAIM_UNTIL_COLUMN: None}
        records = [closed, *(message_record(m, now, tenant, principal) for m in messages)]
        data = pa.Table.from_pylist(records, schema=table.schema)
        still_open = (
            f"target.id = {sql_str(claim.anchor_id)} "
            f"AND (target.{CLAIM_COLUMN} IS NULL OR target.{CLAIM_COLUMN} <> '{CLOSED}')"
        )
        seqs = ", ".join(str(m.seq) for m in messages)
        where = self._conversation_filter(claim.conversation_id, tenant, principal) + f" AND seq IN ({seqs})"
        failure: Exception | None = None
        for _ in range(TURN_ATTEMPTS):
            try:
                (
                    table.merge_insert(MESSAGES_MERGE_KEY)
                    .when_matched_update_all(where=still_open)
                    .when_not_matched_insert_all()
                    .execute(data)
                )
            except Exception as exc:  # not committed (e.g. its retries ran out): see what is there
                log.warning("storing a turn failed (%s); checking what is stored", type(exc).__name__)
                failure = exc
            # Whoever's messages are at these seqs now (ours, another turn's, or none yet).
            stored = {str(r["id"]) for r in table.search().where(where).select(["id"]).limit(None).to_list()}
            if stored:
                self._after_messages_write(len(records))
                return stored == {m.id for m in messages}
        raise failure or RuntimeError("the turn's messages were not stored")

    def renew_turn(self, claim: TurnClaim, *, tenant: str, principal: str, lease_s: float) -> bool:
        """Extend the claim by ``lease_s`` from now; whether it is still this turn's (False: it expired and
        another turn took it, or a turn was stored after its row)."""
        where = self._conversation_filter(claim.conversation_id, tenant, principal)
        result = self.messages().update(
            where=f"{where} AND id = {sql_str(claim.anchor_id)} AND {CLAIM_COLUMN} = {sql_str(claim.token)}",
            values={CLAIM_UNTIL_COLUMN: _now_ms() + int(lease_s * 1000)},
        )
        return bool(int(result.rows_updated))

    def release_turn(self, claim: TurnClaim, *, tenant: str, principal: str) -> None:
        """Give up the claim (the turn stores nothing), so the next turn need not wait for it to expire.
        A claim that is no longer this turn's is left alone."""
        where = self._conversation_filter(claim.conversation_id, tenant, principal)
        self.messages().update(
            where=f"{where} AND id = {sql_str(claim.anchor_id)} AND {CLAIM_COLUMN} = {sql_str(claim.token)}",
            values_sql={CLAIM_COLUMN: "CAST(NULL AS STRING)", CLAIM_UNTIL_COLUMN: "CAST(NULL AS BIGINT)"},
        )


def _now_ms() -> int:
    """Wall-clock epoch milliseconds: claims are compared across processes (and hosts)."""
    return int(time.time() * 1000)


def _held(row: Mapping[str, Any], now_ms: int) -> bool:
    """Whether a turn's unexpired claim is on ``row``."""
    claim, until = row.get(CLAIM_COLUMN), row.get(CLAIM_UNTIL_COLUMN)
    return claim is not None and claim != CLOSED and until is not None and int(until) >= now_ms
