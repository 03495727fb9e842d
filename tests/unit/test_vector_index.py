"""The vector index lifecycle and the scalar index upkeep, on real LanceDB in a folder (no process).

Created past RAG_VECTOR_INDEX_MIN_ROWS, folded forward (optimize), retrained on growth; search through the
index equals exact search (real MiniLM vectors), finds rows the index does not hold yet, never leaks
another tenant's rows, and gates on exact cosine distances; one builder at a time; the messages table's
scalar indexes count the new rows after upkeep. The same on S3: tests/service/test_vector_index.py.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from shared.vector_store import VECTOR_INDEX_NAME, MessageRow, VectorIndexPolicy, VectorStore
from shared.vector_store.vector_index import (
    S3_REFINE_FACTOR,
    TRAINED_ROWS_KEY,
    SearchParams,
    trained_rows,
    vector_index,
)
from tests.support.timeouts import scaled
from tests.support.vectors import clustered, real_texts, rows

MODEL = "sentence-transformers/all-MiniLM-L6-v2"
DIM = 384
T = "default"


def store_at(path: Path, policy: VectorIndexPolicy, **kw: Any) -> VectorStore:
    return VectorStore(str(path), dimension=DIM, model_id=MODEL, full_text=False, vector_index=policy, **kw)


def write(store: VectorStore, vectors: Any, *, tenant: str = T, prefix: str = "d", start: int = 0) -> None:
    """Write the rows, and wait for the background upkeep the write may have started (a process's first
    write always looks at the table; later ones once fold_rows were written)."""
    store.replace_documents(rows(vectors, prefix=prefix, start=start), tenant=tenant)
    assert store.wait_for_upkeep(scaled(300))


def has_index(store: VectorStore) -> bool:
    return vector_index(store.chunks()) is not None


def created_at(store: VectorStore) -> Any:
    idx = vector_index(store.chunks())
    assert idx is not None
    return idx.created_at


def exact_ids(vectors: Any, q: Any, k: int, *, prefix: str = "d") -> list[str]:
    cos = vectors @ (q / np.linalg.norm(q))
    return [f"{prefix}{i}" for i in np.argsort(-cos, kind="stable")[:k]]


@pytest.fixture(scope="module")
def minilm() -> tuple[Any, Any]:
    """(~500 real MiniLM vectors of windows of the seed article, 20 real MiniLM query vectors)."""
    from tests.support.embedder import InProcessEmbedder

    e = InProcessEmbedder()
    texts = real_texts()
    questions = [
        "How do I run serverless functions locally?",
        "What does the embedding model do?",
        "Where are the vectors stored?",
        "How is the answer streamed to the client?",
        "What is a WebSocket API?",
        "How are documents chunked?",
        "Which LLM answers the questions?",
        "How do I deploy to AWS?",
        "What is LanceDB?",
        "How does retrieval choose passages?",
        "What happens when the model is slow?",
        "How is cost estimated?",
        "What is Bedrock?",
        "Can it run offline?",
        "How are tests run?",
        "What is the gateway for?",
        "How big are the chunks?",
        "What is hybrid search?",
        "Why use S3?",
        "How is a conversation stored?",
    ]
    return np.asarray(e.embed_documents(texts), dtype=np.float32), np.asarray(e.embed_documents(questions), np.float32)


# ---------------------------------------------------------------------------------------------- policy


def test_the_policy_rejects_what_cannot_work() -> None:
    for bad in (
        {"mode": "sometimes"},
        {"index_type": "IVF_FLAT"},
        {"min_rows": 0},
        {"nprobes": 0},
        {"refine_factor": 0},
        {"retrain_growth": 1.0},
    ):
        with pytest.raises(ValueError):
            VectorIndexPolicy(**bad)


def test_index_type_picks_the_lancedb_config() -> None:
    """RAG_VECTOR_INDEX_TYPE: HNSW over scalar-quantized vectors, or PQ (8 dimensions per code); cosine."""
    hnsw = VectorIndexPolicy(index_type="IVF_HNSW_SQ").config(100_000, DIM)
    pq = VectorIndexPolicy(index_type="IVF_PQ").config(100_000, DIM)
    assert (type(hnsw).__name__, hnsw.distance_type) == ("HnswSq", "cosine")
    assert (type(pq).__name__, pq.distance_type, pq.num_sub_vectors) == ("IvfPq", "cosine", 48)


def test_the_settings_build_the_policy(monkeypatch: pytest.MonkeyPatch) -> None:
    from shared.settings import RagSettings

    assert RagSettings().vector_index_policy() == VectorIndexPolicy()  # one set of defaults
    # On S3 re-ranking costs a request per candidate: no refine unless asked for.
    monkeypatch.setenv("RAG_LANCEDB_URI", "s3://bucket/lancedb")
    assert RagSettings().vector_index_policy().refine_factor == S3_REFINE_FACTOR == 1
    monkeypatch.setenv("RAG_VECTOR_REFINE_FACTOR", "2")
    assert RagSettings().vector_index_policy().refine_factor == 2
    monkeypatch.delenv("RAG_LANCEDB_URI")
    for k, v in {
        "RAG_VECTOR_INDEX": "off",
        "RAG_VECTOR_INDEX_MIN_ROWS": "123",
        "RAG_VECTOR_INDEX_TYPE": "IVF_PQ",
        "RAG_VECTOR_NPROBES": "9",
        "RAG_VECTOR_REFINE_FACTOR": "1",
        "RAG_VECTOR_INDEX_RETRAIN_GROWTH": "3",
    }.items():
        monkeypatch.setenv(k, v)
    assert RagSettings().vector_index_policy() == VectorIndexPolicy(
        mode="off", min_rows=123, index_type="IVF_PQ", nprobes=9, refine_factor=1, retrain_growth=3.0
    )


# ---------------------------------------------------------------------------------------------- lifecycle


def test_created_once_the_table_reaches_min_rows(tmp_path: Path) -> None:
    """RAG_VECTOR_INDEX_MIN_ROWS: no index below it; created (trained on the rows present) at it."""
    store = store_at(tmp_path, VectorIndexPolicy(min_rows=400))
    v = clustered(600)
    write(store, v[:300])
    assert store.ensure_vector_index() == "none"
    assert vector_index(store.chunks()) is None
    write(store, v[300:], start=300)
    assert store.ensure_vector_index() == "created"
    table = store.chunks()
    stats = table.index_stats(VECTOR_INDEX_NAME)
    assert (stats.index_type, stats.distance_type, stats.num_indexed_rows) == ("IVF_HNSW_SQ", "cosine", 600)
    assert trained_rows(table) == 600
    assert store.ensure_vector_index() == "none"  # nothing left to do


def test_rag_vector_index_off_builds_nothing_and_searches_exactly(tmp_path: Path) -> None:
    """RAG_VECTOR_INDEX=off: no index however large the table; an index made by another process is
    bypassed (the query plan is a flat scan)."""
    off = store_at(tmp_path, VectorIndexPolicy(mode="off", min_rows=256))
    v = clustered(300)
    write(off, v)
    assert off.ensure_vector_index() == "none"
    assert off.ensure_vector_index(force=True) == "none"
    assert vector_index(off.chunks()) is None
    assert store_at(tmp_path, VectorIndexPolicy(min_rows=256)).ensure_vector_index() == "created"
    query = off.chunks().search(v[0].tolist()).distance_type("cosine").limit(5)
    assert "ANN" not in off.vector_index.search_params().apply(query).explain_plan(True)
    hits = off.search(v[0].tolist(), tenant=T, top_k=5, max_distance=2.0)
    assert [h.text for h in hits] == exact_ids(v, v[0], 5)


def test_nprobes_and_refine_factor_reach_the_query(tmp_path: Path) -> None:
    """RAG_VECTOR_NPROBES (that many partitions; all it takes when a narrow filter leaves too few) and
    RAG_VECTOR_REFINE_FACTOR (limit x factor candidates re-ranked by full vectors) in LanceDB's plan."""
    store = store_at(tmp_path, VectorIndexPolicy(min_rows=256, nprobes=7, refine_factor=3))
    v = clustered(300)
    write(store, v)
    store.ensure_vector_index()
    query = store.chunks().search(v[0].tolist()).distance_type("cosine").limit(5)
    plan = store.vector_index.search_params().apply(query).explain_plan(True)
    assert "minimum_nprobes=7, maximum_nprobes=Some(7)" in plan
    assert "k=15" in plan  # 5 x refine 3 candidates from the index, re-ranked by KNNVectorDistance
    query = store.chunks().search(v[0].tolist()).distance_type("cosine").limit(5)
    plan = SearchParams(True, 7, 1).apply(query).explain_plan(True)
    # The least re-ranking: the limit's own candidates, re-scored by their full vectors (exact distances).
    assert "k=5," in plan and "KNNVectorDistance" in plan
    query = store.chunks().search(v[0].tolist()).distance_type("cosine").limit(5)
    assert "minimum_nprobes=7, maximum_nprobes=None" in SearchParams(True, 7, 1).apply(query, widen=True).explain_plan(
        True
    )


