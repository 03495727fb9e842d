"""Prompt building: pure functions, no I/O."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from shared.protocol import Source

CONVERSATIONAL_PROMPT = (
    "You are a friendly assistant for a document collection.\n"
    "The user's message is small talk (a greeting, thanks, a pleasantry or a question about you), not a "
    "question about the documents. Reply briefly and naturally, in one or two sentences, and offer to "
    "help with questions about the documents. Do not state facts from or about the documents and do not "
    "cite passages."
)

NO_CONTEXT_PROMPT = (
    "You are a helpful assistant for a document collection.\n"
    "No passage in the collection is relevant to the user's question. Say plainly that the documents "
    "do not cover it, do not invent an answer from them, and suggest adding documents or rephrasing."
)

CONTEXT_PROMPT = (
    "You are a helpful assistant for a document collection. Answer the user's question using the "
    "numbered passages below. Cite the passages you use with their numbers, like [1] or [2]. If the "
    "passages do not contain the answer, say so honestly instead of guessing.\n\n"
    "Passages:\n{passages}"
)


def build_system_prompt(sources: Sequence[Source], passages: Sequence[str]) -> str:
    """The system prompt from the passages that survived the threshold; NO_CONTEXT_PROMPT if none did."""
    if not sources:
        return NO_CONTEXT_PROMPT
    blocks = []
    for src, text in zip(sources, passages, strict=True):
        header = f"[{src.n}] {src.title or src.doc_id}"
        if src.date:
            header += f" ({src.date})"
        # page / heading: set by the PDF and Markdown parsers (absent on older protocol versions).
        page, heading = getattr(src, "page", None), getattr(src, "heading", None)
        if heading:
            header += f", {heading}"
        if page is not None:
            header += f", p. {page}"
        blocks.append(f"{header}\n{text}")
    return CONTEXT_PROMPT.format(passages="\n\n".join(blocks))


@dataclass(frozen=True)
class Turn:
    role: str
    content: str


def alternating(turns: Sequence[Turn]) -> list[Turn]:
    """``turns`` made fit for a chat model, which expects user and assistant to alternate (Bedrock's
    Converse refuses anything else): consecutive turns of one role are merged, and a trailing user turn
    that got no answer is dropped (the question follows it). Stored conversations alternate; a client's
    messages, and conversations stored before turns were serialized, may not."""
    merged: list[Turn] = []
    for t in turns:
        if merged and merged[-1].role == t.role:
            merged[-1] = Turn(t.role, f"{merged[-1].content}\n\n{t.content}")
        else:
            merged.append(t)
    while merged and merged[-1].role == "user":
        merged.pop()
    return merged


def fit_history(turns: Sequence[Turn], budget: int, count: Callable[[str], int]) -> list[Turn]:
    """The most recent turns whose total size is within `budget` tokens, oldest first.

    Whole user/assistant pairs are kept together so the model never sees an answer without its
    question; a conversation must also start with a user turn.
    """
    kept: list[Turn] = []
    used = 0
    i = len(turns)
    while i > 0:
        # Walk back one pair (user, assistant) at a time.
        j = i - 1
        if turns[j].role == "assistant" and j > 0 and turns[j - 1].role == "user":
            j -= 1
        cost = sum(count(t.content) for t in turns[j:i])
        if used + cost > budget:
            break
        kept[:0] = turns[j:i]
        used += cost
        i = j
    while kept and kept[0].role != "user":
        kept.pop(0)
    return kept


def approx_tokens(text: str) -> int:
    """A model-agnostic token estimate (about 4 characters per token for English)."""
    return max(1, (len(text) + 3) // 4)


def excerpt(text: str, limit: int) -> str:
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    cut = text[:limit].rsplit(" ", 1)[0]
    return cut + "…"
