"""Lambda entry point: ``ingestion.handler.handler`` (the image CMD on AWS and in compose).

Clients and models are created once per process, on the first invocation (the cold start), and
reused by every later one, as on Lambda.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from ingestion.service import IngestionService
from ingestion.settings import Settings
from shared.aws_clients import client_config, make_client
from shared.bedrock import Embedder
from shared.chunker import Chunker
from shared.connections import Connections
from shared.object_store import open_object_store
from shared.protocol import DeleteDocumentRequest, DocumentDeleted, IngestRequest, IngestResult
from shared.vector_store import VectorStore
from shared.ws_lambda import Emit, WebSocketLambda


def build_service(settings: Settings) -> IngestionService:
    bedrock = make_client(
        "bedrock-runtime",
        endpoint_url=settings.embedding_endpoint_url,
        region=settings.aws_region,
        config=client_config(read_timeout=settings.upstream_timeout_s),
    )
    return IngestionService(
        chunker=Chunker(settings.chunk_tokens, settings.chunk_overlap_tokens, settings.tokenizer_path),
        embedder=Embedder(
            bedrock,
            settings.embedding_model_id,
            body_format=settings.embedding_format,
            batch_size=settings.embedding_batch_size,
            concurrency=settings.embedding_concurrency,
        ),
        store=VectorStore(
            settings.lancedb_uri,
            dimension=settings.embedding_dimension,
            model_id=settings.embedding_model_id,
            storage_options=settings.storage_options(),
        ),
        objects=open_object_store(
            settings.documents_uri,
            lambda: make_client("s3", endpoint_url=settings.s3_endpoint_url, region=settings.aws_region),
        ),
        max_document_bytes=settings.max_document_bytes,
    )


def build_lambda(settings: Settings, service: IngestionService | None = None) -> WebSocketLambda:
    service = service or build_service(settings)

    def ingest(req: IngestRequest, emit: Emit) -> None:
        out = service.ingest(req.document)
        emit(
            IngestResult(
                request_id=req.request_id,
                doc_id=out.doc_id,
                chunks=out.chunks,
                replaced_chunks=out.replaced_chunks,
                tokens=out.tokens,
                timings_ms=out.timings_ms,
            )
        )

    def delete(req: DeleteDocumentRequest, emit: Emit) -> None:
        n = service.delete(req.doc_id)
        emit(DocumentDeleted(request_id=req.request_id, doc_id=req.doc_id, chunks_deleted=n))

    connections = Connections(endpoint_url=settings.connections_endpoint_url, region=settings.aws_region)
    return WebSocketLambda(connections, {"ingest": ingest, "delete_document": delete})


@cache
def _lambda() -> WebSocketLambda:
    settings = Settings()
    service = build_service(settings)
    service.store.chunks()  # open (or create) the table now: fail fast on a model mismatch
    return build_lambda(settings, service)


def warm() -> None:
    _lambda()


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return _lambda()(event, context)