@pytest.mark.parametrize("index_type", ["IVF_HNSW_SQ", "IVF_PQ"])
def test_search_through_the_index_equals_exact_search(tmp_path: Path, minilm: tuple[Any, Any], index_type: str) -> None:
    """Real MiniLM vectors (seed article windows, real questions): top 10 through the index = exact top
    10, with exact distances, in every mode that has a vector list."""
    corpus, questions = minilm
    store = store_at(tmp_path, VectorIndexPolicy(min_rows=256, index_type=index_type))  # type: ignore[arg-type]
    write(store, corpus)  # (its first write: the background upkeep builds the index)
    assert has_index(store) and store.ensure_vector_index() == "none"
    assert store.chunks().index_stats(VECTOR_INDEX_NAME).num_unindexed_rows == 0
    for q in questions:
        hits = store.search(q.tolist(), tenant=T, top_k=10, max_distance=2.0)
        assert [h.text for h in hits] == exact_ids(corpus, q, 10)
        want = 1.0 - corpus[[int(h.text[1:]) for h in hits]] @ q
        assert np.allclose([h.distance for h in hits], want, atol=1e-5)


def test_rows_not_yet_indexed_are_found_at_once_then_folded_in(tmp_path: Path) -> None:
    store = store_at(tmp_path, VectorIndexPolicy(min_rows=256))
    v = clustered(400, seed=1)
    write(store, v[:300])
    assert has_index(store)
    fresh = clustered(5, seed=99)  # far from every cluster of the first set
    write(store, fresh, prefix="new")
    table = store.chunks()
    assert table.index_stats(VECTOR_INDEX_NAME).num_unindexed_rows == 5
    for i, q in enumerate(fresh):
        assert store.search(q.tolist(), tenant=T, top_k=1, max_distance=2.0)[0].text == f"new{i}"
    assert store.ensure_vector_index() == "optimized"  # an explicit call folds any unindexed row
    assert table.index_stats(VECTOR_INDEX_NAME).num_unindexed_rows == 0
    for i, q in enumerate(fresh):
        assert store.search(q.tolist(), tenant=T, top_k=1, max_distance=2.0)[0].text == f"new{i}"


