"""Prompt building and history budgeting: pure functions."""

from __future__ import annotations

import itertools

from chat.prompts import (
    NO_CONTEXT_PROMPT,
    SYSTEM_PROMPT,
    Turn,
    alternating,
    approx_tokens,
    build_turn,
    excerpt,
    fit_history,
)
from shared.protocol import Source


def src(n: int, title: str) -> Source:
    return Source(n=n, doc_id=f"d{n}", title=title, chunk=0, distance=0.3, excerpt="", date="2025-01-01")


def test_no_sources_gives_the_no_context_prompt() -> None:
    turn = build_turn("Why?", [], [])
    assert turn.user == f"{NO_CONTEXT_PROMPT}\n\nQuestion: Why?" and turn.sources == [] and turn.new == []
    assert "not cover" in NO_CONTEXT_PROMPT


def test_sources_are_numbered_in_the_last_user_message_before_the_question() -> None:
    turn = build_turn("What flows?", [src(1, "Volcanoes"), src(2, "Lava")], ["magma rises", "lava flows"])
    assert turn.user.startswith("Passages:\n[1] Volcanoes (2025-01-01)\nmagma rises\n\n[2] Lava (2025-01-01)\n")
    assert turn.user.endswith("lava flows\n\nQuestion: What flows?")
    assert [s.n for s in turn.sources] == [1, 2] and turn.new == [("d1", 0, 1), ("d2", 0, 2)]
    # The system prompt is the same for every question: nothing of this turn is in it.
    assert "[1]" in SYSTEM_PROMPT and "Volcanoes" not in SYSTEM_PROMPT


def test_passages_given_earlier_keep_their_number_and_are_not_repeated() -> None:
    # d2 was given as [4] in an earlier turn still in the prompt: cited as [4], its text not sent again;
    # the new passage is numbered after the conversation's highest number.
    turn = build_turn(
        "More?", [src(2, "Lava"), src(3, "Ash")], ["lava flows", "ash falls"], {("d2", 0): 4, ("d9", 0): 5}
    )
    assert [s.n for s in turn.sources] == [4, 6] and [s.doc_id for s in turn.sources] == ["d2", "d3"]
    assert "lava flows" not in turn.user and "[6] Ash (2025-01-01)\nash falls" in turn.user
    assert "Passages [4] above also match this question." in turn.user
    assert turn.new == [("d3", 0, 6)]
    # Only already-given passages: no passage text, the note and the question.
    again = build_turn("Again?", [src(2, "Lava")], ["lava flows"], {("d2", 0): 4})
    assert again.user == "Passages [4] above also match this question.\n\nQuestion: Again?" and again.new == []


def test_merged_turns_keep_the_passages_they_carry() -> None:
    merged = alternating(
        [Turn("user", "a", (("d1", 0, 1),)), Turn("user", "b", (("d2", 0, 2),)), Turn("assistant", "x")]
    )
    assert merged[0].passages == (("d1", 0, 1), ("d2", 0, 2)) and merged[0].content == "a\n\nb"


def test_fit_history_keeps_newest_pairs_within_budget() -> None:
    turns = [Turn("user" if i % 2 == 0 else "assistant", "x" * 40) for i in range(6)]  # 10 tokens each
    assert fit_history(turns, 1000, approx_tokens) == turns
    assert fit_history(turns, 60, approx_tokens) == turns  # three pairs of 20 tokens: exactly the budget
    # 60 > 45: the oldest pairs go until at most half the budget (22) is left: one pair.
    assert fit_history(turns, 45, approx_tokens) == turns[-2:]
    assert fit_history(turns, 15, approx_tokens) == []  # a pair costs 20: nothing fits
    assert fit_history(turns, 0, approx_tokens) == []


def test_fit_history_moves_its_start_only_when_the_budget_is_reached() -> None:
    """A growing conversation: the kept history's first turn changes only at a trim, and every trim leaves at
    most half the budget, so most follow-ups start with the previous turn's prompt (prefix reuse)."""
    budget, starts, conversation = 100, [], []
    for i in range(40):
        conversation += [Turn("user", f"q{i} " + "x" * 60), Turn("assistant", f"a{i} " + "y" * 40)]  # ~27 tokens
        kept = fit_history(conversation, budget, approx_tokens)
        assert kept and kept[0].role == "user" and kept == conversation[len(conversation) - len(kept) :]
        assert sum(approx_tokens(t.content) for t in kept) <= budget
        starts.append(len(conversation) - len(kept))
    moves = [b for a, b in itertools.pairwise(starts) if a != b]
    assert moves == sorted(set(moves))  # the start only moves forward
    assert 0 < len(moves) <= len(starts) // 2  # ... and at most every other turn (every turn when trimming one pair)
    dropped_one_pair_each_turn = sum(1 for a, b in itertools.pairwise(starts) if b == a + 2)
    assert dropped_one_pair_each_turn < len(moves)  # trims drop several pairs at once


def test_fit_history_never_starts_with_an_assistant_turn() -> None:
    turns = [Turn("assistant", "hello"), Turn("user", "q"), Turn("assistant", "a")]
    assert fit_history(turns, 1000, approx_tokens)[0].role == "user"


def test_excerpt_cuts_on_a_word() -> None:
    assert excerpt("a  b\n c", 100) == "a b c"
    cut = excerpt("alpha beta gamma delta", 12)
    assert cut == "alpha beta…"
