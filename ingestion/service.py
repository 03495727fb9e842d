"""Ingestion logic: parse, chunk, embed in batches, replace the document's chunks in one commit.

Documents arrive four ways, all ending in ``_index`` (raw copy first, then one LanceDB merge_insert):

- ``ingest``: text in a WebSocket message (with ``format`` "markdown", parsed as a Markdown file is);
- ``upload_url`` + ``ingest_object``: a file PUT to ``uploads/`` with a presigned URL, parsed by its
  format (shared/formats.py, ingestion/parsers.py), then kept as the document's original under
  ``originals/{doc_id}/``;
- ``ingest_s3_records``: S3 ObjectCreated / ObjectRemoved notifications for files under ``inbox/``;
- ``ingest_kinesis_records``: Kinesis records carrying ``{doc_id, text, ...}`` or ``{doc_id, op: "delete"}``.

Every document belongs to a tenant (documents are shared within it): each entry point takes the tenant
(from the caller's authorizer context; for S3 notifications, from the object key -- ``inbox/...`` is the
default tenant's, ``tenants/{tenant}/inbox/...`` that tenant's; for Kinesis, the record's optional
``tenant``), and works through the tenant's view of the object store (``TenantObjects``) and the
tenant-filtered index. Another tenant's document id or upload key is answered as a missing one.

One writer of a document at a time: every write of a tenant's document (an ingest of any kind, a delete,
an S3 or Kinesis record, a reindex) holds the document's lease (shared/vector_store/leases.py) from before
it reads anything it depends on (a file, the raw copy) until its last write, across processes and hosts.
A second writer waits for it (``RAG_DOCUMENT_LEASE_WAIT_S``), then goes on, or fails with
``document_busy`` having written nothing. So concurrent writes of one document end as if they had run one
after the other: the raw copy, the original and the chunks are one version's. Every write has a fresh
version id, in the raw copy (``version``) and in each chunk row (``doc_version``). A batch takes the leases
of all its documents in one commit (those another writer holds are written once free, never while this
batch waits holding some: no deadlock).

Bad input leaves nothing behind: no chunks, no raw copy, and no upload (an upload that fails to parse,
is empty or too large is deleted; a transient failure such as the embedding service being down keeps it,
so ``ingest_object`` can be retried).
"""

from __future__ import annotations

import contextvars
import json
import logging
import random
import re
import threading
import time
import uuid
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from ingestion.chunker import Chunk, Chunker
from ingestion.parsers import (
    CorruptDocument,
    DocumentTooComplex,
    NoTextLayer,
    ParsedDocument,
    ParseLimits,
    Section,
    parse_inline,
)
from ingestion.parsers import parse_document as parse_file
from ingestion.settings import Settings
from shared.doc_ids import doc_id_for
from shared.errors import (
    DocumentBusy,
    DocumentNotFound,
    DocumentTooLarge,
    EmptyDocument,
    InvalidRequest,
    RagError,
)
from shared.events import BatchItemFailure, BatchResponse, KinesisDocument, KinesisEventRecord, S3EventRecord
from shared.formats import UnsupportedType, find_format, format_for
from shared.identity import DEFAULT_TENANT, valid_tenant
from shared.object_store import (
    INBOX_PREFIX,
    ObjectNotFound,
    ObjectStore,
    TenantObjects,
    is_upload_key,
    new_upload_key,
    originals_prefix,
    split_tenant_key,
    upload_key_tenant,
)
from shared.paging import listed_document, take_page
from shared.ports import DocumentIndex, TextEmbedder
from shared.protocol import (
    DEFAULT_DOCUMENTS_LIMIT,
    MAX_DOCUMENTS_LIMIT,
    Document,
    DocumentInfo,
    describe_validation_error,
)
from shared.stages import collecting, stage
from shared.timing import timed_ms
from shared.vector_store import ChunkRow
from shared.vector_store.leases import DocumentBusy as LeaseHeld
from shared.vector_store.leases import Lease
from shared.vector_store.schema import RAW_VERSION_KEY

log = logging.getLogger(__name__)

# Errors that say the file itself is bad: retrying cannot help, so the upload is deleted.
_BAD_FILE = (UnsupportedType, CorruptDocument, NoTextLayer, EmptyDocument, DocumentTooLarge, DocumentTooComplex)
_UNSAFE_NAME = re.compile(r"[\x00-\x1f\x7f/\\#]")


@dataclass(frozen=True)
class IngestOutcome:
    doc_id: str
    chunks: int
    replaced_chunks: int
    tokens: int
    timings_ms: dict[str, float]


@dataclass(frozen=True)
class UploadTicket:
    key: str
    url: str
    headers: dict[str, str]
    expires_in: int


@dataclass(frozen=True)
class Original:
    """Where a document's original file is and what it was."""

    key: str
    filename: str
    content_type: str
    size: int
    format: str

    def as_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "filename": self.filename,
            "content_type": self.content_type,
            "size": self.size,
            "format": self.format,
        }


