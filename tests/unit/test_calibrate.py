"""Threshold calibration maths (shared/client/calibrate.py): the sweep, the recommendation, the probes."""

from __future__ import annotations

import asyncio
import random

import pytest

from shared.client.calibrate import GRID, OFFTOPIC_PROBES, probe_sentence, recommend, run, sweep


def test_the_sweep_counts_misses_above_and_off_topic_hits_at_or_below_each_threshold() -> None:
    rows = {r.threshold: r for r in sweep([0.2, 0.4, 0.6, 0.8], [0.5, 0.9], grid=(0.4, 0.5, 0.8))}
    assert (rows[0.4].in_topic_missed, rows[0.4].off_topic_answered) == (0.5, 0.0)
    assert (rows[0.5].in_topic_missed, rows[0.5].off_topic_answered) == (0.5, 0.5)  # 0.5 <= 0.5 gets passages
    assert (rows[0.8].in_topic_missed, rows[0.8].off_topic_answered) == (0.0, 0.5)


def test_the_recommendation_is_the_in_topic_floor_or_the_off_topic_ceiling_whichever_is_larger() -> None:
    in_topic = [0.30 + 0.004 * i for i in range(100)]  # 0.30 .. 0.696
    off_topic = [0.55 + 0.01 * i for i in range(40)]  # 0.55 .. 0.94
    # Floor: 0.70 (0.65 leaves 12% of in-topic probes without passages). Ceiling: 0.60 gives 6 of 40 off-topic
    # probes (15%) passages, 0.65 gives 11 (27.5%). The floor wins.
    best, reason = recommend(in_topic, off_topic, max_miss=0.03, max_leak=0.15)
    assert best == 0.7 and "smallest threshold leaving" in reason
    # A larger miss budget lowers the floor to 0.65; the ceiling (0.60) is still below it.
    assert recommend(in_topic, off_topic, max_miss=0.20, max_leak=0.15)[0] == 0.65
    # Off-topic probes far out: the ceiling is above the floor and wins.
    far = [0.80 + 0.01 * i for i in range(20)]  # 0.80 .. 0.99
    best, reason = recommend(in_topic, far, max_miss=0.03, max_leak=0.15)
    assert best == 0.8 and "largest threshold giving" in reason  # 0.80: 1 of 20 (5%); 0.85: 6 of 20 (30%)


def test_without_off_topic_probes_the_floor_is_recommended() -> None:
    assert recommend([0.2 + 0.002 * i for i in range(100)], [])[0] == 0.4


def test_a_corpus_far_from_its_own_sentences_gets_the_largest_threshold_and_says_why() -> None:
    best, reason = recommend([1.5] * 10, [0.9])
    assert best == GRID[-1] and "no threshold" in reason
    with pytest.raises(ValueError):
        recommend([], [0.9])


def test_probe_sentences_are_sentences_of_the_chunk_of_a_question_like_length() -> None:
    text = "Short. " + "The author settled on a cosine distance threshold of 1.2 for the entries. " + "x " * 80
    rng = random.Random(1)
    assert probe_sentence(text, rng) == "The author settled on a cosine distance threshold of 1.2 for the entries."
    assert probe_sentence("word " * 100, rng) == " ".join(["word"] * 30)  # no sentence fits: the first 30 words


def test_run_probes_each_sampled_chunk_once_and_every_off_topic_question() -> None:
    chunks = [(f"d{i}", 0, f"Sentence number {i} about lava flows and basalt rock.") for i in range(7)]
    asked: list[str] = []

    async def sample(count: int, seed: int) -> tuple[int, list[tuple[str, int, str]]]:
        return len(chunks), random.Random(seed).sample(chunks, min(count, len(chunks)))

    async def nearest(q: str) -> float | None:
        asked.append(q)
        return 0.3 if "lava" in q else None  # nothing at all retrieved counts as distance 2.0

    cal = asyncio.run(run(sample, nearest, probes=50, offtopic=["How tall is Everest?"], seed=3))
    assert sorted(cal.in_topic) == [0.3] * 7 and cal.off_topic == [2.0] and cal.chunks_total == 7
    assert len(asked) == 8
    assert cal.to_json()["off_topic_quantiles"]["min"] == 2.0


def test_the_shipped_off_topic_list_is_questions_and_not_the_benchs() -> None:
    from pathlib import Path

    bench = Path(__file__).resolve().parents[2] / "bench" / "offtopic_questions.txt"
    assert len(OFFTOPIC_PROBES) >= 50 and len(set(OFFTOPIC_PROBES)) == len(OFFTOPIC_PROBES)
    assert all(q.endswith("?") for q in OFFTOPIC_PROBES)
    assert not set(OFFTOPIC_PROBES) & set(bench.read_text().splitlines())
