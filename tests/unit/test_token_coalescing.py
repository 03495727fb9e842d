"""Token coalescing (shared/coalesce.py): the first text goes out at once, then text is gathered until
RAG_TOKEN_FLUSH_MS have passed since the last post or RAG_TOKEN_FLUSH_BYTES are gathered or a sentence ends,
and the rest at the end; and the chat service posts token frames that way, every token's text once, in
order. A fake clock: no wall-clock assertion."""

from __future__ import annotations

from collections.abc import Generator, Sequence
from typing import Any

import pytest

from shared.coalesce import TokenCoalescer


class Clock:
    """Seconds, as time.perf_counter, counted in whole milliseconds (exact differences)."""

    def __init__(self) -> None:
        self.ms = 0

    def __call__(self) -> float:
        return self.ms / 1000

    def advance(self, ms: int) -> None:
        self.ms += ms


def test_the_first_token_is_posted_at_once() -> None:
    c = TokenCoalescer(1_000_000, 1_000_000, Clock())
    assert c.add("Hel") == "Hel"
    assert c.add("lo") is None
    assert c.flush() == "lo"
    assert c.flush() is None


def test_tokens_are_gathered_until_flush_ms_have_passed_since_the_last_post() -> None:
    clock = Clock()
    c = TokenCoalescer(50, 1_000_000, clock)
    assert c.add("a") == "a"
    clock.advance(20)
    assert c.add("b") is None
    clock.advance(29)
    assert c.add("c") is None
    clock.advance(1)  # 50 ms since "a" was posted
    assert c.add("d") == "bcd"
    clock.advance(49)
    assert c.add("e") is None
    clock.advance(1)
    assert c.add("f") == "ef"


def test_tokens_are_posted_when_flush_bytes_are_gathered() -> None:
    clock = Clock()
    c = TokenCoalescer(1_000_000, 8, clock)
    assert c.add("first") == "first"
    assert c.add("1234") is None
    assert c.add("567") is None
    assert c.add("é") == "1234567é"  # 7 + 2 bytes of UTF-8: over 8
    assert c.add("x") is None
    assert c.flush() == "x"


@pytest.mark.parametrize(
    ("tail", "ends"),
    [
        ("lava.", True),
        ("erupts!", True),
        ("why?", True),
        ('said "no."', True),
        ("(see above).", True),
        ("**done.**", True),
        ("\u706b\u5c71\u3002", True),
        ("lava. ", False),  # the space goes with the next sentence's text
        ("1.", False),  # a list's number
        ("pi is 3.", False),
        ("x .", False),
        (".", False),
        ("lava", False),
        ("", False),
    ],
)
def test_where_a_sentence_ends(tail: str, ends: bool) -> None:
    from shared.coalesce import ends_sentence

    assert ends_sentence(tail) is ends


def test_the_end_of_a_sentence_is_posted_at_once() -> None:
    """An answer's last words go out as they come: its end is known only a token later."""
    c = TokenCoalescer(1_000_000, 1_000_000, Clock())
    assert c.add("Lava") == "Lava"
    assert c.add(" is") is None
    assert c.add(" hot") is None
    assert c.add(".") == " is hot."
    assert c.add(" It") is None
    assert c.add(" flows") is None
    assert c.add(" at 1") is None
    assert c.add(".") is None  # "1." is not a sentence's end
    assert c.add("2 m/s!") == " It flows at 1.2 m/s!"
    assert c.flush() is None


def test_flush_ms_zero_posts_every_token() -> None:
    c = TokenCoalescer(0, 1_000_000, Clock())
    assert [c.add(t) for t in ("a", "b", "c")] == ["a", "b", "c"]
    assert c.flush() is None


def test_empty_text_is_never_posted() -> None:
    c = TokenCoalescer(0, 1, Clock())
    assert c.add("") is None
    assert c.flush() is None


class ManyTokensLLM:
    """``n`` text deltas of 4 bytes each, all at once (faster than any flush interval)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def stream(self, system: str, messages: Sequence[dict[str, str]], **_: Any) -> Generator[Any, None, None]:
        from shared.bedrock import StreamDone, TextDelta

        for i in range(self.n):
            yield TextDelta(f"{i:03d} ")
        yield StreamDone("end_turn", 10, self.n)


class NoStore:
    def search(self, *args: Any, **kwargs: Any) -> list[Any]:
        return []


class ZeroEmbedder:
    def embed_query(self, text: str) -> list[float]:
        return [0.0] * 384


@pytest.mark.parametrize(
    ("flush_ms", "flush_bytes", "frames"),
    [
        (3_600_000, 1_000_000, 2),  # the first token, then the rest at the end
        (0, 1_000_000, 200),  # one frame per token
        (3_600_000, 40, 1 + 19 + 1),  # the first; 19 of ten tokens (40 bytes); the last nine at the end
    ],
)
def test_the_chat_service_coalesces_token_frames(flush_ms: float, flush_bytes: int, frames: int) -> None:
    from chat.service import ChatService
    from chat.settings import Settings
    from shared.identity import anonymous
    from shared.protocol import ChatRequest, StreamEnd, StreamStart, Token

    settings = Settings(token_flush_ms=flush_ms, token_flush_bytes=flush_bytes, intent_routing=False)
    service = ChatService(settings, embedder=ZeroEmbedder(), store=NoStore(), llm=ManyTokensLLM(200))  # type: ignore[arg-type]
    out: list[Any] = []
    req = ChatRequest(action="chat", request_id="r", question="What is lava?", messages=[])
    service.chat(req, out.append, anonymous())
    assert isinstance(out[0], StreamStart) and isinstance(out[-1], StreamEnd)
    tokens = [m for m in out if isinstance(m, Token)]
    assert tokens[0].text == "000 "  # the first token alone: it is not held back
    assert [t.index for t in tokens] == list(range(len(tokens)))
    assert "".join(t.text for t in tokens) == out[-1].answer == "".join(f"{i:03d} " for i in range(200))
    assert len(tokens) == frames
