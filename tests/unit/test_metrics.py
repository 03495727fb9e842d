"""The IR metrics of bench/metrics.py on hand-made cases whose answers are worked out by hand."""

from __future__ import annotations

import math
import random

import pytest

from bench.metrics import evaluate, evaluate_with_ir_measures, mrr_at_k, ndcg_at_k, recall_at_k

LOG2_3 = math.log2(3)


def test_ndcg_single_relevant_at_rank_two() -> None:
    # DCG = 1/log2(3); IDCG = 1/log2(2) = 1.
    assert ndcg_at_k(["a", "b", "c"], {"b": 1}, 10) == pytest.approx(1 / LOG2_3)


def test_ndcg_two_relevant_at_ranks_one_and_three() -> None:
    # DCG = 1 + 1/log2(4) = 1.5; IDCG = 1 + 1/log2(3).
    assert ndcg_at_k(["a", "b", "c"], {"a": 1, "c": 1}, 10) == pytest.approx(1.5 / (1 + 1 / LOG2_3))


def test_ndcg_perfect_and_empty() -> None:
    assert ndcg_at_k(["a", "b"], {"a": 1, "b": 1}, 10) == pytest.approx(1.0)
    assert ndcg_at_k(["x", "y"], {"a": 1}, 10) == 0.0
    assert ndcg_at_k([], {"a": 1}, 10) == 0.0
    assert ndcg_at_k(["a"], {}, 10) == 0.0  # no relevant document: defined as 0


def test_ndcg_graded_uses_linear_gain() -> None:
    # trec_eval: gain = grade. DCG = 1 + 2/log2(3); IDCG = 2 + 1/log2(3).
    assert ndcg_at_k(["b", "a"], {"a": 2, "b": 1}, 10) == pytest.approx((1 + 2 / LOG2_3) / (2 + 1 / LOG2_3))


def test_ndcg_cutoff_and_ideal_truncated_at_k() -> None:
    ranking = [f"x{i}" for i in range(10)] + ["a"]
    assert ndcg_at_k(ranking, {"a": 1}, 10) == 0.0  # rank 11 is past the cut
    # Three relevant, k = 2: IDCG counts only two of them, so two hits on top is perfect.
    assert ndcg_at_k(["a", "b", "c"], {"a": 1, "b": 1, "c": 1}, 2) == pytest.approx(1.0)


def test_recall_at_k() -> None:
    rel = {"a": 1, "b": 1, "c": 1, "d": 1}
    assert recall_at_k(["a", "x", "b"], rel, 10) == pytest.approx(0.5)
    assert recall_at_k(["a", "x", "b"], rel, 1) == pytest.approx(0.25)
    ranking = [f"x{i}" for i in range(10)] + ["a"]
    assert recall_at_k(ranking, {"a": 1}, 10) == 0.0
    assert recall_at_k(ranking, {"a": 1}, 100) == 1.0
    assert recall_at_k(["a"], {"a": 0, "b": 1}, 10) == 0.0  # grade 0 is not relevant


def test_mrr_at_k() -> None:
    assert mrr_at_k(["a", "b", "c"], {"c": 1}, 10) == pytest.approx(1 / 3)
    assert mrr_at_k(["a", "b", "c"], {"b": 1, "c": 1}, 10) == pytest.approx(1 / 2)  # the first one counts
    assert mrr_at_k([f"x{i}" for i in range(10)] + ["a"], {"a": 1}, 10) == 0.0


def test_duplicates_count_once() -> None:
    # Chunks of one document may appear several times; only its first (best) rank counts.
    assert mrr_at_k(["x", "x", "a"], {"a": 1}, 10) == pytest.approx(1 / 2)
    assert recall_at_k(["x", "x", "a"], {"a": 1}, 2) == 1.0


def test_evaluate_averages_over_qrels_queries() -> None:
    qrels = {"q1": {"a": 1}, "q2": {"b": 1}, "q3": {"c": 1}}
    run = {"q1": ["a"], "q2": ["x", "b"]}  # q3 missing: scores 0
    m = evaluate(run, qrels)
    assert m["mrr@10"] == pytest.approx((1 + 0.5 + 0) / 3)
    assert m["recall@10"] == pytest.approx(2 / 3)
    assert m["ndcg@10"] == pytest.approx((1 + 1 / LOG2_3) / 3)
    with pytest.raises(ValueError):
        evaluate(run, {"q": {"a": 0}})


def test_agrees_with_ir_measures_on_random_runs() -> None:
    rng = random.Random(7)
    docs = [f"d{i}" for i in range(150)]
    qrels = {f"q{i}": {d: rng.choice([1, 1, 2]) for d in rng.sample(docs, rng.randint(1, 5))} for i in range(40)}
    run = {q: rng.sample(docs, 120) for q in qrels}
    ours = evaluate(run, qrels)
    theirs = evaluate_with_ir_measures(run, qrels)
    assert theirs is not None
    for name, value in ours.items():
        assert value == pytest.approx(theirs[name], abs=1e-4), name
