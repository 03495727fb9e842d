"""Rebuild the vector index from the raw documents: ``python -m ingestion.reindex [--to-uri URI] [--drop]``.

The raw documents (``{RAG_DOCUMENTS_URI}/{quoted id}.json``, written by ingestion before any chunk) are
the source of truth; the ``chunks`` table can always be rebuilt from them, e.g. after switching the
embedding model (all-MiniLM-L6-v2 384 -> Titan Text Embeddings V2 1024), which the lambdas otherwise
refuse (``EmbeddingMismatch``: one table never mixes vector spaces). Configure the *new* model with the
usual ``RAG_*`` variables (see shared/profiles.py), then either:

``--to-uri URI`` (build elsewhere, then swap; recommended)
    Builds a fresh index at URI (a folder or ``s3://bucket/prefix``) while the old one keeps serving;
    the chat history (``messages`` table) is copied over. Then point the lambdas at URI
    (``RAG_LANCEDB_URI``; on AWS ``sam deploy --parameter-overrides LanceDbPrefix=...``). No downtime and
    an instant rollback (point back), at the cost of twice the storage until the old URI is deleted.
    Documents ingested into the old index during the rebuild are not in the new one: run the same
    command again after the swap (a re-run re-embeds every document, and updates in place).

``--drop`` (drop and rebuild in place)
    Drops the ``chunks`` table at ``RAG_LANCEDB_URI`` (or at ``--to-uri``) and rebuilds it there. No
    configuration change and no extra storage, but searches find nothing (then a growing subset) until it
    finishes, and there is no rollback: if the rebuild stops half way, run it again.

Without either, the target table must already hold the configured model: every document is re-embedded
and replaced in place (e.g. after a chunking change), and chunks of documents no longer in the raw store
are removed.

Each document goes through ``ingestion.handler.build_service(settings)`` -- the same chunking, embedding
(with the configured model, Titan fan-out, retries) and single-commit replace as ingestion: ``ingest``
with its stored text, or, for a document that came from a file (``original`` in its raw JSON), the
file parsed again, so its chunks keep their pages and headings and the original file is kept.
Every tenant's documents are reindexed (the default tenant's at the store's root, the others' under
``tenants/{tenant}/``), each into its tenant's rows.
Progress goes to stderr, one line per document; a summary to stdout. Exit status: 0 when every document
was indexed, 1 when some failed (they are listed), 2 when the target cannot be used at all.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shared import wiring
from shared.errors import RagError, UpstreamTimeout, UpstreamUnavailable
from shared.identity import DEFAULT_TENANT
from shared.object_store import TenantObjects, open_object_store, tenants_with_documents
from shared.timing import timed_ms
from shared.vector_store import CHUNKS_TABLE, MESSAGES_TABLE, TENANT_COLUMN, EmbeddingMismatch, VectorStore

if TYPE_CHECKING:
    from ingestion.service import IngestionService, IngestOutcome
    from ingestion.settings import Settings

log = logging.getLogger(__name__)

# Stop (rather than fail every remaining document slowly) when the embedding service is down.
MAX_UPSTREAM_FAILURES_IN_A_ROW = 5

Progress = Callable[[str], None]


class ReindexError(Exception):
    """The target cannot be used (its message says why and what to do)."""


@dataclass
class Summary:
    target_uri: str
    documents: int = 0
    indexed: int = 0
    chunks: int = 0
    tokens: int = 0
    orphans_removed: int = 0
    messages_copied: int = 0
    failed: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    def line(self) -> str:
        text = (
            f"reindexed {self.indexed}/{self.documents} documents into {self.target_uri}: "
            f"{self.chunks} chunks, {self.tokens} tokens in {self.seconds:.1f} s"
        )
        extras = []
        if self.failed:
            extras.append(f"{len(self.failed)} failed")
        if self.orphans_removed:
            extras.append(f"{self.orphans_removed} orphaned documents removed")
        if self.messages_copied:
            extras.append(f"{self.messages_copied} chat messages copied")
        return text + (f" ({', '.join(extras)})" if extras else "")


# ------------------------------------------------------------------------------------ the raw documents


def list_document_ids(
    documents_uri: str, s3_client_factory: Callable[[], Any], tenant: str = DEFAULT_TENANT
) -> list[str]:
    """The ids of the tenant's raw documents at ``documents_uri``, sorted."""
    if not documents_uri.startswith("s3://") and not Path(documents_uri.removeprefix("file://")).is_dir():
        return []
    return TenantObjects(open_object_store(documents_uri, s3_client_factory), tenant).document_ids()


def list_tenants(documents_uri: str, s3_client_factory: Callable[[], Any]) -> list[str]:
    """The tenants with raw documents at ``documents_uri`` (the default tenant first, always)."""
    if not documents_uri.startswith("s3://") and not Path(documents_uri.removeprefix("file://")).is_dir():
        return [DEFAULT_TENANT]
    return tenants_with_documents(open_object_store(documents_uri, s3_client_factory))


