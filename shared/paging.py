"""Replies that fit one WebSocket message (API Gateway's 128 KB): pages built by serialized size, and
retrieved sources capped to a byte budget.

A reply is an envelope (``type``, ``request_id``, ``conversation_id``, the ``next`` cursor: at most
``ENVELOPE_BYTES`` of JSON) around one list. The list gets the rest, ``PAGE_BUDGET_BYTES``; items are
added in order while they fit, so a page is never larger than a message whatever its ids and titles are.
Strings that are not identities (titles, names, excerpts) are clipped first, so that every single item
fits a page on its own (see ``tests/unit/test_paging.py`` for the worst cases).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import TypeVar

from pydantic import BaseModel

from shared.protocol import MAX_MESSAGE_BYTES, DocumentInfo, HistoryMessage, Source

# The reply around its list: {"type": ..., "request_id": <= 128 chars, "conversation_id": <= 128 chars,
# "next": a document id (<= 256 chars) or message id, and the keys}. JSON escapes a control character as
# 6 bytes (\u0001) and UTF-8 takes up to 4 bytes a character: 128*6 + 128*6 + 256*4 + keys < 4 KB.
ENVELOPE_BYTES = 4 * 1024
# The bytes of JSON a page's list may take.
PAGE_BUDGET_BYTES = MAX_MESSAGE_BYTES - ENVELOPE_BYTES
# The sources of one answer (stream_start, stream_end, and the stored assistant message that history
# returns): under half a message, so stream_end's answer (RAG_MAX_TOKENS <= 8192 tokens) has the rest.
SOURCES_BUDGET_BYTES = 48 * 1024
# Display strings clipped in listings and sources (the protocol's own limit for titles and sources).
MAX_LABEL_CHARS = 1024
# An excerpt is RAG_EXCERPT_CHARS long (300 by default); clipped here whatever that is set to.
MAX_EXCERPT_CHARS = 4000

T = TypeVar("T", bound=BaseModel)


def json_size(item: BaseModel) -> int:
    """The bytes ``item`` takes in a reply (pydantic writes UTF-8, escaping only what JSON must)."""
    return len(item.model_dump_json().encode("utf-8"))


def clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def take_page(items: Iterable[T], *, limit: int, budget: int = PAGE_BUDGET_BYTES) -> tuple[list[T], bool]:
    """The leading items, at most ``limit`` of them and at most ``budget`` bytes of JSON as a list;
    and whether any item was left out. One item is always taken (each fits a page on its own)."""
    page: list[T] = []
    used = 2  # []
    for item in items:
        size = json_size(item) + (1 if page else 0)  # the comma
        if len(page) >= limit or (page and used + size > budget):
            return page, True
        page.append(item)
        used += size
    return page, False


def listed_document(info: DocumentInfo) -> DocumentInfo:
    """``info`` with its title and name clipped: a listing shows them, it does not need them whole."""
    return info.model_copy(
        update={
            "title": clip(info.title, MAX_LABEL_CHARS),
            "name": clip(info.name, MAX_LABEL_CHARS) if info.name else info.name,
        }
    )


def _clipped_source(s: Source) -> Source:
    return s.model_copy(
        update={
            "title": clip(s.title, MAX_LABEL_CHARS),
            "excerpt": clip(s.excerpt, MAX_EXCERPT_CHARS),
            "source": clip(s.source, MAX_LABEL_CHARS) if s.source else s.source,
            "heading": clip(s.heading, MAX_LABEL_CHARS) if s.heading else s.heading,
            "date": clip(s.date, 64) if s.date else s.date,
        }
    )


def fit_sources(sources: Sequence[Source], budget: int = SOURCES_BUDGET_BYTES) -> list[Source]:
    """The best-ranked sources whose JSON list fits ``budget`` bytes (a prefix: the citation numbers
    stay 1..n), each clipped; the first one is kept even if its excerpt must be cut further."""
    clipped = [_clipped_source(s) for s in sources]
    kept, _ = take_page(clipped, limit=len(clipped), budget=budget)
    if kept and json_size(kept[0]) + 2 > budget:
        kept = [shrink_excerpt(kept[0], budget - 2)]
    return kept


def shrink_excerpt(s: Source, budget: int) -> Source:
    """``s`` with its excerpt cut so that its JSON is at most ``budget`` bytes (when it can be)."""
    excerpt = fit_text(s.excerpt, budget, lambda e: json_size(s.model_copy(update={"excerpt": e})))
    return s.model_copy(update={"excerpt": excerpt})


def fit_history_message(m: HistoryMessage, budget: int = PAGE_BUDGET_BYTES) -> HistoryMessage:
    """``m`` as one page can carry it: whole when it fits ``budget``; else its sources capped as a new
    answer's are, then its content cut, and marked ``truncated``."""
    if json_size(m) <= budget:
        return m
    m = m.model_copy(update={"sources": fit_sources(m.sources), "truncated": True})
    content = fit_text(m.content, budget, lambda c: json_size(m.model_copy(update={"content": c})))
    return m.model_copy(update={"content": content})


def fit_text(text: str, budget: int, size: Callable[[str], int]) -> str:
    """The longest prefix of ``text`` (with "…") for which ``size`` is at most ``budget``."""
    if size(text) <= budget:
        return text
    lo, hi = 0, len(text)
    while lo < hi:  # the largest n with size(text[:n] + "…") <= budget
        mid = (lo + hi + 1) // 2
        if size(text[:mid] + "…") <= budget:
            lo = mid
        else:
            hi = mid - 1
    return text[:lo] + "…"