@dataclass
class _Job:
    """A document chunked and ready to embed and write (into ``objects``' tenant)."""

    objects: TenantObjects
    doc: Document
    chunks: list[tuple[Chunk, dict[str, Any]]]
    original: Original | None
    upload_key: str | None
    t0: float
    timings: dict[str, float]


MAX_STORED_FILENAME_BYTES = 200  # within a file system's 255-byte name limit, with room to spare


def _utf8_head(text: str, size: int) -> str:
    """The longest start of ``text`` of at most ``size`` UTF-8 bytes (cut between characters)."""
    return text.encode("utf-8")[:size].decode("utf-8", errors="ignore")


def safe_filename(name: str) -> str:
    """The last path component, without control characters, '#' or slashes, at most 200 bytes of UTF-8
    (a longer name is cut, keeping its extension): a name any store and file system can hold."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    base = _UNSAFE_NAME.sub("_", base).strip().lstrip(".")
    if len(base.encode("utf-8")) > MAX_STORED_FILENAME_BYTES:
        stem, dot, ext = base.rpartition(".")
        if dot and len(ext.encode("utf-8")) <= 16:
            base = _utf8_head(stem, MAX_STORED_FILENAME_BYTES - len(ext.encode("utf-8")) - 1).rstrip() + dot + ext
        else:
            base = _utf8_head(base, MAX_STORED_FILENAME_BYTES).rstrip()
    return base or "file"


class IngestionService:
    def __init__(
        self,
        settings: Settings,
        *,
        chunker: Chunker,
        embedder: TextEmbedder,
        store: DocumentIndex,
        objects: ObjectStore,
    ) -> None:
        """``settings``: the ingestion lambda's settings, whole (the size limits and upload URL lifetime are
        read from it); the adapters are built from it by ingestion.handler.build_service."""
        self.settings = settings
        self.chunker = chunker
        self.embedder = embedder
        self.store = store
        self.objects = objects  # the whole store: use a tenant's view of it (tenant_objects)
        self._local = threading.local()  # the leases this thread holds: {(tenant, doc_id): Lease}

    def parse_limits(self) -> ParseLimits:
        """What parsing one file may cost (the RAG_PARSE_* settings and the document size limit)."""
        s = self.settings
        return ParseLimits(
            max_depth=s.parse_max_depth,
            max_elements=s.parse_max_elements,
            max_chars=s.max_document_bytes,
            timeout_s=s.parse_timeout_s,
        )

    def tenant_objects(self, tenant: str) -> TenantObjects:
        """The tenant's view of the object store (its documents, originals, inbox and uploads)."""
        return TenantObjects(self.objects, tenant)

    # ------------------------------------------------------------------ one writer per document

    def _held(self) -> dict[tuple[str, str], Lease]:
        held: dict[tuple[str, str], Lease] | None = getattr(self._local, "held", None)
        if held is None:
            held = self._local.held = {}
        return held

    @contextmanager
    def writing(self, tenant: str, doc_ids: Collection[str]) -> Iterator[None]:
        """Hold the leases of the tenant's documents ``doc_ids`` for the block: every write of a document
        happens in one (re-entrant within a thread). Waits up to RAG_DOCUMENT_LEASE_WAIT_S for another
        writer of any of them; DocumentBusy (document_busy) after that, nothing held."""
        held = self._held()
        wanted = {d for d in doc_ids if (tenant, d) not in held}
        if not wanted:
            yield
            return
        leases = self.store.document_leases()
        try:
            lease = leases.acquire(
                tenant, wanted, lease_s=self.settings.document_lease_s, wait_s=self.settings.document_lease_wait_s
            )
        except LeaseHeld as exc:
            log.warning("document %s (tenant %s) busy: %s", sorted(exc.doc_ids)[:3], tenant, exc)
            raise DocumentBusy(_busy_message(exc.doc_ids)) from None
        with leases.kept(lease), self._holding(lease):
            yield

    @contextmanager
    def _holding(self, lease: Lease) -> Iterator[None]:
        held = self._held()
        for d in lease.doc_ids:
            held[(lease.tenant, d)] = lease
        try:
            yield
        finally:
            for d in lease.doc_ids:
                held.pop((lease.tenant, d), None)

    def _confirm_leases(self, tenant: str, doc_ids: Collection[str]) -> None:
        """Check, just before writing, that this thread still holds the documents' leases."""
        held = self._held()
        missing = [d for d in doc_ids if (tenant, d) not in held]
        if missing:
            raise RuntimeError(f"writing document {missing[0]!r} without its lease")
        leases = self.store.document_leases()
        for lease in {id(held[(tenant, d)]): held[(tenant, d)] for d in doc_ids}.values():
            try:
                leases.confirm(lease)
            except LeaseHeld:
                log.warning(
                    "the lease on %s (tenant %s) expired and was taken: not writing", sorted(lease.doc_ids)[:3], tenant
                )
                raise DocumentBusy(_busy_message(lease.doc_ids)) from None

    # ------------------------------------------------------------------ text documents

    def ingest(self, doc: Document, *, tenant: str) -> IngestOutcome:
        """Validate, chunk and embed (no side effects), then write the raw copy and the chunks.

        The raw copy goes first: it is the source of truth, so the object store is never behind
        the index. If anything fails before that, nothing has been written.
        """
        job = self._text_job(doc, self.tenant_objects(tenant))
        vectors = self._embed([job])  # (nothing read from the stores: no lease needed yet)
        with self.writing(tenant, [job.doc.id]):
            out = self._write([job], vectors)[0]
        if isinstance(out, RagError):  # not reached: a single job's failure is raised as it is
            raise out
        return out

    def _text_job(self, doc: Document, objects: TenantObjects) -> _Job:
        """A text document validated, parsed by its ``format`` if it has one, and chunked (no side effects)."""
        t0 = time.perf_counter()
        self._check_text_size(doc.text)
        if not doc.text.strip():
            raise EmptyDocument("the document has no text")
        if doc.format is None:
            return self._prepare(doc, [Section(doc.text)], objects=objects, original=None, t0=t0, timings={})
        timings: dict[str, float] = {}
        parsed = parse_inline(doc.text, doc.format, limits=self.parse_limits())
        timings["parse"] = timed_ms(t0)
        # The text's own title and date (Markdown front matter or first heading) come first, as for a file.
        doc = doc.model_copy(
            update={
                "title": parsed.title or doc.title,
                "date": parsed.date or doc.date,
                "metadata": {**doc.metadata, "format": parsed.format},
            }
        )
        return self._prepare(doc, parsed.sections, objects=objects, original=None, t0=t0, timings=timings)

    def _check_text_size(self, text: str) -> None:
        size = len(text.encode("utf-8"))
        if size > self.settings.max_document_bytes:
            raise DocumentTooLarge(f"document is {size} bytes; the limit is {self.settings.max_document_bytes}")

    def _index(self, job: _Job) -> IngestOutcome:
        """Embed, then write: the original file, the raw JSON, and the chunks in one commit (under the
        document's lease, which the caller holds)."""
        out = self._write([job], self._embed([job]))[0]
        if isinstance(out, RagError):  # not reached: a single job's failure is raised as it is
            raise out
        return out

    def _prepare(
        self,
        doc: Document,
        sections: Sequence[Section],
        *,
        objects: TenantObjects,
        original: Original | None,
        t0: float,
        timings: dict[str, float],
        upload_key: str | None = None,
    ) -> _Job:
        """Chunk every section on its own (chunks never span sections); chunks are numbered across the
        document. No side effects."""
        t1 = time.perf_counter()
        chunks: list[tuple[Chunk, dict[str, Any]]] = []
        for section in sections:
            meta = {**doc.metadata, **section.metadata}
            chunks.extend((c, meta) for c in self.chunker.split(section.text))
        if not chunks:
            raise EmptyDocument("the document has no text")
        timings["chunk"] = timed_ms(t1)
        return _Job(objects, doc, chunks, original, upload_key, t0, timings)

    def _embed(self, jobs: Sequence[_Job]) -> list[list[list[float]]]:
        """One embedding pass over every chunk of ``jobs``, longest first in word-pieces: the model pads
        each batch to its longest text, so batches of similar lengths waste no compute
        (sentence-transformers' ``encode`` sorts too, by characters). Returns each job's vectors, in
        chunk order."""
        t0 = time.perf_counter()
        # The title helps retrieval of chunks that never mention it; embed "title: chunk".
        sized = [self._embed_text(job.doc.title, c) for job in jobs for c, _ in job.chunks]
        texts = [text for text, _ in sized]
        order = sorted(range(len(texts)), key=lambda i: -sized[i][1])
        embedded = self.embedder.embed_documents([texts[i] for i in order])
        if len(embedded) != len(texts):
            raise RuntimeError(f"the embedder returned {len(embedded)} vectors for {len(texts)} texts")
        vectors: list[list[float]] = [[] for _ in texts]
        for pos, i in enumerate(order):
            vectors[i] = embedded[pos]
        out: list[list[list[float]]] = []
        start = 0
        ms = timed_ms(t0)
        for job in jobs:
            out.append(vectors[start : start + len(job.chunks)])
            start += len(job.chunks)
            job.timings["embed"] = ms
        return out

    def _write(
        self, jobs: Sequence[_Job], vectors: Sequence[Sequence[list[float]]], *, raise_single: bool = True
    ) -> list[IngestOutcome | RagError]:
        """The raw copies (and originals) first -- the object store is the source of truth, never behind
        the index -- then every job's chunks in ONE LanceDB commit, then the old versions' leftovers. The
        jobs are one tenant's, and this thread holds their documents' leases (checked first). Each job's
        write gets a fresh version id (raw ``version``, chunks' ``doc_version``). Of several jobs, one
        whose raw copy the store refuses fails alone (its result is the error; nothing of it is written,
        since a raw copy is written whole or not at all) and the others are written; a single job's
        failure is raised (``raise_single``; else returned as its result)."""
        t3 = time.perf_counter()
        tenant = jobs[0].objects.tenant
        if any(job.objects.tenant != tenant for job in jobs):
            raise ValueError("one write is one tenant's")
        self._confirm_leases(tenant, [job.doc.id for job in jobs])
        rows: dict[str, list[ChunkRow]] = {}
        refused: dict[int, RagError] = {}
        for k, (job, vecs) in enumerate(zip(jobs, vectors, strict=True)):
            doc = job.doc
            version = uuid.uuid4().hex
            raw = {**doc.model_dump(), RAW_VERSION_KEY: version}
            try:
                if job.original is not None:
                    if job.upload_key is not None and job.original.key != job.upload_key:
                        job.objects.copy(job.upload_key, job.original.key, job.original.content_type)
                    raw["original"] = job.original.as_json()
                with stage("raw_put"):
                    job.objects.put_document(doc.id, raw)
            except Exception as exc:
                if len(jobs) == 1 and raise_single:
                    raise
                log.exception(
                    "storing the raw copy of %s (tenant %s) failed; the rest of the batch goes on", doc.id, tenant
                )
                refused[k] = (
                    exc
                    if isinstance(exc, RagError)
                    else RagError("the document could not be stored (see the service log); nothing of it was written")
                )
                continue
            rows[doc.id] = [
                ChunkRow(
                    doc_id=doc.id,
                    chunk=n,
                    title=doc.title,
                    text=c.text,
                    vector=v,
                    date=doc.date,
                    source=doc.source,
                    metadata=meta,
                    doc_version=version,
                )
                for n, ((c, meta), v) in enumerate(zip(job.chunks, vecs, strict=True))
            ]
        with stage("chunks_commit"):  # (index upkeep it makes due runs in the background)
            if len(rows) == 1:
                ((doc_id, doc_rows),) = rows.items()
                counts = {doc_id: self.store.replace_document(doc_id, doc_rows, tenant=tenant)}
            else:
                counts = self.store.replace_documents(rows, tenant=tenant) if rows else {}
        outcomes: list[IngestOutcome | RagError] = []
        for k, job in enumerate(jobs):
            if k in refused:
                outcomes.append(refused[k])
                continue
            doc, original, upload_key = job.doc, job.original, job.upload_key
            # The new version is in place: drop what belonged to the old one, and the upload.
            with stage("leftovers"):
                job.objects.delete_prefix(originals_prefix(doc.id), keep=original.key if original else None)
                if upload_key is not None and (original is None or original.key != upload_key):
                    job.objects.delete(upload_key)
            written, before = counts[doc.id]
            job.timings["store"] = timed_ms(t3)
            job.timings["total"] = timed_ms(job.t0)
            log.info("ingested %s (tenant %s): %d chunks (%d before)", doc.id, tenant, written, before)
            outcomes.append(
                IngestOutcome(
                    doc_id=doc.id,
                    chunks=written,
                    replaced_chunks=before,
                    tokens=sum(c.tokens for c, _ in job.chunks),
                    timings_ms=job.timings,
                )
            )
        return outcomes

    # ------------------------------------------------------------------ batches

    def ingest_many(self, docs: Sequence[Document], *, tenant: str) -> list[IngestOutcome | RagError]:
        """Ingest a batch of text documents together: every chunk embedded in one pass (full, evenly
        padded model batches), every document's chunks replaced in ONE LanceDB commit.

        LanceDB's merge_insert joins the new rows against the table: once per batch here, instead of once
        per document (bench/: the batch path keeps up with the bare model, one document at a time does
        not). Each document keeps the
        guarantees of ``ingest``: a reader sees it wholly before or after, and its new chunks replace
        all its old ones. Results come in the order of ``docs``: an outcome, or the typed error of a
        document that failed. A document that is bad by itself (empty, too large) fails alone; a typed
        failure of the embedding service fails the documents embedded with it (none of them written);
        anything else (a store failure) is raised. A document id given twice is ingested twice, in
        order (the later version wins), as separate ``ingest`` calls would. A document another request
        is writing is written once it is free; after RAG_DOCUMENT_LEASE_WAIT_S, it fails with
        document_busy (the others are written meanwhile).
        """
        objects = self.tenant_objects(tenant)
        results: list[IngestOutcome | RagError | None] = [None] * len(docs)
        group: list[tuple[int, _Job]] = []

        def flush() -> None:
            jobs = [job for _, job in group]
            try:
                vectors, taken = self._embed_taking_leases(jobs)
                outcomes: Sequence[IngestOutcome | RagError] = self._write_when_free(jobs, vectors, taken)
            except RagError as exc:  # e.g. the embedding service is unavailable: the group failed
                outcomes = [exc] * len(jobs)
            for (i, _), outcome in zip(group, outcomes, strict=True):
                results[i] = outcome
            group.clear()

        for i, doc in enumerate(docs):
            try:
                with stage("parse"):
                    job = self._text_job(doc, objects)
            except RagError as exc:
                results[i] = exc
                continue
            if any(j.doc.id == doc.id for _, j in group):
                flush()  # the same id again: the earlier version is written first
            group.append((i, job))
        if group:
            flush()
        return [r for r in results if r is not None]

    def _embed_taking_leases(self, jobs: Sequence[_Job]) -> tuple[list[list[list[float]]], Lease | None]:
        """``_embed`` the jobs while another thread takes the leases of their documents that are free (the
        first attempt of ``_write_when_free``): the take's commit costs the write nothing then. Returns the
        vectors and what was taken (None: nothing was tried, or the take failed: ``_write_when_free``
        takes them). Nothing is held when the embedding fails. The leases are not renewed during the
        embedding: ``_write`` confirms them (renewing those past half their length) before writing."""
        tenant = jobs[0].objects.tenant
        held = self._held()
        wanted = {job.doc.id for job in jobs if (tenant, job.doc.id) not in held}
        if not wanted:
            with stage("embed"):
                return self._embed(jobs), None
        leases = self.store.document_leases()
        taken: list[Lease] = []

        def take() -> None:
            try:
                taken.append(leases.try_acquire(tenant, wanted, lease_s=self.settings.document_lease_s, peek=False))
            except Exception as exc:
                log.warning("taking the leases of a batch ahead failed (%s); taking them after", type(exc).__name__)

        # (in a copy of this context: the take's stage and log fields are this batch's)
        thread = threading.Thread(target=contextvars.copy_context().run, args=(take,), name="lease-take")
        thread.start()
        try:
            with stage("embed"):
                vectors = self._embed(jobs)
        except BaseException:
            thread.join()
            for lease in taken:
                leases.release(lease)
            raise
        thread.join()
        return vectors, (taken[0] if taken else None)

    def _write_when_free(
        self, jobs: Sequence[_Job], vectors: Sequence[Sequence[list[float]]], taken: Lease | None = None
    ) -> list[IngestOutcome | RagError]:
        """``_write`` the jobs (of distinct documents) under their leases: those free now are taken in one
        commit and written in one; the rest are tried again once those are written, until
        RAG_DOCUMENT_LEASE_WAIT_S has passed (then: DocumentBusy each). Never waits holding a lease.
        ``taken``: the first take, made already (``_embed_taking_leases``)."""
        tenant = jobs[0].objects.tenant
        leases = self.store.document_leases()
        out: list[IngestOutcome | RagError | None] = [None] * len(jobs)
        pending = list(range(len(jobs)))
        deadline = time.monotonic() + self.settings.document_lease_wait_s
        delay = 0.01
        first = True
        while pending:
            held = self._held()
            if taken is not None:
                lease, taken = taken, None
            else:
                lease = leases.try_acquire(
                    tenant,
                    {jobs[k].doc.id for k in pending if (tenant, jobs[k].doc.id) not in held},
                    lease_s=self.settings.document_lease_s,
                    peek=not first,
                )
            first = False
            ready = [k for k in pending if jobs[k].doc.id in lease.doc_ids or (tenant, jobs[k].doc.id) in held]
            if ready:
                with leases.kept(lease), self._holding(lease):
                    try:
                        written = self._write([jobs[k] for k in ready], [vectors[k] for k in ready], raise_single=False)
                    except DocumentBusy as exc:  # the lease was lost before the write: nothing written
                        written = [exc] * len(ready)
                for k, outcome in zip(ready, written, strict=True):
                    out[k] = outcome
                pending = [k for k in pending if out[k] is None]
                continue
            if time.monotonic() >= deadline:
                busy = DocumentBusy(_busy_message({jobs[k].doc.id for k in pending}))
                log.warning("%d document(s) of a batch busy (tenant %s): not written", len(pending), tenant)
                for k in pending:
                    out[k] = busy
                break
            delay = min(delay * 2, 0.25)
            time.sleep(min(delay * random.uniform(0.5, 1.0), max(0.0, deadline - time.monotonic())))
        return [o for o in out if o is not None]

    def _embed_text(self, title: str, chunk: Chunk) -> tuple[str, int]:
        """ "title: chunk" when that still fits the model (a full chunk plus a long title may not: then
        the chunk alone, rather than a text the model would refuse or truncate), and its word-pieces."""
        if not title or chunk.text.startswith(title):
            return chunk.text, chunk.tokens
        combined = f"{title}: {chunk.text}"
        n = self.chunker.count(combined)
        return (combined, n) if n <= self.chunker.model_max_tokens else (chunk.text, chunk.tokens)

    # ------------------------------------------------------------------ files

    def upload_url(
        self, filename: str, content_type: str, size: int, *, tenant: str, gateway_url: str | None = None
    ) -> UploadTicket:
        """A presigned PUT for a file to ingest with ingest_object. Refuses unsupported or too large
        files before anything is uploaded. ``gateway_url``: for a local documents folder, the gateway
        (http://host:port/{stage}) that receives the PUT in place of S3. The key carries the tenant:
        only that tenant can ingest it."""
        name = safe_filename(filename)
        fmt = format_for(name, content_type)  # unsupported_type now rather than after the upload
        if find_format(name) is not fmt:
            # Known by its content type only: name it so that ingest_object, which has only the key, reads it so.
            name = safe_filename(name + fmt.extensions[0])
        if size > self.settings.max_upload_bytes:
            raise DocumentTooLarge(f"the file is {size} bytes; the limit is {self.settings.max_upload_bytes}")
        content_type = content_type or "application/octet-stream"
        key = new_upload_key(tenant, name)
        url = self.tenant_objects(tenant).presign_put(
            key, content_type, self.settings.upload_url_expires_s, gateway_url=gateway_url
        )
        return UploadTicket(
            key=key, url=url, headers={"Content-Type": content_type}, expires_in=self.settings.upload_url_expires_s
        )

    def ingest_object(
        self, key: str, doc_id: str | None = None, title: str | None = None, *, tenant: str
    ) -> IngestOutcome:
        """Parse an uploaded file, index it, keep it as the document's original. Another tenant's upload
        key is answered as a missing one (it is not looked at)."""
        if not is_upload_key(key):
            raise ObjectNotFound("no uploaded object with that key; use the key upload_url returned")
        if upload_key_tenant(key) != tenant:
            raise _missing_upload(key)
        filename = key.rsplit("/", 1)[1]
        doc = self._doc_shell(doc_id if doc_id is not None else doc_id_for(filename), title, source=filename)
        original_key = f"{originals_prefix(doc.id)}{filename}"
        return self._ingest_file(
            key, filename, doc, objects=self.tenant_objects(tenant), original_key=original_key, delete_bad=True
        )

    def _doc_shell(self, doc_id: str, title: str | None, source: str) -> Document:
        try:
            return Document(id=doc_id, title=title or "", text="", source=source)
        except ValidationError as exc:
            raise InvalidRequest(f"invalid document id: {describe_validation_error(exc.errors())}") from None

    def _ingest_file(
        self,
        key: str,
        filename: str,
        shell: Document,
        *,
        objects: TenantObjects,
        original_key: str,
        delete_bad: bool,
    ) -> IngestOutcome:
        with self.writing(objects.tenant, [shell.id]):  # from reading the file to the last write
            t0 = time.perf_counter()
            timings: dict[str, float] = {}
            try:
                size = objects.size(key)
                if size is None:
                    raise _missing_upload(key)
                if size > self.settings.max_upload_bytes:
                    raise DocumentTooLarge(f"the file is {size} bytes; the limit is {self.settings.max_upload_bytes}")
                data = objects.read(key)
                if len(data) > self.settings.max_upload_bytes:  # it may have been replaced since the size check
                    limit = self.settings.max_upload_bytes
                    raise DocumentTooLarge(f"the file is {len(data)} bytes; the limit is {limit}")
                timings["read"] = timed_ms(t0)
                t1 = time.perf_counter()
                parsed: ParsedDocument = parse_file(data, filename, limits=self.parse_limits())
                text = parsed.text
                self._check_text_size(text)
                timings["parse"] = timed_ms(t1)
                doc = shell.model_copy(
                    update={
                        "title": shell.title or parsed.title or filename,
                        "date": shell.date or parsed.date,
                        "text": text,
                        "metadata": {**shell.metadata, "format": parsed.format},
                    }
                )
                original = Original(
                    key=original_key,
                    filename=filename,
                    content_type=format_for(filename).content_type,
                    size=len(data),
                    format=parsed.format,
                )
                return self._index(
                    self._prepare(
                        doc, parsed.sections, objects=objects, original=original, t0=t0, timings=timings, upload_key=key
                    )
                )
            except _BAD_FILE:
                if delete_bad:
                    objects.delete(key)
                raise

    def reindex_document(self, raw: dict[str, Any], *, tenant: str) -> tuple[IngestOutcome, str]:
        """Index one raw document the way ingestion did (used by ``python -m ingestion.reindex``).

        A document that came from a file (its raw JSON names an ``original``) is parsed again from
        that file, so its chunks keep their sections (pages, headings) and the original stays; any
        other document is ingested from its text. Returns the outcome and how it was done.

        Under the document's lease, from its raw copy as it is then (``raw`` may be older: another write
        may have come since it was read); DocumentNotFound if it was deleted meanwhile."""
        doc_id = raw.get("id")
        if not isinstance(doc_id, str):
            raise InvalidRequest("the raw document has no id")
        with self.writing(tenant, [doc_id]):
            current = self.tenant_objects(tenant).get_document(doc_id)
            if current is None:
                raise DocumentNotFound(f"document {doc_id!r} was deleted meanwhile")
            return self._reindex_held(current, tenant=tenant)

    def _reindex_held(self, raw: dict[str, Any], *, tenant: str) -> tuple[IngestOutcome, str]:
        doc = Document.model_validate({k: raw[k] for k in Document.model_fields if k in raw})
        original = raw.get("original")
        if isinstance(original, dict) and isinstance(original.get("key"), str) and original.get("filename"):
            key = original["key"]
            try:
                shell = doc.model_copy(update={"text": ""})
                objects = self.tenant_objects(tenant)
                out = self._ingest_file(
                    key, str(original["filename"]), shell, objects=objects, original_key=key, delete_bad=False
                )
                return out, "original file"
            except ObjectNotFound:
                pass  # the original is gone: the text the raw document kept is all there is
            return self.ingest(doc, tenant=tenant), "text (original file missing)"
        return self.ingest(doc, tenant=tenant), "text"

    # ------------------------------------------------------------------ listing

    def document_page(
        self, *, tenant: str, after: str | None = None, limit: int = DEFAULT_DOCUMENTS_LIMIT
    ) -> tuple[list[DocumentInfo], str | None]:
        """One page of the tenant's documents in id order, after the id ``after``: at most ``limit``, and
        no more than fit one reply (shared/paging.py). Returns the page and the cursor of the next one
        (the page's last id), None on the last page. Only the page's raw documents are read."""
        ids = [i for i in self.tenant_objects(tenant).document_ids() if after is None or i > after]
        stats = self.store.document_stats(tenant=tenant) if ids else {}
        infos = (self._document_info(doc_id, stats, tenant) for doc_id in ids)
        page, more = take_page((listed_document(i) for i in infos if i is not None), limit=limit)
        return page, (page[-1].id if more and page else None)

    def list_documents(self, *, tenant: str) -> list[DocumentInfo]:
        """Every document of the tenant (every page), with its chunk count and index time from LanceDB."""
        out: list[DocumentInfo] = []
        after: str | None = None
        while True:
            page, after = self.document_page(tenant=tenant, after=after, limit=MAX_DOCUMENTS_LIMIT)
            out.extend(page)
            if after is None:
                return out

    def _document_info(self, doc_id: str, stats: dict[str, tuple[int, str | None]], tenant: str) -> DocumentInfo | None:
        raw = self.tenant_objects(tenant).get_document(doc_id)
        if raw is None:
            return None  # deleted since it was listed
        original = raw.get("original") if isinstance(raw.get("original"), dict) else None
        chunks, indexed_at = stats.get(doc_id, (0, None))
        return DocumentInfo(
            id=doc_id,
            title=str(raw.get("title") or ""),
            name=str(original["filename"]) if original else raw.get("source"),
            size=int(original["size"]) if original else len(str(raw.get("text", "")).encode("utf-8")),
            status="indexed" if chunks else "failed",
            chunks=chunks,
            uploaded_at=indexed_at,
            indexed_at=indexed_at,
        )

    # ------------------------------------------------------------------ delete

    def delete(self, doc_id: str, *, tenant: str) -> int:
        """Remove the tenant's document: its chunks, its raw JSON and its original file(s) (under its lease)."""
        with self.writing(tenant, [doc_id]):
            return self._delete_held(doc_id, tenant=tenant)

    def _delete_held(self, doc_id: str, *, tenant: str) -> int:
        objects = self.tenant_objects(tenant)
        raw = objects.get_document(doc_id)
        removed = self.store.delete_document(doc_id, tenant=tenant)
        originals = objects.delete_prefix(originals_prefix(doc_id))
        inbox_key = _original_key(raw)
        if inbox_key and inbox_key.startswith(INBOX_PREFIX):
            objects.delete(inbox_key)  # S3 then reports ObjectRemoved, which finds nothing left to do
        had_raw = objects.delete_document(doc_id)
        if not removed and not had_raw and not originals:
            raise DocumentNotFound(f"no document with id {doc_id!r}")
        return removed

    # ------------------------------------------------------------------ event sources

    def ingest_s3_records(self, records: Sequence[S3EventRecord]) -> BatchResponse:
        """S3 notifications for files under inbox/: ObjectCreated ingests the file (doc id = its path under
        inbox/ by shared.doc_ids, '/' -> ':'; the file stays there as the document's original), ObjectRemoved
        deletes the document ingested from that key. ``inbox/...`` is the default tenant's inbox,
        ``tenants/{tenant}/inbox/...`` that tenant's. Keys elsewhere (our own writes) are ignored. A failed
        record's itemIdentifier is its (decoded) object key."""
        failures: list[BatchItemFailure] = []
        for record in records:
            key = record.s3.object.decoded_key
            try:
                self._s3_record(record, key)
            except Exception as exc:
                _log_record_failure("S3 record for " + repr(key), exc)
                failures.append(BatchItemFailure(item_identifier=key))
        return BatchResponse(batch_item_failures=failures)

    def _s3_record(self, record: S3EventRecord, key: str) -> None:
        if not self.objects.in_bucket(record.s3.bucket.name):
            raise InvalidRequest(f"bucket {record.s3.bucket.name!r} is not the documents bucket")
        stored = self.objects.relative_key(record.s3.bucket.name, key)
        owned = split_tenant_key(stored) if stored is not None else None
        if owned is None or not owned[1].startswith(INBOX_PREFIX) or owned[1].endswith("/"):
            log.info("ignoring %s on %s (not under a tenant's %s)", record.event_name, key, INBOX_PREFIX)
            return
        tenant, rel = owned
        objects = self.tenant_objects(tenant)
        doc_id = doc_id_for(rel.removeprefix(INBOX_PREFIX))
        if record.action == "created":
            filename = rel.rsplit("/", 1)[-1]
            shell = self._doc_shell(doc_id, None, source=objects.uri(rel))
            out = self._ingest_file(rel, filename, shell, objects=objects, original_key=rel, delete_bad=False)
            log.info("S3 %s %s -> %s (tenant %s, %d chunks)", record.event_name, key, doc_id, tenant, out.chunks)
        elif record.action == "removed":
            # Only if the document still comes from this key (it may have been replaced since).
            with self.writing(tenant, [doc_id]):
                if _original_key(objects.get_document(doc_id)) == rel:
                    self._delete_held(doc_id, tenant=tenant)
                else:
                    log.info(
                        "S3 %s %s: document %s does not come from it; nothing to do", record.event_name, key, doc_id
                    )
        else:
            log.info("ignoring S3 event %s on %s", record.event_name, key)

    def ingest_kinesis_records(self, records: Sequence[KinesisEventRecord]) -> BatchResponse:
        """Kinesis records, in order: upsert (or delete, with op "delete") the document they carry. Runs
        of upserts are ingested together (``ingest_many``: one embedding pass, one commit); a delete
        waits for the upserts before it. A record's optional ``tenant`` (default: the default tenant) names
        whose document it is; a run of upserts is one tenant's. A failed record's itemIdentifier is its
        sequence number; deleting a missing document is not a failure.

        One log line per batch names its first sequence number and where its time went (``stages_ms``:
        parse, embed, lease_acquire, raw_put, chunks_commit, leftovers, lease_release ...)."""
        t0 = time.perf_counter()
        with collecting() as stages:
            out = self._kinesis_records(records)
        if records:
            ms = timed_ms(t0)
            log.info(
                "kinesis batch of %d record(s), %d failed, in %.0f ms",
                len(records),
                len(out.batch_item_failures),
                ms,
                extra={
                    "first_sequence_number": records[0].kinesis.sequence_number,
                    "batch_ms": ms,
                    "stages_ms": stages,
                },
            )
        return out

    def _kinesis_records(self, records: Sequence[KinesisEventRecord]) -> BatchResponse:
        failed: list[int] = []
        pending: list[tuple[int, str, Document]] = []
        pending_tenant = DEFAULT_TENANT

        def fail(i: int, seq: str, exc: Exception) -> None:
            _log_record_failure(f"kinesis record {seq}", exc)
            failed.append(i)

        def flush() -> None:
            try:
                outcomes: Sequence[IngestOutcome | Exception] = self.ingest_many(
                    [doc for _, _, doc in pending], tenant=pending_tenant
                )
            except Exception as exc:
                outcomes = [exc] * len(pending)
            for (i, seq, _), outcome in zip(pending, outcomes, strict=True):
                if isinstance(outcome, Exception):
                    fail(i, seq, outcome)
            pending.clear()

        for i, record in enumerate(records):
            seq = record.kinesis.sequence_number
            try:
                try:
                    data = json.loads(record.kinesis.payload())
                    item = KinesisDocument.model_validate(data)
                except (ValueError, ValidationError) as exc:
                    raise InvalidRequest(f"record data is not a document: {type(exc).__name__}") from None
                tenant = _record_tenant(data)
                if pending and tenant != pending_tenant:
                    flush()
                pending_tenant = tenant
                if item.op == "delete":
                    if pending:
                        flush()
                    try:
                        self.delete(item.doc_id, tenant=tenant)
                    except DocumentNotFound:
                        log.info("kinesis %s: %s already deleted", seq, item.doc_id)
                    continue
                try:
                    doc = Document(
                        id=item.doc_id,
                        title=item.title,
                        text=item.text or "",
                        date=item.date(),
                        source=item.source,
                        metadata=item.metadata,
                    )
                except ValidationError as exc:
                    raise InvalidRequest(f"record data is not a document: {len(exc.errors())} error(s)") from None
                pending.append((i, seq, doc))
            except Exception as exc:
                fail(i, seq, exc)
        if pending:
            flush()
        return BatchResponse(
            batch_item_failures=[
                BatchItemFailure(item_identifier=records[i].kinesis.sequence_number) for i in sorted(failed)
            ]
        )


