"""Settings more than one process reads, defined once.

- ``RagSettings``: what both lambdas share (the index, the AWS endpoints, the embedding model). Each
  lambda's own Settings class (ingestion/settings.py, chat/settings.py) extends it.
- ``InternalAuthSettings``: the stack's internal SigV4 key, which the local Invoke API and @connections
  accept and the stack's own processes sign with (``LOCALRAG_INTERNAL_*``; unset on AWS, where IAM signs).
- ``AuthSettings``: ``RAG_AUTH``, which credentials are accepted, or ``none``: identity off (read by the
  gateway, which then skips the authorizer, and by the authorizer and the CLI).
- ``DocumentsSettings``: the raw documents store and its uploads, read by the ingestion lambda (which
  signs upload URLs) and by the gateway (which stands in for S3's presigned PUT for a local folder), so
  that one ``RAG_MAX_UPLOAD_BYTES`` is the limit both enforce.

Every class reads ``RAG_*`` variables, so one environment configures them all. Endpoint URLs left unset
mean AWS itself: that is the whole local -> AWS swap.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from shared.bedrock import EmbeddingFormat
from shared.identity import AuthMethod
from shared.sigv4 import SigningKey

if TYPE_CHECKING:
    from shared.vector_store.vector_index import VectorIndexPolicy


def comma_list(value: Any) -> Any:
    """A list setting written ``a,b`` (or as a JSON list) -> ["a", "b"], blanks dropped; other values as given."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            return json.loads(text)
        return [part.strip() for part in text.split(",") if part.strip()]
    return value


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
    read_consistency_s: float = Field(
        10.0,
        ge=0,
        description="How stale (seconds) a search of the chunks may be: LanceDB re-reads the table's latest "
        "version at most this often (on S3 each re-read is ~5 LIST requests). 0 = on every query; 'never' (or "
        "inf) = only when told. A tenant always sees its own writes at once, whatever this is: every write "
        "publishes a version marker per tenant that readers of that tenant check (one GET per query). The "
        "messages table is always read at its latest version.",
    )
    metrics_namespace: str = Field(
        "localrag",
        min_length=1,
        max_length=255,
        description="CloudWatch namespace of the lambdas' metrics (embedded metric format lines in their log; "
        "the service dimension is the function name).",
    )

    # -- the vector index on the chunks (shared/vector_store/vector_index.py)
    vector_index: Literal["auto", "off"] = Field(
        "auto",
        description="'auto': build an ANN index on the chunk vectors once the table holds RAG_VECTOR_INDEX_MIN_ROWS "
        "rows, fold new rows into it and retrain it as the table grows (in the background after writes, and "
        "in `localrag reindex`); 'off': never build one, and search by exact flat scan.",
    )
    vector_index_min_rows: int = Field(
        20_000,
        ge=1,
        description="Chunks in the table (all tenants) from which the vector index is built; below it a flat "
        "scan is about as fast (measured crossover on 2 cores).",
    )
    vector_index_type: Literal["IVF_HNSW_SQ", "IVF_PQ"] = Field(
        "IVF_HNSW_SQ",
        description="LanceDB vector index type (cosine): IVF_HNSW_SQ (HNSW graphs over 8-bit scalar-quantized "
        "vectors) or IVF_PQ (product-quantized; smaller, slower to reach the same recall).",
    )
    vector_nprobes: int = Field(
        20,
        ge=1,
        description="IVF partitions each vector query searches (all it takes when a narrow tenant filter leaves "
        "fewer rows than asked for in those). Higher: better recall, slower.",
    )
    vector_refine_factor: int | None = Field(
        None,
        ge=1,
        description="Each vector query through the index re-ranks limit x this many of its candidates by their "
        "full vectors (1: only the limit's own; the re-ranking is what makes the distances the threshold gates "
        "exact). Unset: 4 on a local folder (recall@10 0.996 vs 0.97 at 100k chunks, ~3 ms), 1 on S3, where "
        "re-ranking reads each candidate's vector with a request of its own (moto, 30k chunks: 1.7 s a query at 4).",
    )
    vector_index_retrain_growth: float = Field(
        4.0,
        gt=1,
        description="Retrain the vector index (rebuild its partitions on the current rows) once the table has "
        "this many times the rows it was trained on; new rows are folded into the existing partitions until then.",
    )

    def vector_index_policy(self) -> VectorIndexPolicy:
        """The VectorIndexPolicy (shared.vector_store) these settings describe."""
        from shared.vector_store.vector_index import VectorIndexPolicy

        return VectorIndexPolicy(
            mode=self.vector_index,
            min_rows=self.vector_index_min_rows,
            index_type=self.vector_index_type,
            nprobes=self.vector_nprobes,
            refine_factor=self.refine_factor(),
            retrain_growth=self.vector_index_retrain_growth,
        )

    def refine_factor(self) -> int:
        """RAG_VECTOR_REFINE_FACTOR, or the default for where the index lives (see its description)."""
        from shared.vector_store.vector_index import DEFAULT_REFINE_FACTOR, S3_REFINE_FACTOR

        if self.vector_refine_factor is not None:
            return self.vector_refine_factor
        return S3_REFINE_FACTOR if self.lancedb_uri.startswith("s3://") else DEFAULT_REFINE_FACTOR

    @field_validator("read_consistency_s", mode="before")
    @classmethod
    def _never(cls, value: Any) -> Any:
        """'never' = inf: the chunks are re-read only when a tenant's version marker says so."""
        return float("inf") if isinstance(value, str) and value.strip().lower() == "never" else value

    def storage_options(self) -> dict[str, Any]:
        """LanceDB's object-store options for ``lancedb_uri`` (empty for a local folder)."""
        from shared.vector_store import storage_options_for

        timeout = {"timeout": f"{self.upstream_timeout_s:g}s"} if self.lancedb_uri.startswith("s3://") else None
        return storage_options_for(self.lancedb_uri, self.s3_endpoint_url, self.aws_region, timeout)


