"""bench/llm.py's bare-side timing (the bench itself runs the real model: ``make bench-llm``): where a bare answer
ends. llama-cpp-python yields the chunk with ``finish_reason`` once it has sampled the end of turn (one decode after
the last text) and only then saves the evaluated state to its cache; the bench's clock is replaced by a counter
that the fake stream moves, so the test is exact."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

import bench.llm as bench_llm


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class FakeLlama:
    """create_chat_completion's chunks as llama-cpp-python streams them: the role, one per token (a decode
    apart), the finish chunk after one more decode (the end of turn), then the state saved to the cache."""

    def __init__(self, clock: Clock, pieces: list[str], decode_s: float, save_s: float) -> None:
        self.clock, self.pieces, self.decode_s, self.save_s = clock, pieces, decode_s, save_s

    def create_chat_completion(self, **_: Any) -> Iterator[dict[str, Any]]:
        yield {"choices": [{"delta": {"role": "assistant"}, "finish_reason": None}]}
        self.clock.now += 1.0  # the prompt
        for piece in self.pieces:
            yield {"choices": [{"delta": {"content": piece}, "finish_reason": None}]}
            self.clock.now += self.decode_s
        yield {"choices": [{"delta": {}, "finish_reason": "stop"}]}
        self.clock.now += self.save_s  # the cache save, after the last chunk was yielded


def test_a_bare_answer_ends_at_its_finish_chunk_not_after_the_cache_save(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock()
    monkeypatch.setattr(bench_llm.time, "perf_counter", clock)
    llama = FakeLlama(clock, ["a", "b", "c", "d", "e"], decode_s=0.02, save_s=0.5)
    turn = bench_llm._bare_turn(llama, [{"role": "user", "content": "q"}], {}, 0, 1, 2)
    assert (turn.side, turn.round, turn.conversation, turn.turn) == ("bare", 0, 1, 2)
    assert turn.text == "abcde" and turn.output_tokens == 5
    assert turn.ttft_ms == pytest.approx(1000.0)
    # Four tokens after the first over five decodes (the last text's, which samples the end): 40 tokens/s;
    # the half-second cache save after it is not the answer's.
    assert turn.tokens_per_s == pytest.approx(4 / 0.10)
    # To the last text: four decodes.
    assert turn.tokens_per_s_last_text == pytest.approx(4 / 0.08)


def test_a_bare_answer_without_text_has_no_rate(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock()
    monkeypatch.setattr(bench_llm.time, "perf_counter", clock)
    turn = bench_llm._bare_turn(FakeLlama(clock, [], decode_s=0.02, save_s=0.5), [], {}, 0, 0, 1)
    assert turn.output_tokens == 0 and turn.tokens_per_s == 0.0 and turn.tokens_per_s_last_text == 0.0
