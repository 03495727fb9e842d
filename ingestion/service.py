"""Ingestion logic: chunk, embed in batches, replace the document's chunks in one commit."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from shared.bedrock import Embedder
from shared.chunker import Chunker
from shared.errors import DocumentNotFound, DocumentTooLarge, EmptyDocument
from shared.object_store import ObjectStore
from shared.protocol import Document
from shared.vector_store import ChunkRow, VectorStore, timed_ms

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IngestOutcome:
    doc_id: str
    chunks: int
    replaced_chunks: int
    tokens: int
    timings_ms: dict[str, float]


class IngestionService:
    def __init__(
        self,
        *,
        chunker: Chunker,
        embedder: Embedder,
        store: VectorStore,
        objects: ObjectStore,
        max_document_bytes: int,
    ) -> None:
        self.chunker = chunker
        self.embedder = embedder
        self.store = store
        self.objects = objects
        self.max_document_bytes = max_document_bytes

    def ingest(self, doc: Document) -> IngestOutcome:
        """Validate, chunk and embed (no side effects), then write the raw copy and the chunks.

        The raw copy goes first: it is the source of truth, so the object store is never behind
        the index. If anything fails before that, nothing has been written.
        """
        size = len(doc.text.encode("utf-8"))
        if size > self.max_document_bytes:
            raise DocumentTooLarge(f"document is {size} bytes; the limit is {self.max_document_bytes}")
        if not doc.text.strip():
            raise EmptyDocument("the document has no text")
        t0 = time.perf_counter()
        chunks = self.chunker.split(doc.text)
        if not chunks:
            raise EmptyDocument("the document has no text")
        t_chunk = timed_ms(t0)

        t1 = time.perf_counter()
        # The title helps retrieval of chunks that never mention it; embed "title: chunk".
        vectors = self.embedder.embed_documents([self._embed_text(doc.title, c.text) for c in chunks])
        t_embed = timed_ms(t1)

        rows = [
            ChunkRow(
                doc_id=doc.id,
                chunk=c.index,
                title=doc.title,
                text=c.text,
                vector=v,
                date=doc.date,
                source=doc.source,
                metadata=dict(doc.metadata),
            )
            for c, v in zip(chunks, vectors, strict=True)
        ]
        t2 = time.perf_counter()
        self.objects.put_document(doc.id, doc.model_dump())
        written, before = self.store.replace_document(doc.id, rows)
        t_store = timed_ms(t2)
        log.info("ingested %s: %d chunks (%d before)", doc.id, written, before)
        return IngestOutcome(
            doc_id=doc.id,
            chunks=written,
            replaced_chunks=before,
            tokens=sum(c.tokens for c in chunks),
            timings_ms={"chunk": t_chunk, "embed": t_embed, "store": t_store, "total": timed_ms(t0)},
        )

    def _embed_text(self, title: str, text: str) -> str:
        return f"{title}: {text}" if title and not text.startswith(title) else text

    def delete(self, doc_id: str) -> int:
        removed = self.store.delete_document(doc_id)
        had_raw = self.objects.delete_document(doc_id)
        if not removed and not had_raw:
            raise DocumentNotFound(f"no document with id {doc_id!r}")
        return removed
