"""The scale bench: vector search at 100k and 1M chunks, history over 1M messages, SciFact with the index on.

    python -m bench.scale                                  # make bench-scale: 100k and 1M, folder and S3
    python -m bench.scale --sizes 100k --no-s3 --messages 200k --queries 100   # smoke run, a few minutes

Vectors are realistic (bench/scale_data.py): real all-MiniLM-L6-v2 embeddings of SciFact (its abstracts cut
by the product's chunker, and their sentences: ~60k real vectors, embedded once and cached under
``.cache/bench-scale/``), grown to each size by perturbed copies along real neighbourhoods. The bench first
shows the generator keeps their neighbourhood structure: k-NN distance distributions and the ANN recall@10
of the same index on a real set and on generated sets of the same size (at the expansion factors the sizes
need). The query set is the SciFact queries (real questions, embedded by the same model).

Per size and store (a folder; S3 = moto's server, started here as a process on port 0):

- the table is bulk-loaded through the product's VectorStore (its schema, its scalar indexes), then the
  product builds its vector index (``VectorStore.ensure_vector_index``); the build time is reported;
- a fresh process opens the table and measures, interleaved query by query: the product's retrieve path
  (``VectorStore.search`` with the tenant prefilter and the default threshold, vector mode) and bare LanceDB
  (``table.search(q).distance_type("cosine").limit(10)``), p50/p99 latency and recall@10 against exact
  search (computed exactly over the same vectors), and the flat scan of the same table
  (``bypass_vector_index``) on a few queries, the baseline of the ratios; its RSS; the table's disk size.

1M messages: a messages table of ``--messages`` rows over ``--conversations`` conversations (each one's
messages spread over the whole table, as turns interleave in time), bulk-added; ``VectorStore.conversation``
and the bare ``where conversation_id = ...`` query, with the conversation-id index stale (rows added after
it was built: scanned) and current (after ``Table.optimize``).

SciFact: the test queries against the SciFact chunks, nDCG@10 by flat search and with the vector index
forced on, through ``VectorStore.search``.

Writes bench/results/scale.json and prints a Markdown table. Targets: 100k p50 <= 30 ms; 1M p50 <= 60 ms
with recall@10 >= 0.95; history of one conversation among 1M messages <= 20 ms p50.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from bench.scale_data import CACHE, DEFAULT_DATA, RealSet, grow, knn, load_real, neighbourhood_stats
from shared.identity import DEFAULT_TENANT as TENANT

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "bench" / "results" / "scale.json"
TARGETS = {"p50_ms_100k": 30.0, "p50_ms_1m": 60.0, "recall_1m": 0.95, "history_p50_ms": 20.0}
TOP_K = 10
PRINCIPAL = "bench"
# Where the tables are built (big: ~2 GB at 1M rows); removed at the end unless --keep.
WORK = CACHE / "work"
S3_ENV = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}
# The default threshold of the chat function (chat/settings.py max_distance).
MAX_DISTANCE = 0.7


def parse_count(text: str) -> int:
    """ "100k" -> 100000, "1m" -> 1000000, "2500" -> 2500."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmM]?)\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(f"not a count: {text!r}")
    scale = {"": 1, "k": 1_000, "m": 1_000_000}[m.group(2).lower()]
    return int(float(m.group(1)) * scale)


def label(n: int) -> str:
    if n >= 1_000_000 and n % 1_000_000 == 0:
        return f"{n // 1_000_000}M"
    if n >= 1_000 and n % 1_000 == 0:
        return f"{n // 1_000}k"
    return str(n)


def percentiles(values: Sequence[float]) -> dict[str, float]:
    arr = np.asarray(values, dtype=np.float64)
    return {
        "p50": round(float(np.percentile(arr, 50)), 2),
        "p99": round(float(np.percentile(arr, 99)), 2),
        "mean": round(float(arr.mean()), 2),
    }


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        return ""


def rss_mb() -> dict[str, float]:
    """This process's resident memory now and at its peak, in MB (Linux /proc)."""
    out: dict[str, float] = {}
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out["rss_mb" if key == "VmRSS" else "peak_rss_mb"] = round(int(value.split()[0]) / 1024, 1)
    if "peak_rss_mb" not in out:
        out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return out


