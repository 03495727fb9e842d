"""The LLM service as a real process running real llama.cpp on a tiny random-weight GGUF.

The tiny model (tests/gguf_factory.py) never emits an end-of-generation token, so every generation runs
to maxTokens (or a stop sequence); at ~1 ms/token a maxTokens of a few thousand keeps it busy for seconds,
which the cancellation, queueing and timeout tests rely on.
"""

from __future__ import annotations

import functools
import http.client
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError, EventStreamError

from llm.model_fetch import ModelFetchError, ensure_model
from llm.settings import Settings
from tests.support.gguf_factory import write_tiny_llama_gguf
from tests.support.procs import ROOT, TIMEOUT_FACTOR, Service, start_service, stop_service

MODEL_ID = "local-llm"
LONG = 4000  # maxTokens that keeps the tiny model generating for several seconds
T = 10.0 * TIMEOUT_FACTOR  # per network call


def _user(text: str = "Hello there") -> list[dict[str, Any]]:
    return [{"role": "user", "content": [{"text": text}]}]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_llama_gguf(tmp_path_factory.mktemp("models") / "tiny-llama.gguf")


def _start(name: str, model: Path, log_dir: Path, **env: str) -> Service:
    base = {"LLM_MODEL_PATH": str(model), "LLM_N_CTX": "4096", "LLM_LOG_LEVEL": "INFO"}
    return start_service(name, "llm", {**base, **env}, log_dir, timeout=60)


