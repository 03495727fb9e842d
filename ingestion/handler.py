"""Lambda entry point: ``ingestion.handler.handler`` (the image CMD on AWS and in compose).

One function, four triggers, told apart by the event's shape (``shared.events.event_kind``):

- API Gateway WebSocket events: ``ingest``, ``ingest_batch``, ``delete_document``, ``upload_url``,
  ``ingest_object``, ``list_documents``, each for the caller's tenant (``requestContext.authorizer``;
  an event without it is refused, see shared/ws_lambda.py);
- S3 event notifications (``Records[].eventSource == "aws:s3"``, or MinIO's webhook, ``"minio:s3"``)
  for files under the documents prefix's ``inbox/`` (the default tenant's) or ``tenants/{tenant}/inbox/``;
- Kinesis batches (``Records[].eventSource == "aws:kinesis"``; a record's optional ``tenant`` names whose
  document it is);
- a /v1/kb/sync job (``{"kb_sync": {"tenant", "job_id"}}``, an asynchronous invoke by the HTTP API
  function): its uploads are ingested and its progress recorded in the documents store (shared/sync_jobs.py).

S3 and Kinesis invocations answer a partial batch response, ``{"batchItemFailures": [{"itemIdentifier":
...}]}``: the Kinesis sequence number, or for S3 the object key (decoded), of each record that failed.

Clients and models are created once per process, on the first invocation (the cold start), and
reused by every later one, as on Lambda.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from functools import cache
from typing import Any
from urllib.parse import unquote_plus

from pydantic import ValidationError

from ingestion.chunker import Chunker
from ingestion.service import IngestionService, IngestOutcome
from ingestion.settings import Settings
from shared import wiring
from shared.errors import RagError
from shared.events import (
    BatchItemFailure,
    BatchResponse,
    KinesisEventRecord,
    S3EventRecord,
    WebSocketEvent,
    event_kind,
)
from shared.identity import Principal
from shared.object_store import open_object_store
from shared.observability import instrument
from shared.ports import DocumentIndex, TextEmbedder
from shared.protocol import (
    DEFAULT_DOCUMENTS_LIMIT,
    DeleteDocumentRequest,
    DocumentDeleted,
    DocumentList,
    ErrorDetail,
    IngestBatchRequest,
    IngestBatchResult,
    IngestItem,
    IngestObjectRequest,
    IngestRequest,
    IngestResult,
    ListDocumentsRequest,
    UploadUrl,
    UploadUrlRequest,
)
from shared.sync_jobs import SyncJobs, sync_target
from shared.timing import timed_ms
from shared.vector_store import EmbeddingMismatch
from shared.ws_lambda import Emit, WebSocketLambda, current_event, index_mismatch_error, refusing_lambda

log = logging.getLogger(__name__)


def build_service(
    settings: Settings, *, embedder: TextEmbedder | None = None, store: DocumentIndex | None = None
) -> IngestionService:
    """The ingestion service and its adapters, all from ``settings``. ``embedder`` / ``store`` replace the
    adapters the settings describe (tests run the embedding model in process)."""
    return IngestionService(
        settings,
        chunker=Chunker(
            settings.chunk_tokens,
            settings.chunk_overlap_tokens,
            settings.tokenizer_path,
            model_max_tokens=settings.embed_max_tokens,
        ),
        embedder=embedder or wiring.embedder(settings),
        store=store or wiring.vector_store(settings),
        objects=open_object_store(
            settings.documents_uri,
            lambda: wiring.s3_client(settings),
            # Signs the URLs clients PUT to, with the endpoint they reach S3 at.
            presign_client_factory=lambda: wiring.s3_client(settings, settings.s3_public_endpoint_url, presign=True),
            upload_secret=settings.upload_secret,
        ),
    )


def gateway_url(event: WebSocketEvent) -> str:
    """The local gateway as the client reached it, ``http://{domainName}/{stage}``: it receives the uploads
    to a local documents folder (derived from the event as the @connections endpoint is on AWS)."""
    ctx = event.request_context
    return f"http://{ctx.domain_name}/{ctx.stage}"


def build_lambda(settings: Settings, service: IngestionService | None = None) -> WebSocketLambda:
    service = service or build_service(settings)

    def result(request_id: str | None, out: Any) -> IngestResult:
        return IngestResult(
            request_id=request_id,
            doc_id=out.doc_id,
            chunks=out.chunks,
            replaced_chunks=out.replaced_chunks,
            tokens=out.tokens,
            timings_ms=out.timings_ms,
        )

    def ingest(req: IngestRequest, emit: Emit, caller: Principal) -> None:
        emit(result(req.request_id, service.ingest(req.document, tenant=caller.tenant)))

    def ingest_batch(req: IngestBatchRequest, emit: Emit, caller: Principal) -> None:
        t0 = time.perf_counter()
        outcomes = service.ingest_many(req.documents, tenant=caller.tenant)
        items = [_batch_item(doc.id, out) for doc, out in zip(req.documents, outcomes, strict=True)]
        ingested = sum(i.status == "ingested" for i in items)
        emit(
            IngestBatchResult(
                request_id=req.request_id,
                results=items,
                ingested=ingested,
                failed=len(items) - ingested,
                timings_ms={"total": timed_ms(t0)},
            )
        )

    def delete(req: DeleteDocumentRequest, emit: Emit, caller: Principal) -> None:
        n = service.delete(req.doc_id, tenant=caller.tenant)
        emit(DocumentDeleted(request_id=req.request_id, doc_id=req.doc_id, chunks_deleted=n))

    def upload_url(req: UploadUrlRequest, emit: Emit, caller: Principal) -> None:
        ticket = service.upload_url(
            req.filename, req.content_type, req.size, tenant=caller.tenant, gateway_url=gateway_url(current_event())
        )
        emit(
            UploadUrl(
                request_id=req.request_id,
                key=ticket.key,
                url=ticket.url,
                headers=ticket.headers,
                expires_in=ticket.expires_in,
            )
        )

    def ingest_object(req: IngestObjectRequest, emit: Emit, caller: Principal) -> None:
        emit(result(req.request_id, service.ingest_object(req.key, req.doc_id, req.title, tenant=caller.tenant)))

    def list_documents(req: ListDocumentsRequest, emit: Emit, caller: Principal) -> None:
        page, after = service.document_page(
            tenant=caller.tenant, after=req.after, limit=req.limit or DEFAULT_DOCUMENTS_LIMIT
        )
        emit(DocumentList(request_id=req.request_id, documents=page, next=after))

    routes: dict[str, Any] = {
        "ingest": ingest,
        "ingest_batch": ingest_batch,
        "delete_document": delete,
        "upload_url": upload_url,
        "ingest_object": ingest_object,
        "list_documents": list_documents,
    }
    return WebSocketLambda(wiring.connections(settings), routes, function="ingestion")


def _batch_item(doc_id: str, out: IngestOutcome | RagError) -> IngestItem:
    if isinstance(out, RagError):
        return IngestItem(doc_id=doc_id, status="failed", error=ErrorDetail(code=out.code, message=out.message))
    return IngestItem(
        doc_id=doc_id, status="ingested", chunks=out.chunks, replaced_chunks=out.replaced_chunks, tokens=out.tokens
    )


@cache
def _settings() -> Settings:
    return Settings()


@cache
def _runtime() -> tuple[IngestionService, WebSocketLambda]:
    settings = _settings()
    store = wiring.vector_store(settings)
    service = build_service(settings, store=store)
    try:
        store.chunks()  # open (or create) the table now: a model mismatch is found at cold start
    except EmbeddingMismatch as exc:
        log.error("refusing to serve: %s", exc)
        return service, refusing_lambda(wiring.connections(settings), "ingestion", index_mismatch_error())
    return service, build_lambda(settings, service)


@cache
def _observed() -> Callable[[dict[str, Any], Any], Any]:
    """The handler with Powertools' Logger and metrics (shared/observability.py), made at the cold start."""
    settings = _settings()
    return instrument(
        _handle, service=settings.function_name, namespace=settings.metrics_namespace, level=settings.log_level
    )