def all_documents(documents_uri: str, s3_client_factory: Callable[[], Any]) -> list[tuple[str, str]]:
    """(tenant, id) of every raw document at ``documents_uri``, tenant by tenant, ids sorted."""
    tenants = list_tenants(documents_uri, s3_client_factory)
    return [(t, d) for t in tenants for d in list_document_ids(documents_uri, s3_client_factory, t)]


def index_document(service: IngestionService, tenant: str, doc_id: str) -> tuple[IngestOutcome, str] | None:
    """Index one document again from its raw copy, as ingestion did (its original file parsed again, if it
    has one); None when it has no raw copy (deleted since it was listed). Returns the outcome and how."""
    raw = service.tenant_objects(tenant).get_document(doc_id)
    if raw is None:
        return None
    return service.reindex_document(raw, tenant=tenant)


def remove_ghost(service: IngestionService, store: VectorStore, tenant: str, doc_id: str) -> int:
    """Delete the chunks of a document that has no raw copy, re-checked now (a document being ingested has
    its raw copy written before its chunks, so it is never taken for a ghost), under the document's lease so
    no ingest of that id runs between the check and the delete. Returns the chunks removed."""
    with service.writing(tenant, [doc_id]):
        if service.tenant_objects(tenant).get_document(doc_id) is not None:
            return 0
        return store.delete_document(doc_id, tenant=tenant)


def _label(tenant: str, doc_id: str) -> str:
    """How a document is named in progress lines and the summary: its id, after its tenant if not default."""
    return doc_id if tenant == DEFAULT_TENANT else f"{tenant}/{doc_id}"


# ------------------------------------------------------------------------------------ the target


def _connect(uri: str, settings: Settings) -> Any:
    import lancedb

    options = settings.model_copy(update={"lancedb_uri": uri}).storage_options()  # with RAG_UPSTREAM_TIMEOUT_S
    return lancedb.connect(uri, storage_options=options or None)


def _tables(db: Any) -> list[str]:
    res = db.list_tables()
    return list(getattr(res, "tables", res))


def _copy_messages(source_uri: str, target_uri: str, settings: Settings) -> int:
    """Copy the chat history to a new index location (once: not if the target already has one)."""
    source, target = _connect(source_uri, settings), _connect(target_uri, settings)
    if MESSAGES_TABLE not in _tables(source) or MESSAGES_TABLE in _tables(target):
        return 0
    data = source.open_table(MESSAGES_TABLE).to_arrow()
    target.create_table(MESSAGES_TABLE, data=data)
    return int(data.num_rows)


# ------------------------------------------------------------------------------------ the rebuild


