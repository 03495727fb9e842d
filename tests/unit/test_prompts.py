"""Prompt building and history budgeting: pure functions."""

from __future__ import annotations

from chat.prompts import NO_CONTEXT_PROMPT, Turn, approx_tokens, build_system_prompt, excerpt, fit_history
from shared.protocol import Source


def src(n: int, title: str) -> Source:
    return Source(n=n, doc_id=f"d{n}", title=title, chunk=0, distance=0.3, excerpt="", date="2025-01-01")


def test_no_sources_gives_the_no_context_prompt() -> None:
    assert build_system_prompt([], []) == NO_CONTEXT_PROMPT
    assert "not cover" in NO_CONTEXT_PROMPT


def test_sources_are_numbered_in_the_prompt() -> None:
    prompt = build_system_prompt([src(1, "Volcanoes"), src(2, "Lava")], ["magma rises", "lava flows"])
    assert "[1] Volcanoes (2025-01-01)\nmagma rises" in prompt
    assert "[2] Lava (2025-01-01)\nlava flows" in prompt
    assert prompt != NO_CONTEXT_PROMPT and "[1]" in prompt.split("Passages:")[0]


def test_fit_history_keeps_newest_pairs_within_budget() -> None:
    turns = [Turn("user" if i % 2 == 0 else "assistant", "x" * 40) for i in range(6)]  # 10 tokens each
    assert fit_history(turns, 1000, approx_tokens) == turns
    kept = fit_history(turns, 45, approx_tokens)
    assert kept == turns[-4:]  # two whole pairs (40 tokens); a third would exceed 45
    assert fit_history(turns, 15, approx_tokens) == []  # a pair costs 20: nothing fits
    assert fit_history(turns, 0, approx_tokens) == []


def test_fit_history_never_starts_with_an_assistant_turn() -> None:
    turns = [Turn("assistant", "hello"), Turn("user", "q"), Turn("assistant", "a")]
    assert fit_history(turns, 1000, approx_tokens)[0].role == "user"


def test_excerpt_cuts_on_a_word() -> None:
    assert excerpt("a  b\n c", 100) == "a b c"
    cut = excerpt("alpha beta gamma delta", 12)
    assert cut == "alpha beta…"
