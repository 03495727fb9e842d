"""The chunker on hand-made text: sizes in MiniLM word-pieces, sentence boundaries, overlap, no loss."""

from __future__ import annotations

import itertools

import pytest

from ingestion.chunker import Chunker


@pytest.fixture(scope="module")
def chunker() -> Chunker:
    return Chunker(max_tokens=40, overlap=10)


def test_short_text_is_one_chunk(chunker: Chunker) -> None:
    chunks = chunker.split("Volcanoes erupt when pressure builds.")
    assert len(chunks) == 1 and chunks[0].text == "Volcanoes erupt when pressure builds."
    assert chunks[0].tokens == chunker.count(chunks[0].text)


def test_every_chunk_fits_and_ends_on_a_sentence(chunker: Chunker) -> None:
    sentences = [f"Sentence number {i} talks about rivers and mountains." for i in range(30)]
    chunks = chunker.split(" ".join(sentences))
    assert len(chunks) > 3
    for c in chunks:
        assert c.tokens <= 40 and chunker.count(c.text) == c.tokens
        assert c.text.endswith(".")
    # Every sentence appears in some chunk: nothing is lost.
    for s in sentences:
        assert any(s in c.text for c in chunks)
    # Consecutive chunks overlap (the next starts before the previous ends).
    for a, b in itertools.pairwise(chunks):
        assert b.start < a.end


def test_a_sentence_longer_than_a_chunk_is_cut_not_truncated(chunker: Chunker) -> None:
    long_sentence = " ".join(f"word{i}" for i in range(200))
    chunks = chunker.split(long_sentence)
    assert len(chunks) > 3 and all(c.tokens <= 40 for c in chunks)
    joined = " ".join(c.text for c in chunks)
    for i in range(200):
        assert f"word{i}" in joined


def test_minilm_default_fits_the_model() -> None:
    c = Chunker()
    text = " ".join(f"The enzyme {i} catalyses reaction {i * 7} in mitochondria." for i in range(400))
    chunks = c.split(text)
    assert all(ch.tokens + 2 <= 256 for ch in chunks)  # + [CLS] and [SEP]


def test_blank_text_has_no_chunks(chunker: Chunker) -> None:
    assert chunker.split("   \n\n  ") == []


@pytest.mark.parametrize(("size", "overlap"), [(4, 0), (40, 20), (40, -1)])
def test_bad_settings_are_refused(size: int, overlap: int) -> None:
    with pytest.raises(ValueError):
        Chunker(max_tokens=size, overlap=overlap)
