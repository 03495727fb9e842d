"""AWS mode, checked against botocore's own service models: no AWS account, no network.

With the endpoint settings unset and a region set, the code talks to AWS itself. Every call it makes is
intercepted *after* botocore has validated its parameters against the service model (the JSON models
boto3 uses against AWS): with ``botocore.stub.Stubber`` (exact expected parameters; responses validated
against the output shapes) or, for whole invocations with many calls, a recorder that answers from the
same hook Stubber uses. So each call below is a valid AWS request, to the right regional endpoint:

- bedrock-runtime InvokeModel with Titan Text Embeddings V2 bodies (one text per call, fanned out with
  bounded concurrency) and Cohere Embed bodies (batches), checked against the models' documented bodies;
- bedrock-runtime ConverseStream: the request, and a real event stream decoded by botocore (its
  exception frames too);
- apigatewaymanagementapi PostToConnection at ``https://{domainName}/{stage}`` from a real-format event;
  a GoneException ends the reply after one call (no retry, no second call for that connection);
- S3 GetObject / PutObject / HeadObject / DeleteObject for the raw documents;
- a whole ingestion and chat invocation in AWS mode, each call checked against template.yaml's IAM.

Retries are checked over real HTTP against a small stand-in answering the AWS way (shared/aws_http.py):
ThrottlingException is retried with jittered exponential backoff, then succeeds or becomes ``throttled``;
GoneException is never retried.
"""

from __future__ import annotations

import asyncio
import fnmatch
import hashlib
import io
import itertools
import json
import os
import threading
import time
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import botocore.endpoint
import numpy as np
import pytest
from aiohttp import web
from botocore.awsrequest import AWSResponse
from botocore.eventstream import EventStream
from botocore.parsers import EventStreamJSONParser
from botocore.response import StreamingBody
from botocore.stub import ANY, Stubber
from botocore.validate import validate_parameters
from pydantic import BaseModel

from llm.eventstream import encode_event, encode_exception
from shared.aws_clients import client_config, make_client
from shared.aws_http import aws_error_response
from shared.bedrock import ChatModel, Embedder, StreamDone, TextDelta, upstream_error
from shared.connections import ConnectionGone, Connections
from shared.errors import Throttled, UpstreamTimeout, UpstreamUnavailable
from shared.events import WebSocketEvent
from shared.object_store import S3ObjectStore, TenantObjects
from shared.profiles import aws_profile
from shared.protocol import StreamEnd, encode
from shared.ws_lambda import WebSocketLambda
from tests.support.paths import EVENTS
from tests.support.timeouts import scaled
from tests.unit.test_template import ACCOUNT, REGION, Resolver, allowed

TITAN = "amazon.titan-embed-text-v2:0"
COHERE = "cohere.embed-english-v3"
LLM = "amazon.nova-micro-v1:0"
# The bucket template.yaml makes in REGION / ACCOUNT (tests/unit/test_template.py resolves it the same way).
BUCKET = f"localrag-{ACCOUNT}-{REGION}"


@pytest.fixture(autouse=True)
def aws_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    """No endpoint variable, no AWS configuration from this machine; fake credentials (never sent)."""
    for var in list(os.environ):
        if var.startswith("AWS_") or (var.startswith("RAG_") and var.endswith("_ENDPOINT_URL")):
            monkeypatch.delenv(var)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


def aws_client(service: str) -> Any:
    return make_client(service, endpoint_url=None, region=REGION)


