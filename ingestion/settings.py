"""Ingestion lambda settings: the shared RAG_* fields, the documents store (shared with the gateway), plus
chunking, upload URLs and its local runtime."""

from __future__ import annotations

from typing import Self

from pydantic import Field, model_validator

from shared.settings import DocumentsSettings, RagSettings


class Settings(RagSettings, DocumentsSettings):
    # -- local runtime (ignored on AWS, where Lambda hosts the handler)
    host: str = Field("127.0.0.1", validation_alias="INGESTION_HOST", description="Local runtime bind address.")
    port: int = Field(9001, validation_alias="INGESTION_PORT", description="Local runtime port (Invoke API).")
    function_name: str = Field("ingestion", validation_alias="INGESTION_FUNCTION_NAME", description="Function name.")
    timeout_s: float = Field(
        300.0,
        gt=0,
        validation_alias="INGESTION_TIMEOUT_S",
        description="Invocation timeout, as Lambda's Timeout.",
    )
    max_concurrency: int = Field(
        2,
        ge=1,
        validation_alias="INGESTION_MAX_CONCURRENCY",
        description="Concurrent invocations (reserved concurrency).",
    )
    log_level: str = Field("INFO", validation_alias="INGESTION_LOG_LEVEL", description="Log level.")

    # -- documents and chunking
    chunk_tokens: int = Field(
        164,
        ge=16,
        le=8192,
        description="Chunk size in the embedding model's word-pieces. 164 leaves room for the document title "
        'in the text embedded ("title: chunk"); tuned on SciFact train (bench/).',
    )
    chunk_overlap_tokens: int = Field(32, ge=0, description="Overlap between consecutive chunks, in word-pieces.")
    embed_max_tokens: int = Field(
        254,
        ge=16,
        le=8192,
        description="Longest text the embedding model reads, in word-pieces without its special tokens "
        '(MiniLM: 256 - [CLS] - [SEP]). A chunk never exceeds it; "title: chunk" is embedded when it fits, '
        "else the chunk alone.",
    )
    tokenizer_path: str | None = Field(
        None,
        description="tokenizer.json used to count word-pieces; unset = the bundled all-MiniLM-L6-v2 one.",
    )
    max_document_bytes: int = Field(10 * 1024 * 1024, ge=1, description="Largest document text accepted (UTF-8 bytes).")

    # -- parser limits: a file over one is refused with document_too_complex (never retried)
    parse_max_depth: int = Field(
        512,
        ge=16,
        le=100_000,
        description="Deepest nesting of HTML elements read (browsers flatten beyond 512); deeper: "
        "document_too_complex. End tags HTML lets a page omit (p, li, td ...) are implied, so they do not nest.",
    )
    parse_max_elements: int = Field(
        1_000_000,
        ge=1,
        description="Most HTML elements (Markdown: blocks) read in one file; more: document_too_complex.",
    )
    parse_timeout_s: float = Field(
        60.0,
        gt=0,
        description="Longest time parsing one file may take (HTML, Markdown, PDF pages); longer: "
        "document_too_complex. Keep it below INGESTION_TIMEOUT_S.",
    )

    # -- one writer of a document at a time (shared/vector_store/leases.py)
    document_lease_s: float = Field(
        20.0,
        gt=0,
        le=3600,
        description="How long a writer's lease on a document lasts unrenewed, in seconds (renewed every third "
        "of it while the write runs): after a crash the document is writable again this long after.",
    )
    document_lease_wait_s: float = Field(
        30.0,
        ge=0,
        description="How long a write waits for another writer of the same document, in seconds; longer: "
        "document_busy (nothing written; S3 and Kinesis records are then retried by Lambda). Keep it below "
        "INGESTION_TIMEOUT_S.",
    )

    # -- files: upload_url / ingest_object, S3 notifications (the size limit and the upload secret are in
    # DocumentsSettings: the gateway reads them too)
    upload_url_expires_s: int = Field(
        900, ge=1, le=7 * 24 * 3600, description="How long an upload_url URL stays valid, in seconds."
    )
    s3_public_endpoint_url: str | None = Field(
        None,
        description="S3 endpoint put in presigned upload URLs, as the client reaches it (compose: "
        "http://localhost:9000 while the lambdas use http://minio:9000); unset = RAG_S3_ENDPOINT_URL.",
    )

    @model_validator(mode="after")
    def _chunk_fits_model(self) -> Self:
        if self.chunk_tokens > self.embed_max_tokens:
            raise ValueError(
                f"RAG_CHUNK_TOKENS ({self.chunk_tokens}) exceeds RAG_EMBED_MAX_TOKENS ({self.embed_max_tokens}): "
                "the model would truncate every full chunk"
            )
        if not 0 <= self.chunk_overlap_tokens < self.chunk_tokens // 2:
            raise ValueError("RAG_CHUNK_OVERLAP_TOKENS must be less than half of RAG_CHUNK_TOKENS")
        return self
