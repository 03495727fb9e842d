"""Settings both lambdas share (the store, the AWS endpoints, the embedding model).

Both read the same ``RAG_*`` variables so one environment configures the pair; each lambda's own
Settings class (ingestion/settings.py, chat/settings.py) adds its fields. Endpoint URLs left unset
mean AWS itself: that is the whole local -> AWS swap.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.bedrock import EmbeddingFormat


class RagSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RAG_", extra="ignore", populate_by_name=True)

    # -- where things live
    lancedb_uri: str = Field(
        "data/lancedb",
        description="LanceDB location: a local folder, or s3://bucket/prefix (MinIO or S3).",
    )
    documents_uri: str = Field(
        "data/documents",
        description="Where raw documents are kept (the index can be rebuilt from them): "
        "a local folder or s3://bucket/prefix.",
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
    upstream_timeout_s: float = Field(120.0, gt=0, description="Read timeout for every call to another service.")

    def storage_options(self) -> dict[str, Any]:
        from shared.vector_store import storage_options_for

        return storage_options_for(self.lancedb_uri, self.s3_endpoint_url, self.aws_region)
