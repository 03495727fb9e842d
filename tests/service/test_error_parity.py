"""The local stand-ins fail the way Amazon Bedrock does, so error handling tested locally holds on AWS.

For each failure -- a bad body (ValidationException), an unknown model id (ValidationException "The
provided model identifier is invalid.", Bedrock's answer to InvokeModel / Converse / ConverseStream),
overload (ThrottlingException) -- the same boto3 ``bedrock-runtime`` client code gets:

- from the real local embedding / LLM service (a process on an ephemeral port), and
- from a ``Stubber``'d AWS client answering the service error as Bedrock would (code + HTTP status),

the SAME exception class (both clients come from one botocore session, whose classes are generated from
botocore's bedrock-runtime model: ``client.exceptions.ValidationException`` ...), the same error code and
HTTP status; and our adapters (shared/bedrock.py: Embedder, ChatModel, upstream_error) turn both into the
same client-safe error (code and message).
"""

from __future__ import annotations

import http.client
import json
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from botocore.stub import Stubber

from shared.aws_clients import client_config, make_client
from shared.bedrock import ChatModel, Embedder, upstream_error
from shared.errors import RagError
from tests.support.gguf_factory import write_tiny_llama_gguf
from tests.support.procs import TIMEOUT_FACTOR, Service, start_service, stop_service

EMBEDDING_ID = "sentence-transformers/all-MiniLM-L6-v2"
LLM_ID = "local-llm"
EMBED_QUEUE = 64  # the overload test fills it with one batch
# Bedrock's message for a model id it does not know (aws-samples/amazon-bedrock-workshop#315: InvokeModel,
# GoogleCloudPlatform/kubectl-ai#515: ConverseStream, langchain-ai/langchain-aws#252: InvokeModel).
UNKNOWN_MODEL = "The provided model identifier is invalid."
LONG_TEXT = "The chef simmered the tomato sauce with garlic, basil and olive oil for an hour. " * 5
T = 30 * TIMEOUT_FACTOR


@pytest.fixture(scope="module")
def embedding(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    svc = start_service(
        "embedding-errors",
        "embedding",
        {"EMBEDDING_MAX_QUEUE": str(EMBED_QUEUE), "EMBEDDING_MAX_BATCH_SIZE": str(EMBED_QUEUE)},
        tmp_path_factory.mktemp("embedding-errors-logs"),
    )
    yield svc
    stop_service(svc)


@pytest.fixture(scope="module")
def llm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    model = write_tiny_llama_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf")
    svc = start_service(
        "llm-errors",
        "llm",
        # No waiting room: while one generation runs, any other request is over capacity.
        {"LLM_MODEL_PATH": str(model), "LLM_N_CTX": "4096", "LLM_MAX_QUEUE": "0"},
        tmp_path_factory.mktemp("llm-errors-logs"),
        timeout=60,
    )
    yield svc
    stop_service(svc)


@pytest.fixture(scope="module")
def session() -> boto3.session.Session:
    """One session for the local and the AWS clients: one set of exception classes."""
    return boto3.session.Session(
        aws_access_key_id="AKIDEXAMPLE", aws_secret_access_key="secret", region_name="us-east-1"
    )


def local_client(session: boto3.session.Session, svc: Service) -> Any:
    # One attempt: the error itself must surface (our retries are tested in tests/unit/test_aws_mode.py).
    return make_client(
        "bedrock-runtime",
        endpoint_url=svc.url,
        region="us-east-1",
        session=session,
        config=client_config(max_attempts=1),
    )


def aws_client(session: boto3.session.Session) -> Any:
    client = make_client("bedrock-runtime", endpoint_url=None, region="us-east-1", session=session)
    assert client.meta.endpoint_url == "https://bedrock-runtime.us-east-1.amazonaws.com"
    return client


def aws_error(
    client: Any, operation: str, code: str, status: int, call: Callable[[Any], Any], message: str = "(from AWS)"
) -> ClientError:
    """What the AWS client raises when Bedrock answers `code` with `status` (and `message`) to `call(client)`."""
    with Stubber(client) as stub:
        stub.add_client_error(operation, service_error_code=code, service_message=message, http_status_code=status)
        with pytest.raises(ClientError) as info:
            call(client)
    return info.value


def local_error(client: Any, call: Callable[[Any], Any]) -> ClientError:
    with pytest.raises(ClientError) as info:
        call(client)
    return info.value


def assert_same(local: ClientError, aws: ClientError, code: str, status: int, local_client: Any, service: str) -> None:
    assert type(local) is type(aws), f"local {type(local)} vs AWS {type(aws)}"
    assert type(local) is getattr(local_client.exceptions, code)  # generated from botocore's model
    for exc in (local, aws):
        assert exc.response["Error"]["Code"] == code
        assert exc.response["ResponseMetadata"]["HTTPStatusCode"] == status
    mapped_local, mapped_aws = upstream_error(service, local), upstream_error(service, aws)
    assert type(mapped_local) is type(mapped_aws)
    assert (mapped_local.code, mapped_local.message) == (mapped_aws.code, mapped_aws.message)


def adapter_error(call: Callable[[], Any]) -> RagError:
    with pytest.raises(RagError) as info:
        call()
    return info.value


def invoke(body: bytes | str, model_id: str = EMBEDDING_ID) -> Callable[[Any], Any]:
    return lambda c: c.invoke_model(
        modelId=model_id, body=body, contentType="application/json", accept="application/json"
    )


def converse_stream(model_id: str = LLM_ID, messages: Any = None) -> Callable[[Any], Any]:
    msgs = messages if messages is not None else [{"role": "user", "content": [{"text": "hi"}]}]
    return lambda c: c.converse_stream(modelId=model_id, messages=msgs)


def health(svc: Service) -> dict[str, Any]:
    with urllib.request.urlopen(f"{svc.url}/health", timeout=5 * TIMEOUT_FACTOR) as resp:
        data: dict[str, Any] = json.loads(resp.read())
        return data


# -- embeddings (InvokeModel) ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "call", "code", "status"),
    [
        ("not JSON", invoke(b"{not json"), "ValidationException", 400),
        ("no text", invoke(json.dumps({"inputText": ""})), "ValidationException", 400),
        ("unknown body", invoke(json.dumps({"prompt": "hello"})), "ValidationException", 400),
        (
            "unknown model",
            invoke(json.dumps({"inputText": "hi"}), "amazon.titan-embed-text-v9:0"),  # no such model
            "ValidationException",
            400,
        ),
    ],
)
def test_embedding_errors(
    embedding: Service, session: boto3.session.Session, name: str, call: Any, code: str, status: int
) -> None:
    local = local_client(session, embedding)
    aws = aws_client(session)
    message = UNKNOWN_MODEL if name == "unknown model" else "(from AWS)"
    from_local = local_error(local, call)
    assert_same(
        from_local, aws_error(aws, "invoke_model", code, status, call, message), code, status, local, "embedding"
    )
    if name == "unknown model":
        assert from_local.response["Error"]["Message"].startswith(UNKNOWN_MODEL)


