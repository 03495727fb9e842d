"""LanceDB adapter: the chunks table (vectors + text) and the messages table (chat history).

The URI is a local folder, ``s3://bucket/prefix`` (with ``storage_options`` for MinIO or another
S3-compatible endpoint), or S3 itself. Search uses cosine distance: ``_distance`` = 1 - cos, in [0, 2].

Three search modes (see ``VectorStore.search``): ``vector`` (cosine), ``fts`` (BM25 on LanceDB's native
full-text index over the chunk text) and ``hybrid`` (both lists fused by reciprocal rank fusion). Every
result carries its cosine distance, so one ``max_distance`` threshold gates all three modes the same way.

By concern:

- ``schema``: the tables, their Arrow schemas and row shapes (ChunkRow, Match, MessageRow);
- ``search``: the vector and full-text lists, their fusion, the threshold (SearchHits);
- ``fulltext``: finding, creating and updating the full-text index;
- ``vector_index``: the ANN index on the chunk vectors: created, folded, retrained, searched;
- ``upkeep``: folding new rows into indexes (Table.optimize), in the background after writes;
- ``store``: VectorStore, the connection and the operations the services use.

Every row belongs to a tenant (``tenant`` column; ``principal`` too for chat messages) and every
operation takes the tenant and filters by it; tables written before tenants existed are migrated on
open (their rows: the ``default`` tenant's; their conversations: the ``anonymous`` principal's).

A conversation's turns are serialized across processes by a claim on its last row (``begin_turn``,
``commit_turn``, ``release_turn``): its messages are seq 0, 1, 2, ... with no gap and no duplicate,
user and assistant alternating.
"""

from shared.vector_store.fulltext import FTS_COLUMN, FTS_FOLD_COMMITS, FTS_REINDEX_ROWS, FullTextIndex
from shared.vector_store.schema import (
    CHUNKS_TABLE,
    MESSAGES_SCHEMA,
    MESSAGES_TABLE,
    PRINCIPAL_COLUMN,
    TENANT_COLUMN,
    ChunkRow,
    ConversationBusy,
    EmbeddingMismatch,
    Match,
    MessageRow,
    TurnClaim,
    chunks_schema,
    sql_str,
    storage_options_for,
    tenant_filter,
)
from shared.vector_store.search import (
    HYBRID_CANDIDATES,
    RRF_K,
    SEARCH_MODES,
    FullTextSearchFailed,
    SearchHits,
    fts_hits,
    rrf_fuse,
    vector_hits,
)
from shared.vector_store.store import VectorStore, migrate
from shared.vector_store.vector_index import VECTOR_INDEX_NAME, VectorIndexPolicy

__all__ = [
    "CHUNKS_TABLE",
    "FTS_COLUMN",
    "FTS_FOLD_COMMITS",
    "FTS_REINDEX_ROWS",
    "HYBRID_CANDIDATES",
    "MESSAGES_SCHEMA",
    "MESSAGES_TABLE",
    "PRINCIPAL_COLUMN",
    "RRF_K",
    "SEARCH_MODES",
    "TENANT_COLUMN",
    "VECTOR_INDEX_NAME",
    "ChunkRow",
    "ConversationBusy",
    "EmbeddingMismatch",
    "FullTextIndex",
    "FullTextSearchFailed",
    "Match",
    "MessageRow",
    "SearchHits",
    "TurnClaim",
    "VectorIndexPolicy",
    "VectorStore",
    "chunks_schema",
    "fts_hits",
    "migrate",
    "rrf_fuse",
    "sql_str",
    "storage_options_for",
    "tenant_filter",
    "vector_hits",
]
