"""Retrieval overhead: what the product adds to a query over bare embed + search, measured in one run.

    python -m bench.retrieval            # make bench-retrieval; writes bench/results/retrieval.json (~5 min)
    python -m bench.retrieval --quick    # small numbers: checks the bench runs end to end (not a measurement)

One stack is started with the launcher ``make up`` uses (shared/stack.py: every service a process, identity
on, an API key of tenant ``bench``); the first ``--docs`` SciFact abstracts (``../shared/data/beir/scifact``)
are ingested through its WebSocket (``ingest_batch``: the real chunker and embedding service). Then for each
of ``--queries`` SciFact queries, in each search mode (vector, hybrid), three ways of retrieving, in rotating
order so that a load spike on this shared machine hits all three alike:

1. **bare**: in this process, the model the embedding service loads (``embedding.model.load_model``) encodes
   the query and ``VectorStore.search`` searches the same table with the chat function's own settings
   (top_k, max_distance, rrf_k): the work any retrieval must do. Its two parts are timed too.
2. **retrieve**: the chat function's retrieve step in this process (``chat.handler.build_service`` with the
   stack's chat environment, ``ChatService.retrieve``): the embedding call over HTTP (botocore, SigV4) to the
   embedding service + the same search. ``embed_http`` times that HTTP call alone, which splits the hops.
3. **product**: ``search`` sent on the gateway's WebSocket with the CLI's client (shared/client/ws_client.py)
   until its ``search_result`` arrives: gateway -> Invoke (SigV4) -> chat function -> embedding service ->
   LanceDB -> its return value (search is a two-way route: the Invoke's answer) -> gateway -> client.

It reports p50/p99 of each and the added milliseconds, product - bare (target: at most 5 ms at p50), and
checks that the product found the same chunks as bare. Last, the embedding service's batching under
concurrency: the same single-text embeds sent one at a time and from ``--clients`` threads at once, texts/s
and texts per model batch (its /health counters).

Every figure is one run on this machine; the JSON records the load average before and after.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from shared.protocol import SearchMode

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
DEFAULT_OUT = RESULTS / "retrieval.json"
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "beir" / "scifact"
TENANT = "bench"
MODES: tuple[SearchMode, ...] = ("vector", "hybrid")
SIDES = ("bare", "retrieve", "product")
TARGET_ADDED_P50_MS = 5.0
WARMUP = 10  # queries per mode run before measuring (first calls open connections, fill caches)
INGEST_BATCH = 50  # abstracts per ingest_batch message (well within the 128 KB message limit)


def load_corpus(data: Path, limit: int) -> list[dict[str, str]]:
    docs = []
    with (data / "corpus.jsonl").open(encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            if row.get("text", "").strip():
                title = row.get("title") or row["_id"]
                docs.append({"id": f"scifact-{row['_id']}", "title": title, "text": row["text"]})
            if len(docs) >= limit:
                break
    return docs


def load_queries(data: Path, limit: int) -> list[str]:
    out = []
    with (data / "queries.jsonl").open(encoding="utf-8") as f:
        for line in f:
            text = json.loads(line).get("text", "").strip()
            if text:
                out.append(text)
            if len(out) >= limit:
                break
    return out


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"n": 0}
    cuts = statistics.quantiles(values, n=100, method="inclusive") if len(values) > 1 else [values[0]] * 99
    return {
        "n": len(values),
        "p50": round(statistics.median(values), 2),
        "p90": round(cuts[89], 2),
        "p99": round(cuts[98], 2),
        "mean": round(statistics.fmean(values), 2),
    }


@contextmanager
def environment(env: dict[str, str]) -> Iterator[None]:
    saved = dict(os.environ)
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def start_stack(root: Path, data_dir: Path) -> Any:
    """The stack as ``make up`` starts it; the LLM (not used by retrieval) is the tests' tiny GGUF."""
    from shared.stack import Stack, StackConfig, plan
    from tests.support.gguf_factory import write_tiny_llama_gguf

    model = write_tiny_llama_gguf(root / "tiny-llama.gguf")
    cfg = StackConfig.any_ports(llm_model_path=model, data_dir=data_dir, extra_env={"LOG_LEVEL": "WARNING"})
    stack = Stack(plan(cfg), cfg)
    stack.start(root / "logs", timeout=300)
    return stack