def test_embedding_unknown_model_through_the_adapter(embedding: Service, session: boto3.session.Session) -> None:
    local = local_client(session, embedding)
    aws = aws_client(session)
    model = "amazon.titan-embed-text-v9:0"  # no such model: not served locally, unknown on AWS
    from_local = adapter_error(lambda: Embedder(local, model, body_format="titan").embed_query("hi"))
    with Stubber(aws) as stub:
        stub.add_client_error(
            "invoke_model",
            service_error_code="ValidationException",
            service_message=UNKNOWN_MODEL,
            http_status_code=400,
        )
        from_aws = adapter_error(lambda: Embedder(aws, model, body_format="titan").embed_query("hi"))
    assert (from_local.code, from_local.message) == (from_aws.code, from_aws.message)
    assert from_local.code == "upstream_unavailable" and "not available" in from_local.message


def test_embedding_overload_is_throttling(embedding: Service, session: boto3.session.Session) -> None:
    local = local_client(session, embedding)
    aws = aws_client(session)
    big = json.dumps({"texts": [f"{i}. {LONG_TEXT}" for i in range(EMBED_QUEUE)], "input_type": "search_document"})
    done: dict[str, Any] = {}

    def fill() -> None:
        try:
            done["out"] = invoke(big)(local)
        except Exception as exc:
            done["error"] = exc

    filler = threading.Thread(target=fill)
    filler.start()
    try:
        deadline = time.monotonic() + T
        while health(embedding)["pending_texts"] < EMBED_QUEUE:
            assert filler.is_alive() and time.monotonic() < deadline, "the big request never queued"
            time.sleep(0.005)
        call = invoke(json.dumps({"texts": ["one more"], "input_type": "search_query"}))
        from_local = local_error(local, call)
        from_adapter = adapter_error(lambda: Embedder(local, EMBEDDING_ID).embed_query("one more"))
    finally:
        filler.join(T * 4)
    assert "error" not in done, done.get("error")
    from_aws = aws_error(aws, "invoke_model", "ThrottlingException", 429, call)
    assert_same(from_local, from_aws, "ThrottlingException", 429, local, "embedding")
    with Stubber(aws) as stub:
        stub.add_client_error("invoke_model", service_error_code="ThrottlingException", http_status_code=429)
        from_aws_adapter = adapter_error(lambda: Embedder(aws, EMBEDDING_ID).embed_query("one more"))
    assert (from_adapter.code, from_adapter.message) == (from_aws_adapter.code, from_aws_adapter.message)
    assert from_adapter.code == "throttled"


# -- answers (ConverseStream) ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "call", "code", "status"),
    [
        ("no messages", converse_stream(messages=[]), "ValidationException", 400),
        (
            "assistant first",
            converse_stream(messages=[{"role": "assistant", "content": [{"text": "x"}]}]),
            "ValidationException",
            400,
        ),
        ("unknown model", converse_stream(model_id="anthropic.claude-v2"), "ValidationException", 400),
    ],
)
def test_llm_errors(llm: Service, session: boto3.session.Session, name: str, call: Any, code: str, status: int) -> None:
    local = local_client(session, llm)
    aws = aws_client(session)
    message = UNKNOWN_MODEL if name == "unknown model" else "(from AWS)"
    assert_same(
        local_error(local, call),
        aws_error(aws, "converse_stream", code, status, call, message),
        code,
        status,
        local,
        "LLM",
    )


