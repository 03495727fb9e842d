"""``localrag calibrate`` validated on SciFact: its unlabelled recommendation vs the labelled optimum.

    python -m bench.calibrate_scifact --db DIR     # DIR: a SciFact index (ingested here if empty, ~20 min)

The corpus (5,183 abstracts) is ingested through the real ingestion path as bench/eval_scifact.py does;
then shared/client/calibrate.py's ``run`` -- the code behind ``localrag calibrate`` -- is given the chat
function's own pieces in process instead of the wire: ``VectorStore.sample_chunks`` (what the
sample_chunks action answers) and ``ChatService.retrieve`` with max_distance 2.0 (what the search action
answers). No qrels are read by the calibration. Its recommendation is then priced on the labels: the share of
relevant top-10 documents it would drop and of the 60 off-topic questions of bench/offtopic_questions.txt
it would give no sources, read from the labelled sweep of bench/results/scifact.json (``make eval``), whose
own recommendation (the labelled optimum, README "Threshold calibration") is 0.70.
Writes bench/results/calibrate-scifact.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench import eval_scifact as scifact
from shared.client.calibrate import GRID, quantiles, run, table

RESULTS = Path(__file__).resolve().parent / "results"


def labelled_row(sweep: list[dict[str, Any]], threshold: float) -> dict[str, Any] | None:
    for row in sweep:
        if abs(row["threshold"] - threshold) < 1e-9:
            return {
                "relevant_top10_dropped_hybrid": row["relevant_dropped_top10"]["hybrid"]["share_dropped"],
                "offtopic_no_sources_hybrid": row["offtopic_no_sources"]["hybrid"],
            }
    return None


def first_threshold_with_sources(chat: Any, question: str) -> float:
    """The smallest threshold of the sweep at which the chat's retrieve() (its top_k, hybrid) keeps a source
    (3.0 if none does): as bench/eval_scifact.py measures it."""
    lo, hi = 0, len(scifact.THRESHOLDS)
    while lo < hi:
        mid = (lo + hi) // 2
        if chat.retrieve(question, None, scifact.THRESHOLDS[mid], "hybrid", tenant=scifact.TENANT).sources:
            hi = mid
        else:
            lo = mid + 1
    return scifact.THRESHOLDS[lo] if lo < len(scifact.THRESHOLDS) else 3.0


def relabel(chat: Any, data: Path, present: set[str]) -> dict[str, Any]:
    """make eval's threshold calibration (hybrid) on the documents in the index, with their qrels."""
    from concurrent.futures import ThreadPoolExecutor
    from functools import partial

    corpus = scifact.load(data, "test", None, None)
    qrels = {q: {d: g for d, g in rel.items() if d in present} for q, rel in corpus.qrels.items()}
    qrels = {q: rel for q, rel in qrels.items() if rel}
    queries = {q: corpus.queries[q] for q in qrels}
    results = scifact.run_queries(scifact.retriever(chat, "hybrid", 100), queries)
    offtopic = scifact.load_offtopic()
    with ThreadPoolExecutor(max_workers=2) as pool:
        off_min = list(pool.map(partial(first_threshold_with_sources, chat), offtopic))
    rows = [
        {
            "threshold": t,
            "relevant_dropped_top10": {"hybrid": scifact.dropped_relevant(results, qrels, t, 10)},
            "offtopic_no_sources": {"hybrid": scifact.offtopic_rejected(off_min, t)},
        }
        for t in scifact.THRESHOLDS
    ]
    best, reason = scifact.recommend(rows, "hybrid", 0.03)
    return {"recommended": best, "reason": reason, "sweep": rows, "queries": len(queries)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.calibrate_scifact", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=scifact.DEFAULT_DATA)
    p.add_argument("--db", type=Path, default=None, help="the SciFact index (reused if it holds chunks)")
    p.add_argument("--probes", type=int, default=300)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="one calibration per seed")
    p.add_argument("--labelled", type=Path, default=RESULTS / "scifact.json", help="make eval's results")
    p.add_argument("--relabel", action="store_true", help="compute the labelled sweep on this index instead")
    p.add_argument("--out", type=Path, default=RESULTS / "calibrate-scifact.json")
    args = p.parse_args(argv)

    labelled = json.loads(args.labelled.read_text())["calibration"]
    report: dict[str, Any] = {"labelled_optimum": labelled["recommended"], "labelled_reason": labelled["reason"]}
    tmp = tempfile.TemporaryDirectory(prefix="calibrate-scifact-")
    db = args.db or Path(tmp.name)
    db.mkdir(parents=True, exist_ok=True)
    emb = scifact.start_embedding(db / "logs")
    try:
        ns = argparse.Namespace(
            batch_size=64,
            chunk_tokens=scifact._ingestion_default("chunk_tokens"),
            chunk_overlap=scifact._ingestion_default("chunk_overlap_tokens"),
            rrf_k=None,
        )
        ingestion, chat = scifact.build_services(db, emb.url, ns)
        if not ingestion.store.count_chunks(tenant=scifact.TENANT):
            corpus = scifact.load(args.data, "test", None, None)
            print(f"ingesting {len(corpus.docs)} documents ...", flush=True)
            scifact.ingest_batches(ingestion, scifact.documents(corpus.docs), 100)
            ingestion.store.optimize()
        store = chat.store
        present = {str(d) for d in store.indexed_doc_ids(tenant=scifact.TENANT)}
        report["documents_indexed"] = len(present)
        if args.relabel:
            # The labelled sweep on this index as it is (e.g. a part of the corpus): the qrels of the
            # documents present, the same measures as make eval.
            labelled = relabel(chat, args.data, present)
            report.update(labelled_optimum=labelled["recommended"], labelled_reason=labelled["reason"])
            report["labelled_sweep"] = labelled["sweep"]
            print(f"labelled optimum on this index: {labelled['recommended']} ({labelled['reason']})", flush=True)

        async def sample(count: int, seed: int) -> tuple[int, list[tuple[str, int, str]]]:
            total, rows = store.sample_chunks(count, tenant=scifact.TENANT, seed=seed)
            return total, [(r["doc_id"], int(r["chunk"]), r["text"]) for r in rows]

        async def nearest(query: str) -> float | None:
            found = chat.retrieve(query, None, 2.0, tenant=scifact.TENANT).sources
            return min((s.distance for s in found), default=None)

        runs = []
        for seed in args.seeds:
            cal = asyncio.run(run(sample, nearest, probes=args.probes, seed=seed))
            row = labelled_row(labelled["sweep"], cal.recommended)
            runs.append(
                {
                    "seed": seed,
                    "recommended": cal.recommended,
                    "reason": cal.reason,
                    "in_topic_quantiles": quantiles(cal.in_topic),
                    "off_topic_quantiles": quantiles(cal.off_topic),
                    "sweep": cal.to_json()["sweep"],
                    "priced_on_labels": row,
                }
            )
            print(f"seed {seed}: recommended {cal.recommended} ({cal.reason}); on the labels: {row}", flush=True)
            print(table(cal, labelled["recommended"], highlight=[t for t in GRID if 0.45 <= t <= 0.9]), flush=True)
        report["runs"] = runs
        report["labelled_quantiles"] = labelled.get("distance_quantiles")
        report["probes"] = args.probes
    finally:
        emb.stop()
        tmp.cleanup()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
