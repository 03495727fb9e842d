"""The clients and adapters both lambdas build from their settings, built in one place.

Every client to another service (Bedrock, S3, LanceDB on S3, @connections) gets its read timeout
from ``RAG_UPSTREAM_TIMEOUT_S`` here.
"""

from __future__ import annotations

from typing import Any

from botocore.config import Config

from shared.aws_clients import client_config, make_client
from shared.bedrock import Embedder
from shared.connections import Connections
from shared.settings import InternalAuthSettings, RagSettings
from shared.vector_store import VectorStore


def aws_config(settings: RagSettings) -> Config:
    """The botocore config of every AWS client the lambdas make."""
    return client_config(read_timeout=settings.upstream_timeout_s)


def bedrock_client(settings: RagSettings, endpoint_url: str | None) -> Any:
    """A bedrock-runtime client: a local stand-in when `endpoint_url` is set, Amazon Bedrock otherwise."""
    return make_client(
        "bedrock-runtime", endpoint_url=endpoint_url, region=settings.aws_region, config=aws_config(settings)
    )


def s3_client(settings: RagSettings, endpoint_url: str | None = None, *, presign: bool = False) -> Any:
    """An S3 client (MinIO when ``RAG_S3_ENDPOINT_URL`` is set). ``presign``: one that only signs URLs for
    clients to use, with ``endpoint_url`` the address they reach S3 at."""
    endpoint = endpoint_url or settings.s3_endpoint_url
    config = aws_config(settings)
    if presign:
        config = config.merge(Config(signature_version="s3v4", s3={"addressing_style": "path"} if endpoint else {}))
    return make_client("s3", endpoint_url=endpoint, region=settings.aws_region, config=config)


def connections(settings: RagSettings) -> Connections:
    """The @connections client the lambdas reply through; it signs with the stack's internal key when one
    is configured (LOCALRAG_INTERNAL_*, locally), else with boto3's credentials (the role, on AWS)."""
    return Connections(
        endpoint_url=settings.connections_endpoint_url,
        region=settings.aws_region,
        timeout_s=settings.upstream_timeout_s,
        signing_key=InternalAuthSettings().signing_key(),
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
        vector_index=settings.vector_index_policy(),
        read_consistency_s=settings.read_consistency_s,
    )
