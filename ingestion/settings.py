"""Ingestion lambda settings: the shared RAG_* fields plus chunking and its local runtime."""

from __future__ import annotations

from pydantic import Field

from shared.settings import RagSettings


class Settings(RagSettings):
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
        254,
        ge=16,
        le=8192,
        description="Chunk size in the embedding model's word-pieces (MiniLM: 256 incl. 2 specials).",
    )
    chunk_overlap_tokens: int = Field(32, ge=0, description="Overlap between consecutive chunks, in word-pieces.")
    tokenizer_path: str | None = Field(
        None,
        description="tokenizer.json used to count word-pieces; unset = the bundled all-MiniLM-L6-v2 one.",
    )
    max_document_bytes: int = Field(10 * 1024 * 1024, ge=1, description="Largest document text accepted (UTF-8 bytes).")