def test_retrained_once_the_table_grows_by_the_factor(tmp_path: Path) -> None:
    """RAG_VECTOR_INDEX_RETRAIN_GROWTH=2: rows added are folded in until the table holds twice the rows the
    index was trained on; then it is rebuilt on all of them."""
    store = store_at(tmp_path, VectorIndexPolicy(min_rows=300, retrain_growth=2.0))
    v = clustered(700, seed=2)
    write(store, v[:300])
    assert has_index(store) and store.ensure_vector_index() == "none"
    table = store.chunks()
    first = created_at(store)
    write(store, v[300:500], start=300)
    assert store.ensure_vector_index() == "optimized"
    assert trained_rows(table) == 300
    write(store, v[500:], start=500)  # 700 >= 2 x 300
    assert store.ensure_vector_index() == "retrained"
    assert trained_rows(table) == 700
    assert created_at(store) > first
    assert table.index_stats(VECTOR_INDEX_NAME).num_indexed_rows == 700
    assert len([i for i in table.list_indices() if list(i.columns) == ["vector"]]) == 1
    assert store.ensure_vector_index(force=True) == "retrained"  # force: rebuild now


def test_a_bigger_growth_factor_keeps_folding(tmp_path: Path) -> None:
    store = store_at(tmp_path, VectorIndexPolicy(min_rows=300, retrain_growth=3.0))
    v = clustered(700, seed=2)
    write(store, v[:300])
    store.ensure_vector_index()
    write(store, v[300:], start=300)
    assert store.ensure_vector_index() == "optimized"  # 700 < 3 x 300
    assert trained_rows(store.chunks()) == 300