@contextmanager
def timed(into: dict[str, float], key: str) -> Iterator[None]:
    started = time.perf_counter()
    yield
    into[key] = round(time.perf_counter() - started, 2)


# ---------------------------------------------------------------------------------------------- stores


@dataclass
class Store:
    """Where a table lives: a folder, or a bucket on the S3 server."""

    name: str  # "folder" or "s3"
    uri: str
    endpoint: str | None = None

    def env(self) -> dict[str, str]:
        """The RAG_* variables that point the product's settings at this store."""
        env = {"RAG_LANCEDB_URI": self.uri}
        if self.endpoint:
            env.update({"RAG_S3_ENDPOINT_URL": self.endpoint, **S3_ENV})
        return env

    def settings(self) -> Any:
        from shared.settings import RagSettings

        return RagSettings(lancedb_uri=self.uri, s3_endpoint_url=self.endpoint)

    def disk_bytes(self) -> int:
        if self.endpoint is None:
            return sum(p.stat().st_size for p in Path(self.uri).rglob("*") if p.is_file())
        import boto3

        bucket, _, prefix = self.uri.removeprefix("s3://").partition("/")
        s3 = boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1")
        total = 0
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            total += sum(int(o["Size"]) for o in page.get("Contents", []))
        return total

    def remove(self) -> None:
        if self.endpoint is None:
            shutil.rmtree(self.uri, ignore_errors=True)
            return
        import boto3

        bucket, _, prefix = self.uri.removeprefix("s3://").partition("/")
        s3 = boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1")
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            if keys:
                s3.delete_objects(Bucket=bucket, Delete={"Objects": keys})


class MotoServer:
    """moto's standalone S3 server as a process on a free port (port 0: the port is read from its log)."""

    def __init__(self, log_dir: Path) -> None:
        self.log_path = log_dir / "moto.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", "0"],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.url = self._wait_url(60.0)

    def _wait_url(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = re.search(r"Running on (http://127\.0\.0\.1:\d+)", self.log_path.read_text(errors="replace"))
            if m:
                return m.group(1)
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"moto's server did not start:\n{self.log_path.read_text(errors='replace')[-2000:]}")

    def bucket(self, name: str) -> Store:
        import boto3

        boto3.client("s3", endpoint_url=self.url, region_name="us-east-1").create_bucket(Bucket=name)
        return Store("s3", f"s3://{name}/lancedb", self.url)

    def rss_mb(self) -> float | None:
        status = Path(f"/proc/{self.proc.pid}/status")
        if not status.exists():
            return None
        for line in status.read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
        return None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


# ---------------------------------------------------------------------------------------------- the product


def vector_store(store: Store) -> Any:
    """The product's VectorStore for ``store``, built as the lambdas build it (shared/wiring.py)."""
    from shared.wiring import vector_store as build

    return build(store.settings())


def build_vector_index(vs: Any, force: bool) -> str:
    """The product's vector index lifecycle step (VectorStore.ensure_vector_index)."""
    return str(vs.ensure_vector_index(force=force))


def index_description(table: Any) -> list[dict[str, Any]]:
    out = []
    for idx in table.list_indices():
        out.append({"name": idx.name, "type": str(idx.index_type), "columns": list(idx.columns)})
    return out


# ---------------------------------------------------------------------------------------------- chunks


