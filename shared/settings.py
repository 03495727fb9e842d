"""Settings more than one process reads, defined once.

- ``RagSettings``: what both lambdas share (the index, the AWS endpoints, the embedding model). Each
  lambda's own Settings class (ingestion/settings.py, chat/settings.py) extends it.
- ``DocumentsSettings``: the raw documents store and its uploads, read by the ingestion lambda (which
  signs upload URLs) and by the gateway (which stands in for S3's presigned PUT for a local folder), so
  that one ``RAG_MAX_UPLOAD_BYTES`` is the limit both enforce.

Every class reads ``RAG_*`` variables, so one environment configures them all. Endpoint URLs left unset
mean AWS itself: that is the whole local -> AWS swap.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.bedrock import EmbeddingFormat


class DocumentsSettings(BaseSettings):
    """The raw documents and the uploads into them (ingestion lambda and gateway)."""

    model_config = SettingsConfigDict(env_prefix="RAG_", extra="ignore", populate_by_name=True)

    documents_uri: str = Field(
        "data/documents",
        description="Where raw documents are kept (the index can be rebuilt from them): "
        "a local folder or s3://bucket/prefix. For a local folder the gateway receives the uploads "
        "into its uploads/.",
    )
    max_upload_bytes: int = Field(
        50 * 1024 * 1024,
        ge=1,
        description="Largest file accepted by upload_url, ingest_object and S3 notifications (bytes); "
        "checked against the declared size and again against the stored object. The gateway's upload PUT "
        "refuses larger bodies (413 EntityTooLarge).",
    )
    upload_secret: str | None = Field(
        None,
        description="Local documents folder only: HMAC key the ingestion lambda signs upload URLs with and "
        "the gateway checks them with (make up generates one per run). Unset = no uploads (403).",
    )

    def local_dir(self) -> Path | None:
        """The documents folder, or None when the documents are in S3."""
        if self.documents_uri.startswith("s3://"):
            return None
        return Path(self.documents_uri.removeprefix("file://"))


class RagSettings(BaseSettings):
    """What both lambdas read: the index, the AWS endpoints, the embedding model."""

    model_config = SettingsConfigDict(env_prefix="RAG_", extra="ignore", populate_by_name=True)

    # -- where things live
    lancedb_uri: str = Field(
        "data/lancedb",
        description="LanceDB location: a local folder, or s3://bucket/prefix (MinIO or S3).",
    )
    s3_endpoint_url: str | None = Field(
        None,
        description="S3-compatible endpoint (MinIO, moto); unset = AWS S3. Used by LanceDB and raw documents.",
    )
    aws_region: str = Field("us-east-1", description="AWS region for every client.")

    # -- AWS stand-ins
    embedding_endpoint_url: str | None = Field(
        None,
        description="Bedrock Runtime endpoint for embeddings (the local embedding service); unset = AWS.",
    )
    embedding_model_id: str = Field(
        "sentence-transformers/all-MiniLM-L6-v2",
        description="Model id for InvokeModel embeddings, e.g. amazon.titan-embed-text-v2:0 on AWS.",
    )
    embedding_format: EmbeddingFormat = Field(
        "cohere", description="Request body: 'cohere' (batches of texts) or 'titan' (one inputText per call)."
    )
    embedding_dimension: int = Field(384, ge=1, description="Vector size the model returns (MiniLM 384).")
    embedding_batch_size: int = Field(64, ge=1, le=96, description="Texts per embedding call (Cohere max 96).")
    embedding_concurrency: int = Field(4, ge=1, le=64, description="Embedding calls in flight per invocation.")
    connections_endpoint_url: str | None = Field(
        None,
        description="API Gateway Management API endpoint for replies; unset = https://{domainName}/{stage} "
        "from the event, as on AWS.",
    )
    upstream_timeout_s: float = Field(
        120.0,
        gt=0,
        description="Read timeout for every call to another service: Bedrock (embeddings, LLM), S3 (raw "
        "documents, LanceDB) and the @connections replies.",
    )

    def storage_options(self) -> dict[str, Any]:
        """LanceDB's object-store options for ``lancedb_uri`` (empty for a local folder)."""
        from shared.vector_store import storage_options_for

        timeout = {"timeout": f"{self.upstream_timeout_s:g}s"} if self.lancedb_uri.startswith("s3://") else None
        return storage_options_for(self.lancedb_uri, self.s3_endpoint_url, self.aws_region, timeout)
