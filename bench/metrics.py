"""Standard IR metrics (the trec_eval / BEIR definitions), pure Python.

A run maps query id -> ranked list of document ids (best first); qrels map query id -> {doc id: grade}.
Grades > 0 are relevant. Per-query values are averaged over the queries of ``qrels`` (a query the run
has no list for scores 0), as BEIR does with pytrec_eval.

- nDCG@k: DCG@k / IDCG@k, DCG = sum over ranks i = 1..k of grade_i / log2(i + 1) (trec_eval's linear
  gain; for SciFact's binary grades it is the same as the exponential gain 2^grade - 1).
- Recall@k: |relevant in the top k| / |relevant|.
- MRR@k: 1 / rank of the first relevant document in the top k, 0 if none.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

Run = Mapping[str, Sequence[str]]
Qrels = Mapping[str, Mapping[str, int]]


def _dedupe(ranking: Sequence[str]) -> list[str]:
    seen: set[str] = set()
    out = []
    for doc in ranking:
        if doc not in seen:
            seen.add(doc)
            out.append(doc)
    return out


def ndcg_at_k(ranking: Sequence[str], relevant: Mapping[str, int], k: int) -> float:
    grades = [g for g in relevant.values() if g > 0]
    if not grades:
        return 0.0
    dcg = sum(relevant.get(doc, 0) / math.log2(i + 1) for i, doc in enumerate(_dedupe(ranking)[:k], start=1))
    ideal = sorted(grades, reverse=True)[:k]
    idcg = sum(g / math.log2(i + 1) for i, g in enumerate(ideal, start=1))
    return max(dcg, 0.0) / idcg


def recall_at_k(ranking: Sequence[str], relevant: Mapping[str, int], k: int) -> float:
    rel = {doc for doc, g in relevant.items() if g > 0}
    if not rel:
        return 0.0
    return len(rel.intersection(_dedupe(ranking)[:k])) / len(rel)


def mrr_at_k(ranking: Sequence[str], relevant: Mapping[str, int], k: int) -> float:
    for i, doc in enumerate(_dedupe(ranking)[:k], start=1):
        if relevant.get(doc, 0) > 0:
            return 1.0 / i
    return 0.0


METRICS = {
    "ndcg@10": lambda r, q: ndcg_at_k(r, q, 10),
    "recall@10": lambda r, q: recall_at_k(r, q, 10),
    "recall@100": lambda r, q: recall_at_k(r, q, 100),
    "mrr@10": lambda r, q: mrr_at_k(r, q, 10),
}


def evaluate(run: Run, qrels: Qrels) -> dict[str, float]:
    """Mean nDCG@10, Recall@10, Recall@100 and MRR@10 over the queries of ``qrels``."""
    queries = [q for q, rel in qrels.items() if any(g > 0 for g in rel.values())]
    if not queries:
        raise ValueError("no query with a relevant document")
    out = {}
    for name, fn in METRICS.items():
        out[name] = sum(fn(run.get(q, ()), qrels[q]) for q in queries) / len(queries)
    return out


def evaluate_with_ir_measures(run: Run, qrels: Qrels) -> dict[str, float] | None:
    """The same four numbers from the ir-measures package (pytrec_eval), when it is installed."""
    try:
        import ir_measures
        from ir_measures import RR, R, nDCG
    except ImportError:
        return None
    measures = {"ndcg@10": nDCG @ 10, "recall@10": R @ 10, "recall@100": R @ 100, "mrr@10": RR @ 10}
    qrels_rows = [ir_measures.Qrel(q, d, int(g)) for q, rel in qrels.items() for d, g in rel.items()]
    # Scores strictly decreasing with rank, so trec_eval's tie-breaking never reorders the list.
    run_rows = [
        ir_measures.ScoredDoc(q, d, float(len(docs) - i))
        for q, docs in run.items()
        for i, d in enumerate(_dedupe(docs))
    ]
    agg = ir_measures.calc_aggregate(list(measures.values()), qrels_rows, run_rows)
    return {name: float(agg[m]) for name, m in measures.items()}