def test_the_tenant_prefilter_never_leaks_through_the_index(tmp_path: Path) -> None:
    """A big tenant and a small one (10 rows) in one indexed table: the small one's query near the big
    one's rows gets its own 10 rows, all of them (partitions past nprobes are searched to fill the
    limit), and the big one never sees the small one's."""
    store = store_at(tmp_path, VectorIndexPolicy(min_rows=256, nprobes=1))
    big, small = clustered(600, seed=3), clustered(10, seed=4)
    write(store, big, tenant="big", prefix="b")
    write(store, small, tenant="small", prefix="s")
    assert store.ensure_vector_index() == "optimized" and has_index(store)
    for q in big[:20]:
        hits = store.search(q.tolist(), tenant="small", top_k=10, max_distance=2.0)
        assert sorted(h.text for h in hits) == sorted(f"s{i}" for i in range(10))
    for q in small:
        hits = store.search(q.tolist(), tenant="big", top_k=10, max_distance=2.0, mode="vector")
        assert len(hits) == 10 and all(h.text.startswith("b") for h in hits)


def test_the_gate_compares_exact_distances(tmp_path: Path) -> None:
    """IVF_PQ: LanceDB's _distance without re-ranking is the quantized one; the gate and every Match use the
    exact cosine distance, even at the least re-ranking (refine_factor 1). A threshold between the two keeps
    exactly the rows whose exact distance is within it."""
    store = store_at(tmp_path, VectorIndexPolicy(min_rows=256, index_type="IVF_PQ", refine_factor=1, nprobes=50))
    v = clustered(600, seed=5, spread=0.8)
    write(store, v)
    assert has_index(store)
    table = store.chunks()
    q = clustered(1, seed=6)[0]
    raw = table.search(q.tolist()).distance_type("cosine").nprobes(50).limit(10).to_list()  # no re-ranking
    exact = {r["text"]: float(1.0 - np.dot(r["vector"], q)) for r in raw}
    approx = {r["text"]: float(r["_distance"]) for r in raw}
    assert max(abs(exact[t] - approx[t]) for t in exact) > 1e-4  # precondition: PQ distances are approximate
    hits = store.search(q.tolist(), tenant=T, top_k=10, max_distance=2.0)
    for h in hits:
        assert h.distance == pytest.approx(1.0 - float(np.dot(v[int(h.text[1:])], q)), abs=1e-5)
    assert [h.distance for h in hits] == sorted(h.distance for h in hits)
    # A threshold that the approximate and the exact distance of some row fall on either side of.
    text = max(exact, key=lambda t: abs(exact[t] - approx[t]))
    threshold = (exact[text] + approx[text]) / 2
    kept = {h.text for h in store.search(q.tolist(), tenant=T, top_k=10, max_distance=threshold)}
    assert (text in kept) == (exact[text] <= threshold)
    assert all(exact_d <= threshold for t, exact_d in exact.items() if t in kept)


# ---------------------------------------------------------------------------------------------- builders


def test_the_background_upkeep_builds_and_folds_after_writes(tmp_path: Path) -> None:
    """Writes alone: the index is created in the background once the table is big enough, and new rows
    are folded in once fold_rows of them were written."""
    store = store_at(tmp_path, VectorIndexPolicy(min_rows=300, fold_rows=100))
    v = clustered(600, seed=7)
    write(store, v[:200])
    assert store.wait_for_upkeep(scaled(60))
    assert vector_index(store.chunks()) is None
    write(store, v[200:350], start=200)
    assert store.wait_for_upkeep(scaled(120))
    assert store.chunks().index_stats(VECTOR_INDEX_NAME).num_indexed_rows == 350
    write(store, v[350:400], start=350)
    assert store.wait_for_upkeep(scaled(60))
    assert store.chunks().index_stats(VECTOR_INDEX_NAME).num_unindexed_rows == 50  # below fold_rows
    write(store, v[400:], start=400)
    assert store.wait_for_upkeep(scaled(120))
    assert store.chunks().index_stats(VECTOR_INDEX_NAME).num_unindexed_rows == 0


