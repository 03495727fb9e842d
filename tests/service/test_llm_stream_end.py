"""An answer's end reaches the caller as soon as the model has finished, not once the LLM service is done.

After a generation the LLM service keeps its evaluated state (llama.cpp's KV cache, tens of MB for a long
context) for the conversation's next turn. The ConverseStream / chat-completions response must end before
that copy is made, and the chat function must send the answer's last text on Bedrock's last event
(metadata) rather than when the HTTP response has been read to its end: otherwise every answer's last
tokens wait for work that is not theirs.

The LLM service runs in-process here (the real app and engine on the tiny random GGUF, real HTTP on port
0) so that the state copy can be held open; the chat side's client is botocore through shared/bedrock.py.
Dropping either ``write_eof`` in llm/app.py, or StreamDone-at-metadata in shared/bedrock.py, fails a test.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests
from aiohttp import web

from llm.app import create_app
from llm.engine import Engine
from llm.eventstream import CONTENT_TYPE, encode_event
from llm.settings import Settings
from shared.bedrock import ChatModel, StreamDone, TextDelta
from tests.service.test_llm_service import bedrock_at
from tests.support.gguf_factory import write_tiny_llama_gguf
from tests.support.http import served

HOLD_S = 20.0  # how long a held step waits for the test before giving up (the test fails then)


class _HeldSave:
    """Engine._save (keeping the evaluated state) held until the test releases it; restored on exit."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.started, self.release, self.finished = threading.Event(), threading.Event(), threading.Event()

    def __enter__(self) -> _HeldSave:
        save: Callable[[], None] = self.engine._save

        def held() -> None:
            self.started.set()
            self.release.wait(HOLD_S)
            save()
            self.finished.set()

        self.engine._save = held  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        assert self.finished.wait(HOLD_S)
        del self.engine._save  # the class's method again


@pytest.fixture(scope="module")
def llm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Engine]]:
    model = write_tiny_llama_gguf(tmp_path_factory.mktemp("models") / "tiny-llama.gguf")
    settings = Settings(model_path=model, n_ctx=2048)
    engine = Engine.load(
        model,
        model_id=settings.model_id,
        max_queue=settings.max_queue,
        n_ctx=settings.n_ctx,
        n_threads=None,
        state_cache_bytes=settings.state_cache_bytes,
        stream_flush_ms=settings.stream_flush_ms,
    )
    assert engine.state_cache is not None  # the default keeps states: there is a copy to wait for
    try:
        with served(create_app(settings, engine)) as url:
            yield url, engine
    finally:
        engine.close()


def test_converse_stream_ends_before_the_state_is_kept(llm: tuple[str, Engine]) -> None:
    url, engine = llm
    with _HeldSave(engine) as held:
        response = bedrock_at(url, HOLD_S * 2).converse_stream(
            modelId="local-llm",
            messages=[{"role": "user", "content": [{"text": "Tell me about retrieval."}]}],
            inferenceConfig={"maxTokens": 32, "temperature": 0},
        )
        events = list(response["stream"])  # read to the end of the HTTP response
        assert "metadata" in events[-1]
        assert held.started.wait(HOLD_S) and not held.finished.is_set()  # ended while the state copy was under way


def test_chat_completions_end_before_the_state_is_kept(llm: tuple[str, Engine]) -> None:
    url, engine = llm
    body: dict[str, Any] = {"model": "local-llm", "stream": True, "max_tokens": 32, "temperature": 0,
            "messages": [{"role": "user", "content": "Tell me about retrieval."}]}  # fmt: skip
    with _HeldSave(engine) as held:
        with requests.post(f"{url}/v1/chat/completions", json=body, stream=True, timeout=HOLD_S * 2) as r:
            lines = [line for line in r.iter_lines() if line]  # to the end of the response
        assert lines[-1] == b"data: [DONE]"
        assert held.started.wait(HOLD_S) and not held.finished.is_set()


def test_the_chat_side_gets_the_end_with_the_last_event_not_the_end_of_the_response() -> None:
    """A ConverseStream whose HTTP response stays open after its metadata event (as a service busy after the
    answer may leave it): StreamDone comes with the metadata, and the generator then reads the rest."""
    close, ended = threading.Event(), threading.Event()

    async def converse_stream(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": CONTENT_TYPE})
        await resp.prepare(request)
        for name, payload in (
            ("messageStart", {"role": "assistant"}),
            ("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "Hello"}}),
            ("contentBlockStop", {"contentBlockIndex": 0}),
            ("messageStop", {"stopReason": "end_turn"}),
            ("metadata", {"usage": {"inputTokens": 7, "outputTokens": 2, "totalTokens": 9}, "metrics": {}}),
        ):
            await resp.write(encode_event(name, payload))
        await asyncio.get_running_loop().run_in_executor(None, close.wait, HOLD_S)
        ended.set()
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_post("/model/{modelId}/converse-stream", converse_stream)
    with served(app) as url:
        try:
            model = ChatModel(bedrock_at(url, HOLD_S * 2), "local-llm")
            stream = model.stream("system", [{"role": "user", "content": "hi"}])
            assert next(stream) == TextDelta("Hello")
            assert next(stream) == StreamDone("end_turn", 7, 2)
            assert not ended.is_set()  # the response is still open: the end did not wait for it
            close.set()
            assert list(stream) == []  # then read to its end; nothing more
        finally:
            close.set()  # a failed assertion must not leave the handler waiting
