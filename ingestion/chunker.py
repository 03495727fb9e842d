"""Split text into chunks that fit the embedding model, measured in the model's own word-pieces.

Sentence-aware: chunks end at sentence boundaries where possible; a sentence longer than a chunk is
cut at word-piece boundaries (never silently truncated by the model). Consecutive chunks overlap by
about ``overlap`` word-pieces of whole sentences, so a fact split across a boundary is still found.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from tokenizers import Tokenizer

DEFAULT_TOKENIZER = Path(__file__).parent / "assets" / "all-MiniLM-L6-v2.tokenizer.json"

# Ends of sentences: ., !, ? (optionally followed by quotes/brackets) then whitespace; or blank lines.
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+|\n\s*\n")


@dataclass(frozen=True)
class Chunk:
    index: int
    text: str
    tokens: int
    start: int  # character offsets into the source text
    end: int


@lru_cache(maxsize=4)
def load_tokenizer(path: str | None = None) -> Tokenizer:
    tok = Tokenizer.from_file(str(path or DEFAULT_TOKENIZER))
    tok.no_truncation()
    tok.no_padding()
    return tok


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of each non-blank sentence of ``text``, split at sentence-ending punctuation."""
    spans: list[tuple[int, int]] = []
    pos = 0
    for m in _SENTENCE_END.finditer(text):
        if m.start() > pos:
            spans.append((pos, m.start()))
        pos = m.end()
    if pos < len(text):
        spans.append((pos, len(text)))
    return [(s, e) for s, e in spans if text[s:e].strip()]


class Chunker:
    """Token-budgeted, sentence-aware chunking with overlap.

    ``max_tokens`` (the chunk size) and ``model_max_tokens`` (the longest text the embedding model
    reads) count content word-pieces; the model adds 2 special tokens ([CLS], [SEP]), so 254 content
    pieces + 2 = MiniLM's 256 limit. A chunk never exceeds either.
    """

    def __init__(
        self,
        max_tokens: int = 164,
        overlap: int = 32,
        tokenizer_path: str | None = None,
        model_max_tokens: int = 254,
    ) -> None:
        if max_tokens < 8:
            raise ValueError("max_tokens must be at least 8")
        if max_tokens > model_max_tokens:
            raise ValueError(f"max_tokens ({max_tokens}) exceeds what the model reads ({model_max_tokens})")
        if not 0 <= overlap < max_tokens // 2:
            raise ValueError("overlap must be >= 0 and less than half of max_tokens")
        self.max_tokens = max_tokens
        self.model_max_tokens = model_max_tokens
        self.overlap = overlap
        self.tokenizer = load_tokenizer(tokenizer_path)

    def count(self, text: str) -> int:
        return len(self.tokenizer.encode(text, add_special_tokens=False).ids)

    def _pieces(self, text: str) -> list[tuple[int, int, int]]:
        """(start, end, tokens) units no longer than max_tokens: sentences, or cuts of long ones."""
        units: list[tuple[int, int, int]] = []
        for s, e in sentence_spans(text):
            enc = self.tokenizer.encode(text[s:e], add_special_tokens=False)
            n = len(enc.ids)
            if n <= self.max_tokens:
                units.append((s, e, n))
                continue
            # A sentence longer than a chunk: cut at word-piece offsets, preferring word starts.
            offsets = enc.offsets
            i = 0
            while i < n:
                j = min(i + self.max_tokens, n)
                if j < n:
                    k = j
                    while k > i + self.max_tokens // 2 and enc.word_ids[k] == enc.word_ids[k - 1]:
                        k -= 1
                    j = k
                cs = s + offsets[i][0]
                ce = s + (offsets[j][0] if j < n else offsets[n - 1][1])
                units.append((cs, ce, j - i))
                i = j
        return units

    def split(self, text: str) -> list[Chunk]:
        units = self._pieces(text)
        chunks: list[Chunk] = []
        i = 0
        while i < len(units):
            total = 0
            j = i
            # +1 per joined unit allows for the separator the tokenizer may see between sentences.
            while j < len(units) and total + units[j][2] + (1 if j > i else 0) <= self.max_tokens:
                total += units[j][2] + (1 if j > i else 0)
                j += 1
            j = max(j, i + 1)
            start, end = units[i][0], units[j - 1][1]
            chunk_text = text[start:end].strip()
            n = self.count(chunk_text)
            # Joining can merge pieces across a boundary; trim from the end until it fits.
            while n > self.max_tokens and j - 1 > i:
                j -= 1
                end = units[j - 1][1]
                chunk_text = text[start:end].strip()
                n = self.count(chunk_text)
            chunks.append(Chunk(len(chunks), chunk_text, n, start, end))
            if j >= len(units):
                break
            # Step back over whole units worth about `overlap` tokens, always moving forward.
            back, k = 0, j
            while k - 1 > i and back + units[k - 1][2] <= self.overlap:
                back += units[k - 1][2]
                k -= 1
            i = k
        return chunks
