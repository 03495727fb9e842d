"""Prompt building: pure functions, no I/O."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from shared.protocol import Source

CONVERSATIONAL_PROMPT = (
    "You are a friendly assistant for a document collection.\n"
    "The user's message is small talk (a greeting, thanks, a pleasantry or a question about you), not a "
    "question about the documents. Reply briefly and naturally, in one or two sentences, and offer to "
    "help with questions about the documents. Do not state facts from or about the documents and do not "
    "cite passages."
)

# The system prompt of every question, with or without passages: the stable start of the prompt, so that a
# model server that keeps evaluated prefixes (llama.cpp's state cache, Bedrock's prompt caching) reuses it,
# and with it every earlier turn, on a follow-up. What changes from turn to turn (this turn's passages, or the
# note that none was found) goes into the last user message, with the question.
SYSTEM_PROMPT = (
    "You are a helpful assistant for a document collection. Each question comes with the numbered passages "
    "found for it in the collection. Answer the question using those passages and the ones given earlier in "
    "the conversation. Cite the passages you use with their numbers, like [1] or [2]. If the passages do not "
    "contain the answer, say so honestly instead of guessing."
)

# This turn's note when no passage survived the threshold (README "Retrieval"): the no-context prompt.
NO_CONTEXT_PROMPT = (
    "No passage in the collection is relevant to this question. Say plainly that the documents do not cover "
    "it, do not invent an answer from them, and suggest adding documents or rephrasing."
)

SEEN_NOTE = "Passages {numbers} above also match this question."


def passage_key(src: Source) -> tuple[str, int]:
    """What makes two retrieved passages the same passage: their document and chunk."""
    return (src.doc_id, src.chunk)


def _block(src: Source, text: str) -> str:
    header = f"[{src.n}] {src.title or src.doc_id}"
    if src.date:
        header += f" ({src.date})"
    # page / heading: set by the PDF and Markdown parsers (absent on older protocol versions).
    page, heading = getattr(src, "page", None), getattr(src, "heading", None)
    if heading:
        header += f", {heading}"
    if page is not None:
        header += f", p. {page}"
    return f"{header}\n{text}"


@dataclass(frozen=True)
class TurnPrompt:
    """This turn's last user message and the sources as the client is shown them.

    ``sources`` carry the citation numbers used in ``user``: a passage already given in an earlier turn kept
    in the prompt (``shown``) keeps that turn's number and is not repeated; new passages are numbered after
    the highest number in the conversation. ``new``: (doc_id, chunk, n) of the passages whose text is in
    ``user`` (stored with the question, so that a later turn knows them)."""

    user: str
    sources: list[Source]
    new: list[tuple[str, int, int]]


def build_turn(
    question: str,
    sources: Sequence[Source],
    passages: Sequence[str],
    shown: Mapping[tuple[str, int], int] | None = None,
) -> TurnPrompt:
    """The last user message: this turn's numbered passages (or the no-context note when none survived the
    threshold), then the question. ``shown``: passage key -> number of the passages given in the earlier
    turns that are in the prompt."""
    if not sources:
        return TurnPrompt(f"{NO_CONTEXT_PROMPT}\n\nQuestion: {question}", [], [])
    shown = shown or {}
    next_n = max(shown.values(), default=0) + 1
    numbered: list[Source] = []
    blocks: list[str] = []
    seen: list[int] = []
    new: list[tuple[str, int, int]] = []
    for src, text in zip(sources, passages, strict=True):
        key = passage_key(src)
        if key in shown:
            numbered.append(src.model_copy(update={"n": shown[key]}))
            seen.append(shown[key])
            continue
        src = src.model_copy(update={"n": next_n})
        next_n += 1
        numbered.append(src)
        blocks.append(_block(src, text))
        new.append((src.doc_id, src.chunk, src.n))
    parts = []
    if blocks:
        parts.append("Passages:\n" + "\n\n".join(blocks))
    if seen:
        parts.append(SEEN_NOTE.format(numbers=", ".join(f"[{n}]" for n in sorted(seen))))
    parts.append(f"Question: {question}")
    return TurnPrompt("\n\n".join(parts), numbered, new)


@dataclass(frozen=True)
class Turn:
    role: str
    content: str
    # (doc_id, chunk, n) of the passages whose text ``content`` carries (a stored question as it was sent).
    passages: tuple[tuple[str, int, int], ...] = ()


def alternating(turns: Sequence[Turn]) -> list[Turn]:
    """``turns`` made fit for a chat model, which expects user and assistant to alternate (Bedrock's
    Converse refuses anything else): consecutive turns of one role are merged, and a trailing user turn
    that got no answer is dropped (the question follows it). Stored conversations alternate; a client's
    messages, and conversations stored before turns were serialized, may not."""
    merged: list[Turn] = []
    for t in turns:
        if merged and merged[-1].role == t.role:
            merged[-1] = Turn(t.role, f"{merged[-1].content}\n\n{t.content}", merged[-1].passages + t.passages)
        else:
            merged.append(t)
    while merged and merged[-1].role == "user":
        merged.pop()
    return merged


HISTORY_LOW_WATER = 0.5  # a trim keeps at most this share of the history budget


def fit_history(turns: Sequence[Turn], budget: int, count: Callable[[str], int]) -> list[Turn]:
    """The earlier turns to put in the prompt, oldest first: a suffix of ``turns`` within ``budget`` tokens.

    Whole user/assistant pairs are kept together so the model never sees an answer without its question, and
    the kept turns start with a user turn. The start moves in steps, for prefix reuse: the conversation is
    replayed from its first turn, and only when the kept turns exceed the budget are the oldest pairs dropped,
    down to ``HISTORY_LOW_WATER`` of it. So the prompt's start stays put for the next turns until the budget
    is reached again, and a model server keeping evaluated prefixes re-evaluates the whole history once per
    trim instead of at every turn (dropping one pair per turn would change the prompt's start every time).
    The answer depends only on ``turns``: no state is kept between calls.
    """
    units: list[tuple[int, int]] = []  # (start, end) of each pair, or of a lone turn, in order
    k = 0
    while k < len(turns):
        pair = turns[k].role == "user" and k + 1 < len(turns) and turns[k + 1].role == "assistant"
        units.append((k, k + 2 if pair else k + 1))
        k = units[-1][1]
    costs = [sum(count(t.content) for t in turns[a:b]) for a, b in units]
    start, used = 0, 0
    for u, cost in enumerate(costs):
        used += cost
        if used > budget:
            while start < u and used > budget * HISTORY_LOW_WATER:
                used -= costs[start]
                start += 1
            if used > budget:  # this pair alone is over the budget: nothing before the next one is kept
                start, used = u + 1, 0
    kept = list(turns[units[start][0] :]) if start < len(units) else []
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