@pytest.fixture(scope="module")
def llm(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    svc = _start("llm", tiny_model, tmp_path_factory.mktemp("logs"))
    yield svc
    stop_service(svc)


@pytest.fixture(scope="module")
def busy_llm(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """A second instance with a single queue slot."""
    svc = _start("llm-busy", tiny_model, tmp_path_factory.mktemp("logs-busy"), LLM_MAX_QUEUE="1")
    yield svc
    stop_service(svc)


@pytest.fixture(scope="module")
def slow_llm(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """A third instance whose generations time out after a second."""
    svc = _start("llm-slow", tiny_model, tmp_path_factory.mktemp("logs-slow"), LLM_REQUEST_TIMEOUT_S="1")
    yield svc
    stop_service(svc)


def bedrock(svc: Service, read_timeout: float = T) -> Any:
    return bedrock_at(svc.url, read_timeout)


@functools.cache
def bedrock_at(url: str, read_timeout: float) -> Any:
    """A bedrock-runtime client of ``url`` (one per URL and timeout), no retries."""
    return boto3.client(
        "bedrock-runtime",
        endpoint_url=url,
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
        config=Config(connect_timeout=T, read_timeout=read_timeout, retries={"total_max_attempts": 1}),
    )


def get_json(svc: Service, path: str) -> Any:
    conn = http.client.HTTPConnection("127.0.0.1", svc.port, timeout=T)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        assert resp.status == 200, resp.read()
        return json.loads(resp.read())
    finally:
        conn.close()


def post(svc: Service, path: str, body: bytes | dict[str, Any]) -> tuple[int, dict[str, str], bytes]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    conn = http.client.HTTPConnection("127.0.0.1", svc.port, timeout=T)
    try:
        conn.request("POST", path, data, {"Content-Type": "application/json"})
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


def wait_for(cond: Callable[[], bool], timeout: float = T, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


class OpenStream:
    """A raw, long ConverseStream request whose connection the test controls."""

    def __init__(self, svc: Service, max_tokens: int = LONG) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", svc.port, timeout=T)
        body = {"messages": _user("Tell me a long story"), "inferenceConfig": {"maxTokens": max_tokens}}
        self.conn.request("POST", f"/model/{MODEL_ID}/converse-stream", json.dumps(body).encode())
        self.resp = self.conn.getresponse()
        assert self.resp.status == 200
        assert self.resp.getheader("Content-Type") == "application/vnd.amazon.eventstream"

    def read_frames(self, n: int) -> list[dict[str, Any]]:
        from botocore.eventstream import EventStreamBuffer

        buf = EventStreamBuffer()
        out: list[dict[str, Any]] = []
        while len(out) < n:
            buf.add_data(self.resp.read1(65536))
            out.extend({"headers": m.headers, "payload": json.loads(m.payload)} for m in buf)
        return out

    def close(self) -> None:
        self.resp.close()
        self.conn.close()


# -- health, Converse, ConverseStream -----------------------------------------------------------------


def test_health(llm: Service) -> None:
    health = get_json(llm, "/health")
    assert health["status"] == "ok"
    assert health["model_id"] == MODEL_ID
    assert health["generating"] is False


def test_converse_returns_text_and_usage(llm: Service) -> None:
    out = bedrock(llm).converse(
        modelId=MODEL_ID,
        system=[{"text": "You are terse."}],
        messages=_user(),
        inferenceConfig={"maxTokens": 16, "temperature": 0.5},
    )
    msg = out["output"]["message"]
    assert msg["role"] == "assistant"
    assert msg["content"][0]["text"]
    assert out["stopReason"] == "max_tokens"
    usage = out["usage"]
    assert usage["outputTokens"] == 16
    assert usage["inputTokens"] > 5  # ChatML-templated system + user turn
    assert usage["totalTokens"] == usage["inputTokens"] + usage["outputTokens"]
    assert out["metrics"]["latencyMs"] >= 0
    assert out["ResponseMetadata"]["RequestId"]


def test_converse_multi_turn_and_defaults(llm: Service) -> None:
    messages = [*_user("Hi"), {"role": "assistant", "content": [{"text": "Hello!"}]}, *_user("And now?")]
    short = bedrock(llm).converse(modelId=MODEL_ID, messages=_user("Hi"), inferenceConfig={"maxTokens": 3})
    longer = bedrock(llm).converse(modelId=MODEL_ID, messages=messages, inferenceConfig={"maxTokens": 3})
    assert longer["usage"]["inputTokens"] > short["usage"]["inputTokens"]


def _stream_events(client: Any, **kwargs: Any) -> list[dict[str, Any]]:
    return list(client.converse_stream(modelId=MODEL_ID, **kwargs)["stream"])


def test_converse_stream_matches_converse(llm: Service) -> None:
    client = bedrock(llm)
    kwargs: dict[str, Any] = {
        "system": [{"text": "Be helpful."}],
        "messages": _user("What is RAG?"),
        "inferenceConfig": {"maxTokens": 24, "temperature": 0},
    }
    events = _stream_events(client, **kwargs)
    kinds = [next(iter(e)) for e in events]
    assert kinds[0] == "messageStart" and events[0]["messageStart"] == {"role": "assistant"}
    deltas = [e["contentBlockDelta"] for e in events if "contentBlockDelta" in e]
    assert len(deltas) >= 2
    assert all(d["contentBlockIndex"] == 0 for d in deltas)
    n = len(deltas)
    assert kinds[1 : 1 + n] == ["contentBlockDelta"] * n
    assert kinds[1 + n :] == ["contentBlockStop", "messageStop", "metadata"]
    assert events[-2]["messageStop"] == {"stopReason": "max_tokens"}
    meta = events[-1]["metadata"]
    assert meta["usage"]["outputTokens"] == 24
    assert meta["usage"]["totalTokens"] == meta["usage"]["inputTokens"] + 24
    assert meta["metrics"]["latencyMs"] >= 0

    streamed = "".join(d["delta"]["text"] for d in deltas)
    answer = client.converse(**kwargs, modelId=MODEL_ID)
    assert streamed == answer["output"]["message"]["content"][0]["text"]
    assert answer["usage"] == meta["usage"]


def test_stop_sequences(llm: Service) -> None:
    client = bedrock(llm)
    kwargs: dict[str, Any] = {"messages": _user("Count"), "inferenceConfig": {"maxTokens": 40, "temperature": 0}}
    full = client.converse(modelId=MODEL_ID, **kwargs)["output"]["message"]["content"][0]["text"]
    assert len(full) >= 10
    stop = full[4:7]
    expected = full[: full.find(stop)]
    kwargs["inferenceConfig"]["stopSequences"] = [stop]
    out = client.converse(modelId=MODEL_ID, **kwargs)
    assert out["stopReason"] == "stop_sequence"
    assert out["output"]["message"]["content"][0]["text"] == expected
    events = _stream_events(client, **kwargs)
    assert "".join(e["contentBlockDelta"]["delta"]["text"] for e in events if "contentBlockDelta" in e) == expected
    assert {"messageStop": {"stopReason": "stop_sequence"}} in events


# -- errors -------------------------------------------------------------------------------------------


def _code(exc_info: pytest.ExceptionInfo[ClientError]) -> str:
    return str(exc_info.value.response["Error"]["Code"])


def test_unknown_model_is_an_invalid_identifier(llm: Service) -> None:
    """As on Bedrock: an id it does not know is 400 ValidationException "The provided model identifier is invalid."."""
    client = bedrock(llm)
    with pytest.raises(ClientError) as exc_info:
        client.converse(modelId="anthropic.claude-v2", messages=_user())
    assert _code(exc_info) == "ValidationException"
    assert exc_info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert "model identifier is invalid" in str(exc_info.value) and "LLM_MODEL_IDS" in str(exc_info.value)
    with pytest.raises(ClientError) as exc_info:
        client.converse_stream(modelId="anthropic.claude-v2", messages=_user())
    assert _code(exc_info) == "ValidationException"


@pytest.mark.parametrize(
    ("messages", "fragment"),
    [
        ([], "messages"),
        ([{"role": "assistant", "content": [{"text": "x"}]}], "start with a user message"),
        ([{"role": "user", "content": []}], "messages.0.content"),
        ([{"role": "user", "content": [{"image": {"format": "png", "source": {"bytes": b"x"}}}]}], "text"),
    ],
)
def test_bad_converse_body_is_validation_exception(llm: Service, messages: Any, fragment: str) -> None:
    for call in (bedrock(llm).converse, bedrock(llm).converse_stream):
        with pytest.raises(ClientError) as exc_info:
            call(modelId=MODEL_ID, messages=messages)
        assert _code(exc_info) == "ValidationException"
        assert exc_info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
        assert fragment in exc_info.value.response["Error"]["Message"]


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"", "empty"),
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "JSON object"),
        (b'{"messages": "hello"}', "messages"),
        (b'{"messages": [{"role": "user", "content": [{"text": 5}]}]}', "messages.0.content.0.text"),
        (b'{"messages": [{"role": "user", "content": [{"text": "a"}]}], "inferenceConfig": {"maxTokens": 0}}',
         "maxTokens"),
        (b'{"messages": [{"role": "user", "content": [{"text": "a"}]}], "inferenceConfig": {"temperature": "t"}}',
         "temperature"),
    ],
)  # fmt: skip
def test_bad_raw_body_is_validation_exception(llm: Service, body: bytes, fragment: str) -> None:
    for op in ("converse", "converse-stream"):
        status, headers, data = post(llm, f"/model/{MODEL_ID}/{op}", body)
        assert status == 400
        assert headers["x-amzn-ErrorType"].startswith("ValidationException")
        message = json.loads(data)["message"]
        assert fragment in message
        assert "Traceback" not in message and "pydantic" not in message