def reindex(
    settings: Settings,
    *,
    to_uri: str | None = None,
    drop: bool = False,
    copy_messages: bool = True,
    progress: Progress | None = None,
) -> Summary:
    """Rebuild the chunks table at ``to_uri`` (default: ``settings.lancedb_uri``) from the raw documents,
    embedding with the model ``settings`` configure. Raises ReindexError if the target can't be used."""
    from ingestion.handler import build_service

    say = progress or (lambda _: None)
    started = time.perf_counter()
    target_uri = to_uri or settings.lancedb_uri
    target = settings.model_copy(update={"lancedb_uri": target_uri})
    if drop:
        db = _connect(target_uri, target)
        if CHUNKS_TABLE in _tables(db):
            db.drop_table(CHUNKS_TABLE)
            say(f"dropped table '{CHUNKS_TABLE}' at {target_uri}")

    store = wiring.vector_store(target)
    service = build_service(target, store=store)
    try:
        store.chunks()
    except EmbeddingMismatch as exc:
        raise ReindexError(
            f"{exc}.\nTo rebuild for {target.embedding_model_id} ({target.embedding_dimension}): "
            "--to-uri NEW_URI builds a fresh index elsewhere (then point RAG_LANCEDB_URI at it), or --drop "
            "replaces this one in place."
        ) from None

    summary = Summary(target_uri=target_uri)
    if copy_messages and to_uri and to_uri != settings.lancedb_uri:
        summary.messages_copied = _copy_messages(settings.lancedb_uri, to_uri, target)
        if summary.messages_copied:
            say(f"copied {summary.messages_copied} chat messages from {settings.lancedb_uri}")

    def s3() -> Any:
        return wiring.s3_client(target)

    ids = all_documents(target.documents_uri, s3)
    tenants = sorted({t for t, _ in ids} | {DEFAULT_TENANT})
    summary.documents = len(ids)
    say(
        f"{len(ids)} documents of {len(tenants)} tenant(s) in {target.documents_uri} -> {target_uri} "
        f"({target.embedding_model_id}, {target.embedding_dimension} dimensions, {target.embedding_format} bodies)"
    )
    width = len(str(len(ids)))
    upstream_failures = 0  # in a row
    for i, (tenant, doc_id) in enumerate(ids, 1):
        t0 = time.perf_counter()
        label = _label(tenant, doc_id)
        try:
            done = index_document(service, tenant, doc_id)
            if done is None:  # deleted since it was listed
                say(f"[{i:>{width}}/{len(ids)}] {label}: gone, skipped")
                summary.documents -= 1
                continue
            out, how = done
        except (RagError, ValueError) as exc:
            message = exc.message if isinstance(exc, RagError) else f"not a valid raw document ({type(exc).__name__})"
            summary.failed[label] = message
            say(f"[{i:>{width}}/{len(ids)}] {label}: FAILED: {message}")
            upstream_failures = upstream_failures + 1 if isinstance(exc, UpstreamUnavailable | UpstreamTimeout) else 0
            if upstream_failures >= MAX_UPSTREAM_FAILURES_IN_A_ROW:
                raise ReindexError(
                    f"stopped after {i} of {len(ids)} documents: the embedding service failed "
                    f"{upstream_failures} times in a row ({message}); fix it and run the command again"
                ) from None
            continue
        except Exception as exc:
            log.exception("reindexing %s failed", label)
            summary.failed[label] = f"unexpected error ({type(exc).__name__}; see the log)"
            say(f"[{i:>{width}}/{len(ids)}] {label}: FAILED: {summary.failed[label]}")
            continue
        upstream_failures = 0
        summary.indexed += 1
        summary.chunks += out.chunks
        summary.tokens += out.tokens
        ms = timed_ms(t0)
        say(f"[{i:>{width}}/{len(ids)}] {label}: {out.chunks} chunks, {out.tokens} tokens, {ms:.0f} ms ({how})")

    # Chunks of documents that are no longer in the raw store (re-checked now: a document ingested
    # during the rebuild has its raw copy written first, so it is never taken for an orphan).
    listed = set(ids)
    for tenant in indexed_tenants(store, tenants):
        for doc_id in sorted(store.indexed_doc_ids(tenant=tenant) - {d for t, d in listed if t == tenant}):
            if remove_ghost(service, store, tenant, doc_id):
                summary.orphans_removed += 1
                say(f"removed orphaned chunks of {_label(tenant, doc_id)} (no raw document)")

    if summary.indexed:
        store.optimize()  # fold the bulk load into the indexes / compact small files
        # The vector index: created past RAG_VECTOR_INDEX_MIN_ROWS, retrained if the table outgrew it.
        say(f"vector index: {store.ensure_vector_index()}")
    summary.seconds = time.perf_counter() - started
    return summary


def indexed_tenants(store: VectorStore, listed: list[str]) -> list[str]:
    """The tenants with chunks in the index, and those with raw documents."""
    rows = store.chunks().search().select([TENANT_COLUMN]).limit(None).to_arrow()
    return sorted(set(listed) | {str(t) for t in rows.column(TENANT_COLUMN).unique().to_pylist()})


def _print_progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ingestion.reindex",
        description="Rebuild the LanceDB chunks table from the raw documents with the configured embedding "
        "model (RAG_EMBEDDING_MODEL_ID / _FORMAT / _DIMENSION / _ENDPOINT_URL).",
    )
    parser.add_argument("--to-uri", help="build the index here (a folder or s3://bucket/prefix), then swap to it")
    parser.add_argument("--drop", action="store_true", help="drop the target's chunks table first, then rebuild")
    parser.add_argument("--no-messages", action="store_true", help="with --to-uri: don't copy the chat history")
    parser.add_argument("--log-level", default="WARNING")
    args = parser.parse_args(argv)

    from ingestion.settings import Settings
    from shared.logs import configure_logging

    configure_logging(args.log_level)
    settings = Settings()
    try:
        summary = reindex(
            settings,
            to_uri=args.to_uri,
            drop=args.drop,
            copy_messages=not args.no_messages,
            progress=_print_progress,
        )
    except ReindexError as exc:
        print(f"reindex: refused: {exc}", file=sys.stderr)
        return 2
    print(summary.line())
    for doc_id, message in summary.failed.items():
        print(f"  failed: {doc_id}: {message}")
    if args.to_uri and args.to_uri != settings.lancedb_uri:
        print(
            f"next: point both lambdas at it: RAG_LANCEDB_URI={args.to_uri} with RAG_EMBEDDING_MODEL_ID="
            f"{settings.embedding_model_id}, RAG_EMBEDDING_DIMENSION={settings.embedding_dimension} "
            "(on AWS: sam deploy --parameter-overrides LanceDbPrefix=... EmbeddingModelId=...)"
        )
    return 1 if summary.failed else 0


if __name__ == "__main__":
    sys.exit(main())
