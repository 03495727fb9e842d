"""Real Bedrock clients against the embedding service, by the real Bedrock model ids: boto3 in each family's
body, langchain-aws's BedrockEmbeddings, llama-index's BedrockEmbedding, the real-time article's code, and
the product's own ingestion + chat path configured with amazon.titan-embed-text-v2:0."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from shared.stack import Stack
from tests.conftest import StackFactory, WsClient
from tests.support.paths import ROOT
from tests.support.procs import TIMEOUT_FACTOR, Service, start_service, stop_service
from tests.support.timeouts import scaled

LOCAL_ID = "sentence-transformers/all-MiniLM-L6-v2"
TITAN_V1 = ["amazon.titan-embed-text-v1", "amazon.titan-embed-g1-text-02"]
TITAN_V2 = "amazon.titan-embed-text-v2:0"
COHERE_V3 = ["cohere.embed-english-v3", "cohere.embed-multilingual-v3"]
COHERE_V4 = "cohere.embed-v4:0"
SNIPPET = ROOT / "tests" / "support" / "seed_code" / "embed_snippet.py"

GUITAR = "A man is playing a guitar on stage."
SONG = "Someone performs a song with an acoustic guitar."
RATES = "The central bank raised interest rates again this quarter."
COOKING = "The chef simmered the tomato sauce with garlic, basil and olive oil for an hour. "
ASTRONOMY = "The telescope observed a distant galaxy whose light was redshifted by cosmic expansion. "


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    svc = start_service("embedding", "embedding", env={}, log_dir=Path(tmp_path_factory.mktemp("embedding-logs")))
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
        config=Config(read_timeout=60 * TIMEOUT_FACTOR, retries={"total_max_attempts": 1}),
    )


@pytest.fixture
def bedrock_env(service: Service, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """What a deployment's environment gives real code: a region, credentials, and (here) the endpoint."""
    env = {
        "AWS_ENDPOINT_URL_BEDROCK_RUNTIME": service.url,
        "AWS_REGION": "us-west-2",
        "AWS_DEFAULT_REGION": "us-west-2",
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    return env


def invoke(client: Any, model_id: str, body: dict[str, Any]) -> dict[str, Any]:
    resp = client.invoke_model(modelId=model_id, body=json.dumps(body), contentType="application/json")
    assert resp["contentType"] == "application/json"
    out: dict[str, Any] = json.loads(resp["body"].read())
    return out


def refused(client: Any, model_id: str, body: dict[str, Any], code: str = "ValidationException") -> str:
    with pytest.raises(ClientError) as exc:
        invoke(client, model_id, body)
    assert exc.value.response["Error"]["Code"] == code
    return str(exc.value.response["Error"]["Message"])


def unit(v: Any) -> np.ndarray:
    a = np.asarray(v, dtype=np.float64)
    return a / np.linalg.norm(a)


def cos(a: Any, b: Any) -> float:
    return float(unit(a) @ unit(b))


def local(client: Any, text: str) -> np.ndarray:
    """The service's own id: the reference every family is compared with (one local model serves all)."""
    return np.asarray(invoke(client, LOCAL_ID, {"inputText": text})["embedding"])


# ------------------------------------------------------------------------------------------------- boto3


@pytest.mark.parametrize("model_id", TITAN_V1)
def test_titan_v1(client: Any, model_id: str) -> None:
    out = invoke(client, model_id, {"inputText": GUITAR})
    assert set(out) == {"embedding", "inputTextTokenCount"}
    assert len(out["embedding"]) == 384 and out["inputTextTokenCount"] > 5
    assert np.allclose(out["embedding"], local(client, GUITAR), atol=1e-5)
    assert "dimensions" in refused(client, model_id, {"inputText": GUITAR, "dimensions": 384})


def test_titan_v2(client: Any) -> None:
    out = invoke(client, TITAN_V2, {"inputText": GUITAR})
    assert len(out["embedding"]) == 384  # dimensions omitted: the local model's own size
    assert abs(np.linalg.norm(out["embedding"]) - 1) < 1e-4
    assert out["embeddingsByType"] == {"float": out["embedding"]}
    assert np.allclose(out["embedding"], local(client, GUITAR), atol=1e-5)
    a, b, c = (
        invoke(client, TITAN_V2, {"inputText": t, "dimensions": 384})["embedding"] for t in (GUITAR, SONG, RATES)
    )
    assert cos(a, b) > cos(a, c) + 0.2
    for size in (256, 512, 1024):
        message = refused(client, TITAN_V2, {"inputText": GUITAR, "dimensions": size})
        assert f"dimensions {size}" in message and "384" in message
    raw = invoke(client, TITAN_V2, {"inputText": GUITAR, "normalize": False})["embedding"]
    assert abs(np.linalg.norm(raw) - 1) > 0.01 and cos(raw, out["embedding"]) > 0.9999  # really unnormalized
    both = invoke(client, TITAN_V2, {"inputText": GUITAR, "embeddingTypes": ["float", "binary"]})
    assert both["embeddingsByType"]["float"] == both["embedding"]
    assert both["embeddingsByType"]["binary"] == [int(x > 0) for x in both["embedding"]]
    assert "embeddingTypes" in refused(client, TITAN_V2, {"inputText": GUITAR, "embeddingTypes": ["int8"]})
    assert "inputText" in refused(client, TITAN_V2, {"texts": [GUITAR], "input_type": "search_query"})


def test_model_arn_and_inference_profile(client: Any) -> None:
    arn = f"arn:aws:bedrock:us-west-2::foundation-model/{TITAN_V2}"
    assert len(invoke(client, arn, {"inputText": GUITAR})["embedding"]) == 384
    profile = f"arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.{COHERE_V4}"
    out = invoke(client, profile, {"texts": [GUITAR], "input_type": "search_query"})
    assert len(out["embeddings"]["float"][0]) == 384


@pytest.mark.parametrize("model_id", COHERE_V3)
def test_cohere_v3(client: Any, model_id: str) -> None:
    texts = [GUITAR, SONG, RATES]
    out = invoke(client, model_id, {"texts": texts, "input_type": "search_document"})
    assert out["response_type"] == "embeddings_floats" and out["texts"] == texts and out["id"]
    rows = np.asarray(out["embeddings"])
    assert rows.shape == (3, 384)
    assert np.allclose(rows[0], local(client, GUITAR), atol=1e-5)
    types = ["float", "int8", "uint8", "binary", "ubinary"]
    typed = invoke(client, model_id, {"texts": texts, "input_type": "search_query", "embedding_types": types})
    assert typed["response_type"] == "embeddings_by_type" and set(typed["embeddings"]) == set(types)
    by = {k: np.asarray(v) for k, v in typed["embeddings"].items()}
    assert np.allclose(by["float"], rows, atol=1e-5)
    assert by["int8"].shape == (3, 384) and by["int8"].min() >= -128 and by["int8"].max() <= 127
    assert (by["uint8"] == by["int8"] + 128).all()
    assert (
        by["ubinary"].shape == (3, 48) and (np.unpackbits(by["ubinary"].astype(np.uint8), axis=1) == (rows > 0)).all()
    )
    assert (by["binary"] == by["ubinary"] - 128).all()
    # quantized vectors still rank: the guitar texts are nearer each other than the bank rate
    q = by["int8"]
    assert cos(q[0], q[1]) > cos(q[0], q[2]) + 0.2
    assert "output_dimension" in refused(
        client, model_id, {"texts": texts, "input_type": "search_query", "output_dimension": 384}
    )


def test_cohere_v3_truncate(client: Any) -> None:
    long_text = COOKING * 20 + ASTRONOMY * 20  # ~650 tokens, far over MiniLM's 256
    message = refused(client, COHERE_V3[0], {"texts": [long_text], "input_type": "search_document"})
    assert "tokens" in message and "START or END" in message
    cooking, astronomy = local(client, COOKING * 3), local(client, ASTRONOMY * 3)
    end = invoke(client, COHERE_V3[0], {"texts": [long_text], "input_type": "search_document", "truncate": "END"})
    start = invoke(client, COHERE_V3[0], {"texts": [long_text], "input_type": "search_document", "truncate": "START"})
    e, s = end["embeddings"][0], start["embeddings"][0]
    assert cos(e, cooking) > cos(e, astronomy) and cos(s, astronomy) > cos(s, cooking)


def test_cohere_v4(client: Any) -> None:
    out = invoke(client, COHERE_V4, {"texts": [GUITAR, RATES], "input_type": "search_document"})
    assert out["response_type"] == "embeddings_by_type" and list(out["embeddings"]) == ["float"]
    assert np.allclose(out["embeddings"]["float"][0], local(client, GUITAR), atol=1e-5)
    assert out["texts"] == [GUITAR, RATES]
    body = {"texts": [GUITAR], "input_type": "search_query", "output_dimension": 384, "embedding_types": ["int8"]}
    assert len(invoke(client, COHERE_V4, body)["embeddings"]["int8"][0]) == 384
    for size in (256, 512, 1024, 1536):
        message = refused(
            client, COHERE_V4, {"texts": [GUITAR], "input_type": "search_query", "output_dimension": size}
        )
        assert f"output_dimension {size}" in message and "384" in message
    # max_tokens lowers the limit; LEFT keeps the end, RIGHT the beginning
    text = COOKING * 2 + ASTRONOMY * 2  # ~70 tokens
    assert "LEFT or RIGHT" in refused(
        client, COHERE_V4, {"texts": [text], "input_type": "search_query", "max_tokens": 30}
    )
    cooking, astronomy = local(client, COOKING), local(client, ASTRONOMY)
    left = invoke(
        client, COHERE_V4, {"texts": [text], "input_type": "search_query", "max_tokens": 30, "truncate": "LEFT"}
    )
    right = invoke(
        client, COHERE_V4, {"texts": [text], "input_type": "search_query", "max_tokens": 30, "truncate": "RIGHT"}
    )
    lv, rv = left["embeddings"]["float"][0], right["embeddings"]["float"][0]
    assert cos(lv, astronomy) > 0.9 and cos(rv, cooking) > 0.9
    image = {"images": ["data:image/png;base64,iVBORw0KGgo="], "input_type": "search_document"}
    assert "text only" in refused(client, COHERE_V4, image)


def test_unknown_model_id(client: Any) -> None:
    with pytest.raises(client.exceptions.ValidationException) as exc:  # as Bedrock answers an unknown id
        invoke(client, "amazon.titan-embed-text-v3:0", {"inputText": GUITAR})
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    message = exc.value.response["Error"]["Message"]
    assert message.startswith("The provided model identifier is invalid.") and TITAN_V2 in message


# ----------------------------------------------------------------------------------------- langchain-aws


@pytest.mark.parametrize("model_id", [TITAN_V2, COHERE_V3[0]])
def test_langchain_bedrock_embeddings(client: Any, bedrock_env: dict[str, str], model_id: str) -> None:
    from langchain_aws import BedrockEmbeddings

    emb = BedrockEmbeddings(model_id=model_id, region_name=bedrock_env["AWS_REGION"])
    docs = emb.embed_documents([GUITAR, RATES, SONG])
    query = emb.embed_query("Who is playing music?")
    assert len(docs) == 3 and all(len(d) == 384 for d in docs) and len(query) == 384
    assert np.allclose(docs[0], local(client, GUITAR), atol=1e-5)
    scores = [cos(query, d) for d in docs]
    assert scores.index(min(scores)) == 1  # the bank rate is the odd one out


# ------------------------------------------------------------------------------------------ llama-index


@pytest.mark.parametrize("model_id", [TITAN_V2, COHERE_V3[1]])
def test_llama_index_bedrock_embedding(client: Any, bedrock_env: dict[str, str], model_id: str) -> None:
    from llama_index.embeddings.bedrock import BedrockEmbedding

    emb = BedrockEmbedding(model_name=model_id, region_name=bedrock_env["AWS_REGION"], max_retries=1)
    docs = emb.get_text_embedding_batch([GUITAR, RATES, SONG])
    query = emb.get_query_embedding("Who is playing music?")
    assert len(docs) == 3 and all(len(d) == 384 for d in docs) and len(query) == 384
    assert np.allclose(docs[2], local(client, SONG), atol=1e-5)
    scores = [cos(query, d) for d in docs]
    assert scores.index(min(scores)) == 1


# ------------------------------------------------------------------------- the real-time article's code

ARTICLE_DOCS = [
    {
        "doc_id": "kb-1",
        "source": "wiki",
        "ts": 1,
        "text": "The Zephyr-9 reactor was shut down for maintenance on Tuesday.",
    },
    {"doc_id": "kb-2", "source": "wiki", "ts": 2, "text": "Sourdough bread needs a starter of wild yeast."},
]


def run_snippet(path: Path, env: dict[str, str], question: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(path), question],
        input=json.dumps(ARTICLE_DOCS),
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=scaled(120),
        cwd=path.parent,
    )