UNKNOWN_LLM = "anthropic.claude-v2"  # a real Bedrock id the stand-in does not map by default


@pytest.mark.parametrize(
    ("operation", "call"),
    [
        (
            "converse",
            lambda c: c.converse(modelId=UNKNOWN_LLM, messages=[{"role": "user", "content": [{"text": "hi"}]}]),
        ),
        ("converse_stream", converse_stream(model_id=UNKNOWN_LLM)),
        ("invoke_model", invoke(json.dumps({"prompt": "hi", "max_gen_len": 8}), UNKNOWN_LLM)),
        (
            "invoke_model_with_response_stream",
            lambda c: c.invoke_model_with_response_stream(
                modelId=UNKNOWN_LLM, body=json.dumps({"prompt": "hi"}), contentType="application/json"
            ),
        ),
        ("embedding invoke_model", invoke(json.dumps({"inputText": "hi"}), "amazon.titan-embed-text-v9:0")),
    ],
)
def test_an_unknown_model_id_is_one_behaviour(
    embedding: Service, llm: Service, session: boto3.session.Session, operation: str, call: Any
) -> None:
    """Every operation of both stand-ins answers an unknown model id as Bedrock does: 400 ValidationException
    "The provided model identifier is invalid." (then what is served); the adapters call it a deployment
    problem (the model is not available), as they do for AWS's answer."""
    svc, aws_op = (embedding, "invoke_model") if operation.startswith("embedding") else (llm, operation)
    local = local_client(session, svc)
    from_local = local_error(local, call)
    assert type(from_local) is local.exceptions.ValidationException
    assert from_local.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert from_local.response["Error"]["Message"].startswith(UNKNOWN_MODEL)
    from_aws = aws_error(aws_client(session), aws_op, "ValidationException", 400, call, UNKNOWN_MODEL)
    service = "embedding" if svc is embedding else "LLM"
    mapped_local, mapped_aws = upstream_error(service, from_local), upstream_error(service, from_aws)
    assert (mapped_local.code, mapped_local.message) == (mapped_aws.code, mapped_aws.message)
    assert mapped_local.code == "upstream_unavailable" and "not available" in mapped_local.message


class LongGeneration:
    """Keeps the LLM's only slot busy: a raw ConverseStream request that generates for a long time."""

    def __init__(self, svc: Service) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", svc.port, timeout=T)
        body = {
            "messages": [{"role": "user", "content": [{"text": "Tell a long story"}]}],
            "inferenceConfig": {"maxTokens": 4000},
        }
        self.conn.request("POST", f"/model/{LLM_ID}/converse-stream", json.dumps(body).encode())
        self.resp = self.conn.getresponse()
        assert self.resp.status == 200
        self.resp.read1(1024)  # generating

    def close(self) -> None:
        self.resp.close()
        self.conn.close()


def test_llm_overload_is_throttling(llm: Service, session: boto3.session.Session) -> None:
    local = local_client(session, llm)
    aws = aws_client(session)
    busy = LongGeneration(llm)
    try:
        assert health(llm)["generating"] is True
        call = converse_stream()
        from_local = local_error(local, call)
        from_adapter = adapter_error(
            lambda: list(ChatModel(local, LLM_ID).stream("s", [{"role": "user", "content": "q"}]))
        )
    finally:
        busy.close()
    from_aws = aws_error(aws, "converse_stream", "ThrottlingException", 429, call)
    assert_same(from_local, from_aws, "ThrottlingException", 429, local, "LLM")
    with Stubber(aws) as stub:
        stub.add_client_error("converse_stream", service_error_code="ThrottlingException", http_status_code=429)
        from_aws_adapter = adapter_error(
            lambda: list(ChatModel(aws, LLM_ID).stream("s", [{"role": "user", "content": "q"}]))
        )
    assert (from_adapter.code, from_adapter.message) == (from_aws_adapter.code, from_aws_adapter.message)
    assert from_adapter.code == "throttled"


def test_services_stay_healthy(embedding: Service, llm: Service) -> None:
    for svc in (embedding, llm):
        assert svc.proc.poll() is None
        assert "Traceback" not in svc.log()


def test_error_classes_come_from_the_bedrock_runtime_model(session: boto3.session.Session) -> None:
    """The codes the stand-ins answer are all modelled errors of bedrock-runtime (so boto3 maps them)."""
    client = aws_client(session)
    modelled = {s.name for s in client.meta.service_model.error_shapes}
    assert {"ValidationException", "ResourceNotFoundException", "ThrottlingException", "ModelTimeoutException",
            "ServiceUnavailableException", "InternalServerException"} <= modelled  # fmt: skip
