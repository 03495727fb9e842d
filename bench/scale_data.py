"""Realistic vectors for the scale bench: real MiniLM embeddings of SciFact, and a generator that grows them.

Real vectors (embedded once, cached under ``.cache/bench-scale/``):

- the SciFact abstracts cut by the product's chunker (``ingestion.chunker.Chunker`` with the ingestion
  defaults, 164 word-pieces, 32 overlap) and embedded as the ingestion service embeds them ("title: chunk");
- every sentence of every abstract (the same sentence splitter), a second real population of short chunks;
- the SciFact queries (train and test), the query set of every measurement.

All embedded with the product's model (``embedding.model.load_model``: all-MiniLM-L6-v2, L2-normalised).

Generated vectors (to reach 100k and 1M rows from ~55k real ones): each new vector is a perturbed copy of a
real "seed" vector, moved part of the way towards one of the seed's own nearest real neighbours and jittered
by isotropic noise scaled to the seed's local nearest-neighbour distance, then renormalised::

    x' = normalize(x + u * (n - x) + beta * d1(x) * g / sqrt(D)),   u ~ U(0, lam), g ~ N(0, I_D)

where ``n`` is one of the seed's ``NEIGHBOURS`` nearest real vectors and ``d1(x)`` its distance to the nearest.
The new points stay on the data's own manifold (between real neighbours) and at the local density scale, so
dense regions stay dense and sparse ones sparse. ``bench.scale.evidence`` measures how well: the k-NN
distance distributions and the ANN recall of a real set against a generated set of the same size.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "beir" / "scifact"
CACHE = ROOT / ".cache" / "bench-scale"

Vectors = npt.NDArray[np.float32]

# The generator's parameters (see the module docstring), chosen on the SciFact chunks: an 8,000-row set grown
# from 1/2 and 1/8 of that many real seeds has the real set's row 1-NN and 10-NN and query 10-NN cosine
# distances within ~0.03 at the median (beta 0.5 gives too-close copies, 1.0 too-far ones). bench.scale reports
# the same comparison, with the ANN recall, on every run.
NEIGHBOURS = 10
LAMBDA = 0.5
BETA = 0.7
EMBED_BATCH = 128
# Texts per cached block while embedding (an interrupted run resumes from the last block).
BLOCK = 4096


@dataclass(frozen=True)
class RealSet:
    """The real vectors and what they embed. ``texts[i]`` is the text of ``vectors[i]``; ``doc_ids[i]`` its
    SciFact document; ``kinds[i]`` "chunk" or "sentence"."""

    vectors: Vectors
    texts: list[str]
    doc_ids: list[str]
    kinds: list[str]
    query_vectors: Vectors
    query_ids: list[str]
    query_texts: list[str]

    def chunk_rows(self) -> npt.NDArray[np.int64]:
        """Indexes of the product-chunker chunks (the SciFact index as ingestion builds it)."""
        return np.asarray([i for i, k in enumerate(self.kinds) if k == "chunk"], dtype=np.int64)


@dataclass(frozen=True)
class Texts:
    """What is embedded: the product's chunks of every abstract (``chunk_ids`` "doc#n" as ingestion names
    them, ``chunk_texts`` the chunk alone as stored, ``chunk_embedded`` the "title: chunk" embedded), its
    sentences, and the queries."""

    chunk_ids: list[str]
    chunk_texts: list[str]
    chunk_embedded: list[str]
    sentence_doc_ids: list[str]
    sentences: list[str]
    query_ids: list[str]
    query_texts: list[str]

    def digest(self) -> str:
        parts = [*self.chunk_embedded, "\0", *self.sentences, "\0", *self.query_texts]
        return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def texts_of(data: Path) -> Texts:
    """The texts of the SciFact corpus at ``data``: chunked as ingestion chunks them, and split in sentences."""
    from ingestion.chunker import Chunker, sentence_spans

    chunker = Chunker()  # the ingestion defaults (RAG_CHUNK_TOKENS 164, overlap 32)
    out = Texts([], [], [], [], [], [], [])
    with (data / "corpus.jsonl").open() as f:
        for line in f:
            doc = json.loads(line)
            title, body = doc.get("title") or "", doc.get("text") or ""
            for chunk in chunker.split(body):
                # As IngestionService._embed_text: "title: chunk" when that still fits the model.
                combined = f"{title}: {chunk.text}" if title and not chunk.text.startswith(title) else chunk.text
                fits = chunker.count(combined) <= chunker.model_max_tokens
                out.chunk_ids.append(f"{doc['_id']}#{chunk.index}")
                out.chunk_texts.append(chunk.text)
                out.chunk_embedded.append(combined if fits else chunk.text)
            for s, e in sentence_spans(body):
                sentence = body[s:e].strip()
                if len(sentence) >= 20:
                    out.sentence_doc_ids.append(doc["_id"])
                    out.sentences.append(sentence)
    with (data / "queries.jsonl").open() as f:
        for line in f:
            row = json.loads(line)
            out.query_ids.append(row["_id"])
            out.query_texts.append(row["text"])
    return out


def embed(texts: Sequence[str]) -> Vectors:
    """The product's embedding model over ``texts`` (L2-normalised float32 rows)."""
    from embedding.model import load_model

    model = load_model(None)
    out = np.empty((len(texts), model.dimension), dtype=np.float32)
    # Shortest first: batches of similar length pad less (the order is restored on the way out).
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    for start in range(0, len(order), EMBED_BATCH):
        idx = order[start : start + EMBED_BATCH]
        out[idx] = model.encode([texts[i] for i in idx])
    return out


