"""bench/scale.py and bench/scale_data.py: the vector generator's properties, the table rows, the report
(the bench itself runs LanceDB, moto and the model: ``make bench-scale``)."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest

from bench.scale import chunk_batches, label, markdown, message_batches, parse_count
from bench.scale_data import RealSet, generate, grow, knn, neighbourhood_stats, seeds_of, texts_of
from shared.vector_store.schema import MESSAGES_SCHEMA, chunks_schema

DIM = 32


def unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def clustered(n: int, *, clusters: int = 20, spread: float = 0.3, seed: int = 0) -> np.ndarray:
    """Unit vectors in ``clusters`` tight groups (the shape of sentence embeddings: topics)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, DIM))
    return unit(centres[rng.integers(0, clusters, n)] + spread * rng.standard_normal((n, DIM)))


def test_counts_read_with_suffixes_and_print_back() -> None:
    assert parse_count("100k") == 100_000
    assert parse_count("1m") == 1_000_000
    assert parse_count("1.5M") == 1_500_000
    assert parse_count("2500") == 2500
    with pytest.raises(argparse.ArgumentTypeError):
        parse_count("lots")
    assert [label(n) for n in (100_000, 1_000_000, 2500, 40_000)] == ["100k", "1M", "2500", "40k"]


def test_knn_is_exact_and_can_skip_each_row_itself() -> None:
    base = clustered(300)
    queries = clustered(7, seed=1)
    idx, dist = knn(base, queries, 5, block=3)
    brute = 1.0 - queries @ base.T
    for i in range(len(queries)):
        assert list(idx[i]) == list(np.argsort(brute[i])[:5])
        assert dist[i] == pytest.approx(np.sort(brute[i])[:5], abs=1e-5)
    own, _ = knn(base, base, 3, exclude_self=True)
    assert all(i not in own[i] for i in range(len(base)))


def test_generated_vectors_are_unit_deterministic_and_as_many_as_asked() -> None:
    seeds = seeds_of(clustered(200))
    a = generate(seeds, 1000, seed=3)
    assert a.shape == (1000, DIM) and a.dtype == np.float32
    assert np.linalg.norm(a, axis=1) == pytest.approx(np.ones(1000), abs=1e-5)
    assert np.array_equal(a, generate(seeds, 1000, seed=3))
    assert not np.array_equal(a, generate(seeds, 1000, seed=4))
    assert len(np.unique(a.round(5), axis=0)) == 1000  # copies, not duplicates


def test_each_copy_stays_in_its_seeds_neighbourhood() -> None:
    """Generated row j grows around seed j mod n: its nearest seed is that seed or one of its neighbours."""
    vectors = clustered(400)
    seeds = seeds_of(vectors)
    made = generate(seeds, 2000, seed=1)
    nearest, _ = knn(vectors, made, 1)
    home = np.arange(2000) % 400
    in_hood = [nearest[j, 0] == home[j] or nearest[j, 0] in seeds.neighbours[home[j]] for j in range(2000)]
    assert np.mean(in_hood) > 0.95


def test_copies_follow_the_local_density() -> None:
    """A seed in a dense region gets tighter copies than a seed in a sparse one (noise scaled to its own
    nearest-neighbour distance), so dense regions stay dense and sparse ones sparse."""
    dense = clustered(300, clusters=1, spread=0.05, seed=2)
    sparse = clustered(300, clusters=1, spread=0.6, seed=3)
    vectors = np.concatenate([dense, sparse])
    seeds = seeds_of(vectors)
    made = generate(seeds, 6000, seed=0)
    home = np.arange(6000) % 600
    moved = 1.0 - np.sum(made * vectors[home], axis=1)
    assert np.median(moved[home < 300]) * 5 < np.median(moved[home >= 300])


def test_a_grown_set_keeps_the_real_neighbourhood_scale_unlike_uniform_vectors() -> None:
    """The bench's own evidence in small: a set grown x4 from real-like seeds has k-NN distances near the
    ones of a real set of the same size; uniform random unit vectors are nowhere near."""
    population = clustered(5050, seed=5)  # one distribution: a real set, seeds and queries drawn from it
    real, seeds, queries = population[:4000], population[4000:5000], population[5000:]
    grown = grow(seeds, 4000, seed=1)
    uniform = unit(np.random.default_rng(8).standard_normal((4000, DIM)))
    r, g, u = (neighbourhood_stats(v, queries, sample=500) for v in (real, grown, uniform))
    for key in ("row_nn10", "query_nn10"):
        assert abs(g[key]["p50"] - r[key]["p50"]) < 0.2 * r[key]["p50"]
        assert abs(u[key]["p50"] - r[key]["p50"]) > 10 * abs(g[key]["p50"] - r[key]["p50"])


def test_grow_keeps_the_real_vectors_first() -> None:
    real = clustered(100)
    assert np.array_equal(grow(real, 60), real[:60])
    grown = grow(real, 250)
    assert grown.shape == (250, DIM) and np.array_equal(grown[:100], real)