def chunk_batches(
    real: RealSet, order: npt.NDArray[np.int64], vectors: npt.NDArray[np.float32], schema: Any, batch: int = 50_000
) -> Iterator[Any]:
    """The rows of a chunks table of ``len(vectors)`` rows, as Arrow tables of ``batch`` rows: row i is real
    vector ``order[i]`` for i < len(order), else a generated copy around real vector ``order[(i - n) % n]``
    (scale_data.generate's round robin), with that vector's text; ``chunk`` = i, so a hit names its row."""
    import pyarrow as pa

    n_real = len(order)
    dim = vectors.shape[1]
    for start in range(0, len(vectors), batch):
        rows = np.arange(start, min(start + batch, len(vectors)))
        seed = order[np.where(rows < n_real, rows, (rows - n_real) % n_real)]
        doc_ids = [
            real.doc_ids[s] if r < n_real else f"{real.doc_ids[s]}~{(r - n_real) // n_real}"
            for r, s in zip(rows.tolist(), seed.tolist(), strict=True)
        ]
        m = len(rows)
        columns = {
            "id": pa.array([f"{d}#{r}" for d, r in zip(doc_ids, rows.tolist(), strict=True)], pa.string()),
            "doc_id": pa.array(doc_ids, pa.string()),
            "chunk": pa.array(rows.astype(np.int32)),
            "title": pa.array([""] * m, pa.string()),
            "text": pa.array([real.texts[s] for s in seed.tolist()], pa.string()),
            "date": pa.nulls(m, pa.string()),
            "source": pa.nulls(m, pa.string()),
            "metadata": pa.array(["{}"] * m, pa.string()),
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors[rows].reshape(-1)), dim),
            "ingested_at": pa.array(["2026-01-01T00:00:00Z"] * m, pa.string()),
            "tenant": pa.array([TENANT] * m, pa.string()),
            "doc_version": pa.nulls(m, pa.string()),
        }
        yield pa.Table.from_arrays([columns[f.name] for f in schema], schema=schema)


def load_chunks(vs: Any, real: RealSet, order: npt.NDArray[np.int64], vectors: npt.NDArray[np.float32]) -> None:
    table = vs.chunks()
    for part in chunk_batches(real, order, vectors, table.schema):
        table.add(part)


def measure_chunks(job: dict[str, Any]) -> dict[str, Any]:
    """In a fresh process: open the table, run the queries through the product and bare LanceDB (interleaved),
    and the flat scan on a few; latencies, recall@10 against ``job["exact"]``, RSS."""
    import lancedb

    from shared.settings import RagSettings
    from shared.wiring import vector_store as build

    before = rss_mb()
    queries = np.load(job["queries"])[: job["queries_limit"]]
    exact = np.load(job["exact"])  # (q, 10) row indexes, nearest first
    exact_d = np.load(job["exact_distances"])
    settings = RagSettings()
    vs = build(settings)
    bare_db = lancedb.connect(settings.lancedb_uri, storage_options=settings.storage_options() or None)
    bare: Any = bare_db.open_table("chunks")

    def product(q: npt.NDArray[np.float32]) -> list[int]:
        hits = vs.search(q.tolist(), tenant=TENANT, top_k=TOP_K, max_distance=job["max_distance"], mode="vector")
        return [h.chunk for h in hits]

    def bare_ann(q: npt.NDArray[np.float32]) -> list[int]:
        query = bare.search(q, vector_column_name="vector").distance_type("cosine").limit(TOP_K)
        return [int(c) for c in query.select(["chunk", "_distance"]).to_arrow().column("chunk").to_pylist()]

    params = vs.vector_index.search_params()  # the product's nprobes / refine_factor

    def bare_tuned(q: npt.NDArray[np.float32]) -> list[int]:
        query = params.apply(bare.search(q, vector_column_name="vector").distance_type("cosine")).limit(TOP_K)
        return [int(c) for c in query.select(["chunk", "_distance"]).to_arrow().column("chunk").to_pylist()]

    def bare_flat(q: npt.NDArray[np.float32]) -> list[int]:
        query = bare.search(q, vector_column_name="vector").distance_type("cosine").bypass_vector_index()
        return [
            int(c) for c in query.limit(TOP_K).select(["chunk", "_distance"]).to_arrow().column("chunk").to_pylist()
        ]

    paths: list[tuple[str, Callable[[npt.NDArray[np.float32]], list[int]]]] = [
        ("product", product),
        ("bare", bare_ann),
        ("bare_tuned", bare_tuned),
    ]
    first: dict[str, float] = {}
    for name, fn in paths:
        started = time.perf_counter()
        fn(queries[0])
        first[name] = round((time.perf_counter() - started) * 1000, 1)
    for q in queries[1 : 1 + job["warmup"]]:
        for _, fn in paths:
            fn(q)
    lat: dict[str, list[float]] = {name: [] for name, _ in paths}
    lat["flat"] = []
    recall: dict[str, list[float]] = {name: [] for name, _ in paths}
    for i, q in enumerate(queries):
        for name, fn in paths[i % 3 :] + paths[: i % 3]:  # each path first in turn
            started = time.perf_counter()
            got = fn(q)
            lat[name].append((time.perf_counter() - started) * 1000)
            # The product's hits are gated by the threshold: compare with the exact top 10 within it.
            want = [
                int(r)
                for r, d in zip(exact[i], exact_d[i], strict=True)
                if name != "product" or d <= job["max_distance"]
            ]
            if want:
                recall[name].append(len(set(got) & set(want)) / len(want))
    flat_recall = []
    for i, q in enumerate(queries[: job["flat_queries"]]):
        started = time.perf_counter()
        got = bare_flat(q)
        lat["flat"].append((time.perf_counter() - started) * 1000)
        flat_recall.append(len(set(got) & {int(r) for r in exact[i]}) / TOP_K)
    after = rss_mb()
    out: dict[str, Any] = {
        "queries": len(queries),
        "first_query_ms": first,
        "latency_ms": {k: percentiles(v) for k, v in lat.items() if v},
        "recall_at_10": {k: round(float(np.mean(v)), 4) for k, v in recall.items() if v},
        "flat_recall_at_10": round(float(np.mean(flat_recall)), 4) if flat_recall else None,
        "rss_mb": {
            "before_open": before.get("rss_mb"),
            "after_queries": after.get("rss_mb"),
            "peak": after.get("peak_rss_mb"),
        },
        "indexes": index_description(bare),
        "search_params": {
            "nprobes": params.nprobes,
            "refine_factor": params.refine_factor,
            "use_index": params.use_index,
        },
    }
    p50 = out["latency_ms"]
    if "flat" in p50:
        out["speedup_vs_flat_p50"] = {k: round(p50["flat"]["p50"] / p50[k]["p50"], 1) for k, _ in paths}
    # What the product adds to the same LanceDB query (same nprobes / refine_factor).
    out["product_overhead_ms_p50"] = round(p50["product"]["p50"] - p50["bare_tuned"]["p50"], 2)
    return out