def embed_cached(texts: Sequence[str], path: Path, block: int = BLOCK) -> Vectors:
    """``embed(texts)``, kept in ``path`` (and, while it is being built, block by block next to it, so an
    interrupted run resumes where it stopped)."""
    if path.exists():
        return np.load(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    parts = []
    started = time.monotonic()
    for n, start in enumerate(range(0, len(texts), block)):
        part_path = path.with_suffix(f".part{n:03d}.npy")
        if part_path.exists():
            parts.append(np.load(part_path))
            continue
        parts.append(embed(texts[start : start + block]))
        np.save(part_path, parts[-1])
        done = min(start + block, len(texts))
        print(f"  {path.name}: {done}/{len(texts)} embedded ({time.monotonic() - started:.0f} s)", flush=True)
    vectors = np.concatenate(parts) if parts else np.empty((0, 384), dtype=np.float32)
    np.save(path, vectors)
    for part in path.parent.glob(path.stem + ".part*.npy"):
        part.unlink()
    return vectors


def vectors_from_db(texts: Texts, db: Path) -> Vectors | None:
    """The chunk vectors of a SciFact index the product built (``make eval EVAL_ARGS="--db DIR"``), when it
    holds every chunk ``texts`` has, with the same text; else None."""
    import lancedb

    table = lancedb.connect(str(db)).open_table("chunks")
    rows = table.search().select(["id", "text", "vector"]).limit(None).to_arrow()
    found = {i: n for n, i in enumerate(rows.column("id").to_pylist())}
    if any(i not in found for i in texts.chunk_ids):
        return None
    stored = rows.column("text").to_pylist()
    if any(stored[found[i]] != t for i, t in zip(texts.chunk_ids, texts.chunk_texts, strict=True)):
        return None
    matrix = np.asarray(rows.column("vector").to_pylist(), dtype=np.float32)
    return matrix[[found[i] for i in texts.chunk_ids]]


def load_real(
    data: Path = DEFAULT_DATA, cache: Path = CACHE, *, sentences: bool = True, from_db: Path | None = None
) -> RealSet:
    """The real vectors of SciFact: its chunks (and, with ``sentences``, its sentences), embedded on the first
    call and read from ``cache`` after. ``from_db``: take the chunk vectors from a SciFact index the product
    built (the embedding service's own vectors) instead of embedding them here."""
    texts = texts_of(data)
    digest = texts.digest()
    chunk_path = cache / f"scifact-chunks-{digest}.npy"
    queries = embed_cached(texts.query_texts, cache / f"scifact-queries-{digest}.npy")
    if not chunk_path.exists() and from_db is not None:
        found = vectors_from_db(texts, from_db)
        if found is not None:
            cache.mkdir(parents=True, exist_ok=True)
            np.save(chunk_path, found)
        else:
            print(f"{from_db} does not hold these chunks: embedding them")
    chunks = embed_cached(texts.chunk_embedded, chunk_path)
    doc_ids = [i.rsplit("#", 1)[0] for i in texts.chunk_ids]
    parts, all_texts, kinds = [chunks], list(texts.chunk_texts), ["chunk"] * len(chunks)
    if sentences:
        parts.append(embed_cached(texts.sentences, cache / f"scifact-sentences-{digest}.npy"))
        all_texts += texts.sentences
        doc_ids += texts.sentence_doc_ids
        kinds += ["sentence"] * len(texts.sentences)
    return RealSet(np.concatenate(parts), all_texts, doc_ids, kinds, queries, texts.query_ids, texts.query_texts)


# ---------------------------------------------------------------------------------------------- exact k-NN


def knn(base: Vectors, queries: Vectors, k: int, *, exclude_self: bool = False, block: int = 2048) -> tuple[Any, Any]:
    """Exact k nearest rows of ``base`` for each query by cosine (rows are unit vectors): (indexes, cosine
    distances), nearest first. ``exclude_self``: the queries are ``base`` itself, skip each row's own."""
    n = queries.shape[0]
    idx = np.empty((n, k), dtype=np.int64)
    dist = np.empty((n, k), dtype=np.float32)
    extra = 1 if exclude_self else 0
    for start in range(0, n, block):
        sims = queries[start : start + block] @ base.T
        if exclude_self:
            rows = np.arange(sims.shape[0])
            sims[rows, start + rows] = -np.inf
        part = np.argpartition(-sims, k + extra - 1, axis=1)[:, : k + extra]
        top = np.take_along_axis(sims, part, axis=1)
        order = np.argsort(-top, axis=1)[:, :k]
        idx[start : start + block] = np.take_along_axis(part, order, axis=1)
        dist[start : start + block] = 1.0 - np.take_along_axis(top, order, axis=1)
    return idx, dist


# ---------------------------------------------------------------------------------------------- generator


@dataclass(frozen=True)
class Seeds:
    """Real seed vectors with what the generator needs of each: its nearest real neighbours and the
    (euclidean) distance to the nearest one."""

    vectors: Vectors
    neighbours: npt.NDArray[np.int64]  # (n, NEIGHBOURS) indexes into vectors
    d1: npt.NDArray[np.float32]  # euclidean distance to the nearest neighbour


def seeds_of(vectors: Vectors, neighbours: int = NEIGHBOURS) -> Seeds:
    idx, cos = knn(vectors, vectors, neighbours, exclude_self=True)
    d1 = np.sqrt(np.maximum(2.0 * cos[:, 0], 0.0)).astype(np.float32)  # |a - b| = sqrt(2 - 2 cos) for unit rows
    return Seeds(vectors, idx, d1)


def generate(
    seeds: Seeds, count: int, *, seed: int = 0, lam: float = LAMBDA, beta: float = BETA, block: int = 65536
) -> Vectors:
    """``count`` new unit vectors around the seeds (each seed used in turn, round robin, so every real
    neighbourhood grows alike); see the module docstring for the formula."""
    rng = np.random.default_rng(seed)
    n, dim = seeds.vectors.shape
    out = np.empty((count, dim), dtype=np.float32)
    for start in range(0, count, block):
        m = min(block, count - start)
        base = (np.arange(start, start + m) % n).astype(np.int64)
        x = seeds.vectors[base]
        pick = seeds.neighbours[base, rng.integers(0, seeds.neighbours.shape[1], size=m)]
        u = rng.uniform(0.0, lam, size=(m, 1)).astype(np.float32)
        noise = rng.standard_normal((m, dim)).astype(np.float32)
        scale = (beta * seeds.d1[base] / np.sqrt(dim)).astype(np.float32)[:, None]
        y = x + u * (seeds.vectors[pick] - x) + scale * noise
        out[start : start + m] = y / np.linalg.norm(y, axis=1, keepdims=True)
    return out


def grow(real: Vectors, size: int, *, seed: int = 0) -> Vectors:
    """``size`` vectors: the real ones (all of them, or the first ``size``) then generated ones."""
    if size <= real.shape[0]:
        return real[:size].copy()
    extra = generate(seeds_of(real), size - real.shape[0], seed=seed)
    return np.concatenate([real, extra])


def distance_summary(values: npt.NDArray[np.floating[Any]]) -> dict[str, float]:
    """Quantiles of a distance sample, for the report."""
    q = np.quantile(values, [0.1, 0.5, 0.9])
    return {"p10": round(float(q[0]), 4), "p50": round(float(q[1]), 4), "p90": round(float(q[2]), 4)}


def neighbourhood_stats(base: Vectors, queries: Vectors, *, sample: int = 2000, seed: int = 0) -> dict[str, Any]:
    """The k-NN structure of ``base``: each sampled row's distance to its nearest other row and to its 10th,
    and each query's distance to its nearest and its 10th row (cosine distances)."""
    rng = np.random.default_rng(seed)
    rows = rng.choice(base.shape[0], size=min(sample, base.shape[0]), replace=False)
    # Rows of base against base: the row itself is excluded by masking its exact duplicate position.
    sims = base[rows] @ base.T
    sims[np.arange(len(rows)), rows] = -np.inf
    top = -np.sort(-np.partition(sims, sims.shape[1] - 10, axis=1)[:, -10:], axis=1)
    _, qd = knn(base, queries, 10)
    return {
        "row_nn1": distance_summary(1.0 - top[:, 0]),
        "row_nn10": distance_summary(1.0 - top[:, 9]),
        "query_nn1": distance_summary(qd[:, 0]),
        "query_nn10": distance_summary(qd[:, 9]),
    }