def warm() -> None:
    _observed()
    _runtime()


def _parse_records(
    model: type[S3EventRecord] | type[KinesisEventRecord], raw: list[dict[str, Any]]
) -> tuple[list[Any], list[BatchItemFailure]]:
    """Each record on its own: one malformed record fails alone (identified as well as it can be)."""
    good: list[Any] = []
    bad: list[BatchItemFailure] = []
    for i, record in enumerate(raw):
        try:
            good.append(model.model_validate(record))
        except ValidationError as exc:
            ident = _raw_identifier(record) or str(i)
            log.warning("malformed record %s: %s", ident, exc.errors()[:3])
            bad.append(BatchItemFailure(item_identifier=ident))
    return good, bad


def _raw_identifier(record: dict[str, Any]) -> str | None:
    kinesis, s3 = record.get("kinesis"), record.get("s3")
    if isinstance(kinesis, dict) and isinstance(kinesis.get("sequenceNumber"), str):
        return str(kinesis["sequenceNumber"])
    if isinstance(s3, dict) and isinstance(s3.get("object"), dict) and isinstance(s3["object"].get("key"), str):
        return unquote_plus(s3["object"]["key"])
    return None


def handle_records(service: IngestionService, event: dict[str, Any]) -> dict[str, Any] | None:
    """An S3 notification or a Kinesis batch -> its partial batch response; None for other events."""
    kind = event_kind(event)
    if kind == "s3_test":
        return BatchResponse().to_aws()
    if kind == "s3":
        records, bad = _parse_records(S3EventRecord, event["Records"])
        out = service.ingest_s3_records(records)
    elif kind == "kinesis":
        records, bad = _parse_records(KinesisEventRecord, event["Records"])
        out = service.ingest_kinesis_records(records)
    else:
        return None
    return BatchResponse(batch_item_failures=[*bad, *out.batch_item_failures]).to_aws()


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    result: dict[str, Any] = _observed()(event, context)
    return result


def _handle(event: dict[str, Any], context: Any) -> dict[str, Any]:
    service, ws = _runtime()
    target = sync_target(event)  # a /v1/kb/sync job, invoked asynchronously by the HTTP API function
    if target is not None:
        job = SyncJobs(service.objects).run(
            target.tenant, target.job_id, lambda key, doc_id: service.ingest_object(key, doc_id, tenant=target.tenant)
        )
        return {"job_id": target.job_id, "status": job.status if job else "missing"}
    if event_kind(event) != "websocket":
        out = handle_records(service, event)
        if out is not None:
            return out
    return ws(event, context)
