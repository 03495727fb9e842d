"""Chunk rows with real or clustered vectors, for the vector index tests.

``real_texts``: short windows of the seed article (real English text) for real MiniLM vectors;
``clustered``: unit vectors around a few random centres (neighbourhood structure without the model, for
lifecycle tests that need many rows fast); ``rows``: ChunkRows of given vectors, grouped into documents.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from shared.vector_store import ChunkRow
from tests.support.paths import ROOT

SEED_ARTICLE = ROOT / "tests" / "support" / "seeds" / "local-serverless-style-rag.txt"


def real_texts(words: int = 12, stride: int = 4) -> list[str]:
    """Overlapping ``words``-word windows of the seed article, every ``stride`` words (~500 texts)."""
    tokens = SEED_ARTICLE.read_text(encoding="utf-8").split()
    return [" ".join(tokens[i : i + words]) for i in range(0, max(1, len(tokens) - words), stride)]


def clustered(count: int, dimension: int = 384, *, centres: int = 16, spread: float = 0.35, seed: int = 0) -> Any:
    """``count`` unit vectors in ``centres`` clusters (float32, shape (count, dimension))."""
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centres, dimension)).astype(np.float32)
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    pick = rng.integers(0, centres, size=count)
    noise = rng.standard_normal((count, dimension)).astype(np.float32) * (spread / np.sqrt(dimension))
    v = c[pick] + noise
    out: npt.NDArray[np.float32] = (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)
    return out


def rows(
    vectors: Sequence[Sequence[float]], *, prefix: str = "d", per_doc: int = 10, start: int = 0
) -> dict[str, list[ChunkRow]]:
    """{doc_id: its ChunkRows}: ``per_doc`` consecutive vectors per document; chunk ``i`` of the whole set
    has the text ``f"{prefix}{start + i}"`` (its id in the tests)."""
    docs: dict[str, list[ChunkRow]] = {}
    for i, v in enumerate(vectors):
        n = start + i
        doc_id = f"{prefix}-{n // per_doc}"
        docs.setdefault(doc_id, []).append(
            ChunkRow(
                doc_id=doc_id,
                chunk=n % per_doc,
                title=doc_id,
                text=f"{prefix}{n}",
                vector=[float(x) for x in v],
            )
        )
    return docs