def test_article_embedding_code(bedrock_env: dict[str, str], tmp_path: Path) -> None:
    # As printed: it asks Titan V2 for 1024 dimensions, which the local model cannot produce. The
    # refusal reaches the article's code as botocore's typed ValidationException, naming what can be.
    out = run_snippet(SNIPPET, bedrock_env, "Why is the reactor offline?")
    assert out.returncode != 0
    assert "ValidationException" in out.stderr and "dimensions 1024" in out.stderr and "384" in out.stderr
    # With the vector size the local model produces (the article's index would be created with it too),
    # the code runs unchanged otherwise: handler() embeds a real Kinesis-shaped batch, ask.py the question.
    source = SNIPPET.read_text()
    assert source.count('"dimensions": 1024') == 2
    local_copy = tmp_path / "embed_snippet.py"
    local_copy.write_text(source.replace('"dimensions": 1024', '"dimensions": 384'))
    out = run_snippet(local_copy, bedrock_env, "Why is the reactor offline?")
    assert out.returncode == 0, out.stderr
    assert "indexed 2 vectors" in out.stdout
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["result"] == {"indexed": 2}
    qvec, docs = result["qvec"], result["docs"]
    assert len(qvec) == 384 and abs(np.linalg.norm(qvec) - 1) < 1e-4
    assert cos(qvec, docs["kb-1"]) > cos(qvec, docs["kb-2"]) + 0.2


