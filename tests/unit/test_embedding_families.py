"""The embedding service's model map and each Bedrock family's body (embedding/families.py), without a process."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from embedding.families import (
    DEFAULT_MODEL_MAP,
    BodyError,
    Family,
    cohere_payload,
    parse_body,
    quantize,
    resolve_model_id,
    titan_payload,
)
from embedding.settings import Settings

SERVED: dict[str, Family] = {**DEFAULT_MODEL_MAP, "sentence-transformers/all-MiniLM-L6-v2": "auto"}


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("amazon.titan-embed-text-v2:0", ("amazon.titan-embed-text-v2:0", "titan-v2")),
        ("amazon.titan-embed-text-v1", ("amazon.titan-embed-text-v1", "titan-v1")),
        ("amazon.titan-embed-g1-text-02", ("amazon.titan-embed-g1-text-02", "titan-v1")),
        ("cohere.embed-english-v3", ("cohere.embed-english-v3", "cohere-v3")),
        ("cohere.embed-multilingual-v3", ("cohere.embed-multilingual-v3", "cohere-v3")),
        ("cohere.embed-v4:0", ("cohere.embed-v4:0", "cohere-v4")),
        ("us.cohere.embed-v4:0", ("cohere.embed-v4:0", "cohere-v4")),
        (
            "arn:aws:bedrock:us-west-2::foundation-model/amazon.titan-embed-text-v2:0",
            ("amazon.titan-embed-text-v2:0", "titan-v2"),
        ),
        (
            "arn:aws:bedrock:eu-west-1:123456789012:inference-profile/eu.cohere.embed-v4:0",
            ("cohere.embed-v4:0", "cohere-v4"),
        ),
        (
            "arn:aws:bedrock:us-east-1::foundation-model/sentence-transformers/all-MiniLM-L6-v2",
            ("sentence-transformers/all-MiniLM-L6-v2", "auto"),
        ),
        ("amazon.titan-embed-text-v3:0", None),
        ("anthropic.claude-3-haiku-20240307-v1:0", None),
        ("us.amazon.titan-embed-text-v9", None),
        ("arn:aws:bedrock:us-east-1::foundation-model/nothing", None),
        ("xx.cohere.embed-v4:0", None),
    ],
)
def test_resolve_model_id(raw: str, expected: tuple[str, str] | None) -> None:
    assert resolve_model_id(raw, SERVED) == expected


def test_model_map_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().model_map == DEFAULT_MODEL_MAP
    monkeypatch.setenv("EMBEDDING_MODEL_MAP", '{"my.embedder-v1": "cohere-v3"}')
    assert Settings().model_map == {"my.embedder-v1": "cohere-v3"}
    monkeypatch.setenv("EMBEDDING_MODEL_MAP", '{"my.embedder-v1": "openai"}')
    with pytest.raises(ValueError, match="model_map"):
        Settings()


def parse_error(family: Family, body: dict[str, Any]) -> str:
    with pytest.raises(BodyError) as exc:
        parse_body(family, body, 384)
    message = str(exc.value)
    assert message.startswith("Malformed input request: ")
    return message


def test_titan_v1_takes_input_text_only() -> None:
    req = parse_body("titan-v1", {"inputText": "hello"}, 384)
    assert req.texts == ["hello"] and req.normalize and req.truncate == "end"
    assert "dimensions" in parse_error("titan-v1", {"inputText": "hello", "dimensions": 384})
    assert "normalize" in parse_error("titan-v1", {"inputText": "hello", "normalize": True})


def test_titan_v2_dimensions() -> None:
    assert parse_body("titan-v2", {"inputText": "a"}, 384).texts == ["a"]
    assert parse_body("titan-v2", {"inputText": "a", "dimensions": 384}, 384).texts == ["a"]
    for size in (256, 512, 1024):
        message = parse_error("titan-v2", {"inputText": "a", "dimensions": size})
        assert f"dimensions {size}" in message and "384" in message and "EMBEDDING_MODEL_PATH" in message
    req = parse_body("titan-v2", {"inputText": "a", "normalize": False, "embeddingTypes": ["binary", "float"]}, 384)
    assert not req.normalize and req.types == ["binary", "float"]
    assert "embeddingTypes" in parse_error("titan-v2", {"inputText": "a", "embeddingTypes": ["int8"]})
    assert "texts" in parse_error("titan-v2", {"texts": ["a"], "input_type": "search_query"})


def test_cohere_v3_bodies() -> None:
    req = parse_body("cohere-v3", {"texts": ["a", "b"], "input_type": "search_query"}, 384)
    assert req.texts == ["a", "b"] and req.truncate == "error" and not req.by_type
    req = parse_body(
        "cohere-v3",
        {"texts": ["a"], "input_type": "search_document", "truncate": "START", "embedding_types": ["int8", "float"]},
        384,
    )
    assert req.truncate == "start" and req.by_type and req.types == ["int8", "float"]
    assert "images" in parse_error("cohere-v3", {"images": ["data:image/png;base64,AA=="], "input_type": "image"})
    assert "truncate" in parse_error("cohere-v3", {"texts": ["a"], "input_type": "search_query", "truncate": "LEFT"})
    assert "inputText" in parse_error("cohere-v3", {"inputText": "a"})
    assert "output_dimension" in parse_error(
        "cohere-v3", {"texts": ["a"], "input_type": "search_query", "output_dimension": 384}
    )


def test_cohere_v4_bodies() -> None:
    req = parse_body("cohere-v4", {"texts": ["a"], "input_type": "search_query"}, 384)
    assert req.by_type and req.types == ["float"] and req.truncate == "error"
    req = parse_body(
        "cohere-v4",
        {"texts": ["a"], "input_type": "clustering", "truncate": "LEFT", "max_tokens": 10, "output_dimension": 384},
        384,
    )
    assert req.truncate == "start" and req.max_tokens == 10
    message = parse_error("cohere-v4", {"texts": ["a"], "input_type": "search_query", "output_dimension": 1536})
    assert "output_dimension 1536" in message and "384" in message
    assert "inputs" in parse_error(
        "cohere-v4", {"inputs": [{"content": [{"type": "text", "text": "a"}]}], "input_type": "search_query"}
    )
    assert "truncate" in parse_error("cohere-v4", {"texts": ["a"], "input_type": "search_query", "truncate": "END"})


def test_auto_tells_the_bodies_apart() -> None:
    assert parse_body("auto", {"inputText": "a", "dimensions": 384}, 384).family == "titan-v2"
    assert parse_body("auto", {"texts": ["a"], "input_type": "search_query"}, 384).family == "cohere-v3"
    assert "both" in parse_error("auto", {"inputText": "a", "texts": ["a"]})
    assert "needs inputText" in parse_error("auto", {})


def test_quantize() -> None:
    rng = np.random.default_rng(1)
    vectors = rng.normal(size=(20, 384)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    int8 = np.asarray(quantize(vectors, "int8"))
    assert int8.shape == (20, 384) and int8.min() >= -127 and int8.max() <= 127
    assert np.abs(int8).max(axis=1).tolist() == [127] * 20  # each row uses the full range
    assert (np.asarray(quantize(vectors, "uint8")) == int8 + 128).all()
    # int8 keeps the cosine similarities (to about 1%)
    f = vectors @ vectors.T
    q = int8.astype(np.float64)
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    assert np.abs(qn @ qn.T - f).max() < 0.01
    ubinary = np.asarray(quantize(vectors, "ubinary"))
    assert ubinary.shape == (20, 48) and ubinary.min() >= 0 and ubinary.max() <= 255
    assert (np.unpackbits(ubinary.astype(np.uint8), axis=1) == (vectors > 0)).all()
    assert (np.asarray(quantize(vectors, "binary")) == ubinary - 128).all()
    bits = np.asarray(quantize(vectors, "titan-binary"))
    assert bits.shape == (20, 384) and set(np.unique(bits)) == {0, 1} and (bits == (vectors > 0)).all()
    with pytest.raises(ValueError):
        quantize(vectors, "float16")


def test_payload_shapes() -> None:
    vec = np.asarray([[0.6, -0.8, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]], dtype=np.float32)
    v1 = titan_payload(parse_body("titan-v1", {"inputText": "a"}, 8), vec, 3)
    assert v1 == {"embedding": pytest.approx(vec[0].tolist()), "inputTextTokenCount": 3}
    v2 = titan_payload(parse_body("titan-v2", {"inputText": "a"}, 8), vec, 3)
    assert v2["embeddingsByType"] == {"float": v2["embedding"]}  # always there, as Bedrock documents
    v2b = titan_payload(parse_body("titan-v2", {"inputText": "a", "embeddingTypes": ["binary"]}, 8), vec, 3)
    assert v2b["embeddingsByType"] == {"binary": [1, 0, 0, 0, 0, 0, 0, 0]} and len(v2b["embedding"]) == 8
    c3 = cohere_payload(parse_body("cohere-v3", {"texts": ["a"], "input_type": "search_query"}, 8), vec, "id-1")
    assert c3["response_type"] == "embeddings_floats" and c3["id"] == "id-1" and c3["texts"] == ["a"]
    assert c3["embeddings"] == [pytest.approx(vec[0].tolist())]
    body = {"texts": ["a"], "input_type": "search_query", "embedding_types": ["ubinary", "int8"]}
    typed = cohere_payload(parse_body("cohere-v3", body, 8), vec, "id-2")
    assert typed["response_type"] == "embeddings_by_type"
    assert typed["embeddings"] == {"ubinary": [[0b10000000]], "int8": [[95, -127, 0, 0, 0, 0, 0, 0]]}
    c4 = cohere_payload(parse_body("cohere-v4", {"texts": ["a"], "input_type": "search_query"}, 8), vec, "id-3")
    assert c4["response_type"] == "embeddings_by_type" and list(c4["embeddings"]) == ["float"]
