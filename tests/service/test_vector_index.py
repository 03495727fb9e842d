"""The vector index lifecycle on real LanceDB in a folder and on S3 (moto's server), and two processes
building it at once.

Created past the (test-sized) threshold, unindexed rows found at once, folded, retrained on growth; the
tenant prefilter through the index; exact distances; and two processes asked to build at the same
moment leave one index (one builds, the other finds the build lease held or the index made).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from shared.vector_store import VECTOR_INDEX_NAME, VectorIndexPolicy, VectorStore, storage_options_for
from shared.vector_store.vector_index import trained_rows, vector_index
from tests.conftest import S3_ENV, s3_client
from tests.support.paths import ROOT
from tests.support.timeouts import scaled
from tests.support.vectors import clustered, rows

MODEL = "sentence-transformers/all-MiniLM-L6-v2"
DIM = 384
T = "default"


@dataclass(frozen=True)
class Where:
    uri: str
    storage_options: dict[str, str]
    env: dict[str, str]

    def store(self, policy: VectorIndexPolicy) -> VectorStore:
        return VectorStore(
            self.uri,
            dimension=DIM,
            model_id=MODEL,
            storage_options=self.storage_options,
            full_text=False,
            vector_index=policy,
        )


@pytest.fixture(params=["folder", "s3"])
def where(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Where:
    if request.param == "folder":
        return Where(str(tmp_path / "lancedb"), {}, {})
    endpoint = request.getfixturevalue("moto_s3")
    bucket = f"vectors-{uuid.uuid4().hex[:12]}"
    s3_client(endpoint).create_bucket(Bucket=bucket)
    for k, v in S3_ENV.items():
        monkeypatch.setenv(k, v)
    uri = f"s3://{bucket}/lancedb"
    return Where(uri, storage_options_for(uri, endpoint, "us-east-1"), dict(S3_ENV))


def write(store: VectorStore, vectors: Any, *, tenant: str = T, prefix: str = "d", start: int = 0) -> None:
    store.replace_documents(rows(vectors, prefix=prefix, start=start), tenant=tenant)
    assert store.wait_for_upkeep(scaled(300))


def test_the_lifecycle(where: Where) -> None:
    """Created by the background upkeep past min_rows; new rows found before they are indexed; folded by
    ensure_vector_index; retrained once the table doubled; exact distances throughout."""
    store = where.store(VectorIndexPolicy(min_rows=256, retrain_growth=2.0))
    v = clustered(700, seed=20)
    write(store, v[:300])
    table = store.chunks()
    assert vector_index(table) is not None and trained_rows(table) == 300
    fresh = clustered(5, seed=21)
    write(store, fresh, prefix="new")
    assert table.index_stats(VECTOR_INDEX_NAME).num_unindexed_rows == 5
    for i, q in enumerate(fresh):
        hit = store.search(q.tolist(), tenant=T, top_k=1, max_distance=2.0)[0]
        assert hit.text == f"new{i}" and hit.distance == pytest.approx(0.0, abs=1e-5)
    assert store.ensure_vector_index() == "optimized"
    assert table.index_stats(VECTOR_INDEX_NAME).num_unindexed_rows == 0
    write(store, v[300:], start=300)
    assert store.ensure_vector_index() == "retrained"
    assert trained_rows(table) == 705
    for q in v[::50]:
        hits = store.search(q.tolist(), tenant=T, top_k=10, max_distance=2.0)
        ids = [int(h.text[1:]) for h in hits if h.text.startswith("d")]
        cos = v @ q
        assert ids[0] == int(np.argmax(cos))
        assert np.allclose([h.distance for h in hits if h.text.startswith("d")], 1.0 - cos[ids], atol=1e-5)


def test_the_tenant_prefilter_through_the_index(where: Where) -> None:
    store = where.store(VectorIndexPolicy(min_rows=256, nprobes=1))
    big, small = clustered(400, seed=22), clustered(8, seed=23)
    write(store, big, tenant="big", prefix="b")
    write(store, small, tenant="small", prefix="s")
    assert vector_index(store.chunks()) is not None
    for q in big[:10]:
        hits = store.search(q.tolist(), tenant="small", top_k=10, max_distance=2.0)
        assert sorted(h.text for h in hits) == sorted(f"s{i}" for i in range(8))
    for q in small:
        hits = store.search(q.tolist(), tenant="big", top_k=5, max_distance=2.0, mode="hybrid", query_text="s1")
        assert len(hits) == 5 and all(h.text.startswith("b") for h in hits)


BUILDER = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    from shared.vector_store import VectorIndexPolicy, VectorStore

    uri, options, go = sys.argv[1], json.loads(sys.argv[2]), Path(sys.argv[3])
    store = VectorStore(uri, dimension=384, model_id=sys.argv[4], storage_options=options, full_text=False,
                        vector_index=VectorIndexPolicy(min_rows=256))
    store.chunks()
    store.document_leases()._table()
    print("ready", flush=True)
    while not go.exists():
        time.sleep(0.005)
    print(store.ensure_vector_index(), flush=True)
    """
)


def test_two_processes_building_at_once_leave_one_index(where: Where, tmp_path: Path) -> None:
    import json

    v = clustered(500, seed=24)
    write(where.store(VectorIndexPolicy(min_rows=100_000)), v)
    go = tmp_path / "go"
    env = {**os.environ, **where.env, "PYTHONPATH": str(ROOT)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", BUILDER, where.uri, json.dumps(where.storage_options), str(go), MODEL],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    try:
        for p in procs:
            assert p.stdout is not None
            assert p.stdout.readline().strip() == "ready", p.stderr.read() if p.stderr else ""
        go.touch()
        results = []
        for p in procs:
            out, err = p.communicate(timeout=scaled(300))
            assert p.returncode == 0, err
            results.append(out.strip())
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert sorted(results) == ["created", "none"]
    store = where.store(VectorIndexPolicy(min_rows=256))
    table = store.chunks()
    assert len([i for i in table.list_indices() if list(i.columns) == ["vector"]]) == 1
    assert table.index_stats(VECTOR_INDEX_NAME).num_indexed_rows == 500
    assert store.search(v[7].tolist(), tenant=T, top_k=1, max_distance=2.0)[0].text == "d7"