def run_child(kind: str, job: dict[str, Any], env: dict[str, str], work: Path) -> dict[str, Any]:
    """``measure_<kind>(job)`` in a fresh Python process (its own RSS, cold caches of this process)."""
    job_path = work / f"job-{kind}.json"
    job_path.write_text(json.dumps(job))
    proc = subprocess.run(
        [sys.executable, "-m", "bench.scale", "--child", kind, str(job_path)],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"the {kind} measurement failed:\n{proc.stderr[-4000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def chunks_at(
    real: RealSet,
    order: npt.NDArray[np.int64],
    size: int,
    store: Store,
    args: argparse.Namespace,
    vectors: npt.NDArray[np.float32],
    work: Path,
) -> dict[str, Any]:
    """Build the ``size``-row chunks table in ``store``, index it through the product, measure."""
    print(f"[{label(size)} {store.name}] loading {size} rows", flush=True)
    res: dict[str, Any] = {"rows": size, "store": store.name}
    times: dict[str, float] = {}
    vs = vector_store(store)
    with timed(times, "load_s"):
        load_chunks(vs, real, order, vectors)
    with timed(times, "optimize_s"):  # fold the rows into the scalar indexes, compact the appends
        vs.chunks().optimize()
    with timed(times, "index_build_s"):
        res["index_step"] = build_vector_index(vs, force=False)
    res["times"] = times
    res["disk_mb"] = round(store.disk_bytes() / 2**20, 1)
    print(f"[{label(size)} {store.name}] {times}, {res['disk_mb']} MB; measuring", flush=True)
    # moto serves the index's and refine step's ranged GETs slowly (~10/s on a loaded 2-core box): fewer queries.
    limit = args.s3_queries if store.endpoint else args.queries
    job = {**args.job, "max_distance": MAX_DISTANCE, "queries_limit": limit}
    res.update(run_child("chunks", job, store.env(), work))
    return res