def test_prompt_longer_than_context_is_validation_exception(llm: Service) -> None:
    with pytest.raises(ClientError) as exc_info:
        bedrock(llm).converse(modelId=MODEL_ID, messages=_user("word " * 5000))
    assert _code(exc_info) == "ValidationException"
    assert "context window" in exc_info.value.response["Error"]["Message"]


def test_body_too_large(llm: Service) -> None:
    status, headers, _ = post(llm, f"/model/{MODEL_ID}/converse", b"x" * (2 * 1024 * 1024))
    assert status == 413
    assert headers["x-amzn-ErrorType"].startswith("ValidationException")


# -- OpenAI-compatible --------------------------------------------------------------------------------


def test_openai_models(llm: Service) -> None:
    models = get_json(llm, "/v1/models")
    assert models["object"] == "list"
    assert [m["id"] for m in models["data"]] == [MODEL_ID]


def test_openai_chat_completion(llm: Service) -> None:
    body = {
        "model": MODEL_ID,
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}],
        "max_tokens": 12,
        "temperature": 0,
    }
    status, _, data = post(llm, "/v1/chat/completions", body)
    assert status == 200
    out = json.loads(data)
    assert out["object"] == "chat.completion"
    assert out["choices"][0]["message"]["role"] == "assistant"
    text = out["choices"][0]["message"]["content"]
    assert text
    assert out["choices"][0]["finish_reason"] == "length"
    assert out["usage"]["completion_tokens"] == 12
    assert out["usage"]["total_tokens"] == out["usage"]["prompt_tokens"] + 12

    status, headers, raw = post(llm, "/v1/chat/completions", {**body, "stream": True})
    assert status == 200
    assert headers["Content-Type"].startswith("text/event-stream")
    lines = [ln for ln in raw.decode().split("\n") if ln]
    assert all(ln.startswith("data: ") for ln in lines)
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(ln.removeprefix("data: ")) for ln in lines[:-1]]
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == MODEL_ID for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    streamed = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert streamed == text


