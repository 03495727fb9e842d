"""Embedding backends: all-MiniLM-L6-v2 on ONNX Runtime (``EMBEDDING_BACKEND=onnx``, the default) against
torch (the baseline), both loaded in this process by the embedding service's own ``load_model``, in one run.

Speed: three workloads the service sees — a query alone (SciFact queries), a document chunk alone (a
SciFact abstract, truncated at the model's 256 tokens, as a Kinesis record's document is), and a batch of
32 abstracts (an ingestion) — each sample encoded by both backends back to back, the side going first
rotating, so the machine's drift hits all alike. Three sides: ``product`` (the service's defaults: ONNX,
batches over ``EMBEDDING_ONNX_MAX_TOKENS`` padded tokens to torch), ``onnx`` (every batch on ONNX) and
``torch``. Reports p50/p90 per side and the median of the per-sample ratios to torch.

Quality: the SciFact corpus embedded by both, exact cosine top-10 for every test query: the largest vector
difference, the queries whose top-10 is the same list, and nDCG@10 of each (what retrieval sees).

    python -m bench.embedding             # make bench-embedding; bench/results/embedding.json (~6 min)
    python -m bench.embedding --quick     # small numbers: checks the bench runs (not a measurement)
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench.eval_scifact import DEFAULT_DATA, load
from bench.load import percentile
from bench.metrics import ndcg_at_k
from shared.timing import iso_utc

RESULTS = Path(__file__).resolve().parent / "results"


def stats(values: list[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "p50_ms": round(percentile(values, 0.5), 2),
        "p90_ms": round(percentile(values, 0.9), 2),
        "mean_ms": round(statistics.fmean(values), 2),
    }


def paired(
    samples: Sequence[list[str]], sides: Mapping[str, Callable[[list[str]], Any]], warmup: int
) -> dict[str, Any]:
    """Each sample through every side back to back, the order rotating; the first ``warmup`` not kept."""
    names = list(sides)
    times: dict[str, list[float]] = {n: [] for n in names}
    for i, sample in enumerate(samples):
        order = names[i % len(names) :] + names[: i % len(names)]
        for name in order:
            t0 = time.perf_counter()
            sides[name](sample)
            ms = (time.perf_counter() - t0) * 1000
            if i >= warmup:
                times[name].append(ms)
    out: dict[str, Any] = {n: stats(times[n]) for n in names}
    for name in names:
        if name != "torch":
            ratios = [o / t for o, t in zip(times[name], times["torch"], strict=True)]
            out[f"{name}_to_torch_paired_median"] = round(statistics.median(ratios), 3)
    return out


def quality(models: dict[str, Any], docs: list[dict[str, str]], corpus: Any) -> dict[str, Any]:
    texts = [f"{d.get('title', '')}. {d['text']}" for d in docs]
    ids = [d["_id"] for d in docs]
    qids = list(corpus.queries)
    queries = [corpus.queries[q] for q in qids]
    out: dict[str, Any] = {"documents": len(texts), "queries": len(qids)}
    vectors: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    rankings: dict[str, list[list[str]]] = {}
    for name, model in models.items():
        t0 = time.perf_counter()
        doc_vecs = np.concatenate([model.encode(texts[i : i + 32]) for i in range(0, len(texts), 32)])
        out[f"{name}_corpus_encode_s"] = round(time.perf_counter() - t0, 1)
        query_vecs = model.encode(queries)
        vectors[name] = (doc_vecs, query_vecs)
        top = np.argsort(-(query_vecs @ doc_vecs.T), axis=1)[:, :10]
        rankings[name] = [[ids[j] for j in row] for row in top]
        scores = [ndcg_at_k(r, corpus.qrels[q], 10) for r, q in zip(rankings[name], qids, strict=True)]
        out[f"{name}_ndcg_at_10"] = round(statistics.fmean(scores), 4)
    out["max_abs_vector_difference"] = float(
        max(np.abs(vectors["onnx"][i] - vectors["torch"][i]).max() for i in range(2))
    )
    same = sum(a == b for a, b in zip(rankings["onnx"], rankings["torch"], strict=True))
    out["queries_with_the_same_top10"] = f"{same}/{len(qids)}"
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.embedding", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--samples", type=int, default=200, help="samples of each single-text workload")
    parser.add_argument("--batches", type=int, default=30, help="batches of 32 abstracts")
    parser.add_argument(
        "--quality-docs", type=int, default=1000, help="corpus size for the quality check (0: all 5,183)"
    )
    parser.add_argument("--quick", action="store_true", help="tiny run: checks the bench works")
    parser.add_argument("--out", type=Path, default=RESULTS / "embedding.json")
    args = parser.parse_args(argv)
    if args.quick:
        args.samples, args.batches, args.quality_docs = 12, 4, 200

    from embedding.model import load_model

    with tempfile.TemporaryDirectory(prefix="bench-embedding-") as tmp:
        t0 = time.perf_counter()
        product = load_model(None, "cpu", "onnx", Path(tmp))  # the service's defaults
        onnx_load_s = time.perf_counter() - t0
        onnx = load_model(None, "cpu", "onnx", Path(tmp), onnx_max_tokens=1 << 40)  # every batch on ONNX
        torch = load_model(None, "cpu", "torch")
        if onnx.backend != "onnx":
            raise SystemExit("the ONNX backend was refused (see the log); nothing to compare")
        sides: dict[str, Callable[[list[str]], Any]] = {
            "product": product.encode,
            "onnx": onnx.encode,
            "torch": torch.encode,
        }

        split = "test"
        corpus = load(args.data, split, args.quality_docs or None, None)
        all_docs = load(args.data, split, None, None).docs
        queries = list(corpus.queries.values())
        abstracts = [f"{d.get('title', '')}. {d['text']}" for d in all_docs]
        warm = 5
        n = args.samples + warm
        workloads = {
            "query": paired([[queries[i % len(queries)]] for i in range(n)], sides, warm),
            "document_chunk": paired([[abstracts[i % len(abstracts)]] for i in range(n)], sides, warm),
            "batch_of_32": paired(
                [abstracts[(i * 32) % len(abstracts) :][:32] for i in range(args.batches + 2)], sides, 2
            ),
        }
        result = {
            "benchmark": "embedding backends: ONNX Runtime vs torch (baseline), same model, in one process",
            "command": "make bench-embedding",
            "date": iso_utc(),
            "machine": {"platform": platform.platform(), "python": platform.python_version(), "cores": _cores()},
            "model": onnx.name,
            "onnx_export_and_check_s": round(onnx_load_s, 1),
            "workloads": workloads,
            "product_batches_by_backend": product.batches_by_backend,
            "quality": quality({"onnx": onnx, "torch": torch}, corpus.docs, corpus),
        }
    if not args.quick:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


def _cores() -> int:
    import os

    return os.cpu_count() or 1


if __name__ == "__main__":
    main()