class InternalAuthSettings(BaseSettings):
    """The internal SigV4 key of a local stack (``shared/stack.py`` generates one per run).

    The local Lambda runtimes' Invoke API and the gateway's @connections API accept only requests signed
    with it (as AWS accepts only IAM-signed ones); the gateway signs its Invoke calls and the lambdas sign
    their @connections replies with it. Unset on AWS: there the functions' IAM role signs.
    """

    model_config = SettingsConfigDict(env_prefix="LOCALRAG_INTERNAL_", extra="ignore", populate_by_name=True)

    access_key_id: str | None = Field(
        None,
        min_length=16,
        max_length=128,
        pattern=r"^[A-Za-z0-9]+$",
        description="Access key id of the stack's internal SigV4 key (make up generates one per run).",
    )
    secret_access_key: SecretStr | None = Field(
        None, description="Its secret (never logged). Both or neither must be set."
    )

    @model_validator(mode="after")
    def _both_or_neither(self) -> InternalAuthSettings:
        if (self.access_key_id is None) != (self.secret_access_key is None):
            raise ValueError(
                "set both LOCALRAG_INTERNAL_ACCESS_KEY_ID and LOCALRAG_INTERNAL_SECRET_ACCESS_KEY, or neither"
            )
        if self.secret_access_key is not None and len(self.secret_access_key.get_secret_value()) < 16:
            raise ValueError("LOCALRAG_INTERNAL_SECRET_ACCESS_KEY must be at least 16 characters")
        return self

    def signing_key(self) -> SigningKey | None:
        """The key to sign internal requests with, or None when none is configured."""
        if self.access_key_id is None or self.secret_access_key is None:
            return None
        return SigningKey(self.access_key_id, self.secret_access_key.get_secret_value())

    def verification_keys(self) -> dict[str, str]:
        """{access key id: secret} for ``shared.sigv4.verify`` (empty: every request is refused)."""
        key = self.signing_key()
        return {key.access_key_id: key.secret_access_key} if key else {}


class AuthSettings(BaseSettings):
    """``RAG_AUTH``: the credentials callers may present, or ``none`` (identity off, for throwaway use)."""

    model_config = SettingsConfigDict(env_prefix="RAG_", extra="ignore", populate_by_name=True)

    auth: Annotated[list[AuthMethod], NoDecode] = Field(
        ["api_key", "jwt"],
        description="Accepted credentials, comma-separated: 'api_key' (lrk_... keys from `localrag keys create`), "
        "'jwt' (OIDC tokens), or 'none' alone: identity off, every caller is the 'anonymous' principal of the "
        "'default' tenant (the gateway skips the authorizer and warns; every other check stays).",
    )

    @field_validator("auth", mode="before")
    @classmethod
    def _comma_list(cls, value: Any) -> Any:
        return comma_list(value)

    @field_validator("auth")
    @classmethod
    def _none_alone(cls, value: list[AuthMethod]) -> list[AuthMethod]:
        if not value:
            raise ValueError("RAG_AUTH names no credential kind ('api_key', 'jwt', or 'none')")
        if "none" in value and len(value) > 1:
            raise ValueError("RAG_AUTH=none switches identity off and cannot be combined with other values")
        return value

    @property
    def identity_off(self) -> bool:
        return self.auth == ["none"]
