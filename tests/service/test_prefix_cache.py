"""Prompts laid out for prefix reuse, and the LLM engine's state cache, on the embedded SmolLM2.

ChatService on the real LanceDB (a folder) answers through llm/engine.py in this process. A follow-up's
prompt starts with the previous turn's prompt and answer (chat/prompts.py's layout, replayed from the stored
conversation), so llama.cpp evaluates only what is new; with the state cache (LLM_STATE_CACHE_BYTES) that
holds even when another conversation was answered in between. Counted in tokens, checked against
llama.cpp's own performance counters: no wall-clock assertion.
"""

from __future__ import annotations

import asyncio
from collections.abc import Generator, Iterator, Sequence
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config

from chat.prompts import SYSTEM_PROMPT
from chat.service import ChatService
from chat.settings import Settings
from llm.engine import Engine, GenerationParams
from shared.bedrock import ChatEvent, StreamDone, TextDelta
from shared.identity import Principal
from shared.protocol import ChatRequest, StreamEnd, StreamStart
from shared.vector_store import ChunkRow, VectorStore
from tests.support.gguf_factory import write_tiny_llama_gguf
from tests.support.procs import Service, start_service, stop_service
from tests.support.timeouts import scaled

ALICE = Principal("alpha", "key:alice", "api_key")
DIM = 4
PASSAGES = {
    # doc_id: (direction of its vectors, passages)
    "lava": (
        [1.0, 0.0, 0.0, 0.0],
        [
            "Lava is molten rock that reaches the surface during an eruption; it cools into basalt or obsidian.",
            "Pahoehoe lava has a smooth, ropy surface, while a'a lava is rough and broken into blocks.",
            "Lava flows move slowly enough that people can usually walk away from them.",
        ],
    ),
    "tides": (
        [0.0, 1.0, 0.0, 0.0],
        [
            "Tides are caused mainly by the Moon's gravity pulling on the oceans, and to a lesser extent the Sun's.",
            "Spring tides, with the largest range, happen when the Sun, Moon and Earth are aligned.",
            "Most coasts see two high tides and two low tides every lunar day of about 24 hours 50 minutes.",
        ],
    ),
}


class Embedder:
    """A question about tides points at the tides passages, anything else at lava."""

    def embed_query(self, text: str) -> list[float]:
        return PASSAGES["tides" if "tide" in text.lower() else "lava"][0]