# ---------------------------------------------------------------------------------------------- messages


def message_batches(
    rows: int, conversations: int, texts: Sequence[str], schema: Any, batch: int = 100_000
) -> Iterator[Any]:
    """``rows`` messages over ``conversations`` conversations, in the order turns happen when conversations
    interleave: message seq s of every conversation (shuffled), then seq s + 1, ... So each conversation's
    messages are spread over the whole table, as in a long-lived deployment."""
    import pyarrow as pa

    rng = np.random.default_rng(7)
    per = -(-rows // conversations)
    order = np.concatenate([rng.permutation(conversations) + s * conversations for s in range(per)])[:rows]
    conv = order % conversations
    seq = order // conversations
    for start in range(0, rows, batch):
        c, s = conv[start : start + batch], seq[start : start + batch]
        m = len(c)
        pick = rng.integers(0, len(texts), size=m)
        columns = {
            "id": pa.array([f"m{i}" for i in range(start, start + m)], pa.string()),
            "conversation_id": pa.array([f"conv-{x:07d}" for x in c.tolist()], pa.string()),
            "seq": pa.array(s.astype(np.int64)),
            "role": pa.array(np.where(s % 2 == 0, "user", "assistant").tolist(), pa.string()),
            "content": pa.array([texts[p] for p in pick.tolist()], pa.string()),
            "created_at": pa.array(["2026-01-01T00:00:00Z"] * m, pa.string()),
            "rag_context": pa.array(["{}"] * m, pa.string()),
            "tenant": pa.array([TENANT] * m, pa.string()),
            "principal": pa.array([PRINCIPAL] * m, pa.string()),
            "claim": pa.nulls(m, pa.string()),
            "claim_until": pa.nulls(m, pa.int64()),
        }
        yield pa.Table.from_arrays([columns[f.name] for f in schema], schema=schema)


def measure_history(vs: Any, conversations: int, samples: int) -> dict[str, Any]:
    """VectorStore.conversation and the bare ``conversation_id = ...`` query on ``samples`` conversations."""
    table = vs.messages()
    rng = np.random.default_rng(11)
    picks = [f"conv-{x:07d}" for x in rng.choice(conversations, size=samples, replace=False).tolist()]
    lat: dict[str, list[float]] = {"product": [], "bare": []}
    lengths = []
    vs.conversation(picks[0], tenant=TENANT, principal=PRINCIPAL)  # warm-up
    for i, cid in enumerate(picks):
        for name in ("product", "bare") if i % 2 == 0 else ("bare", "product"):
            started = time.perf_counter()
            if name == "product":
                lengths.append(len(vs.conversation(cid, tenant=TENANT, principal=PRINCIPAL)))
            else:
                table.search().where(f"conversation_id = '{cid}'").limit(None).to_arrow()
            lat[name].append((time.perf_counter() - started) * 1000)
    return {
        "latency_ms": {k: percentiles(v) for k, v in lat.items()},
        "messages_per_conversation": int(np.median(lengths)),
    }


def unindexed_rows(table: Any, column: str) -> int | None:
    for idx in table.list_indices():
        if list(idx.columns) == [column]:
            stats = table.index_stats(idx.name)
            return int(stats.num_unindexed_rows) if stats is not None else None
    return None


def messages_at(store: Store, rows: int, conversations: int, texts: Sequence[str], samples: int) -> dict[str, Any]:
    print(f"[messages {store.name}] loading {rows} rows over {conversations} conversations", flush=True)
    vs = vector_store(store)
    table = vs.messages()  # created empty, with its scalar indexes: every row added next is unindexed
    times: dict[str, float] = {}
    with timed(times, "load_s"):
        for part in message_batches(rows, conversations, texts, table.schema):
            table.add(part)
    res: dict[str, Any] = {"rows": rows, "conversations": conversations, "store": store.name, "times": times}
    res["stale_index"] = {
        "unindexed_rows": unindexed_rows(table, "conversation_id"),
        **measure_history(vs, conversations, samples),
    }
    with timed(times, "optimize_s"):
        table.optimize()
    res["current_index"] = {
        "unindexed_rows": unindexed_rows(table, "conversation_id"),
        **measure_history(vs, conversations, samples),
    }
    res["disk_mb"] = round(store.disk_bytes() / 2**20, 1)
    print(
        f"[messages {store.name}] stale p50 {res['stale_index']['latency_ms']['product']['p50']} ms, "
        f"current p50 {res['current_index']['latency_ms']['product']['p50']} ms",
        flush=True,
    )
    return res


# ---------------------------------------------------------------------------------------------- SciFact


def scifact_ndcg(real: RealSet, data: Path, store: Store) -> dict[str, Any]:
    """nDCG@10 of the SciFact test queries over the SciFact chunks, flat and with the vector index forced on,
    through VectorStore.search (vector mode, max_distance 2.0: ranking only)."""
    from bench.eval_scifact import load
    from bench.metrics import evaluate

    corpus = load(data, "test", None, None)
    rows = real.chunk_rows()
    vectors = real.vectors[rows]
    vs = vector_store(store)
    load_chunks(vs, real, rows, vectors)
    vs.chunks().optimize()
    qpos = {q: i for i, q in enumerate(real.query_ids)}

    def run() -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for q in corpus.qrels:
            hits = vs.search(real.query_vectors[qpos[q]].tolist(), tenant=TENANT, top_k=50, max_distance=2.0)
            ranking: list[str] = []
            for h in hits:
                if h.doc_id not in ranking:
                    ranking.append(h.doc_id)
            out[q] = ranking
        return out

    flat = evaluate(run(), corpus.qrels)
    step = build_vector_index(vs, force=True)
    indexed = evaluate(run(), corpus.qrels)
    return {
        "chunks": len(rows),
        "queries": len(corpus.qrels),
        "index_step": step,
        "indexes": index_description(vs.chunks()),
        "ndcg@10": {"flat": round(flat["ndcg@10"], 4), "indexed": round(indexed["ndcg@10"], 4)},
        "recall@10": {"flat": round(flat["recall@10"], 4), "indexed": round(indexed["recall@10"], 4)},
    }


# ---------------------------------------------------------------------------------------------- evidence


def ann_recall(vectors: npt.NDArray[np.float32], queries: npt.NDArray[np.float32], work: Path) -> float:
    """recall@10 of the product's vector index (its default policy: type, partitions, nprobes, refine) over
    ``vectors`` for ``queries``, against exact search."""
    import lancedb
    import pyarrow as pa

    from shared.vector_store.vector_index import SearchParams, VectorIndexPolicy

    policy = VectorIndexPolicy()
    params = SearchParams(True, policy.nprobes, policy.refine_factor)

    exact, _ = knn(vectors, queries, TOP_K)
    folder = Path(tempfile.mkdtemp(dir=work))
    try:
        db = lancedb.connect(str(folder))
        data = pa.table(
            {
                "i": pa.array(np.arange(len(vectors), dtype=np.int64)),
                "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), vectors.shape[1]),
            }
        )
        table: Any = db.create_table("t", data)
        table.create_index("vector", config=policy.config(len(vectors), vectors.shape[1]))
        hits = []
        for i, q in enumerate(queries):
            query = params.apply(table.search(q).distance_type("cosine")).limit(TOP_K).select(["i", "_distance"])
            got = query.to_arrow().column("i").to_pylist()
            hits.append(len(set(got) & set(exact[i].tolist())) / TOP_K)
        return round(float(np.mean(hits)), 4)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def evidence(
    real: RealSet,
    order: npt.NDArray[np.int64],
    rows: int,
    expansions: Sequence[float],
    queries: npt.NDArray[np.float32],
    work: Path,
) -> dict[str, Any]:
    """The generator against reality at ``rows`` rows: a real set, and generated sets grown from
    ``rows / e`` real seeds for each expansion factor e (the factors the bench's sizes need), compared by
    their k-NN distance distributions and the ANN recall@10 of the same index."""
    base = real.vectors[order[:rows]]
    from shared.vector_store.vector_index import VectorIndexPolicy

    policy = VectorIndexPolicy()
    out: dict[str, Any] = {
        "rows": rows,
        "index": {"type": policy.index_type, "nprobes": policy.nprobes, "refine_factor": policy.refine_factor},
        "sets": {},
    }
    # Each set: (name, real vectors to grow from); the real set is its own seeds.
    sets = [("real", base)]
    for e in expansions:
        seeds = max(100, int(rows / e))
        sets.append((f"generated x{e:g}", real.vectors[order[-seeds:]]))
    for name, seed_vectors in sets:
        vectors = grow(seed_vectors, rows, seed=1)
        print(f"[evidence] {name}", flush=True)
        out["sets"][name] = {
            **neighbourhood_stats(vectors, queries),
            "ann_recall_at_10": ann_recall(vectors, queries, work),
        }
    return out


# ---------------------------------------------------------------------------------------------- report


def markdown(report: dict[str, Any]) -> str:
    lines = [
        "| rows | store | product p50 / p99 ms | bare p50 / p99 ms | flat p50 ms | recall@10 product / bare "
        "| index build s | RSS MB | disk MB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report.get("chunks", []):
        lat = r["latency_ms"]
        rec = r["recall_at_10"]
        lines.append(
            f"| {label(r['rows'])} | {r['store']} | {lat['product']['p50']} / {lat['product']['p99']} "
            f"| {lat['bare']['p50']} / {lat['bare']['p99']} | {lat.get('flat', {}).get('p50', '-')} "
            f"| {rec.get('product', '-')} / {rec.get('bare', '-')} | {r['times']['index_build_s']} "
            f"| {r['rss_mb']['after_queries']} | {r['disk_mb']} |"
        )
    for m in report.get("messages", []):
        lines.append("")
        lines.append(
            f"history, {label(m['rows'])} messages ({m['store']}): VectorStore.conversation p50 "
            f"{m['stale_index']['latency_ms']['product']['p50']} ms with the index stale, "
            f"{m['current_index']['latency_ms']['product']['p50']} ms current (bare where: "
            f"{m['stale_index']['latency_ms']['bare']['p50']} / {m['current_index']['latency_ms']['bare']['p50']} ms)"
        )
    sf = report.get("scifact")
    if sf:
        lines.append("")
        lines.append(f"SciFact nDCG@10: flat {sf['ndcg@10']['flat']}, vector index {sf['ndcg@10']['indexed']}")
    ev = report.get("evidence")
    if ev:
        lines.append("")
        lines.append(f"generator evidence at {label(ev['rows'])} rows (query 10-NN distance p50, ANN recall@10):")
        for name, s in ev["sets"].items():
            lines.append(
                f"- {name}: {s['query_nn10']['p50']}, row 1-NN p50 {s['row_nn1']['p50']}, "
                f"recall {s['ann_recall_at_10']}"
            )
    return "\n".join(lines)


def save(report: dict[str, Any], out: Path) -> None:
    """Write the report as it stands (after each part: an interrupted run keeps what it measured)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        kind, path = argv[1], argv[2]
        job = json.loads(Path(path).read_text())
        print(json.dumps({"chunks": measure_chunks}[kind](job)))
        return 0
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--sizes",
        type=lambda s: [parse_count(x) for x in s.split(",")],
        default=[100_000, 1_000_000],
        help="chunk table sizes (default 100k,1m)",
    )
    p.add_argument(
        "--s3",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also measure on S3 (moto's server, started here)",
    )
    p.add_argument(
        "--s3-max-rows",
        type=parse_count,
        default=100_000,
        help="largest table also measured on S3 (moto loads and indexes ~10x slower than a folder)",
    )
    p.add_argument("--queries", type=int, default=300, help="queries per measurement (SciFact queries)")
    p.add_argument("--s3-queries", type=int, default=50, help="queries per measurement on S3 (moto is slow)")
    p.add_argument("--flat-queries", type=int, default=10, help="of which also run as a flat scan (the baseline)")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--messages", type=parse_count, default=1_000_000, help="messages table rows (0: skip)")
    p.add_argument(
        "--s3-messages", type=parse_count, default=0, help="messages rows on S3 (0: folder only; moto is slow)"
    )
    p.add_argument("--conversations", type=parse_count, default=50_000)
    p.add_argument("--history-samples", type=int, default=100)
    p.add_argument("--evidence-rows", type=parse_count, default=40_000, help="rows of the generator check (0: skip)")
    p.add_argument(
        "--scifact",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="SciFact nDCG@10 flat vs with the vector index",
    )
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument(
        "--sentences",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="real vectors: the chunks and the sentences of SciFact (--no-sentences: the chunks only)",
    )
    p.add_argument(
        "--from-db",
        type=Path,
        default=None,
        help="take the chunk vectors from a SciFact LanceDB the product built (make eval EVAL_ARGS='--db DIR')",
    )
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--keep", action="store_true", help=f"keep the tables under {WORK}")
    args = p.parse_args(argv)

    report: dict[str, Any] = {
        "uptime_before": uptime(),
        "args": {k: str(v) for k, v in vars(args).items()},
        "targets": TARGETS,
        "complete": False,  # True once every part ran (the file is rewritten after each part)
    }
    started = time.monotonic()
    real = load_real(args.data, sentences=args.sentences, from_db=args.from_db)
    rng = np.random.default_rng(0)
    order = rng.permutation(real.vectors.shape[0]).astype(np.int64)
    qsel = rng.permutation(real.query_vectors.shape[0])[: args.queries]
    queries = real.query_vectors[qsel]
    report["real"] = {
        "vectors": int(real.vectors.shape[0]),
        "chunks": len(real.chunk_rows()),
        "queries": int(real.query_vectors.shape[0]),
    }
    WORK.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=WORK))
    moto = MotoServer(work) if args.s3 else None
    if moto is not None:
        os.environ.update(S3_ENV)
    try:
        if args.evidence_rows:
            expansions = sorted({round(max(s / real.vectors.shape[0], 1.0), 1) for s in args.sizes} - {1.0})
            report["evidence"] = evidence(real, order, args.evidence_rows, expansions or [2.0], queries, work)
            save(report, args.out)
        np.save(work / "queries.npy", queries)
        args.job = {
            "queries": str(work / "queries.npy"),
            "exact": str(work / "exact.npy"),
            "exact_distances": str(work / "exact_d.npy"),
            "warmup": args.warmup,
            "flat_queries": args.flat_queries,
        }
        report["chunks"] = []
        for size in args.sizes:
            vectors = grow(real.vectors[order], size, seed=size)
            ex, ed = knn(vectors, queries, TOP_K)
            np.save(work / "exact.npy", ex)
            np.save(work / "exact_d.npy", ed)
            stores = [Store("folder", str(work / f"chunks-{size}"))]
            if moto is not None and size <= args.s3_max_rows:
                stores.append(moto.bucket(f"chunks-{size}"))
            for store in stores:
                res = chunks_at(real, order, size, store, args, vectors, work)
                if store.name == "s3" and moto is not None:
                    res["moto_rss_mb"] = moto.rss_mb()
                report["chunks"].append(res)
                save(report, args.out)
                if not args.keep:
                    store.remove()
            del vectors
        report["messages"] = []
        if args.messages:
            texts = [real.texts[i] for i in real.chunk_rows()[:5000]]
            stores = [Store("folder", str(work / "messages"))]
            if moto is not None and args.s3_messages:
                stores.append(moto.bucket("messages"))
            for store in stores:
                rows = args.s3_messages if store.endpoint else args.messages
                conversations = max(1, args.conversations * rows // args.messages)
                report["messages"].append(messages_at(store, rows, conversations, texts, args.history_samples))
                save(report, args.out)
                if not args.keep:
                    store.remove()
        if args.scifact:
            report["scifact"] = scifact_ndcg(real, args.data, Store("folder", str(work / "scifact")))
    finally:
        if moto is not None:
            moto.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    report["uptime_after"] = uptime()
    report["elapsed_s"] = round(time.monotonic() - started, 1)
    report["complete"] = True
    save(report, args.out)
    print()
    print(markdown(report))
    print(f"\nwritten to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
