"""A process holding one VectorStore, built from the RAG_* environment as the lambdas build theirs
(shared.wiring.vector_store), driven by JSON lines on stdin; one JSON line per command on stdout.

``python -m tests.support.store_worker``; commands:

- ``{"op": "write", "tenant", "doc", "chunks", "tag"}``: replace_document with ``chunks`` chunks whose
  text is ``tag:i`` -> ``{"version"}`` (the version the write committed)
- ``{"op": "batch", "tenant", "docs": {doc: [chunks, tag]}}``: replace_documents -> ``{"version"}``
- ``{"op": "delete", "tenant", "doc"}``: delete_document -> ``{"deleted"}``
- ``{"op": "script", "steps": [command...]}``: the steps in order, each retried (as a client would) when
  it raises, up to 5 times -> ``{"errors": [str...], "started", "finished"}`` (the failures that were
  retried; when the script ran, epoch seconds)
- ``{"op": "search", "tenant", "doc"}``: a vector search for that document's vector -> ``{"docs",
  "version"}`` (the documents found, and the table version this process searched)
- ``{"op": "docs", "tenant"}``: indexed_doc_ids -> ``{"docs", "version"}``
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
import time
from typing import Any

from shared.settings import RagSettings
from shared.vector_store import ChunkRow, VectorStore
from shared.wiring import vector_store

STEP_ATTEMPTS = 5


def doc_vector(doc: str, dimension: int) -> list[float]:
    """A unit vector of its own per document id (its chunks all have it; a search for it finds them)."""
    raw = [b - 127.5 for b in hashlib.sha256(doc.encode()).digest()[:dimension]]
    norm = math.sqrt(sum(x * x for x in raw)) or 1.0
    return [x / norm for x in raw]


def rows(doc: str, chunks: int, tag: str, dimension: int) -> list[ChunkRow]:
    vector = doc_vector(doc, dimension)
    return [ChunkRow(doc, i, doc, f"{tag}:{i}", vector) for i in range(chunks)]


def run(store: VectorStore, cmd: dict[str, Any]) -> dict[str, Any]:
    op, dim = cmd["op"], store.dimension
    if op == "write":
        store.replace_document(cmd["doc"], rows(cmd["doc"], cmd["chunks"], cmd["tag"], dim), tenant=cmd["tenant"])
        return {"version": int(store.chunks().version)}
    if op == "batch":
        docs = {d: rows(d, n, tag, dim) for d, (n, tag) in cmd["docs"].items()}
        store.replace_documents(docs, tenant=cmd["tenant"])
        return {"version": int(store.chunks().version)}
    if op == "delete":
        return {"deleted": store.delete_document(cmd["doc"], tenant=cmd["tenant"])}
    if op == "script":
        started = time.time()
        errors: list[str] = []
        for step in cmd["steps"]:
            for attempt in range(1, STEP_ATTEMPTS + 1):
                try:
                    run(store, step)
                    break
                except Exception as exc:
                    errors.append(f"{step['op']} {step.get('doc', '')}: {type(exc).__name__}: {str(exc)[:300]}")
                    if attempt == STEP_ATTEMPTS:
                        raise
        return {"errors": errors, "started": started, "finished": time.time()}
    if op == "search":
        hits = store.search(doc_vector(cmd["doc"], dim), tenant=cmd["tenant"], top_k=50, max_distance=0.01)
        return {"docs": sorted({m.doc_id for m in hits}), "version": int(store.chunks().version)}
    if op == "docs":
        found = store.indexed_doc_ids(tenant=cmd["tenant"])
        return {"docs": sorted(found), "version": int(store.chunks().version)}
    raise ValueError(f"unknown op {op!r}")


def main() -> None:
    store = vector_store(RagSettings())
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        try:
            reply = run(store, json.loads(line))
        except Exception as exc:
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(reply), flush=True)


if __name__ == "__main__":
    main()