def small_real(n: int = 30) -> RealSet:
    vectors = clustered(n)
    return RealSet(
        vectors=vectors,
        texts=[f"text {i}" for i in range(n)],
        doc_ids=[f"d{i // 3}" for i in range(n)],
        kinds=["chunk"] * n,
        query_vectors=clustered(4, seed=9),
        query_ids=["q0", "q1", "q2", "q3"],
        query_texts=["a", "b", "c", "d"],
    )


def test_chunk_rows_name_their_row_and_carry_their_seeds_text() -> None:
    real = small_real()
    order = np.arange(30)[::-1].copy()
    vectors = grow(real.vectors[order], 75)
    schema = chunks_schema(DIM, "m")
    parts = list(chunk_batches(real, order, vectors, schema, batch=20))
    assert [p.num_rows for p in parts] == [20, 20, 20, 15]
    rows = [r for p in parts for r in p.to_pylist()]
    assert all(p.schema == schema for p in parts)
    assert [r["chunk"] for r in rows] == list(range(75))
    assert len({r["id"] for r in rows}) == 75
    assert rows[0]["text"] == "text 29" and rows[0]["doc_id"] == "d9"  # real row 0 is real vector order[0]
    assert rows[30]["text"] == "text 29" and rows[30]["doc_id"] == "d9~0"  # first copy: around order[0]
    assert rows[61]["text"] == "text 28" and rows[61]["doc_id"] == "d9~1"
    assert np.allclose(np.asarray(rows[40]["vector"]), vectors[40])


def test_messages_spread_each_conversation_over_the_table() -> None:
    parts = list(message_batches(1000, 50, ["hello", "world"], MESSAGES_SCHEMA, batch=300))
    rows = [r for p in parts for r in p.to_pylist()]
    assert len(rows) == 1000 and all(p.schema == MESSAGES_SCHEMA for p in parts)
    by_conv: dict[str, list[int]] = {}
    for position, r in enumerate(rows):
        by_conv.setdefault(r["conversation_id"], []).append(position)
    assert len(by_conv) == 50
    for positions in by_conv.values():
        assert len(positions) == 20
        assert positions[-1] - positions[0] > 800  # from the first block to the last
    seqs = sorted((r["conversation_id"], r["seq"]) for r in rows)
    assert len(set(seqs)) == 1000 and {s for _, s in seqs} == set(range(20))
    assert {r["role"] for r in rows if r["seq"] % 2 == 0} == {"user"}


def test_texts_are_the_ingestion_chunks_and_the_sentences(tmp_path: Path) -> None:
    (tmp_path / "corpus.jsonl").write_text(
        '{"_id": "7", "title": "Cells", "text": "First sentence about cells here. Second one, also long enough."}\n'
    )
    (tmp_path / "queries.jsonl").write_text('{"_id": "1", "text": "what about cells?"}\n')
    texts = texts_of(tmp_path)
    assert texts.chunk_ids == ["7#0"]
    assert texts.chunk_embedded == ["Cells: " + texts.chunk_texts[0]]
    assert texts.sentences == ["First sentence about cells here.", "Second one, also long enough."]
    assert texts.sentence_doc_ids == ["7", "7"]
    assert texts.query_texts == ["what about cells?"]
    assert texts.digest() == texts_of(tmp_path).digest()


def test_the_report_prints_a_row_per_table_and_the_other_checks() -> None:
    lat = {"p50": 5.0, "p99": 9.0, "mean": 6.0}
    chunk = {
        "rows": 100_000,
        "store": "folder",
        "latency_ms": {"product": lat, "bare": lat, "bare_tuned": lat, "flat": {"p50": 80.0, "p99": 90.0}},
        "recall_at_10": {"product": 0.99, "bare": 0.97},
        "times": {"index_build_s": 12.5},
        "rss_mb": {"after_queries": 300.0},
        "disk_mb": 180.0,
    }
    history = {"latency_ms": {"product": lat, "bare": lat}}
    report = {
        "chunks": [chunk, {**chunk, "rows": 1_000_000, "store": "s3"}],
        "messages": [{"rows": 1_000_000, "store": "folder", "stale_index": history, "current_index": history}],
        "scifact": {"ndcg@10": {"flat": 0.64, "indexed": 0.64}},
        "evidence": {
            "rows": 40_000,
            "sets": {"real": {"query_nn10": {"p50": 0.5}, "row_nn1": {"p50": 0.2}, "ann_recall_at_10": 0.98}},
        },
    }
    text = markdown(report)
    assert "| 100k | folder | 5.0 / 9.0 | 5.0 / 9.0 | 80.0 | 0.99 / 0.97 | 12.5 | 300.0 | 180.0 |" in text
    assert "| 1M | s3 |" in text
    assert "1M messages (folder)" in text and "SciFact nDCG@10: flat 0.64, vector index 0.64" in text
    assert "- real: 0.5" in text