def _busy_message(doc_ids: Collection[str]) -> str:
    names = ", ".join(repr(d) for d in sorted(doc_ids)[:3]) + (" ..." if len(doc_ids) > 3 else "")
    return f"document {names} is being written by another request; nothing was written: retry"


def _missing_upload(key: str) -> ObjectNotFound:
    """What ingest_object answers for an upload key that names no object of the caller's tenant: the
    same whether it was never PUT or is another tenant's."""
    return ObjectNotFound(f"no uploaded object {key!r}; PUT the file to the upload_url URL first")


def _record_tenant(data: Any) -> str:
    """A Kinesis record's ``tenant`` (optional; the default tenant when absent), validated."""
    tenant = data.get("tenant", DEFAULT_TENANT) if isinstance(data, dict) else DEFAULT_TENANT
    if not isinstance(tenant, str) or not valid_tenant(tenant):
        raise InvalidRequest("record tenant is not a valid tenant id")
    return tenant


def _original_key(raw: dict[str, Any] | None) -> str | None:
    if not raw or not isinstance(raw.get("original"), dict):
        return None
    key = raw["original"].get("key")
    return key if isinstance(key, str) else None


def _log_record_failure(what: str, exc: Exception) -> None:
    if isinstance(exc, RagError):
        log.warning("%s failed: %s (%s)", what, exc.message, exc.code)
    else:
        log.exception("%s failed", what)
