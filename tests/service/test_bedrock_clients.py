"""Code written for Bedrock, run unchanged against the LLM service with real Bedrock model ids.

boto3's InvokeModel / InvokeModelWithResponseStream with each text family's body (Anthropic Claude, Amazon
Nova, Meta Llama, Mistral, Titan Text), Converse with every accepted id form, langchain-aws's
ChatBedrockConverse (streaming on), llama-index's BedrockConverse, the LLM code of both articles in
../shared/seeds (tests/support/seed_code/, run as processes with only AWS_ENDPOINT_URL_BEDROCK_RUNTIME and
the environment set), and the chat function with a Bedrock id as RAG_LLM_MODEL_ID.

Wire tests use the tiny random GGUF (it never stops by itself: every answer runs to its max tokens, and at
temperature 0 the same prompt gives the same text); the tests that check words use the embedded SmolLM2.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from tests.support.procs import ROOT, TIMEOUT_FACTOR, Service, log_with, start_service, stop_service
from tests.support.timeouts import scaled

T = 30.0 * TIMEOUT_FACTOR
SEED_CODE = ROOT / "tests" / "support" / "seed_code"
NOVA_MICRO = "amazon.nova-micro-v1:0"
HAIKU_PROFILE = "us.anthropic.claude-3-5-haiku-20241022-v1:0"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_SESSION_TOKEN": "test"}


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("LLM_", "AWS_"))}


@pytest.fixture(scope="module")
def llm(tiny_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    # LLM_STREAM_FLUSH_MS=0: one chunk per token, which the stream tests count.
    env = {"LLM_MODEL_PATH": str(tiny_gguf), "LLM_N_CTX": "2048", "LLM_MAX_TOKENS": "24", "LLM_STREAM_FLUSH_MS": "0"}
    svc = start_service("llm-ids", "llm", env, tmp_path_factory.mktemp("logs"), timeout=60)
    yield svc
    stop_service(svc)


@pytest.fixture(scope="module")
def smollm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """The embedded SmolLM2 as `make up` serves it, greedy so that its words are the same every run."""
    env = {"LLM_MODELS_DIR": str(tmp_path_factory.mktemp("no-models")), "LLM_TEMPERATURE": "0", "LLM_MAX_TOKENS": "96"}
    svc = start_service("llm-smol-ids", "llm", env, tmp_path_factory.mktemp("logs"), timeout=120)
    yield svc
    stop_service(svc)


def bedrock(svc: Service) -> Any:
    return boto3.client(
        "bedrock-runtime",
        endpoint_url=svc.url,
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
        config=Config(connect_timeout=T, read_timeout=T, retries={"total_max_attempts": 1}),
    )


def _code(exc: pytest.ExceptionInfo[ClientError]) -> str:
    return str(exc.value.response["Error"]["Code"])


# -- boto3: InvokeModel and InvokeModelWithResponseStream, every family -------------------------------------------

ANTHROPIC_BODY = {
    "anthropic_version": "bedrock-2023-05-31",
    "max_tokens": 12,
    "system": "Answer briefly.",
    "messages": [{"role": "user", "content": [{"type": "text", "text": "What is lava?"}]}],
    "temperature": 0,
}
FAMILIES: dict[str, tuple[str, dict[str, Any]]] = {
    # family: (a real id, in one of the forms boto3 users pass; a body of that family asking for 12 tokens)
    "anthropic": (HAIKU_PROFILE, ANTHROPIC_BODY),
    "nova": (
        f"arn:aws:bedrock:us-east-1::foundation-model/{NOVA_MICRO}",
        {
            "schemaVersion": "messages-v1",
            "system": [{"text": "Answer briefly."}],
            "messages": [{"role": "user", "content": [{"text": "What is lava?"}]}],
            "inferenceConfig": {"max_new_tokens": 12, "temperature": 0},
        },
    ),
    "llama": (
        "meta.llama3-1-8b-instruct-v1:0",
        {
            "prompt": "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nAnswer briefly.<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\nWhat is lava?<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n",
            "max_gen_len": 12,
            "temperature": 0,
        },
    ),
    "mistral": (
        "eu.mistral.mistral-large-2402-v1:0",
        {"prompt": "<s>[INST] What is lava? [/INST]", "max_tokens": 12, "temperature": 0},
    ),
    "titan": (
        "amazon.titan-text-express-v1",
        {"inputText": "User: What is lava?\nBot:", "textGenerationConfig": {"maxTokenCount": 12, "temperature": 0}},
    ),
}


def _invoke_text(family: str, body: dict[str, Any]) -> tuple[str, int, int, str]:
    """(text, input tokens, output tokens, stop reason) of an InvokeModel response body."""
    if family == "anthropic":
        assert body["type"] == "message" and body["role"] == "assistant" and body["id"].startswith("msg_")
        assert body["model"] == "claude-3-5-haiku-20241022"
        [block] = body["content"]
        assert block["type"] == "text"
        return block["text"], body["usage"]["input_tokens"], body["usage"]["output_tokens"], body["stop_reason"]
    if family == "nova":
        [block] = body["output"]["message"]["content"]
        u = body["usage"]
        assert u["totalTokens"] == u["inputTokens"] + u["outputTokens"]
        return block["text"], u["inputTokens"], u["outputTokens"], body["stopReason"]
    if family == "llama":
        return body["generation"], body["prompt_token_count"], body["generation_token_count"], body["stop_reason"]
    if family == "mistral":
        [out] = body["outputs"]
        return out["text"], -1, -1, out["stop_reason"]
    [result] = body["results"]
    return result["outputText"], body["inputTextTokenCount"], result["tokenCount"], result["completionReason"]


def _stream_text(family: str, chunks: list[dict[str, Any]]) -> str:
    if family == "anthropic":
        return "".join(c["delta"]["text"] for c in chunks if c["type"] == "content_block_delta")
    if family == "nova":
        return "".join(c["contentBlockDelta"]["delta"]["text"] for c in chunks if "contentBlockDelta" in c)
    if family == "llama":
        return "".join(c["generation"] for c in chunks)
    if family == "mistral":
        return "".join(c["outputs"][0]["text"] for c in chunks)
    return "".join(c["outputText"] for c in chunks)


LENGTH_STOP = {
    "anthropic": "max_tokens",
    "nova": "max_tokens",
    "llama": "length",
    "mistral": "length",
    "titan": "LENGTH",
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_invoke_model_and_its_stream_for_every_family(llm: Service, family: str) -> None:
    model_id, request = FAMILIES[family]
    client = bedrock(llm)
    resp = client.invoke_model(modelId=model_id, body=json.dumps(request), accept="application/json")
    assert resp["contentType"] == "application/json"
    headers = resp["ResponseMetadata"]["HTTPHeaders"]
    body = json.loads(resp["body"].read())
    text, n_in, n_out, stop = _invoke_text(family, body)
    assert text and stop == LENGTH_STOP[family]  # the tiny model never stops: it runs to the 12 tokens asked
    assert int(headers["x-amzn-bedrock-output-token-count"]) == 12
    if n_in != -1:
        assert (n_in, n_out) == (int(headers["x-amzn-bedrock-input-token-count"]), 12) and n_in > 5

    streamed = client.invoke_model_with_response_stream(modelId=model_id, body=json.dumps(request))
    assert streamed["contentType"] == "application/json"
    events = list(streamed["body"])
    assert all(set(e) == {"chunk"} for e in events)
    chunks = [json.loads(e["chunk"]["bytes"]) for e in events]
    assert len(chunks) > 3  # token by token
    assert _stream_text(family, chunks) == text  # greedy: the same answer as InvokeModel's
    metrics = chunks[-1]["amazon-bedrock-invocationMetrics"]
    assert metrics["outputTokenCount"] == 12 and metrics["inputTokenCount"] > 5
    assert metrics["invocationLatency"] >= metrics["firstByteLatency"] >= 0
    if family == "anthropic":
        assert chunks[0]["type"] == "message_start" and chunks[-2]["delta"]["stop_reason"] == "max_tokens"
    elif family == "nova":
        assert chunks[0] == {"messageStart": {"role": "assistant"}}
        assert {"messageStop": {"stopReason": "max_tokens"}} in chunks
        assert chunks[-1]["metadata"]["usage"]["outputTokens"] == 12
    elif family == "titan":
        assert chunks[-1]["completionReason"] == "LENGTH" and chunks[-1]["totalOutputTextTokenCount"] == 12
    elif family == "llama":
        assert chunks[0]["prompt_token_count"] == n_in and chunks[-1]["stop_reason"] == "length"
    else:
        assert chunks[-1]["outputs"][0]["stop_reason"] == "length"


def test_anthropic_stop_sequence_is_reported(llm: Service) -> None:
    client = bedrock(llm)
    first = json.loads(client.invoke_model(modelId=HAIKU_PROFILE, body=json.dumps(ANTHROPIC_BODY))["body"].read())
    text = first["content"][0]["text"]
    stop = text[4:6]
    assert len(stop) == 2 and stop not in text[:5]
    body = {**ANTHROPIC_BODY, "stop_sequences": ["never-generated", stop]}
    out = json.loads(client.invoke_model(modelId=HAIKU_PROFILE, body=json.dumps(body))["body"].read())
    assert (out["stop_reason"], out["stop_sequence"]) == ("stop_sequence", stop)
    assert out["content"][0]["text"] == text[: text.index(stop)]


@pytest.mark.parametrize(
    ("model_id", "body", "fragment"),
    [
        (HAIKU_PROFILE, {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 5}, "[anthropic_version]"),
        (NOVA_MICRO, {"inputText": "Hi"}, "required key [messages] not found"),
        ("meta.llama3-8b-instruct-v1:0", {"prompt": "Hi", "max_tokens": 5}, "extraneous key [max_tokens]"),
        ("mistral.mistral-7b-instruct-v0:2", {"inputText": "Hi"}, "required key [prompt] not found"),
        ("amazon.titan-text-lite-v1", {"prompt": "Hi"}, "required key [inputText] not found"),
    ],
)
def test_a_body_of_another_shape_is_a_validation_exception(
    llm: Service, model_id: str, body: dict[str, Any], fragment: str
) -> None:
    client = bedrock(llm)
    for call in (client.invoke_model, client.invoke_model_with_response_stream):
        with pytest.raises(ClientError) as info:
            call(modelId=model_id, body=json.dumps(body))
        assert _code(info) == "ValidationException" and info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
        assert fragment in info.value.response["Error"]["Message"]


# -- boto3: Converse with every id form; unknown ids --------------------------------------------------------------


@pytest.mark.parametrize(
    "model_id",
    [
        "local-llm",
        NOVA_MICRO,
        "global.anthropic.claude-sonnet-4-5-20250929-v1:0",
        "apac.amazon.nova-pro-v1:0",
        "arn:aws:bedrock:eu-west-1::foundation-model/meta.llama3-2-3b-instruct-v1:0",
        "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.anthropic.claude-haiku-4-5-20251001-v1:0",
        "amazon.titan-text-premier-v1:0",
    ],
)
def test_converse_and_converse_stream_take_every_mapped_id(llm: Service, model_id: str) -> None:
    client = bedrock(llm)
    messages = [{"role": "user", "content": [{"text": "Hi"}]}]
    out = client.converse(modelId=model_id, messages=messages, inferenceConfig={"maxTokens": 4})
    assert out["usage"]["outputTokens"] == 4 and out["output"]["message"]["content"][0]["text"]
    events = list(
        client.converse_stream(modelId=model_id, messages=messages, inferenceConfig={"maxTokens": 4})["stream"]
    )
    assert sum("contentBlockDelta" in e for e in events) >= 2 and events[-1]["metadata"]["usage"]["outputTokens"] == 4


def test_an_unknown_id_is_refused_as_bedrock_refuses_it(llm: Service) -> None:
    client = bedrock(llm)
    body = json.dumps({"inputText": "Hi"})
    for call in (
        lambda: client.invoke_model(modelId="cohere.command-r-v1:0", body=body),
        lambda: client.invoke_model_with_response_stream(modelId="amazon.titan-tg1-ultra", body=body),
        lambda: client.converse(modelId="anthropic.claude-v2", messages=[{"role": "user", "content": [{"text": "x"}]}]),
    ):
        with pytest.raises(client.exceptions.ValidationException) as info:
            call()
        message = info.value.response["Error"]["Message"]
        assert message.startswith("The provided model identifier is invalid.") and "LLM_MODEL_IDS" in message


def test_the_local_id_takes_any_family_body(llm: Service) -> None:
    client = bedrock(llm)
    for family in ("titan", "llama", "nova"):
        body = json.loads(client.invoke_model(modelId="local-llm", body=json.dumps(FAMILIES[family][1]))["body"].read())
        assert _invoke_text(family, body)[3] == LENGTH_STOP[family]
    body = json.loads(client.invoke_model(modelId="local-llm", body=json.dumps(ANTHROPIC_BODY))["body"].read())
    assert (body["type"], body["model"], body["usage"]["output_tokens"]) == ("message", "local-llm", 12)


def test_an_added_id_is_served(tiny_gguf: Path, tmp_path: Path) -> None:
    env = {
        "LLM_MODEL_PATH": str(tiny_gguf),
        "LLM_MAX_TOKENS": "3",
        "LLM_N_CTX": "512",
        "LLM_MODEL_IDS": "acme.custom-v1=titan, amazon.nova-lite-v1:0",
    }
    svc = start_service("llm-added", "llm", env, tmp_path, timeout=60)
    try:
        client = bedrock(svc)
        body = {"inputText": "Hi", "textGenerationConfig": {"maxTokenCount": 3}}
        out = json.loads(client.invoke_model(modelId="us.acme.custom-v1", body=json.dumps(body))["body"].read())
        assert out["results"][0]["tokenCount"] == 3
        client.converse(modelId="eu.amazon.nova-lite-v1:0", messages=[{"role": "user", "content": [{"text": "x"}]}])
        with pytest.raises(client.exceptions.ValidationException):  # not listed any more
            client.converse(modelId=NOVA_MICRO, messages=[{"role": "user", "content": [{"text": "x"}]}])
    finally:
        stop_service(svc)


# -- langchain-aws and llama-index -------------------------------------------------------------------------------


@pytest.mark.parametrize("model_id", [NOVA_MICRO, HAIKU_PROFILE])
def test_langchain_chat_bedrock_converse_streams(llm: Service, model_id: str) -> None:
    from langchain_aws import ChatBedrockConverse

    chat = ChatBedrockConverse(
        model_id=model_id,
        region_name="us-east-1",
        endpoint_url=llm.url,
        aws_access_key_id="test",  # type: ignore[arg-type]
        aws_secret_access_key="test",  # type: ignore[arg-type]
        max_tokens=10,
        temperature=0,
    )
    assert chat.disable_streaming is False  # a real id: langchain-aws keeps streaming on
    chunks = list(chat.stream("What is lava?"))
    texts = [c.text for c in chunks if c.text]
    assert len(texts) > 1  # it really streamed: several pieces, not one answer
    whole = chat.invoke("What is lava?")
    assert whole.text == "".join(texts)
    assert whole.usage_metadata is not None and whole.usage_metadata["output_tokens"] == 10


def test_llama_index_bedrock_converse_completes_and_streams(llm: Service) -> None:
    from llama_index.llms.bedrock_converse import BedrockConverse

    model = BedrockConverse(
        model=HAIKU_PROFILE,
        region_name="us-east-1",
        endpoint_url=llm.url,
        aws_access_key_id="test",
        aws_secret_access_key="test",
        max_tokens=10,
        temperature=0,
        max_retries=1,
    )
    whole = model.complete("What is lava?")
    assert whole.text
    pieces = [r.delta for r in model.stream_complete("What is lava?") if r.delta]
    assert len(pieces) > 1 and "".join(pieces) == whole.text


# -- the articles' code ------------------------------------------------------------------------------------------


def _run_seed(script: str, svc: Service, stdin: str = "", *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SEED_CODE / script), *args],
        input=stdin,
        env={
            **_clean_env(),
            **CREDENTIALS,
            "AWS_REGION": "us-west-2",
            "AWS_DEFAULT_REGION": "us-west-2",
            "AWS_ENDPOINT_URL_BEDROCK_RUNTIME": svc.url,  # the only change to the articles' code
            **env,
        },
        capture_output=True,
        text=True,
        timeout=scaled(300),
        cwd=SEED_CODE,
    )


def test_serverless_article_converse_stream(llm: Service) -> None:
    """stream_chat_completion() with the article's model as an inference-profile ARN (its MODEL_ARN)."""
    arn = "arn:aws:bedrock:us-west-2:123456789012:inference-profile/us.anthropic.claude-haiku-4-5-20251001-v1:0"
    request = {"model": "anthropic.claude-haiku-4-5-20251001-v1:0", "messages": [{"role": "user", "content": "Hi"}]}
    out = _run_seed("serverless_stream.py", llm, json.dumps(request), MODEL_ARN=arn)
    assert out.returncode == 0, out.stderr
    events = [line.removeprefix("data: ") for line in out.stdout.split("\n\n") if line]
    assert events[-1] == "[DONE]"
    deltas = [json.loads(e)["choices"][0]["delta"]["content"] for e in events[:-1]]
    assert len(deltas) > 1 and all(deltas)  # streamed: LLM_MAX_TOKENS (24) tokens, piece by piece
    log = log_with(llm, "/converse-stream -> 200")
    assert "Traceback" not in log


