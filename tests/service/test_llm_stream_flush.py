"""LLM_STREAM_FLUSH_MS: how often the LLM service hands generated text to its ConverseStream.

Two real LLM service processes on the tiny random GGUF (greedy decoding, so both generate the same text):
one handing over every token (0), one with an interval no generation reaches, which must send the first
text at once, then text only where a sentence ends, and the rest at the end -- the same text, in fewer
contentBlockDelta events.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shared.coalesce import ends_sentence
from tests.service.test_llm_service import bedrock
from tests.support.gguf_factory import write_tiny_llama_gguf
from tests.support.procs import Service, start_service, stop_service


def _start(name: str, model: Path, logs: Path, flush_ms: str) -> Service:
    env = {"LLM_MODEL_PATH": str(model), "LLM_N_CTX": "4096", "LLM_STREAM_FLUSH_MS": flush_ms}
    return start_service(name, "llm", env, logs, timeout=60)


@pytest.fixture(scope="module")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Service]]:
    model = write_tiny_llama_gguf(tmp_path_factory.mktemp("models") / "tiny-llama.gguf")
    logs = tmp_path_factory.mktemp("logs")
    started: dict[str, Service] = {}
    try:
        started["every_token"] = _start("llm-flush-0", model, logs, "0")
        started["held"] = _start("llm-flush-long", model, logs, "600000")
        yield started
    finally:
        for svc in started.values():
            stop_service(svc)


def _deltas(svc: Service) -> tuple[list[str], dict[str, Any]]:
    messages = [{"role": "user", "content": [{"text": "Tell me about retrieval."}]}]
    response = bedrock(svc).converse_stream(
        modelId="local-llm", messages=messages, inferenceConfig={"maxTokens": 64, "temperature": 0}
    )
    events = list(response["stream"])
    return [e["contentBlockDelta"]["delta"]["text"] for e in events if "contentBlockDelta" in e], events[-1]


def test_the_flush_interval_sets_how_many_deltas_carry_the_same_text(services: dict[str, Service]) -> None:
    every, meta_every = _deltas(services["every_token"])
    held, meta_held = _deltas(services["held"])
    assert "".join(held) == "".join(every)  # nothing lost, nothing reordered
    assert meta_held["metadata"]["usage"]["outputTokens"] == meta_every["metadata"]["usage"]["outputTokens"] == 64
    assert len(every) > 10  # one delta per token (tokens of the tiny model that decode to text)
    # The first text at once, then a delta exactly where the text so far ends a sentence (shared/coalesce.py;
    # the tiny model's printable ASCII has some), the rest when the generation ends.
    expected, gathered = [every[0]], ""
    for i in range(1, len(every)):
        gathered += every[i]
        if ends_sentence("".join(every[: i + 1])):
            expected.append(gathered)
            gathered = ""
    assert held == expected + ([gathered] if gathered else [])
    assert len(held) < len(every)
