"""The adapters both lambdas build from RagSettings, built in one place."""

from __future__ import annotations

from typing import Any

from shared.aws_clients import client_config, make_client
from shared.bedrock import Embedder
from shared.settings import RagSettings
from shared.vector_store import VectorStore


def bedrock_client(settings: RagSettings, endpoint_url: str | None) -> Any:
    """A bedrock-runtime client: a local stand-in when `endpoint_url` is set, Amazon Bedrock otherwise."""
    return make_client(
        "bedrock-runtime",
        endpoint_url=endpoint_url,
        region=settings.aws_region,
        config=client_config(read_timeout=settings.upstream_timeout_s),
    )


def embedder(settings: RagSettings) -> Embedder:
    return Embedder(
        bedrock_client(settings, settings.embedding_endpoint_url),
        settings.embedding_model_id,
        body_format=settings.embedding_format,
        batch_size=settings.embedding_batch_size,
        concurrency=settings.embedding_concurrency,
        # Titan V2 returns 1024 floats unless asked for 256 or 512.
        dimensions=settings.embedding_dimension if settings.embedding_format == "titan" else None,
    )


def vector_store(settings: RagSettings) -> VectorStore:
    return VectorStore(
        settings.lancedb_uri,
        dimension=settings.embedding_dimension,
        model_id=settings.embedding_model_id,
        storage_options=settings.storage_options(),
    )