def test_realtime_article_nova_lite_answer(smollm: Service) -> None:
    """ask.py's bedrock.converse(modelId="amazon.nova-lite-v1:0") answers from the context, in words."""
    fact = "Project Nimbus ships its v3 release on 2026-08-14 and drops Python 3.9 support."  # the article's
    hits = [fact, "Sourdough bread is leavened with wild yeast."]
    question = "When does Project Nimbus v3 ship and what does it drop?"  # the article's "Verify it works"
    out = _run_seed("ask_answer.py", smollm, "", question, SEED_HITS=json.dumps(hits))
    assert out.returncode == 0, out.stderr
    answer = out.stdout.strip()
    assert "2026-08-14" in answer and "3.9" in answer, answer
    log_with(smollm, "POST /model/amazon.nova-lite-v1:0/converse -> 200")


# -- the chat function with a Bedrock id ---------------------------------------------------------------------------


def test_chat_function_passes_a_bedrock_id_through(smollm: Service, tmp_path: Path) -> None:
    from chat.handler import build_service
    from chat.settings import Settings as ChatSettings
    from shared.identity import Principal
    from shared.protocol import ChatRequest, StreamEnd, Token
    from shared.vector_store import VectorStore

    class Embedder:
        def embed_query(self, text: str) -> list[float]:
            return [1.0, 0.0, 0.0, 0.0]

    settings = ChatSettings(
        llm_endpoint_url=smollm.url,
        llm_model_id=HAIKU_PROFILE,  # the same RAG_LLM_MODEL_ID as on AWS
        intent_routing=False,
        search_mode="vector",
        max_distance=2.0,
        max_tokens=48,
    )
    store = VectorStore(str(tmp_path / "db"), dimension=4, model_id="test", full_text=False)
    service = build_service(settings, embedder=Embedder(), store=store)
    out: list[Any] = []
    service.chat(
        ChatRequest(action="chat", request_id="q", question="Say hello in one short sentence."),
        out.append,
        Principal("alpha", "key:alice", "api_key"),
    )
    assert isinstance(out[-1], StreamEnd), out[-1]
    tokens = [o.text for o in out if isinstance(o, Token)]
    assert len(tokens) > 1 and "".join(tokens).strip()
    log_with(smollm, f"POST /model/{HAIKU_PROFILE}/converse-stream -> 200")