def test_openai_stream_usage_and_errors(llm: Service) -> None:
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 5, "stream": True}
    _, _, raw = post(llm, "/v1/chat/completions", {**body, "stream_options": {"include_usage": True}})
    chunks = [json.loads(ln[6:]) for ln in raw.decode().split("\n") if ln.startswith("data: {")]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 5

    status, _, data = post(llm, "/v1/chat/completions", {**body, "model": "gpt-4"})
    assert status == 404
    assert json.loads(data)["error"]["code"] == "model_not_found"
    status, _, data = post(llm, "/v1/chat/completions", {"messages": []})
    assert status == 400
    assert json.loads(data)["error"]["type"] == "invalid_request_error"


# -- cancellation, queueing, timeouts ------------------------------------------------------------------


def test_client_disconnect_stops_generation(llm: Service) -> None:
    before = get_json(llm, "/health")
    stream = OpenStream(llm)
    frames = stream.read_frames(3)
    assert frames[0]["headers"][":event-type"] == "messageStart"
    assert frames[1]["headers"][":event-type"] == "contentBlockDelta"
    # True streaming: the first tokens arrived while the model is still generating the rest.
    assert get_json(llm, "/health")["generating"] is True
    stream.close()

    def cancelled() -> bool:
        h = get_json(llm, "/health")
        return h["generations_cancelled"] == before["generations_cancelled"] + 1 and not h["generating"]

    wait_for(cancelled, what="the generation to be cancelled")
    after = get_json(llm, "/health")
    assert after["generations_completed"] == before["generations_completed"]
    # It stopped soon after the disconnect, far short of maxTokens.
    assert after["tokens_generated"] - before["tokens_generated"] < LONG // 2
    assert "generation cancelled after" in llm.log()

    # The model is free again: a new request is served, not queued behind the cancelled one.
    assert get_json(llm, "/health")["waiting"] == 0
    out = bedrock(llm).converse(modelId=MODEL_ID, messages=_user(), inferenceConfig={"maxTokens": 4})
    assert out["usage"]["outputTokens"] == 4


def test_client_timeout_on_converse_stops_generation(llm: Service) -> None:
    before = get_json(llm, "/health")["generations_cancelled"]
    client = bedrock(llm, read_timeout=0.5)
    with pytest.raises(Exception, match=r"(?i)timeout|timed out"):
        client.converse(modelId=MODEL_ID, messages=_user(), inferenceConfig={"maxTokens": LONG})
    wait_for(lambda: get_json(llm, "/health")["generations_cancelled"] == before + 1, what="cancellation")
    wait_for(lambda: not get_json(llm, "/health")["generating"], what="idle model")