async def ingest(url: str, key: str, docs: list[dict[str, str]]) -> int:
    from shared.client.ws_client import RagClient
    from shared.protocol import Document

    chunks = 0
    async with RagClient(url, api_key=key, timeout=600) as client:
        for i in range(0, len(docs), INGEST_BATCH):
            result = await client.ingest_batch([Document.model_validate(d) for d in docs[i : i + INGEST_BATCH]])
            if result.failed:
                raise RuntimeError(f"ingesting SciFact failed: {result.failed}")
            chunks += sum(r.chunks for r in result.results)
            print(f"   ingested {min(i + INGEST_BATCH, len(docs))}/{len(docs)} abstracts", flush=True)
    return chunks


def _get_json(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=30) as resp:
        result: dict[str, Any] = json.loads(resp.read())
        return result


def _doc_chunks(hits: Any) -> list[tuple[str, int]]:
    return [(h.doc_id, h.chunk) for h in hits]


async def measure(stack: Any, key: str, queries: list[str]) -> dict[str, Any]:
    """Every query in every mode, the three sides in rotating order; the first WARMUP queries are not kept."""
    from chat.handler import build_service
    from chat.settings import Settings as ChatSettings
    from embedding.model import load_model
    from embedding.settings import Settings as EmbeddingSettings
    from shared.client.ws_client import RagClient

    chat_env = dict(stack.by_name["chat"].env)
    with environment(chat_env):
        settings = ChatSettings()
        service = build_service(settings)
    with environment(dict(stack.by_name["embedding"].env)):
        emb = EmbeddingSettings()
    model = await asyncio.to_thread(
        load_model, emb.model_path, emb.device, emb.backend, emb.onnx_dir, emb.onnx_max_tokens
    )
    store = service.store
    samples: dict[str, dict[str, list[float]]] = {m: {s: [] for s in SIDES} for m in MODES}
    names = ("bare_embed", "embed_http", *(f"bare_search_{m}" for m in MODES))
    parts: dict[str, list[float]] = {name: [] for name in names}
    same = {m: [0, 0] for m in MODES}  # [queries whose product hits equal bare's, queries]

    def bare(q: str, mode: SearchMode, keep: bool) -> tuple[float, Any]:
        t0 = time.perf_counter()
        vec = model.encode([q])[0].tolist()
        t1 = time.perf_counter()
        hits = store.search(
            vec,
            tenant=TENANT,
            top_k=settings.top_k,
            max_distance=settings.max_distance,
            mode=mode,
            query_text=q,
            rrf_k=settings.rrf_k,
        )
        t2 = time.perf_counter()
        if keep:
            parts[f"bare_search_{mode}"].append((t2 - t1) * 1000)
            if mode == MODES[0]:
                parts["bare_embed"].append((t1 - t0) * 1000)
        return (t2 - t0) * 1000, hits

    def retrieve(q: str, mode: SearchMode) -> float:
        t0 = time.perf_counter()
        service.retrieve(q, search_mode=mode, tenant=TENANT)
        return (time.perf_counter() - t0) * 1000

    async with RagClient(stack.ws_url, api_key=key, timeout=120) as client:

        async def product(q: str, mode: SearchMode) -> tuple[float, Any]:
            t0 = time.perf_counter()
            result = await client.search(q, search_mode=mode)
            return (time.perf_counter() - t0) * 1000, result

        for i, q in enumerate(queries):
            keep = i >= WARMUP
            t0 = time.perf_counter()
            service.embedder.embed_query(q)
            if keep:
                parts["embed_http"].append((time.perf_counter() - t0) * 1000)
            for m, mode in enumerate(MODES):
                order = [SIDES[(i + m + j) % len(SIDES)] for j in range(len(SIDES))]
                bare_hits: Any = None
                product_hits: Any = None
                for side in order:
                    if side == "bare":
                        ms, bare_hits = bare(q, mode, keep)
                    elif side == "retrieve":
                        ms = retrieve(q, mode)
                    else:
                        ms, product_hits = await product(q, mode)
                    if keep:
                        samples[mode][side].append(ms)
                if keep:
                    same[mode][1] += 1
                    same[mode][0] += _doc_chunks(bare_hits) == [(s.doc_id, s.chunk) for s in product_hits.results]
            if (i + 1) % 25 == 0:
                print(f"   {i + 1}/{len(queries)} queries", flush=True)
    if not parts["bare_embed"]:
        raise RuntimeError(f"no query measured: give more than {WARMUP} queries")
    modes: dict[str, Any] = {}
    for mode in MODES:
        s = {side: percentiles(samples[mode][side]) for side in SIDES}
        paired = [p - b for p, b in zip(samples[mode]["product"], samples[mode]["bare"], strict=True)]
        modes[mode] = {
            **s,
            "bare_search": percentiles(parts[f"bare_search_{mode}"]),
            "added_ms": {
                "p50": round(s["product"]["p50"] - s["bare"]["p50"], 2),
                "p99": round(s["product"]["p99"] - s["bare"]["p99"], 2),
                "paired_median": round(statistics.median(paired), 2),
            },
            "retrieve_added_p50_ms": round(s["retrieve"]["p50"] - s["bare"]["p50"], 2),
            "gateway_added_p50_ms": round(s["product"]["p50"] - s["retrieve"]["p50"], 2),
            "same_hits_as_bare": f"{same[mode][0]}/{same[mode][1]}",
            "meets_target": s["product"]["p50"] - s["bare"]["p50"] <= TARGET_ADDED_P50_MS,
        }
    return {
        "modes": modes,
        "bare_embed": percentiles(parts["bare_embed"]),
        "embed_http": percentiles(parts["embed_http"]),
        "embed_http_added_p50_ms": round(
            statistics.median(parts["embed_http"]) - statistics.median(parts["bare_embed"]), 2
        ),
    }


