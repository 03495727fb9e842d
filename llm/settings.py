"""Configuration of the LLM service, read from ``LLM_*`` environment variables."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_MODEL_URL = (
    "https://huggingface.co/Qwen/Qwen2.5-0.5B-Instruct-GGUF/resolve/main/qwen2.5-0.5b-instruct-q4_k_m.gguf"
)


class Settings(BaseSettings):
    """LLM service settings; every field is set by the environment variable ``LLM_<FIELD NAME>``."""

    model_config = SettingsConfigDict(env_prefix="LLM_", extra="ignore")

    host: str = Field(default="127.0.0.1", description="Interface the HTTP server binds to.")
    port: int = Field(default=8002, ge=0, le=65535, description="TCP port of the HTTP server.")
    model_id: str = Field(
        default="local-llm",
        description=(
            "The Bedrock modelId this service answers to in /model/{modelId}/converse[-stream] "
            "(and the OpenAI model name); any other id gets 404 ResourceNotFoundException."
        ),
    )
    model_path: Path | None = Field(
        default=None,
        description=(
            "Local GGUF model file to serve. When set it must exist; when unset the file named by "
            "LLM_MODEL_URL is used from LLM_MODELS_DIR (downloaded there first if missing)."
        ),
    )
    model_url: str = Field(
        default=DEFAULT_MODEL_URL,
        description="Where to download the GGUF model from when LLM_MODEL_PATH is not set.",
    )
    models_dir: Path = Field(
        default=Path("models"), description="Directory downloaded models are stored in (and looked up from)."
    )
    n_ctx: int = Field(
        default=4096, ge=64, description="Context window in tokens (prompt + generated) llama.cpp allocates."
    )
    n_threads: int | None = Field(
        default=None, ge=1, description="CPU threads for generation; unset lets llama.cpp choose."
    )
    max_tokens: int = Field(
        default=512, ge=1, description="Tokens to generate when the request sets no maxTokens / max_tokens."
    )
    temperature: float = Field(
        default=0.7, ge=0.0, le=2.0, description="Sampling temperature when the request sets none (0 = greedy)."
    )
    max_queue: int = Field(
        default=8,
        ge=0,
        description=(
            "Generations allowed to wait behind the one running (the model runs one at a time); "
            "requests beyond that get 429 ThrottlingException."
        ),
    )
    request_timeout_s: float = Field(
        default=300.0,
        gt=0,
        description=(
            "Longest a generation may run, in seconds, counted from when it gets the model (time spent "
            "waiting in the queue is not included); past it generation is stopped and the request fails "
            "with 408 ModelTimeoutException (on a stream: a modelStreamErrorException frame)."
        ),
    )
    max_body_bytes: int = Field(
        default=1024 * 1024, ge=1024, description="Largest accepted request body in bytes (larger: 413)."
    )
    log_level: str = Field(default="INFO", description="Python logging level (DEBUG, INFO, WARNING, ...).")