def test_over_capacity_is_throttled(busy_llm: Service) -> None:
    running = OpenStream(busy_llm)
    running.read_frames(2)
    assert get_json(busy_llm, "/health")["generating"] is True

    # One request may wait (LLM_MAX_QUEUE=1)...
    waiting: dict[str, Any] = {}

    def call() -> None:
        try:
            waiting["out"] = bedrock(busy_llm).converse(
                modelId=MODEL_ID, messages=_user(), inferenceConfig={"maxTokens": 3}
            )
        except Exception as exc:
            waiting["error"] = exc

    thread = threading.Thread(target=call)
    thread.start()
    try:
        wait_for(lambda: get_json(busy_llm, "/health")["waiting"] == 1, what="a queued request")
        # ...the next ones are turned away with 429 ThrottlingException.
        for call_op in (bedrock(busy_llm).converse, bedrock(busy_llm).converse_stream):
            with pytest.raises(ClientError) as exc_info:
                call_op(modelId=MODEL_ID, messages=_user())
            assert _code(exc_info) == "ThrottlingException"
            assert exc_info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 429
        status, _, data = post(busy_llm, "/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}]})
        assert status == 429 and json.loads(data)["error"]["type"] == "rate_limit_error"
    finally:
        running.close()  # frees the model; the queued request runs next
        thread.join(T)
    assert "error" not in waiting, waiting.get("error")
    assert waiting["out"]["usage"]["outputTokens"] == 3


def test_timeout_mid_stream_is_exception_frame(slow_llm: Service) -> None:
    response = bedrock(slow_llm).converse_stream(
        modelId=MODEL_ID, messages=_user(), inferenceConfig={"maxTokens": LONG}
    )
    events: list[dict[str, Any]] = []
    with pytest.raises(EventStreamError) as exc_info:
        events.extend(response["stream"])
    assert exc_info.value.response["Error"]["Code"] == "modelStreamErrorException"
    assert "LLM_REQUEST_TIMEOUT_S" in exc_info.value.response["Error"]["Message"]
    assert events[0] == {"messageStart": {"role": "assistant"}}
    assert any("contentBlockDelta" in e for e in events)
    assert not any("messageStop" in e for e in events)  # cut off by the timeout, before maxTokens

    with pytest.raises(ClientError) as ce:
        bedrock(slow_llm).converse(modelId=MODEL_ID, messages=_user(), inferenceConfig={"maxTokens": LONG})
    assert _code(ce) == "ModelTimeoutException"
    wait_for(lambda: not get_json(slow_llm, "/health")["generating"], what="idle model")


def test_stop_matcher_holds_back_partial_matches() -> None:
    from llm.engine import StopMatcher

    m = StopMatcher(("END", "xy"))
    assert m.feed("abc") == ("abc", False)
    assert m.feed("dE") == ("d", False)  # "E" may start "END"
    assert m.feed("N") == ("", False)
    assert m.feed("Dzz") == ("", True)  # "END" completed across three pieces: nothing after it
    m = StopMatcher(("END",))
    assert m.feed("EN") == ("", False)
    assert m.feed("X") == ("ENX", False)  # not a stop after all: released
    assert m.feed("E") == ("", False)
    assert m.flush() == "E"
    assert StopMatcher(()).feed("END") == ("END", False)


# -- model files --------------------------------------------------------------------------------------


def _fetch_cli(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("LLM_")}
    return subprocess.run(
        [sys.executable, "-m", "llm.model_fetch"],
        cwd=ROOT,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60 * TIMEOUT_FACTOR,
    )


def test_model_fetch_local_path(tiny_model: Path, tmp_path: Path) -> None:
    assert ensure_model(Settings(model_path=tiny_model)) == tiny_model
    # A previously downloaded file in models_dir is used as is.
    (tmp_path / "model.gguf").write_bytes(tiny_model.read_bytes())
    url = "http://127.0.0.1:9/some/model.gguf"
    assert ensure_model(Settings(models_dir=tmp_path, model_url=url)) == tmp_path / "model.gguf"
    result = _fetch_cli({"LLM_MODEL_PATH": str(tiny_model)})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(tiny_model.resolve())


def test_model_fetch_missing_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.gguf"
    with pytest.raises(ModelFetchError, match="LLM_MODEL_PATH"):
        ensure_model(Settings(model_path=missing))
    result = _fetch_cli({"LLM_MODEL_PATH": str(missing)})
    assert result.returncode == 1
    assert "LLM_MODEL_PATH" in result.stderr and str(missing) in result.stderr
    assert "Traceback" not in result.stderr
    not_gguf = tmp_path / "readme.gguf"
    not_gguf.write_text("hello")
    with pytest.raises(ModelFetchError, match="not a GGUF"):
        ensure_model(Settings(model_path=not_gguf))


def test_model_fetch_unreachable_url(tmp_path: Path) -> None:
    url = "http://127.0.0.1:9/x.gguf"
    with pytest.raises(ModelFetchError, match="LLM_MODEL_PATH") as exc_info:
        ensure_model(Settings(models_dir=tmp_path, model_url=url))
    assert "Could not download" in str(exc_info.value)
    result = _fetch_cli({"LLM_MODEL_URL": url, "LLM_MODELS_DIR": str(tmp_path)})
    assert result.returncode == 1
    assert "Could not download" in result.stderr and "LLM_MODEL_PATH" in result.stderr
    assert "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []  # no partial or empty file left behind


def test_service_refuses_missing_model(tmp_path: Path) -> None:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("LLM_")}
    result = subprocess.run(
        [sys.executable, "-m", "llm"],
        cwd=ROOT,
        env={**clean, "LLM_MODEL_PATH": str(tmp_path / "missing.gguf"), "LLM_PORT": "0"},
        capture_output=True,
        text=True,
        timeout=60 * TIMEOUT_FACTOR,
    )
    assert result.returncode == 1
    output = result.stdout + result.stderr  # the JSON log lines go to stdout
    assert "LLM_MODEL_PATH" in output
    assert "Traceback" not in output


