"""Two ingestion-side processes writing ONE chunks table on moto's S3 at the same time lose no commit.

LanceDB (lance) commits a version on S3 by a conditional PUT of its manifest (``If-None-Match: *``; a
concurrent writer that took the version first makes it 412, and lance rebases the transaction onto the
new version and tries the next one). moto honours If-None-Match on PutObject. Each process is
tests/support/store_worker.py (a VectorStore from the RAG_* environment, as the ingestion lambda builds
it), given a random script of writes (single documents, batches, rewrites with fewer chunks, deletes) of
its own documents in two tenants, both started at the same moment; several random interleavings. After
each: every document has exactly the chunks of its last write (none lost, none duplicated, none left from
an older version), read by a third process. A step that raised was retried (a client would) and is
reported; the state must still be exact.
"""

from __future__ import annotations

import random
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import lancedb
import pytest

from shared.vector_store import CHUNKS_TABLE, storage_options_for
from tests.conftest import S3_ENV, s3_client
from tests.service.test_freshness import DIMENSION, Worker
from tests.support.timeouts import scaled

TENANTS = ("acme", "globex")
ROUNDS = 3
STEPS = 30


def script(rng: random.Random, name: str, expected: dict[tuple[str, str], tuple[int, str]]) -> list[dict[str, Any]]:
    """A random script of writes of process ``name``'s documents; ``expected`` gets each document's final
    (chunks, tag), absent when it ends deleted."""
    steps: list[dict[str, Any]] = []
    for n in range(STEPS):
        tenant = rng.choice(TENANTS)
        doc = f"{name}-{rng.randrange(8)}.txt"
        kind = rng.choices(("write", "batch", "delete"), weights=(6, 2, 1))[0]
        tag = f"{name}-{n}"
        if kind == "write":
            chunks = rng.randint(1, 6)
            steps.append({"op": "write", "tenant": tenant, "doc": doc, "chunks": chunks, "tag": tag})
            expected[(tenant, doc)] = (chunks, tag)
        elif kind == "batch":
            sizes = {f"{name}-b{rng.randrange(4)}-{i}.txt": rng.randint(1, 4) for i in range(3)}
            steps.append({"op": "batch", "tenant": tenant, "docs": {d: [n, tag] for d, n in sizes.items()}})
            for d, n in sizes.items():
                expected[(tenant, d)] = (n, tag)
        else:
            steps.append({"op": "delete", "tenant": tenant, "doc": doc})
            expected.pop((tenant, doc), None)
    return steps


def stored(uri: str, endpoint: str) -> list[dict[str, Any]]:
    """Every chunk row (tenant, doc_id, id, text), read by this (third) process."""
    table = lancedb.connect(uri, storage_options=storage_options_for(uri, endpoint, "us-east-1")).open_table(
        CHUNKS_TABLE
    )
    rows: list[dict[str, Any]] = table.search().select(["tenant", "doc_id", "id", "text"]).limit(None).to_list()
    return rows


def test_two_writers_on_one_s3_table_lose_no_commit(
    moto_s3: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in S3_ENV.items():
        monkeypatch.setenv(key, value)
    for round_ in range(ROUNDS):
        bucket = f"writers-{uuid.uuid4().hex[:12]}"
        s3_client(moto_s3).create_bucket(Bucket=bucket)
        uri = f"s3://{bucket}/lancedb"
        env = {
            **S3_ENV,
            "RAG_LANCEDB_URI": uri,
            "RAG_S3_ENDPOINT_URL": moto_s3,
            "RAG_EMBEDDING_DIMENSION": str(DIMENSION),
            "RAG_VECTOR_INDEX": "off",
            "RAG_READ_CONSISTENCY_S": "10",
            "RAG_UPSTREAM_TIMEOUT_S": str(scaled(60)),
        }
        rng = random.Random(round_)
        expected: dict[tuple[str, str], tuple[int, str]] = {}
        scripts = {name: script(rng, name, expected) for name in ("p1", "p2")}
        writers = [Worker(env, tmp_path / f"round{round_}-{name}.log") for name in scripts]
        try:
            for w in writers:  # one table, created before the race (as the first ingest would)
                w(op="docs", tenant="acme")
            for w, steps in zip(writers, scripts.values(), strict=True):
                w.send(op="script", steps=steps)  # both start now
            replies = [w.reply() for w in writers]
        finally:
            for w in writers:
                w.close()
        retried = [r["errors"] for r in replies]
        # The two scripts did run at the same time (each started before the other finished).
        assert max(r["started"] for r in replies) < min(r["finished"] for r in replies)
        rows = stored(uri, moto_s3)
        ids = Counter((r["tenant"], r["id"]) for r in rows)
        assert [k for k, n in ids.items() if n > 1] == [], "duplicated chunks"
        got: dict[tuple[str, str], list[str]] = {}
        for r in rows:
            got.setdefault((r["tenant"], r["doc_id"]), []).append(r["text"])
        want = {key: sorted(f"{tag}:{i}" for i in range(n)) for key, (n, tag) in expected.items()}
        assert {k: sorted(v) for k, v in got.items()} == want, f"round {round_}; retried steps: {retried}"
