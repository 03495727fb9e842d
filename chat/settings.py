"""Chat lambda settings: the shared RAG_* fields plus retrieval, generation and its local runtime."""

from __future__ import annotations

from pydantic import Field

from shared.protocol import SearchMode
from shared.settings import RagSettings
from shared.vector_store import RRF_K


class Settings(RagSettings):
    # -- local runtime (ignored on AWS, where Lambda hosts the handler)
    host: str = Field("127.0.0.1", validation_alias="CHAT_HOST", description="Local runtime bind address.")
    port: int = Field(9002, validation_alias="CHAT_PORT", description="Local runtime port (Invoke API).")
    function_name: str = Field("chat", validation_alias="CHAT_FUNCTION_NAME", description="Function name.")
    timeout_s: float = Field(
        300.0, gt=0, validation_alias="CHAT_TIMEOUT_S", description="Invocation timeout, as Lambda's Timeout."
    )
    max_concurrency: int = Field(
        4,
        ge=1,
        validation_alias="CHAT_MAX_CONCURRENCY",
        description="Concurrent invocations (reserved concurrency).",
    )
    log_level: str = Field("INFO", validation_alias="CHAT_LOG_LEVEL", description="Log level.")

    # -- retrieval
    top_k: int = Field(5, ge=1, le=50, description="Passages retrieved per question before the threshold.")
    max_distance: float = Field(
        0.7,
        ge=0.0,
        le=2.0,
        description="Keep matches with cosine distance <= this (0 identical .. 2 opposite), in every search mode. "
        "0.7 is calibrated on SciFact (bench/): it keeps ~97% of the relevant top-10 passages and gives 85% "
        "of off-topic questions no sources (1.2 gives none).",
    )
    excerpt_chars: int = Field(300, ge=20, description="Length of the excerpt shown with each source.")
    search_mode: SearchMode = Field(
        "hybrid",
        description="How passages are found: 'vector' (cosine), 'fts' (BM25 full-text) or 'hybrid' (both, "
        "fused by reciprocal rank fusion); per request 'search_mode'. RAG_MAX_DISTANCE gates every mode "
        "by cosine distance.",
    )
    rrf_k: int = Field(
        RRF_K,
        ge=1,
        description="Hybrid search: reciprocal rank fusion constant, score = sum of 1 / (k + rank) over the two lists.",
    )
    intent_routing: bool = Field(
        True,
        description="Answer small talk (greetings, thanks, 'how are you?') without retrieved passages, using "
        "a conversational prompt; decided by a rule classifier, no LLM call.",
    )
    followup_rewrite: bool = Field(
        True,
        description="Retrieve a follow-up question ('and how does that scale?': short, referring back) with "
        "the key terms of the conversation's earlier question added (chat/followup.py, a rule, no LLM call); "
        "the model still answers the question as asked. False: every question retrieves on its own words.",
    )

    # -- generation
    llm_endpoint_url: str | None = Field(
        None, description="Bedrock Runtime endpoint for Converse (the local LLM service); unset = AWS."
    )
    llm_model_id: str = Field("local-llm", description="Model id for ConverseStream (any Bedrock model id on AWS).")
    max_tokens: int = Field(512, ge=1, le=8192, description="Answer length limit in tokens.")
    temperature: float = Field(0.2, ge=0.0, le=2.0, description="Sampling temperature.")
    history_token_budget: int = Field(
        2560,
        ge=0,
        description="Earlier turns of the conversation put in the prompt, newest first, up to this many tokens "
        "(estimated at 4 characters a token). A stored question is replayed with the passages it was sent with, "
        'so that a follow-up\'s prompt starts with the previous prompt (README "Prompt layout"). Over the '
        "budget, the oldest turns are dropped down to half of it at once, so the prompt's start stays put for the "
        "next turns; 2560 keeps one to three earlier turns with 5 passages each within a 4096-token context "
        "(LLM_N_CTX).",
    )
    prompt_cache_point: bool = Field(
        False,
        description="Bedrock prompt caching: put a Converse cachePoint block after the system prompt, the "
        "prompt's stable start. Only for models that support prompt caching (Bedrock refuses the block "
        "for others); the local LLM service accepts and ignores it (it keeps evaluated prefixes on its own: "
        "LLM_STATE_CACHE_BYTES).",
    )
    token_flush_ms: float = Field(
        50.0,
        ge=0.0,
        description="Token coalescing: the first token of an answer is posted at once, then tokens are gathered "
        "and posted together every this many ms (or at RAG_TOKEN_FLUSH_BYTES, where a sentence ends, or at the "
        "end); 0 = one "
        "WebSocket message per token. Each message is an HTTP round trip to the gateway and, on AWS, a billed "
        "API Gateway message (make bench-llm measures the cost).",
    )
    token_flush_bytes: int = Field(
        1024,
        ge=1,
        description="Token coalescing: post the gathered tokens as soon as their text reaches this many bytes "
        "(UTF-8), even before RAG_TOKEN_FLUSH_MS has passed.",
    )