def batching(stack: Any, queries: list[str], clients: int) -> dict[str, Any]:
    """The embedding service's throughput on single-text query embeds: one at a time, then ``clients`` at once."""
    from chat.settings import Settings as ChatSettings
    from shared import wiring

    with environment(dict(stack.by_name["chat"].env)):
        settings = ChatSettings()
    embedder = wiring.embedder(settings)
    embedder.embed_query("warm-up")
    health_url = f"{stack.by_name['embedding'].url}/health"

    def run(label: str, fn: Callable[[], None]) -> dict[str, Any]:
        before = _get_json(health_url)
        t0 = time.perf_counter()
        fn()
        elapsed = time.perf_counter() - t0
        after = _get_json(health_url)
        texts = after["texts_encoded"] - before["texts_encoded"]
        batches = after["batches_encoded"] - before["batches_encoded"]
        return {
            "requests": len(queries),
            "texts_per_s": round(len(queries) / elapsed, 1),
            "model_batches": batches,
            "texts_per_batch": round(texts / max(1, batches), 2),
        }

    def sequential() -> None:
        for q in queries:
            embedder.embed_query(q)

    def concurrent() -> None:
        barrier = threading.Barrier(clients)
        share = [queries[i::clients] for i in range(clients)]

        def worker(mine: list[str]) -> None:
            barrier.wait(timeout=60)
            for q in mine:
                embedder.embed_query(q)

        with ThreadPoolExecutor(clients) as pool:
            list(pool.map(worker, share))

    seq = run("sequential", sequential)
    conc = run("concurrent", concurrent)
    return {
        "clients": clients,
        "sequential": seq,
        "concurrent": conc,
        "throughput_ratio": round(conc["texts_per_s"] / seq["texts_per_s"], 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.retrieval", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="BEIR SciFact folder (corpus, queries)")
    parser.add_argument("--docs", type=int, default=1000, help="SciFact abstracts ingested")
    parser.add_argument("--queries", type=int, default=210, help=f"SciFact queries (the first {WARMUP} warm up)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients of the batching step")
    parser.add_argument("--db", type=Path, default=None, help="keep (and on the next run reuse) the stack's data here")
    parser.add_argument("--quick", action="store_true", help="small numbers: checks the bench runs end to end")
    parser.add_argument("--out", type=Path, default=None, help=f"JSON results (default {DEFAULT_OUT}; --quick: none)")
    args = parser.parse_args(argv)
    if args.quick:
        args.docs, args.queries = min(args.docs, 100), min(args.queries, WARMUP + 20)
    out = args.out if args.out is not None else (None if args.quick else DEFAULT_OUT)
    # SIGTERM (e.g. timeout) as an exception, so that the finally below stops the stack.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    from shared.stack import key_store

    docs = load_corpus(args.data, args.docs)
    queries = load_queries(args.data, args.queries)
    load_before = load_average()
    print(f"load average {load_before}; {len(docs)} abstracts, {len(queries)} queries", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-retrieval-") as tmp:
        data_dir = args.db or Path(tmp) / "data"
        marker = data_dir / "bench-retrieval.json"
        stack = start_stack(Path(tmp), data_dir)
        try:
            _, key = key_store(stack.config).create(TENANT, "bench: retrieval overhead")
            stored = json.loads(marker.read_text()) if marker.exists() else {}
            if stored.get("docs") == len(docs):
                chunks = int(stored["chunks"])
                print(f"-- reusing the {len(docs)} abstracts ({chunks} chunks) in {data_dir}", flush=True)
            else:
                print("-- ingesting ...", flush=True)
                t0 = time.perf_counter()
                chunks = asyncio.run(ingest(stack.ws_url, key, docs))
                print(f"   {chunks} chunks in {time.perf_counter() - t0:.0f}s", flush=True)
                marker.write_text(json.dumps({"docs": len(docs), "chunks": chunks}))
            print("-- measuring ...", flush=True)
            latency = asyncio.run(measure(stack, key, queries))
            print("-- batching ...", flush=True)
            batch = batching(stack, queries, args.clients)
        finally:
            stack.stop()
    load_after = load_average()
    result = {
        "benchmark": "retrieval overhead: search through the gateway's WebSocket (product) and the chat function's "
        "retrieve step in process (retrieve) vs embed + search in one process (bare), same model, table and settings",
        "command": "make bench-retrieval",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "cores": os.cpu_count()},
        "load_average": {"before": load_before, "after": load_after},
        "corpus": {"abstracts": len(docs), "chunks": chunks, "queries_measured": max(0, len(queries) - WARMUP)},
        "target": {"added_p50_ms_max": TARGET_ADDED_P50_MS},
        **latency,
        "batching": batch,
    }
    _print(result)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {out}")
    return 0


def _print(r: dict[str, Any]) -> None:
    print(f"\nload average before {r['load_average']['before']}, after {r['load_average']['after']}")
    print("| mode | bare p50/p99 | retrieve p50/p99 | product p50/p99 | added p50 (paired) | same hits |")
    print("|---|---|---|---|---|---|")
    for mode, m in r["modes"].items():
        print(
            f"| {mode} | {m['bare']['p50']} / {m['bare']['p99']} | {m['retrieve']['p50']} / {m['retrieve']['p99']} | "
            f"{m['product']['p50']} / {m['product']['p99']} | {m['added_ms']['p50']} "
            f"({m['added_ms']['paired_median']}) | {m['same_hits_as_bare']} |"
        )
    print(f"embed: bare p50 {r['bare_embed']['p50']} ms, over HTTP p50 {r['embed_http']['p50']} ms")
    b = r["batching"]
    print(
        f"batching: 1 client {b['sequential']['texts_per_s']} texts/s ({b['sequential']['texts_per_batch']}/batch), "
        f"{b['clients']} clients {b['concurrent']['texts_per_s']} texts/s ({b['concurrent']['texts_per_batch']}/batch)"
    )


if __name__ == "__main__":
    sys.exit(main())
