"""Storage freshness as a trade-off: query latency and S3 requests per query for RAG_READ_CONSISTENCY_S
= 0 (always the latest version: the baseline), 1, 10 and never, on moto's S3, through VectorStore.search.

LanceDB talks to S3 through Rust's object_store (botocore hooks see nothing), so the reader's S3 endpoint
is a small counting HTTP proxy in front of moto: every request is classified (LIST = ListObjectsV2, GET,
HEAD, PUT) and counted. For each setting, a fresh reader process-equivalent (its own VectorStore and
connections) searches the tenant's chunks:

- ``busy``: back-to-back queries (a warm function under steady traffic): p50/p99 latency, requests/query;
- ``sparse``: queries SPARSE_GAP_S apart (a function with little traffic: every query finds its last
  check older than 1 s): requests/query;
- ``after_write``: one query right after another store (the writer) wrote a new document for the same
  tenant: its requests, and whether the new document was found (read-your-writes).

Cost per million queries from the requests counted, at S3 Standard prices (us-east-1; README *Cost*):
$0.005 per 1,000 PUT/COPY/POST/LIST, $0.0004 per 1,000 GET (and HEAD). Writes bench/results/freshness.json.
Run: ``make bench-freshness`` (``BENCH_ARGS=--quick`` for a smoke run).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import boto3

from shared.vector_store import ChunkRow, VectorStore, storage_options_for

RESULTS = Path(__file__).parent / "results" / "freshness.json"
SETTINGS = (0.0, 1.0, 10.0, float("inf"))
LIST_PER_1000 = 0.005  # S3 Standard, us-east-1: PUT, COPY, POST, LIST requests
GET_PER_1000 = 0.0004  # GET, SELECT and all other requests (HEAD)
SPARSE_GAP_S = 1.5
DIMENSION = 384
S3_ENV = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"}


# --------------------------------------------------------------------------------- the counting proxy


def request_kind(method: str, path: str, headers: Any) -> str:
    query = parse_qs(urlsplit(path).query, keep_blank_values=True)
    if method == "GET" and ("list-type" in query or "prefix" in query or "delimiter" in query):
        return "LIST"
    if method == "PUT" and headers.get("x-amz-copy-source"):
        return "COPY"
    return method


class CountingProxy:
    """An HTTP proxy in front of an S3 endpoint that counts the requests by kind."""

    def __init__(self, upstream: str) -> None:
        self.upstream = urlsplit(upstream)
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _forward(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else None
                with proxy._lock:
                    proxy.counts[request_kind(self.command, self.path, self.headers)] += 1
                conn = http.client.HTTPConnection(
                    proxy.upstream.hostname or "127.0.0.1", proxy.upstream.port, timeout=120
                )
                skip = {"connection", "transfer-encoding"}
                headers = {k: v for k, v in self.headers.items() if k.lower() not in skip}
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in (*skip, "content-length"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                conn.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def take(self) -> Counter[str]:
        """The counts since the last take."""
        with self._lock:
            got, self.counts = self.counts, Counter()
        return got

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def start_moto(log: Path) -> tuple[subprocess.Popen[bytes], str]:
    out = log.open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", "0"], stdout=out, stderr=out)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        found = re.search(r"Running on (http://127\.0\.0\.1:\d+)", log.read_text(errors="replace"))
        if found:
            return proc, found.group(1)
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError("moto did not start")


# --------------------------------------------------------------------------------- the measurement


def vector(rng_seed: int) -> list[float]:
    import random

    rng = random.Random(rng_seed)
    raw = [rng.gauss(0, 1) for _ in range(DIMENSION)]
    norm = sum(x * x for x in raw) ** 0.5
    return [x / norm for x in raw]


def make_store(uri: str, endpoint: str, staleness: float) -> VectorStore:
    options = storage_options_for(uri, endpoint, "us-east-1", {"timeout": "120s"})
    return VectorStore(
        uri, dimension=DIMENSION, model_id="bench", storage_options=options, read_consistency_s=staleness
    )


def search(store: VectorStore, seed: int) -> tuple[float, list[str]]:
    t0 = time.perf_counter()
    hits = store.search(vector(seed), tenant="acme", top_k=10, max_distance=2.0)
    return (time.perf_counter() - t0) * 1000, [m.doc_id for m in hits]


def per_query(counts: Counter[str], n: int) -> dict[str, float]:
    return {k: round(v / n, 2) for k, v in sorted(counts.items())}


def cost_per_million(reqs: dict[str, float]) -> dict[str, float]:
    lists = reqs.get("LIST", 0.0) + reqs.get("PUT", 0.0)
    gets = reqs.get("GET", 0.0) + reqs.get("HEAD", 0.0)
    return {
        "list_usd": round(lists * 1e6 * LIST_PER_1000 / 1000, 2),
        "get_usd": round(gets * 1e6 * GET_PER_1000 / 1000, 2),
        "total_usd": round((lists * LIST_PER_1000 + gets * GET_PER_1000) * 1000, 2),
    }


def measure(uri: str, proxy: CountingProxy, staleness: float, args: Any) -> tuple[VectorStore, dict[str, Any]]:
    """busy and sparse queries of a new reader with this staleness; the reader and the results."""
    reader = make_store(uri, proxy.url, staleness)
    search(reader, 0)  # opens the table (not counted)
    proxy.take()
    latencies = [search(reader, i)[0] for i in range(1, args.busy + 1)]
    busy = per_query(proxy.take(), args.busy)
    for i in range(args.sparse):
        time.sleep(SPARSE_GAP_S)
        search(reader, 1000 + i)
    sparse = per_query(proxy.take(), args.sparse)
    label = "never" if staleness == float("inf") else f"{staleness:g}"
    return reader, {
        "read_consistency_s": label,
        "busy": {
            "queries": args.busy,
            "p50_ms": round(statistics.median(latencies), 1),
            "p99_ms": round(sorted(latencies)[max(0, int(len(latencies) * 0.99) - 1)], 1),
            "requests_per_query": busy,
            "cost_per_million_queries": cost_per_million(busy),
        },
        "sparse": {
            "queries": args.sparse,
            "gap_s": SPARSE_GAP_S,
            "requests_per_query": sparse,
            "cost_per_million_queries": cost_per_million(sparse),
        },
    }


def after_write(reader: VectorStore, writer: VectorStore, proxy: CountingProxy) -> dict[str, Any]:
    """The reader's first query after the writer wrote a new document of the same tenant."""
    doc = f"new-{uuid.uuid4().hex[:8]}.txt"
    writer.replace_document(doc, [ChunkRow(doc, 0, doc, "new", vector(-1))], tenant="acme")
    proxy.take()
    ms, found = search(reader, -1)
    return {"ms": round(ms, 1), "requests": per_query(proxy.take(), 1), "found_new_document": doc in found}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chunks", type=int, default=5_000, help="chunks in the table (tenant acme)")
    parser.add_argument("--busy", type=int, default=40, help="back-to-back queries per setting")
    parser.add_argument("--sparse", type=int, default=6, help="sparse queries per setting")
    parser.add_argument("--quick", action="store_true", help="smoke run: 1,000 chunks, 10 + 3 queries")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.quick:
        args.chunks, args.busy, args.sparse = 1_000, 10, 3
    os.environ.update({k: os.environ.get(k, v) for k, v in S3_ENV.items()})
    with tempfile.TemporaryDirectory() as tmp:
        moto, endpoint = start_moto(Path(tmp) / "moto.log")
        proxy = CountingProxy(endpoint)
        try:
            boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket="freshness")
            uri = "s3://freshness/lancedb"
            writer = make_store(uri, endpoint, 0.0)
            per_doc = 50
            for d in range(0, args.chunks, per_doc * 20):  # 20 documents per commit
                docs = {
                    f"doc-{i}.txt": [ChunkRow(f"doc-{i}.txt", c, "t", "x", vector(i * 100 + c)) for c in range(per_doc)]
                    for i in range(d // per_doc, min(args.chunks, d + per_doc * 20) // per_doc)
                }
                writer.replace_documents(docs, tenant="acme")
            measured = [measure(uri, proxy, s, args) for s in SETTINGS]  # all on the same table
            results = [r for _, r in measured]
            for reader, r in measured:
                r["after_write"] = after_write(reader, writer, proxy)
        finally:
            proxy.close()
            moto.terminate()
            moto.wait(30)
    base = results[0]["busy"]
    for r in results:
        r["busy"]["p50_vs_0"] = round(r["busy"]["p50_ms"] / base["p50_ms"], 2)
    report = {
        "what": "VectorStore.search on moto's S3 (through a counting proxy), per RAG_READ_CONSISTENCY_S",
        "chunks": args.chunks,
        "prices": {"list_per_1000_usd": LIST_PER_1000, "get_per_1000_usd": GET_PER_1000},
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(
        "| RAG_READ_CONSISTENCY_S | busy p50 ms | vs 0 | busy LIST/GET per q | $/1M q busy | sparse LIST/GET per q "
        "| $/1M q sparse | after a write: found, LIST/GET |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        b, s, w = r["busy"], r["sparse"], r["after_write"]
        bq, sq, wq = b["requests_per_query"], s["requests_per_query"], w["requests"]
        print(
            f"| {r['read_consistency_s']} | {b['p50_ms']} | {b['p50_vs_0']} | {bq.get('LIST', 0)} / {bq.get('GET', 0)} "
            f"| {b['cost_per_million_queries']['total_usd']} | {sq.get('LIST', 0)} / {sq.get('GET', 0)} "
            f"| {s['cost_per_million_queries']['total_usd']} | {w['found_new_document']}, "
            f"{wq.get('LIST', 0)} / {wq.get('GET', 0)} |"
        )


if __name__ == "__main__":
    main()
