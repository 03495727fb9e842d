"""Bounded staleness with read-your-writes, across real processes (RAG_READ_CONSISTENCY_S; see
shared/vector_store/freshness.py).

Each process is tests/support/store_worker.py: one VectorStore built from the RAG_* environment as a lambda
builds its own, on a folder and on moto's S3. A reader allowed an hour of staleness still finds, on its
very next search, a document another process just wrote for the same tenant (the tenant's version marker
says the table moved); a write that publishes no marker (a bare LanceDB write, as another process's index
build would be) stays invisible to that reader, and reaches a reader allowed 1 s of staleness within that
bound. With staleness 0 no marker is needed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import lancedb
import pyarrow as pa
import pytest

from shared.vector_store import CHUNKS_TABLE, storage_options_for
from shared.vector_store.schema import chunk_record
from tests.conftest import S3_ENV, s3_client
from tests.support.paths import ROOT
from tests.support.store_worker import rows
from tests.support.timeouts import scaled

DIMENSION = 8
HOUR = "3600"


class Worker:
    """One store_worker process."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self._log = log.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.support.store_worker"],
            cwd=ROOT,
            env={**os.environ, **env},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
        )
        assert self._read() == {"ready": True}

    def _read(self) -> Any:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line, f"the worker exited ({self.proc.poll()})"
        return json.loads(line)

    def send(self, **cmd: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()

    def reply(self) -> dict[str, Any]:
        got: dict[str, Any] = self._read()
        assert "error" not in got, got["error"]
        return got

    def __call__(self, **cmd: Any) -> dict[str, Any]:
        self.send(**cmd)
        return self.reply()

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(scaled(30))
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(scaled(10))
        self._log.close()


@pytest.fixture(params=["folder", "s3"])
def store_env(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, str]:
    env = {
        "RAG_EMBEDDING_DIMENSION": str(DIMENSION),
        "RAG_VECTOR_INDEX": "off",
        "RAG_UPSTREAM_TIMEOUT_S": str(scaled(60)),
    }
    if request.param == "folder":
        return {**env, "RAG_LANCEDB_URI": str(tmp_path / "lancedb")}
    endpoint = request.getfixturevalue("moto_s3")
    bucket = f"fresh-{uuid.uuid4().hex[:12]}"
    s3_client(endpoint).create_bucket(Bucket=bucket)
    return {**env, **S3_ENV, "RAG_LANCEDB_URI": f"s3://{bucket}/lancedb", "RAG_S3_ENDPOINT_URL": endpoint}


@pytest.fixture
def workers(store_env: dict[str, str], tmp_path: Path) -> Iterator[Any]:
    started: list[Worker] = []

    def start(staleness: str) -> Worker:
        w = Worker({**store_env, "RAG_READ_CONSISTENCY_S": staleness}, tmp_path / f"worker-{len(started)}.log")
        started.append(w)
        return w

    yield start
    for w in started:
        w.close()


def bare_write(env: dict[str, str], tenant: str, doc: str) -> int:
    """Write a document's chunks with LanceDB itself (no store, so no version marker); the new version."""
    uri = env["RAG_LANCEDB_URI"]
    options = storage_options_for(uri, env.get("RAG_S3_ENDPOINT_URL"), "us-east-1")
    saved = {k: os.environ.get(k) for k in S3_ENV}
    os.environ.update(S3_ENV)
    try:
        table = lancedb.connect(uri, storage_options=options or None).open_table(CHUNKS_TABLE)
        records = [chunk_record(r, "2026-01-01T00:00:00Z", tenant) for r in rows(doc, 2, "bare", DIMENSION)]
        table.add(pa.Table.from_pylist(records, schema=table.schema))
        return int(table.version)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def test_the_author_finds_a_new_document_at_once_whatever_the_staleness(workers: Any) -> None:
    writer, reader = workers(HOUR), workers(HOUR)
    writer(op="write", tenant="acme", doc="old.txt", chunks=2, tag="v1")
    assert reader(op="search", tenant="acme", doc="old.txt")["docs"] == ["old.txt"]
    assert reader(op="docs", tenant="acme")["docs"] == ["old.txt"]
    for n in range(3):  # each write is found on the reader's very next query (of either read path)
        doc = f"new-{n}.txt"
        committed = writer(op="write", tenant="acme", doc=doc, chunks=3, tag="v1")["version"]
        found = reader(op="search", tenant="acme", doc=doc)
        assert found["docs"] == [doc]
        assert found["version"] >= committed
        assert doc in reader(op="docs", tenant="acme")["docs"]
    # A delete too: the document is gone from the reader's next query.
    assert writer(op="delete", tenant="acme", doc="new-0.txt")["deleted"] == 3
    assert reader(op="search", tenant="acme", doc="new-0.txt")["docs"] == []
    # And a batch write.
    writer(op="batch", tenant="acme", docs={"b1.txt": [2, "v1"], "b2.txt": [1, "v1"]})
    assert {"b1.txt", "b2.txt"} <= set(reader(op="docs", tenant="acme")["docs"])


def test_staleness_without_a_marker_is_bounded_by_the_setting(workers: Any, store_env: dict[str, str]) -> None:
    writer, slow, quick = workers(HOUR), workers(HOUR), workers("1")
    writer(op="write", tenant="globex", doc="seed.txt", chunks=1, tag="v1")
    for r in (slow, quick):
        assert r(op="search", tenant="globex", doc="seed.txt")["docs"] == ["seed.txt"]
    # Another tenant's write moves the table, but publishes nothing for globex: the hour-stale reader
    # keeps searching the version it holds (no LIST per query); acme's reader finds acme's write.
    latest = writer(op="write", tenant="acme", doc="a.txt", chunks=1, tag="v1")["version"]
    assert slow(op="search", tenant="globex", doc="seed.txt")["version"] < latest
    # A write with no marker at all (LanceDB's own; as an index build by another process would be).
    bare = bare_write(store_env, "globex", "unmarked.txt")
    assert slow(op="search", tenant="globex", doc="unmarked.txt")["docs"] == []
    # The reader allowed 1 s sees it once that second has passed.
    deadline = time.monotonic() + scaled(30)
    while True:
        got = quick(op="search", tenant="globex", doc="unmarked.txt")
        if got["docs"] == ["unmarked.txt"]:
            assert got["version"] >= bare
            break
        assert time.monotonic() < deadline, "a 1 s-stale reader never saw the write"
        time.sleep(0.2)
    # The hour-stale reader still has not; its tenant's next own write brings it up to date.
    assert slow(op="search", tenant="globex", doc="unmarked.txt")["docs"] == []
    writer(op="write", tenant="globex", doc="later.txt", chunks=1, tag="v1")
    assert slow(op="search", tenant="globex", doc="unmarked.txt")["docs"] == ["unmarked.txt"]


def test_staleness_zero_reads_the_latest_version_without_markers(workers: Any, store_env: dict[str, str]) -> None:
    reader = workers("0")
    workers("0")(op="write", tenant="acme", doc="seed.txt", chunks=1, tag="v1")
    assert reader(op="search", tenant="acme", doc="seed.txt")["docs"] == ["seed.txt"]
    bare = bare_write(store_env, "acme", "unmarked.txt")
    got = reader(op="search", tenant="acme", doc="unmarked.txt")
    assert got["docs"] == ["unmarked.txt"]
    assert got["version"] >= bare


def test_consistency_interval() -> None:
    from shared.vector_store.freshness import consistency_interval

    assert consistency_interval(0) == timedelta(0)
    assert consistency_interval(2.5) == timedelta(seconds=2.5)
    assert consistency_interval(float("inf")) is None
    with pytest.raises(ValueError):
        consistency_interval(-1)