# ---------------------------------------------------------------- the product with a Bedrock model id


@pytest.fixture(scope="module")
def titan_stack(start_stack: StackFactory) -> Stack:
    # What the AWS profile sets (template.yaml: EmbeddingModelId amazon.titan-embed-text-v2:0, titan bodies),
    # with the dimension the local model produces (1024 on AWS).
    return start_stack(
        "titan-id",
        RAG_EMBEDDING_MODEL_ID=TITAN_V2,
        RAG_EMBEDDING_FORMAT="titan",
        RAG_EMBEDDING_DIMENSION="384",
        RAG_MAX_DISTANCE="0.7",
    )


def test_product_with_the_titan_model_id(titan_stack: Stack) -> None:
    import urllib.request

    def encoded() -> int:
        url = f"{titan_stack.by_name['embedding'].url}/health"
        with urllib.request.urlopen(url, timeout=scaled(10)) as resp:
            return int(json.loads(resp.read())["texts_encoded"])

    before = encoded()
    volcano = {
        "id": "volcanoes",
        "title": "Volcanoes",
        "text": "A volcano erupts when magma rises through the crust and gas pressure builds up. "
        "Lava, ash and volcanic gases are thrown into the air.",
    }
    bread = {"id": "sourdough", "title": "Sourdough", "text": "Sourdough bread is leavened with wild yeast."}
    c = WsClient(titan_stack.ws_url)
    try:
        for i, doc in enumerate((volcano, bread)):
            reply = c.request({"action": "ingest", "request_id": f"i{i}", "document": doc})
            assert reply["type"] == "ingest_result", reply
        r = c.request({"action": "search", "request_id": "s", "query": "How do volcanoes erupt?"})
        assert r["type"] == "search_result" and [s["doc_id"] for s in r["results"]] == ["volcanoes"], r
        replies = c.chat({"action": "chat", "request_id": "q", "question": "What leavens sourdough?"})
        end = replies[-1]
        assert end["type"] == "stream_end" and [s["doc_id"] for s in end["sources"]] == ["sourdough"], end
    finally:
        c.close()
    assert encoded() > before  # the stand-in embedded them, under the Bedrock id
    log = titan_stack.by_name["embedding"].log()
    calls = [line for line in log.splitlines() if '"logger":"requests"' in line and "/invoke" in line]
    assert calls and all(f"POST /model/{TITAN_V2}/invoke -> 200" in line for line in calls), calls
    assert "Traceback" not in log