# -- sampling controls (repetition penalties, top_k) ----------------------------------------------------


def _greedy(llm: Service, temperature: float = 0, **fields: Any) -> str:
    out = bedrock(llm).converse(
        modelId=MODEL_ID,
        messages=_user("Say something"),
        inferenceConfig={"maxTokens": 40, "temperature": temperature},
        **({"additionalModelRequestFields": fields} if fields else {}),
    )
    return str(out["output"]["message"]["content"][0]["text"])


def test_additional_model_request_fields_reach_llama_cpp(llm: Service) -> None:
    # Greedy decoding: the same request gives the same text; each penalty changes which tokens win.
    plain = _greedy(llm)
    assert _greedy(llm) == plain
    # The LLM_* defaults, spelled out.
    assert _greedy(llm, top_k=40, repeat_penalty=1.1, frequency_penalty=0.0, presence_penalty=0.0) == plain
    for fields in ({"repeat_penalty": 2.0}, {"frequency_penalty": 2.0}, {"presence_penalty": 2.0}):
        assert _greedy(llm, **fields) != plain, fields
    # top_k=1 makes sampling at temperature 1 greedy; the default top_k (40) lets it wander.
    assert [_greedy(llm, 1.0, top_k=1) for _ in range(2)] == [plain, plain]
    assert any(_greedy(llm, 1.0) != plain for _ in range(3))


def test_openai_penalties_reach_llama_cpp(llm: Service) -> None:
    body = {"messages": [{"role": "user", "content": "Say something"}], "max_tokens": 40, "temperature": 0}

    def text(**extra: Any) -> str:
        status, _, data = post(llm, "/v1/chat/completions", {**body, **extra})
        assert status == 200, data
        return str(json.loads(data)["choices"][0]["message"]["content"])

    plain = text()
    assert text(frequency_penalty=0, presence_penalty=0) == plain
    assert text(frequency_penalty=2) != plain
    assert text(presence_penalty=2) != plain


@pytest.mark.parametrize(
    ("fields", "fragment"),
    [
        ({"repeat_penalty": 0}, "repeat_penalty"),
        ({"repeat_penalty": 2.5}, "repeat_penalty"),
        ({"repeat_penalty": "high"}, "repeat_penalty"),
        ({"repeat_penalty": True}, "repeat_penalty"),
        ({"frequency_penalty": -2.5}, "frequency_penalty"),
        ({"presence_penalty": 3}, "presence_penalty"),
        ({"top_k": -1}, "top_k"),
        ({"top_k": 1.5}, "top_k"),
        ({"top_k": "5"}, "top_k"),
        ({"mirostat": 2}, "takes only top_k, repeat_penalty, frequency_penalty, presence_penalty"),
        ("loud", "additionalModelRequestFields"),
    ],
)
def test_bad_additional_model_request_fields_are_validation_exception(llm: Service, fields: Any, fragment: str) -> None:
    for call in (bedrock(llm).converse, bedrock(llm).converse_stream):
        with pytest.raises(ClientError) as exc_info:
            call(modelId=MODEL_ID, messages=_user(), additionalModelRequestFields=fields)
        assert _code(exc_info) == "ValidationException"
        message = exc_info.value.response["Error"]["Message"]
        assert fragment in message
        assert "mirostat" not in message  # unknown keys are not echoed back


@pytest.mark.parametrize("field", ["frequency_penalty", "presence_penalty"])
@pytest.mark.parametrize("value", [2.5, -3, "x", True])
def test_bad_openai_penalties_are_invalid_request(llm: Service, field: str, value: Any) -> None:
    status, _, data = post(llm, "/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], field: value})
    assert status == 400
    error = json.loads(data)["error"]
    assert error["type"] == "invalid_request_error" and field in error["message"]