class EngineLLM:
    """The chat function's LLM port on the engine itself (what the LLM service runs), recording each
    generation's prompt tokens and reused tokens, and llama.cpp's count of prompt tokens it evaluated."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.calls: list[dict[str, Any]] = []

    def stream(self, system: str, messages: Sequence[dict[str, str]]) -> Generator[ChatEvent, None, None]:
        from llama_cpp import llama_cpp as C

        chat = [{"role": "system", "content": system}, *messages]
        ctx = self.engine.llama._ctx.ctx
        C.llama_perf_context_reset(ctx)

        async def run() -> tuple[list[str], Any]:
            params = GenerationParams(messages=chat, max_tokens=12, temperature=0.0)
            async with self.engine.generation(params) as gen:
                return [piece async for piece in gen], gen

        parts, gen = asyncio.run(run())
        perf = C.llama_perf_context(ctx)
        self.calls.append(
            {"messages": chat, "input": gen.input_tokens, "reused": gen.cached_tokens, "evaluated": perf.n_p_eval}
        )
        for p in parts:
            yield TextDelta(p)
        yield StreamDone(gen.stop_reason or "end_turn", gen.input_tokens, gen.output_tokens)


@pytest.fixture(scope="module")
def model() -> Path:
    from llm.model_fetch import ensure_model
    from llm.settings import Settings as LlmSettings

    return ensure_model(LlmSettings(model_path=None), allow_download=False)  # the embedded SmolLM2


def make_engine(model: Path, state_cache_bytes: int) -> Engine:
    return Engine.load(
        model, model_id="m", max_queue=1, n_ctx=2048, n_threads=None, state_cache_bytes=state_cache_bytes
    )


@pytest.fixture
def service(tmp_path: Path) -> Iterator[ChatService]:
    store = VectorStore(str(tmp_path / "db"), dimension=DIM, model_id="test", full_text=False)
    for doc_id, (vec, texts) in PASSAGES.items():
        rows = [ChunkRow(doc_id, i, doc_id.title(), t, [v + 0.01 * i for v in vec]) for i, t in enumerate(texts)]
        store.replace_document(doc_id, rows, tenant=ALICE.tenant)
    settings = Settings(intent_routing=False, search_mode="vector", max_distance=1.0, top_k=3)
    yield ChatService(settings, embedder=Embedder(), store=store, llm=EngineLLM.__new__(EngineLLM))


def ask(svc: ChatService, question: str, conversation_id: str | None = None) -> tuple[str, StreamEnd]:
    out: list[Any] = []
    svc.chat(
        ChatRequest(action="chat", request_id="r", question=question, conversation_id=conversation_id),
        out.append,
        ALICE,
    )
    start, end = out[0], out[-1]
    assert isinstance(start, StreamStart) and isinstance(end, StreamEnd)
    return start.conversation_id, end


def interleaved(svc: ChatService, engine: Engine) -> EngineLLM:
    """A1, B1, A2, B2: two users taking turns."""
    llm = EngineLLM(engine)
    svc.llm = llm
    a, _ = ask(svc, "What is lava?")
    b, _ = ask(svc, "What causes tides?")
    ask(svc, "How fast does lava move?", a)
    ask(svc, "When are tides the largest?", b)
    return llm


def test_a_follow_up_evaluates_only_what_is_new_even_between_two_conversations(
    service: ChatService, model: Path
) -> None:
    engine = make_engine(model, 256 * 1024 * 1024)
    try:
        llm = interleaved(service, engine)
    finally:
        engine.close()
    a1, b1, a2, b2 = llm.calls
    for first, follow in ((a1, a2), (b1, b2)):
        # The follow-up's prompt starts with the first turn's messages, replayed as they were sent ...
        assert follow["messages"][: len(first["messages"])] == first["messages"]
        assert follow["messages"][0]["content"] == SYSTEM_PROMPT
        # ... so the whole first prompt (and the answer) is reused, though the other conversation ran between.
        assert follow["reused"] >= first["input"], (first, follow)
        assert follow["evaluated"] == follow["input"] - follow["reused"]  # llama.cpp's own count agrees
        # The follow-up's passages are the ones already given: cited by number, not sent again.
        assert "Passages [" in follow["messages"][-1]["content"]
        assert follow["evaluated"] < first["evaluated"] / 2
    assert engine.stats.state_cache_restores == 2
    # The second conversation's first turn shares the stable system prompt with the first's.
    assert b1["reused"] > 0 and b1["evaluated"] == b1["input"] - b1["reused"]


def test_without_the_state_cache_the_other_conversation_evicts_the_prefix(service: ChatService, model: Path) -> None:
    engine = make_engine(model, 0)
    try:
        llm = interleaved(service, engine)
    finally:
        engine.close()
    a1, b1, a2, _ = llm.calls
    # Only the system prompt the conversations share is still in the context when A's follow-up comes.
    assert a2["reused"] < a1["input"] and a2["reused"] == b1["reused"]
    assert a2["evaluated"] == a2["input"] - a2["reused"] and a2["evaluated"] > a1["evaluated"] / 2
    assert engine.stats.state_cache_restores == 0


# ---------------------------------------------------------------------------------------- cachePoint


@pytest.fixture(scope="module")
def tiny_llm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    model = write_tiny_llama_gguf(tmp_path_factory.mktemp("models") / "tiny-llama.gguf")
    env = {"LLM_MODEL_PATH": str(model), "LLM_N_CTX": "1024"}
    svc = start_service("llm-cachepoint", "llm", env, tmp_path_factory.mktemp("logs"), timeout=60)
    yield svc
    stop_service(svc)


def test_the_llm_service_accepts_and_ignores_cache_points_as_bedrock_shapes_them(tiny_llm: Service) -> None:
    client = boto3.client(
        "bedrock-runtime",
        endpoint_url=tiny_llm.url,
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
        config=Config(read_timeout=scaled(60), retries={"total_max_attempts": 1}),
    )
    point = {"cachePoint": {"type": "default"}}
    plain = {
        "system": [{"text": "You answer."}],
        "messages": [{"role": "user", "content": [{"text": "Hello there"}]}],
    }
    marked = {  # botocore validates the blocks client-side: these are Bedrock's shapes
        "system": [{"text": "You answer."}, point],
        "messages": [
            {
                "role": "user",
                "content": [{"text": "Hello there"}, {"cachePoint": {"type": "default", "ttl": "5m"}}],
            }
        ],
    }
    config = {"maxTokens": 8, "temperature": 0.0}
    a = client.converse(modelId="local-llm", inferenceConfig=config, **plain)
    b = client.converse(modelId="local-llm", inferenceConfig=config, **marked)
    assert b["output"] == a["output"]
    # Without a cachePoint no cache fields (as Bedrock); with one, Bedrock's split: the prompt b shares with a,
    # which a has just evaluated, is read from the state cache (all of it but the last token, which llama.cpp
    # evaluates again), the rest is inputTokens.
    assert "cacheReadInputTokens" not in a["usage"]
    prompt = a["usage"]["inputTokens"]
    assert b["usage"]["cacheReadInputTokens"] == prompt - 1 and b["usage"]["inputTokens"] == 1
    assert b["usage"]["cacheWriteInputTokens"] == 0
    assert b["usage"]["totalTokens"] == prompt + b["usage"]["outputTokens"]
    # The chat function's adapter with RAG_PROMPT_CACHE_POINT on streams through it as without.
    from shared.bedrock import ChatModel

    events = list(
        ChatModel(client, "local-llm", max_tokens=8, temperature=0.0, cache_point=True).stream(
            "You answer.", [{"role": "user", "content": "Hello there"}]
        )
    )
    # Its input_tokens is the prompt's size, cache reads included.
    assert isinstance(events[-1], StreamDone) and events[-1].input_tokens == prompt
    # A message of cache points only has no text: refused, as Bedrock refuses an empty message.
    with pytest.raises(client.exceptions.ValidationException):
        client.converse(modelId="local-llm", messages=[{"role": "user", "content": [point]}])