def test_two_builders_at_once_build_one_index(tmp_path: Path) -> None:
    """Two stores (as two processes would have) asked to build at the same moment: one builds, the
    other finds the build lease held (or the index made) and does nothing; one index, searchable."""
    v = clustered(400, seed=8)
    write(store_at(tmp_path, VectorIndexPolicy(min_rows=10_000)), v)
    stores = [store_at(tmp_path, VectorIndexPolicy(min_rows=256)) for _ in range(2)]
    barrier = threading.Barrier(2)
    results: list[str] = []

    def build(s: VectorStore) -> None:
        s.chunks()
        barrier.wait()
        results.append(s.ensure_vector_index())

    threads = [threading.Thread(target=build, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join(scaled(300))
    assert sorted(results) == ["created", "none"]
    table = stores[0].chunks()
    assert len([i for i in table.list_indices() if list(i.columns) == ["vector"]]) == 1
    assert table.index_stats(VECTOR_INDEX_NAME).num_indexed_rows == 400
    assert stores[1].search(v[3].tolist(), tenant=T, top_k=1, max_distance=2.0)[0].text == "d3"


def test_a_concurrent_create_that_lost_is_not_an_error(tmp_path: Path) -> None:
    """Without the lease (a lease table that cannot be written, say), the later create fails because the
    index exists: logged, and the upkeep reports that it did nothing."""
    store = store_at(tmp_path, VectorIndexPolicy(min_rows=10_000))
    write(store, clustered(300, seed=9))
    other = store_at(tmp_path, VectorIndexPolicy(min_rows=256))
    table = store.chunks()
    other.chunks().create_index("vector", config=other.vector_index.policy.config(300, DIM), name=VECTOR_INDEX_NAME)
    assert store.vector_index._build(table, replace=False) == "none"
    assert len([i for i in table.list_indices() if list(i.columns) == ["vector"]]) == 1


# ---------------------------------------------------------------------------------------------- scalar indexes


def _messages(conversation: str, n: int) -> Iterator[MessageRow]:
    for seq in range(n):
        yield MessageRow(f"{conversation}-{seq}", conversation, seq, "user", f"m{seq}", "2026-01-01T00:00:00Z")


def test_the_messages_scalar_indexes_count_new_rows_after_upkeep(tmp_path: Path) -> None:
    """Never optimized before: every message stayed outside the tenant and conversation_id indexes. Now,
    once 50 (messages_fold_rows) were written, the background upkeep folds them in."""
    store = store_at(tmp_path, VectorIndexPolicy(), messages_fold_rows=50)
    table = store.messages()
    names = {tuple(i.columns): i.name for i in table.list_indices()}
    conv, tenant = names[("conversation_id",)], names[("tenant",)]
    for c in range(12):
        store.append_messages(list(_messages(f"c{c}", 10)), tenant=T, principal="p")
    assert store.wait_for_upkeep(scaled(60))
    for name in (conv, tenant):
        stats = table.index_stats(name)
        # 120 rows; at most fold_rows - 1 of them still outside (the next write's upkeep folds them)
        assert stats.num_indexed_rows + stats.num_unindexed_rows == 120, (name, stats)
        assert stats.num_unindexed_rows < 50, (name, stats)
    assert [m.seq for m in store.conversation("c3", tenant=T, principal="p")] == list(range(10))


def test_the_chunks_scalar_indexes_are_folded_with_the_vector_index(tmp_path: Path) -> None:
    store = store_at(tmp_path, VectorIndexPolicy(min_rows=256))
    write(store, clustered(300, seed=10))
    assert has_index(store)
    write(store, clustered(20, seed=11), prefix="x")
    assert store.ensure_vector_index() == "optimized"
    for idx in store.chunks().list_indices():
        assert store.chunks().index_stats(idx.name).num_unindexed_rows == 0, idx.name


def test_trained_rows_metadata_key_is_on_the_vector_field(tmp_path: Path) -> None:
    store = store_at(tmp_path, VectorIndexPolicy(min_rows=256))
    write(store, clustered(300, seed=12))
    store.ensure_vector_index()
    meta = store.chunks().schema.field("vector").metadata
    assert meta[TRAINED_ROWS_KEY.encode()] == b"300"
