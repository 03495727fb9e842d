"""shared/client/frames.py's text_fragments: a message cut into pieces API Gateway's 32 KB frames can carry."""

from __future__ import annotations

import pytest

from shared.client.frames import FRAME_BYTES, text_fragments


@pytest.mark.parametrize(
    "text",
    ["", "a", "a" * FRAME_BYTES, "a" * (FRAME_BYTES + 1), "é" * 50_000 + "a" * 70_001 + "😀" * 9_000, "😀" * 8_193],
)
def test_pieces_fit_a_frame_and_join_to_the_text(text: str) -> None:
    pieces = text_fragments(text)
    assert "".join(pieces) == text
    assert all(len(p.encode("utf-8")) <= FRAME_BYTES for p in pieces)
    assert len(pieces) <= len(text.encode("utf-8")) // (FRAME_BYTES - 3) + 1  # full pieces but the last


def test_a_small_limit_is_respected() -> None:
    assert text_fragments("abcdefgh", limit=4) == ["abcd", "efgh"]
