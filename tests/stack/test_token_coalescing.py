"""Token coalescing through the real stack (gateway -> chat function -> LLM service): with an interval and a
size no answer reaches, a chat's answer arrives as the first token at once, then a frame only where a sentence
ends, then the rest at the end, every token's text in order; the OpenAI SSE route carries the same frames as content
chunks. Deterministic: no wall-clock assertion (the policy's timing is unit-tested with a fake clock in
tests/unit/test_token_coalescing.py)."""

from __future__ import annotations

import json
import urllib.request

import pytest

from shared.coalesce import ends_sentence
from shared.stack import Stack
from tests.conftest import TIMEOUT_FACTOR, StackFactory, WsClient
from tests.stack.test_e2e import VOLCANO
from tests.support.auth import default_key

QUESTION = "How do volcanoes erupt?"


@pytest.fixture(scope="module")
def stack(start_stack: StackFactory) -> Stack:
    s = start_stack("coalescing", RAG_MAX_DISTANCE="2.0", RAG_TOKEN_FLUSH_MS="3600000", RAG_TOKEN_FLUSH_BYTES="1000000")
    with WsClient(s.ws_url, timeout=180) as ws:
        reply = ws.request({"action": "ingest", "request_id": "i", "document": VOLCANO})
        assert reply["type"] == "ingest_result", reply
    return s


def test_the_first_token_comes_alone_and_the_rest_in_one_frame(stack: Stack) -> None:
    with WsClient(stack.ws_url, timeout=180) as ws:
        replies = ws.chat({"action": "chat", "request_id": "c1", "question": QUESTION})
    assert replies[0]["type"] == "stream_start"
    end = replies[-1]
    assert end["type"] == "stream_end", end
    tokens = [r for r in replies if r["type"] == "token"]
    assert end["usage"]["output_tokens"] > 2  # the tiny model never stops before RAG_MAX_TOKENS
    # The first token (not held back), then a post only where a sentence ends (the tiny model's printable
    # ASCII has some), then everything else at the end: every frame but the first and last ends a sentence.
    assert [t["index"] for t in tokens] == list(range(len(tokens))) and len(tokens) >= 2
    assert all(t["text"] for t in tokens)
    assert "".join(t["text"] for t in tokens) == end["answer"]
    assert len(tokens[0]["text"]) < len(end["answer"]) / 2
    texts = [t["text"] for t in tokens]
    assert all(ends_sentence("".join(texts[: i + 1])) for i in range(1, len(texts) - 1))


def test_the_openai_stream_carries_the_coalesced_frames(stack: Stack) -> None:
    base = stack.by_name["gateway"].url
    body = {"model": "localrag", "messages": [{"role": "user", "content": QUESTION}], "stream": True}
    req = urllib.request.Request(
        f"{base}/v1/chat/completions",
        json.dumps(body).encode(),
        {"Content-Type": "application/json", "Authorization": f"Bearer {default_key(base)}"},
    )
    with urllib.request.urlopen(req, timeout=180 * TIMEOUT_FACTOR) as resp:
        lines = [ln.decode()[6:].strip() for ln in resp if ln.startswith(b"data: ")]
    assert lines[-1] == "[DONE]"
    chunks = [json.loads(ln) for ln in lines[:-1]]
    contents = [c["choices"][0]["delta"].get("content") for c in chunks if c["choices"]]
    texts = [t for t in contents if t]  # the role chunk has "" and the finish chunk none
    assert len(texts) >= 2 and len(texts[0]) < len("".join(texts)) / 2
    assert all(ends_sentence("".join(texts[: i + 1])) for i in range(1, len(texts) - 1))