def event(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((EVENTS / name).read_text())
    return data


def body(data: dict[str, Any] | bytes) -> StreamingBody:
    raw = data if isinstance(data, bytes) else json.dumps(data).encode()
    return StreamingBody(io.BytesIO(raw), len(raw))


def fake_vector(text: str, dimension: int) -> list[float]:
    """A deterministic unit vector per text (what a real model returns is irrelevant here)."""
    seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")
    v = np.random.default_rng(seed).standard_normal(dimension)
    return [float(x) for x in v / np.linalg.norm(v)]


# -- the documented request bodies of the embedding models (InvokeModel's body is an opaque blob to botocore)


def titan_body_problems(raw: str) -> list[str]:
    """Amazon Titan Text Embeddings V2: {inputText, dimensions?: 256|512|1024, normalize?: bool,
    embeddingTypes?: ["float"|"binary"]}; inputText at most 50,000 characters."""
    b = json.loads(raw)
    problems = [f"unknown key {k}" for k in b if k not in {"inputText", "dimensions", "normalize", "embeddingTypes"}]
    if not isinstance(b.get("inputText"), str) or not b["inputText"] or len(b["inputText"]) > 50_000:
        problems.append("inputText must be a non-empty string of at most 50,000 characters")
    if "dimensions" in b and b["dimensions"] not in (256, 512, 1024):
        problems.append(f"dimensions {b['dimensions']} not in 256/512/1024")
    if "normalize" in b and not isinstance(b["normalize"], bool):
        problems.append("normalize must be a boolean")
    return problems


def cohere_body_problems(raw: str) -> list[str]:
    """Cohere Embed v3 on Bedrock: {texts: 1..96 strings of at most 2,048 characters, input_type,
    truncate?: NONE|START|END, embedding_types?}."""
    b = json.loads(raw)
    problems = [f"unknown key {k}" for k in b if k not in {"texts", "input_type", "truncate", "embedding_types"}]
    texts = b.get("texts")
    if not isinstance(texts, list) or not 1 <= len(texts) <= 96:
        problems.append("texts must hold 1..96 strings")
    elif any(not isinstance(t, str) or len(t) > 2048 for t in texts):
        problems.append("each text must be a string of at most 2,048 characters")
    if b.get("input_type") not in ("search_document", "search_query", "classification", "clustering"):
        problems.append(f"bad input_type {b.get('input_type')!r}")
    if "truncate" in b and b["truncate"] not in ("NONE", "START", "END"):
        problems.append("bad truncate")
    return problems


# -- ConverseStream: a real event stream, decoded by botocore -------------------------------------------------


class RawStream:
    """What botocore's EventStream reads: .stream() yields bytes; .close() is how the caller hangs up."""

    def __init__(self, frames: list[bytes]) -> None:
        self.frames = frames
        self.closed = False

    def stream(self) -> Iterator[bytes]:
        yield from self.frames

    def close(self) -> None:
        self.closed = True


def converse_frames(pieces: list[str], *, usage: tuple[int, int] = (12, 3)) -> list[bytes]:
    return [
        encode_event("messageStart", {"role": "assistant"}),
        *(encode_event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": p}}) for p in pieces),
        encode_event("contentBlockStop", {"contentBlockIndex": 0}),
        encode_event("messageStop", {"stopReason": "end_turn"}),
        encode_event(
            "metadata",
            {
                "usage": {"inputTokens": usage[0], "outputTokens": usage[1], "totalTokens": sum(usage)},
                "metrics": {"latencyMs": 42},
            },
        ),
    ]


def event_stream(client: Any, raw: RawStream) -> EventStream:
    shape = client.meta.service_model.operation_model("ConverseStream").output_shape.members["stream"]
    return EventStream(raw, shape, EventStreamJSONParser(), "ConverseStream")


def inject_stream(client: Any, raw: RawStream) -> None:
    """Stubber answers ConverseStream with {}; put the event stream in, as botocore's parser would."""

    def handler(parsed: dict[str, Any], **_: Any) -> None:
        if not parsed.get("Error"):
            parsed["stream"] = event_stream(client, raw)

    client.meta.events.register("after-call.bedrock-runtime.ConverseStream", handler)


# -- a recorder: Stubber's hook, any order, many threads --------------------------------------------------------


class Recorder:
    """Answers every call of a client from ``answers[operation](params)`` at the hook Stubber uses
    (``before-call``), i.e. after botocore validated the parameters against the service model; records
    (operation, params). Answers that are plain data are validated against the output shape too."""

    def __init__(self, client: Any, answers: dict[str, Callable[[dict[str, Any]], dict[str, Any]]]) -> None:
        self.client = client
        self.answers = answers
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self._lock = threading.Lock()
        service = client.meta.service_model.service_id.hyphenize()
        client.meta.events.register_first(f"before-parameter-build.{service}.*", self._record)
        client.meta.events.register_first(f"before-call.{service}.*", self._answer)

    def _record(self, params: dict[str, Any], model: Any, context: dict[str, Any], **_: Any) -> None:
        context["recorded_params"] = dict(params)

    def _answer(self, model: Any, context: dict[str, Any], **_: Any) -> tuple[AWSResponse, dict[str, Any]]:
        params = context["recorded_params"]
        with self._lock:
            self.calls.append((model.name, params))
        assert model.name in self.answers, f"unexpected AWS call {model.name}({sorted(params)})"
        parsed = self.answers[model.name](params)
        if model.output_shape is not None and not any(
            isinstance(v, EventStream | StreamingBody) for v in parsed.values()
        ):
            validate_parameters(parsed, model.output_shape)
        return AWSResponse(None, 200, {}, None), parsed

    def ops(self) -> list[str]:
        return [op for op, _ in self.calls]


def titan_answer(dimension: int) -> Callable[[dict[str, Any]], dict[str, Any]]:
    def answer(params: dict[str, Any]) -> dict[str, Any]:
        problems = titan_body_problems(params["body"])
        assert not problems, problems
        text = json.loads(params["body"])["inputText"]
        return {
            "body": body({"embedding": fake_vector(text, dimension), "inputTextTokenCount": len(text.split())}),
            "contentType": "application/json",
        }

    return answer


# -- IAM: the calls made are the calls template.yaml allows ------------------------------------------------------


def iam_requests(service: str, op: str, params: dict[str, Any], endpoint: str | None = None) -> list[tuple[str, str]]:
    """(IAM action, resource ARN) pairs one API call needs (the service authorization reference)."""
    if service == "bedrock-runtime":
        action = {
            "InvokeModel": "bedrock:InvokeModel",
            "Converse": "bedrock:InvokeModel",
            "ConverseStream": "bedrock:InvokeModelWithResponseStream",
            "InvokeModelWithResponseStream": "bedrock:InvokeModelWithResponseStream",
        }[op]
        return [(action, f"arn:aws:bedrock:{REGION}::foundation-model/{params['modelId']}")]
    if service == "s3":
        obj = f"arn:aws:s3:::{params['Bucket']}/{params.get('Key', '')}"
        if op in ("GetObject", "HeadObject"):
            return [("s3:GetObject", obj)]
        if op == "PutObject":
            return [("s3:PutObject", obj)]
        if op == "DeleteObject":
            return [("s3:DeleteObject", obj)]
        if op == "DeleteObjects":
            return [
                ("s3:DeleteObject", f"arn:aws:s3:::{params['Bucket']}/{o['Key']}") for o in params["Delete"]["Objects"]
            ]
        if op in ("ListObjectsV2", "ListObjects"):
            return [("s3:ListBucket", f"arn:aws:s3:::{params['Bucket']}")]
        if op == "CopyObject":
            src = params["CopySource"]
            return [("s3:PutObject", obj), ("s3:GetObject", f"arn:aws:s3:::{src['Bucket']}/{src['Key']}")]
    if service == "apigatewaymanagementapi":
        assert endpoint is not None
        api_id = endpoint.removeprefix("https://").split(".", 1)[0]
        stage = endpoint.rstrip("/").rsplit("/", 1)[1]
        method = {"PostToConnection": "POST", "GetConnection": "GET", "DeleteConnection": "DELETE"}[op]
        return [
            (
                "execute-api:ManageConnections",
                f"arn:aws:execute-api:{REGION}:{ACCOUNT}:{api_id}/{stage}/{method}/@connections/{params['ConnectionId']}",
            )
        ]
    raise AssertionError(f"no IAM mapping for {service} {op}")


def assert_template_allows(function: str, recorders: list[Recorder]) -> None:
    grants = allowed(function, Resolver())
    for rec in recorders:
        service = rec.client.meta.service_model.service_id.hyphenize()
        for op, params in rec.calls:
            for action, arn in iam_requests(service, op, params, rec.client.meta.endpoint_url):
                patterns = grants.get(action, set())
                assert any(fnmatch.fnmatchcase(arn, p) for p in patterns), (
                    f"{function} calls {service} {op} -> needs {action} on {arn}; template.yaml allows {patterns}"
                )


# ================================================================================================ tests


def test_aws_profile_clients_call_aws(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Endpoints unset -> the regional AWS endpoints, with the 'standard' retry policy."""
    import chat.handler
    import ingestion.handler
    from chat.settings import Settings as ChatSettings
    from ingestion.settings import Settings as IngestionSettings

    for k, v in aws_profile(bucket=BUCKET, region=REGION).items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("RAG_LANCEDB_URI", str(tmp_path / "lancedb"))  # LanceDB's own S3 client is not boto3
    ing = ingestion.handler.build_service(IngestionSettings())
    answers = chat.handler.build_service(ChatSettings())
    for client in (ing.embedder.client, answers.embedder.client, answers.llm.client):
        assert client.meta.endpoint_url == f"https://bedrock-runtime.{REGION}.amazonaws.com"
        assert client.meta.region_name == REGION
        assert client.meta.config.retries == {"mode": "standard", "total_max_attempts": 4}
    s3 = ing.objects.client  # type: ignore[attr-defined]
    assert s3.meta.endpoint_url == f"https://s3.{REGION}.amazonaws.com"
    assert ing.embedder.model_id == TITAN and ing.embedder.body_format == "titan"
    assert answers.llm.model_id == LLM


# -- embeddings --------------------------------------------------------------------------------------------------


def test_titan_invoke_model_bodies() -> None:
    client = aws_client("bedrock-runtime")
    embedder = Embedder(client, TITAN, body_format="titan", dimensions=256, concurrency=1)
    texts = ["Volcanoes form where magma rises.", "Bread needs flour, water and yeast.", "Tides follow the moon."]
    sent: list[str] = []
    client.meta.events.register(
        "before-parameter-build.bedrock-runtime.InvokeModel", lambda params, **_: sent.append(params["body"])
    )
    with Stubber(client) as stub:
        for text in [*texts, "where is magma?"]:
            stub.add_response(
                "invoke_model",
                {
                    "body": body({"embedding": fake_vector(text, 256), "inputTextTokenCount": 7}),
                    "contentType": "application/json",
                },
                {"modelId": TITAN, "body": ANY, "contentType": "application/json", "accept": "application/json"},
            )
        vectors = embedder.embed_documents(texts)
        query = embedder.embed_query("where is magma?")
        stub.assert_no_pending_responses()
    assert vectors == [fake_vector(t, 256) for t in texts] and query == fake_vector("where is magma?", 256)
    assert len(sent) == 4  # Titan embeds one text per call
    for raw, text in zip(sent, [*texts, "where is magma?"], strict=True):
        assert titan_body_problems(raw) == []
        assert json.loads(raw) == {"inputText": text, "normalize": True, "dimensions": 256}


def test_titan_fans_out_with_bounded_concurrency() -> None:
    """One text per call, `concurrency` calls in flight, results in input order."""
    model = aws_client("bedrock-runtime").meta.service_model.operation_model("InvokeModel")
    lock = threading.Lock()
    state = {"in_flight": 0, "max": 0, "calls": 0}
    # Each call waits until four are in flight: with fewer in parallel the barrier breaks (and the test
    # fails); with more, "max" says so. No clock involved.
    four_at_once = threading.Barrier(4)

    class SlowBedrock:
        def invoke_model(self, **params: Any) -> dict[str, Any]:
            validate_parameters(params, model.input_shape)
            assert titan_body_problems(params["body"]) == []
            with lock:
                state["in_flight"] += 1
                state["calls"] += 1
                state["max"] = max(state["max"], state["in_flight"])
            four_at_once.wait(scaled(10))
            with lock:
                state["in_flight"] -= 1
            text = json.loads(params["body"])["inputText"]
            return {"body": body({"embedding": fake_vector(text, 1024)})}

    texts = [f"passage number {i}" for i in range(24)]
    vectors = Embedder(SlowBedrock(), TITAN, body_format="titan", concurrency=4).embed_documents(texts)
    assert vectors == [fake_vector(t, 1024) for t in texts]
    assert state["calls"] == 24 and state["max"] == 4


@pytest.mark.parametrize("by_type", [False, True], ids=["embeddings_floats", "embeddings_by_type"])
def test_cohere_invoke_model_bodies(by_type: bool) -> None:
    client = aws_client("bedrock-runtime")
    embedder = Embedder(client, COHERE, body_format="cohere", batch_size=2, concurrency=1)
    texts = [f"text {i}" for i in range(5)]
    sent: list[str] = []
    client.meta.events.register(
        "before-parameter-build.bedrock-runtime.InvokeModel", lambda params, **_: sent.append(params["body"])
    )

    def reply(batch: list[str]) -> dict[str, Any]:
        vecs = [fake_vector(t, 1024) for t in batch]
        payload: dict[str, Any] = {"id": "x", "texts": batch}
        payload.update(
            {"embeddings": {"float": vecs}, "response_type": "embeddings_by_type"}
            if by_type
            else {"embeddings": vecs, "response_type": "embeddings_floats"}
        )
        return {"body": body(payload), "contentType": "application/json"}

    expected = {"modelId": COHERE, "body": ANY, "contentType": "application/json", "accept": "application/json"}
    with Stubber(client) as stub:
        for batch in (texts[0:2], texts[2:4], texts[4:5], ["a question"]):
            stub.add_response("invoke_model", reply(batch), expected)
        vectors = embedder.embed_documents(texts)
        query = embedder.embed_query("a question")
        stub.assert_no_pending_responses()
    assert vectors == [fake_vector(t, 1024) for t in texts] and query == fake_vector("a question", 1024)
    bodies = [json.loads(b) for b in sent]
    assert [b["texts"] for b in bodies] == [texts[0:2], texts[2:4], texts[4:5], ["a question"]]
    assert [b["input_type"] for b in bodies] == ["search_document"] * 3 + ["search_query"]
    assert all(cohere_body_problems(b) == [] for b in sent)


# -- ConverseStream ----------------------------------------------------------------------------------------------


def test_converse_stream_request_and_events() -> None:
    client = aws_client("bedrock-runtime")
    raw = RawStream(converse_frames(["Magma ", "rises", "."], usage=(120, 3)))
    inject_stream(client, raw)
    model = ChatModel(client, LLM, max_tokens=300, temperature=0.1)
    history = [
        {"role": "user", "content": "What is a volcano?"},
        {"role": "assistant", "content": "A vent in the crust [1]."},
        {"role": "user", "content": "How does it erupt?"},
    ]
    with Stubber(client) as stub:
        stub.add_response(
            "converse_stream",
            {},
            {
                "modelId": LLM,
                "system": [{"text": "Answer from the passages."}],
                "messages": [{"role": m["role"], "content": [{"text": m["content"]}]} for m in history],
                "inferenceConfig": {"maxTokens": 300, "temperature": 0.1},
            },
        )
        events = list(model.stream("Answer from the passages.", history))
        stub.assert_no_pending_responses()
    assert events == [TextDelta("Magma "), TextDelta("rises"), TextDelta("."), StreamDone("end_turn", 120, 3)]
    assert raw.closed  # the HTTP stream is closed when the generator is done


def test_closing_the_answer_closes_the_stream() -> None:
    """The client left: the chat lambda closes the generator, which closes the HTTP stream to Bedrock."""
    client = aws_client("bedrock-runtime")
    raw = RawStream(converse_frames(["a", "b", "c", "d"]))
    inject_stream(client, raw)
    with Stubber(client) as stub:
        stub.add_response("converse_stream", {}, None)
        gen = ChatModel(client, LLM).stream("s", [{"role": "user", "content": "q"}])
        assert next(gen) == TextDelta("a")
        gen.close()
    assert raw.closed


@pytest.mark.parametrize(
    ("frame", "expected"),
    [("throttlingException", Throttled), ("modelStreamErrorException", UpstreamUnavailable)],
)
def test_an_exception_frame_mid_stream_is_a_typed_error(frame: str, expected: type[Exception]) -> None:
    client = aws_client("bedrock-runtime")
    frames = [*converse_frames(["Magma "])[:2], encode_exception(frame, "stopped")]
    raw = RawStream(frames)
    inject_stream(client, raw)
    with Stubber(client) as stub:
        stub.add_response("converse_stream", {}, None)
        gen = ChatModel(client, LLM).stream("s", [{"role": "user", "content": "q"}])
        assert next(gen) == TextDelta("Magma ")
        with pytest.raises(expected) as info:
            next(gen)
    assert "stopped" not in str(info.value)  # the AWS message stays in the log
    assert raw.closed


@pytest.mark.parametrize(
    ("code", "status", "expected"),
    [
        ("ThrottlingException", 429, Throttled),
        ("ServiceQuotaExceededException", 429, Throttled),
        ("ModelNotReadyException", 429, Throttled),
        ("ModelTimeoutException", 408, UpstreamTimeout),
        ("ValidationException", 400, UpstreamUnavailable),
        ("ResourceNotFoundException", 404, UpstreamUnavailable),
        ("AccessDeniedException", 403, UpstreamUnavailable),
        ("InternalServerException", 500, UpstreamUnavailable),
    ],
)
def test_converse_stream_errors_become_typed_errors(code: str, status: int, expected: type[Exception]) -> None:
    client = aws_client("bedrock-runtime")
    assert hasattr(client.exceptions, code), f"{code} is not in botocore's bedrock-runtime model"
    with Stubber(client) as stub:
        stub.add_client_error(
            "converse_stream", service_error_code=code, service_message="details", http_status_code=status
        )
        with pytest.raises(expected) as info:
            list(ChatModel(client, LLM).stream("s", [{"role": "user", "content": "q"}]))
    assert isinstance(info.value.__cause__, getattr(client.exceptions, code))
    assert "details" not in str(info.value)


# -- @connections ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "websocket_connect.json",
        "websocket_disconnect.json",
        "websocket_message_chat.json",
        "websocket_message_ingest.json",
    ],
)
def test_management_endpoint_comes_from_the_event(name: str) -> None:
    raw = event(name)
    ctx = raw["requestContext"]
    connections = Connections(endpoint_url=None, region=REGION)
    endpoint = connections.endpoint_for(WebSocketEvent.model_validate(raw))
    assert endpoint == f"https://{ctx['domainName']}/{ctx['stage']}"
    assert endpoint == "https://k3x9q2w7lb.execute-api.eu-west-1.amazonaws.com/prod"
    client = connections.client(endpoint)
    assert client.meta.endpoint_url == endpoint
    assert client.meta.service_model.service_name == "apigatewaymanagementapi"


class Hello(BaseModel):
    type: str = "hello"
    n: int = 0


def count_calls(client: Any, operation: str) -> list[dict[str, Any]]:
    calls: list[dict[str, Any]] = []
    service = client.meta.service_model.service_id.hyphenize()
    client.meta.events.register(
        f"provide-client-params.{service}.{operation}", lambda params, **_: calls.append(params)
    )
    return calls


def test_post_to_connection_then_gone_once() -> None:
    ev = WebSocketEvent.model_validate(event("websocket_message_chat.json"))
    connections = Connections(endpoint_url=None, region=REGION)
    client = connections.client(connections.endpoint_for(ev))
    calls = count_calls(client, "PostToConnection")
    cid = ev.request_context.connection_id
    with Stubber(client) as stub:
        stub.add_response("post_to_connection", {}, {"ConnectionId": cid, "Data": encode(Hello(n=1))})
        stub.add_client_error("post_to_connection", service_error_code="GoneException", http_status_code=410)
        connections.post(ev, Hello(n=1))
        with pytest.raises(ConnectionGone):
            connections.post(ev, Hello(n=2))
        with pytest.raises(ConnectionGone):  # known gone: no further call
            connections.post(ev, Hello(n=3))
        stub.assert_no_pending_responses()
    assert len(calls) == 2


def test_a_gone_client_ends_a_streaming_reply_after_one_call() -> None:
    connections = Connections(endpoint_url=None, region=REGION)
    raw = event("websocket_message_chat.json")
    client = connections.client(connections.endpoint_for(WebSocketEvent.model_validate(raw)))
    calls = count_calls(client, "PostToConnection")
    produced: list[int] = []

    def chat(_req: Any, emit: Callable[[BaseModel], None], _caller: Any) -> None:
        for n in range(50):
            produced.append(n)
            emit(Hello(n=n))

    lam = WebSocketLambda(connections, {"chat": chat})
    with Stubber(client) as stub:
        stub.add_client_error("post_to_connection", service_error_code="GoneException", http_status_code=410)
        assert lam(raw, None) == {"statusCode": 410}
        stub.assert_no_pending_responses()
    assert len(calls) == 1 and produced == [0]


# -- S3 ------------------------------------------------------------------------------------------------------------


def test_raw_documents_on_s3() -> None:
    client = aws_client("s3")
    assert client.meta.endpoint_url == f"https://s3.{REGION}.amazonaws.com"
    store = TenantObjects(S3ObjectStore(client, f"s3://{BUCKET}/documents"), "default")
    doc: dict[str, Any] = {
        "id": "notes/2025 #1",
        "title": "Notes",
        "text": "Magma rises.",
        "date": None,
        "source": None,
        "metadata": {},
    }
    key = "documents/notes%2F2025%20%231.json"
    with Stubber(client) as stub:
        stub.add_response(
            "put_object",
            {"ETag": '"abc"'},
            {"Bucket": BUCKET, "Key": key, "Body": json.dumps(doc).encode(), "ContentType": "application/json"},
        )
        stub.add_response("get_object", {"Body": body(doc), "ContentLength": 10}, {"Bucket": BUCKET, "Key": key})
        stub.add_client_error("get_object", service_error_code="NoSuchKey", http_status_code=404)
        stub.add_response("head_object", {"ContentLength": 10}, {"Bucket": BUCKET, "Key": key})
        stub.add_response("delete_object", {}, {"Bucket": BUCKET, "Key": key})
        stub.add_client_error("head_object", service_error_code="404", http_status_code=404)
        assert store.put_document("notes/2025 #1", doc) == f"s3://{BUCKET}/{key}"
        assert store.get_document("notes/2025 #1") == doc
        assert store.get_document("missing") is None
        assert store.delete_document("notes/2025 #1") is True
        assert store.delete_document("notes/2025 #1") is False
        stub.assert_no_pending_responses()


# -- whole invocations in AWS mode, against template.yaml's IAM -----------------------------------------------------


@pytest.fixture
def aws_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The AWS profile (template.yaml's environment), LanceDB in a folder (its S3 client is not boto3's)."""
    for k, v in aws_profile(bucket=BUCKET, region=REGION).items():
        monkeypatch.setenv(k, v)
    lancedb = tmp_path / "lancedb"
    monkeypatch.setenv("RAG_LANCEDB_URI", str(lancedb))
    monkeypatch.setenv("RAG_TOKEN_FLUSH_MS", "0")
    return lancedb


def s3_answers(stored: dict[str, bytes]) -> dict[str, Callable[[dict[str, Any]], dict[str, Any]]]:
    def put(p: dict[str, Any]) -> dict[str, Any]:
        stored[p["Key"]] = p["Body"] if isinstance(p["Body"], bytes) else p["Body"].read()
        return {"ETag": '"e"'}

    def get(p: dict[str, Any]) -> dict[str, Any]:
        return {"Body": body(stored[p["Key"]]), "ContentLength": len(stored[p["Key"]])}

    def listing(p: dict[str, Any]) -> dict[str, Any]:
        keys = [k for k in sorted(stored) if k.startswith(p.get("Prefix", ""))]
        return {
            "Contents": [{"Key": k, "Size": len(stored[k])} for k in keys],
            "KeyCount": len(keys),
            "IsTruncated": False,
        }

    return {"PutObject": put, "GetObject": get, "ListObjectsV2": listing, "DeleteObjects": lambda p: {}}


def mgmt_recorder(lam: WebSocketLambda, raw_event: dict[str, Any], posted: list[dict[str, Any]]) -> Recorder:
    client = lam.connections.client(lam.connections.endpoint_for(WebSocketEvent.model_validate(raw_event)))

    def post(p: dict[str, Any]) -> dict[str, Any]:
        posted.append(json.loads(p["Data"]))
        return {}

    return Recorder(client, {"PostToConnection": post})


def ingest_in_aws_mode(stored: dict[str, bytes]) -> tuple[list[Recorder], list[dict[str, Any]]]:
    import ingestion.handler
    from ingestion.settings import Settings

    settings = Settings()
    service = ingestion.handler.build_service(settings)
    lam = ingestion.handler.build_lambda(settings, service)
    text = " ".join(f"Sentence {i} says that magma rises through the crust of the Earth." for i in range(80))
    raw = event("websocket_message_ingest.json")
    raw["body"] = json.dumps(
        {"action": "ingest", "request_id": "i-1", "document": {"id": "volcanoes", "title": "Volcanoes", "text": text}}
    )
    posted: list[dict[str, Any]] = []
    recorders = [
        Recorder(service.embedder.client, {"InvokeModel": titan_answer(1024)}),
        Recorder(service.objects.client, s3_answers(stored)),  # type: ignore[attr-defined]
        mgmt_recorder(lam, raw, posted),
    ]
    assert lam(raw, None) == {"statusCode": 200}
    return recorders, posted


def test_an_ingest_invocation_in_aws_mode(aws_settings: Path) -> None:
    stored: dict[str, bytes] = {}
    (bedrock, s3, mgmt), posted = ingest_in_aws_mode(stored)
    assert len(posted) == 1, posted
    assert posted[0]["type"] == "ingest_result" and posted[0]["request_id"] == "i-1", posted
    chunks = posted[0]["chunks"]
    assert chunks > 1
    assert bedrock.ops() == ["InvokeModel"] * chunks  # Titan: one call per chunk
    assert {p["modelId"] for _, p in bedrock.calls} == {TITAN}
    assert "PutObject" in s3.ops()
    assert json.loads(stored["documents/volcanoes.json"])["id"] == "volcanoes"
    assert mgmt.ops() == ["PostToConnection"]
    assert mgmt.calls[0][1]["ConnectionId"] == "Gq1yTcQEDoECJ2g="
    assert_template_allows("IngestionFunction", [bedrock, s3, mgmt])


def test_a_chat_invocation_in_aws_mode(aws_settings: Path) -> None:
    import chat.handler
    from chat.settings import Settings

    ingest_in_aws_mode({})
    # The stubbed Titan vectors are arbitrary: keep every match whatever its distance.
    settings = Settings(max_distance=2.0)
    service = chat.handler.build_service(settings)
    lam = chat.handler.build_lambda(settings, service)
    raw = event("websocket_message_chat.json")
    posted: list[dict[str, Any]] = []
    pieces = ["Magma ", "rises ", "[1]."]

    def converse_stream(params: dict[str, Any]) -> dict[str, Any]:
        return {"stream": event_stream(service.llm.client, RawStream(converse_frames(pieces)))}

    recorders = [
        Recorder(service.embedder.client, {"InvokeModel": titan_answer(1024)}),
        Recorder(service.llm.client, {"ConverseStream": converse_stream}),
        mgmt_recorder(lam, raw, posted),
    ]
    assert lam(raw, None) == {"statusCode": 200}
    types = [m["type"] for m in posted]
    assert types == ["stream_start", "token", "token", "token", "stream_end"], posted
    end = StreamEnd.model_validate(posted[-1])
    assert end.answer == "".join(pieces) and end.sources and end.sources[0].doc_id == "volcanoes"
    (op, params), *_ = recorders[1].calls
    assert op == "ConverseStream" and params["modelId"] == LLM
    assert params["inferenceConfig"]["maxTokens"] == settings.max_tokens
    assert_template_allows("ChatFunction", recorders)


# -- retries, over real HTTP ---------------------------------------------------------------------------------------


class StandIn:
    """A tiny AWS-like HTTP service on 127.0.0.1: ``respond(n, request, body)`` answers the n-th request
    (errors rendered by shared.aws_http, as the local embedding/LLM services do); requests are recorded
    with their arrival time."""

    def __init__(self, respond: Callable[[int, web.Request, bytes], web.Response]) -> None:
        self.respond = respond
        self.requests: list[tuple[float, str, str]] = []
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.url = ""

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)

        async def handle(request: web.Request) -> web.Response:
            data = await request.read()
            self.requests.append((time.monotonic(), request.method, request.path))
            return self.respond(len(self.requests), request, data)

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handle)
        runner = web.AppRunner(app)
        self._loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", 0)
        self._loop.run_until_complete(site.start())
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(runner.cleanup())

    def __enter__(self) -> StandIn:
        self._thread.start()
        assert self._ready.wait(scaled(10))
        return self

    def __exit__(self, *_: Any) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(scaled(10))

    def gaps(self) -> list[float]:
        times = [t for t, _, _ in self.requests]
        return [b - a for a, b in itertools.pairwise(times)]


def titan_ok(text: str = "q") -> web.Response:
    return web.json_response({"embedding": fake_vector(text, 8), "inputTextTokenCount": 1})


def test_throttling_is_retried_with_backoff_then_succeeds(monkeypatch: pytest.MonkeyPatch) -> None:
    # The backoffs botocore chose, recorded where it sleeps them (botocore/endpoint.py): no clock read.
    backoffs: list[float] = []

    def sleep(seconds: float) -> None:
        backoffs.append(seconds)
        time.sleep(seconds)

    monkeypatch.setattr(botocore.endpoint, "time", types.SimpleNamespace(sleep=sleep))

    def respond(n: int, _: web.Request, __: bytes) -> web.Response:
        if n <= 2:
            return aws_error_response(429, "ThrottlingException", "Too many requests, please wait before trying again.")
        return titan_ok()

    with StandIn(respond) as svc:
        client = make_client("bedrock-runtime", endpoint_url=svc.url, region=REGION, config=client_config())
        vec = Embedder(client, TITAN, body_format="titan").embed_query("q")
    assert vec == fake_vector("q", 8)
    assert len(svc.requests) == 3 and all(path == f"/model/{TITAN}/invoke" for _, _, path in svc.requests)
    # botocore 'standard': a throttle waits rand(0, 1) * min(2 ** attempt, 20) s -- at most 1 s, then 2 s.
    assert len(backoffs) == 2 and 0 <= backoffs[0] <= 1 and 0 <= backoffs[1] <= 2, backoffs


def test_persistent_throttling_is_throttled_after_four_attempts() -> None:
    with StandIn(lambda n, r, b: aws_error_response(429, "ThrottlingException", "slow down")) as svc:
        client = make_client("bedrock-runtime", endpoint_url=svc.url, region=REGION, config=client_config())
        with pytest.raises(Throttled) as info:
            Embedder(client, TITAN, body_format="titan").embed_query("q")
    assert len(svc.requests) == 4  # client_config(max_attempts=4)
    assert isinstance(info.value.__cause__, client.exceptions.ThrottlingException)
    assert upstream_error("embedding", info.value.__cause__).code == info.value.code


def test_gone_is_never_retried_and_throttled_posts_are() -> None:
    ev = WebSocketEvent.model_validate(event("websocket_message_chat.json"))

    def respond(n: int, request: web.Request, _: bytes) -> web.Response:
        if "Gq1yTcQEDoECJ2g" in request.path:
            return aws_error_response(410, "GoneException", "")
        if n == 2:  # the first post to the other connection
            return aws_error_response(429, "LimitExceededException", "Rate exceeded")
        return web.Response(status=200)

    with StandIn(respond) as svc:
        connections = Connections(endpoint_url=f"{svc.url}/prod", region=REGION)
        with pytest.raises(ConnectionGone):
            connections.post(ev, Hello())
        assert len(svc.requests) == 1  # 410: no retry
        with pytest.raises(ConnectionGone):
            connections.post(ev, Hello())
        assert len(svc.requests) == 1  # known gone: no call
        other = ev.model_copy(
            update={"request_context": ev.request_context.model_copy(update={"connection_id": "T3RoZXJDb25uPQ="})}
        )
        connections.post(other, Hello())
    assert len(svc.requests) == 3  # 429 LimitExceededException, retried once
    assert all(path.startswith("/prod/@connections/") for _, _, path in svc.requests)


@pytest.mark.parametrize("service", ["ingestion", "chat"])
def test_titan_is_asked_for_the_configured_dimension(
    service: str, aws_settings: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib

    monkeypatch.setenv("RAG_EMBEDDING_DIMENSION", "512")
    settings = importlib.import_module(f"{service}.settings").Settings()
    built = importlib.import_module(f"{service}.handler").build_service(settings)
    sent: list[dict[str, Any]] = []

    def answer(params: dict[str, Any]) -> dict[str, Any]:
        sent.append(json.loads(params["body"]))
        return titan_answer(512)(params)

    Recorder(built.embedder.client, {"InvokeModel": answer})
    built.embedder.embed_query("magma")
    assert sent[0].get("dimensions") == 512
