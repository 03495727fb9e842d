"""Follow-up questions retrieve in context: a rule, no LLM call.

"And how does that trade latency against cost?" names neither the thing it is about nor the document:
retrieved on its own words it finds whatever passage talks about latency and cost. A follow-up is
expanded with the key terms of the earlier question(s) of the conversation before retrieval; the
question the model answers is unchanged (it sees the earlier turns anyway).

A message is a follow-up when it is short (at most FOLLOWUP_MAX_WORDS content words) and either refers
back (a pronoun or demonstrative: "it", "that", "those", ...) or opens like a continuation ("and ...",
"what about ...", "also ..."), or when it is very short (at most TERSE_WORDS content words: "why?",
"the cost?"). Anything else is a question of its own and retrieves on its own words. The earlier
question whose terms are added is the last user turn; when that one was itself a follow-up, the one
before it too (so a chain of follow-ups keeps its topic). Measured in bench/eval_answers.py (follow-up
retrieval hit rate with and without, README "Answer quality"); RAG_FOLLOWUP_REWRITE=false turns it off.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Protocol

FOLLOWUP_MAX_WORDS = 8
TERSE_WORDS = 1
# Earlier user turns whose terms may be added (the last one, and the one before when the last was a follow-up).
MAX_EARLIER_QUESTIONS = 2
MAX_ADDED_TERMS = 12

_WORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.'+-]*[A-Za-z0-9]|[A-Za-z0-9]")

REFERRING = frozenset(
    re.findall(
        r"\S+",
        "it its it's itself that this these those they them their theirs there then he him his she her "
        "one ones former latter same such above previous earlier",
    )
)
CONTINUATION_OPENERS = (
    "and ",
    "but ",
    "also ",
    "so ",
    "then ",
    "what about ",
    "how about ",
    "and what about ",
    "what else",
    "anything else",
    "more ",
    "tell me more",
)
STOPWORDS = frozenset(
    re.findall(
        r"\S+",
        "a an the and or but if then so also of to in on at by for with from into onto about as than "
        "is are was were be been being am do does did doing done have has had having can could shall should "
        "will would may might must need what which who whom whose when where why how whether "
        "i me my we us our you your yours it its it's itself that this these those they them their theirs there "
        "he him his she her one ones former latter same such above previous earlier "
        "not no yes any some all each every more most much many few other else just only very too "
        "please tell explain describe show give get say said mean means let know think like "
        "s t don't doesn't isn't aren't what's how's there's",
    )
)


class TurnLike(Protocol):
    @property
    def role(self) -> str: ...

    @property
    def content(self) -> str: ...


def words(text: str) -> list[str]:
    return [w.lower().strip(".'") for w in _WORD.findall(text)]


def content_words(text: str) -> list[str]:
    """The words that carry the topic: not stopwords, not bare numbers of one digit."""
    return [w for w in words(text) if w and w not in STOPWORDS and not (w.isdigit() and len(w) == 1)]


def is_followup(question: str) -> bool:
    """Whether ``question`` leans on the conversation before it (see the module docstring)."""
    content = content_words(question)
    if len(content) <= TERSE_WORDS:
        return True
    if len(content) > FOLLOWUP_MAX_WORDS:
        return False
    lowered = " ".join(words(question))
    if any(w in REFERRING for w in words(question)):
        return True
    return lowered.startswith(CONTINUATION_OPENERS) or question.strip().lower().startswith(CONTINUATION_OPENERS)


def retrieval_query(question: str, earlier: Sequence[TurnLike], enabled: bool = True) -> str:
    """What to retrieve on for ``question`` after the turns ``earlier`` (oldest first): the question
    itself, or, for a follow-up, the question followed by the earlier question's key terms."""
    if not enabled or not is_followup(question):
        return question
    asked = [t.content for t in earlier if t.role == "user" and t.content.strip()]
    if not asked:
        return question
    sources = [asked[-1]]
    if len(asked) > 1 and is_followup(asked[-1]) and MAX_EARLIER_QUESTIONS > 1:
        sources.insert(0, asked[-2])
    have = set(content_words(question))
    added: list[str] = []
    for text in reversed(sources):  # the latest question's terms first
        for w in content_words(text):
            if w not in have:
                have.add(w)
                added.append(w)
    if not added:
        return question
    return f"{question} ({' '.join(added[:MAX_ADDED_TERMS])})"
