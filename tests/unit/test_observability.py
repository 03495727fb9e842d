"""JSON log lines, the log context across threads, the correlation header on Bedrock calls, the runtime's
START/END/REPORT lines and the lambdas' EMF metrics line (shared/logs.py, shared/observability.py)."""

from __future__ import annotations

import json
import logging
import sys
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.awsrequest import AWSResponse
from botocore.config import Config

from shared.bedrock import ChatModel, Embedder
from shared.errors import Throttled
from shared.lambda_runtime import LambdaContext, run_invocation
from shared.logs import (
    CORRELATION_HEADER,
    JsonFormatter,
    bound,
    configure_logging,
    log_context,
    record_metric,
    reset_metric_sink,
    set_metric_sink,
)
from shared.observability import instrument
from shared.ws_lambda import correlation_fields
from tests.support.paths import EVENTS


class Captured:
    """The JSON lines written to stdout (pytest's capture: the handlers write to sys.stdout as it is then)."""

    def __init__(self, capsys: pytest.CaptureFixture[str]) -> None:
        self.capsys = capsys
        self.text = ""

    def getvalue(self) -> str:
        self.text += self.capsys.readouterr().out
        return self.text


@pytest.fixture
def out(capsys: pytest.CaptureFixture[str]) -> Iterator[Captured]:
    """JSON logging as a service has it; the root logger and the hooks restored afterwards."""
    root = logging.getLogger()
    saved = (list(root.handlers), root.level, sys.excepthook, threading.excepthook)
    configure_logging("INFO", "tests")
    try:
        yield Captured(capsys)
    finally:
        for h in list(root.handlers):
            root.removeHandler(h)
        for h in saved[0]:
            root.addHandler(h)
        root.setLevel(saved[1])
        sys.excepthook, threading.excepthook = saved[2], saved[3]
        logging.captureWarnings(False)


def parsed(buffer: Captured) -> list[dict[str, Any]]:
    return [json.loads(line) for line in buffer.getvalue().splitlines()]


def test_a_line_is_one_json_object_with_the_context_and_no_traceback(out: Captured) -> None:
    log = logging.getLogger("tests.obs")
    with bound(correlation_id="cid-1", request_id="r-1", connection_id=None):
        try:
            {}["sk-secret-text"]
        except KeyError:
            log.exception("lookup failed")
    log.info("plain", extra={"doc": "d1"})
    failed, plain = parsed(out)
    assert failed["level"] == "ERROR" and failed["service"] == "tests" and failed["logger"] == "tests.obs"
    assert failed["message"] == "lookup failed" and failed["timestamp"].endswith("+00:00")
    assert failed["correlation_id"] == "cid-1" and failed["request_id"] == "r-1" and "connection_id" not in failed
    assert failed["error_type"] == "KeyError"
    assert failed["error_where"].startswith("tests/unit/test_observability.py:"), failed
    text = out.getvalue()
    assert "Traceback" not in text and 'File "' not in text and "sk-secret-text" not in text
    assert plain["doc"] == "d1" and "correlation_id" not in plain


def test_uncaught_exceptions_in_threads_are_logged_by_type(out: Captured) -> None:
    def boom() -> None:
        raise ValueError("private detail")

    t = threading.Thread(target=boom, name="worker-x")
    t.start()
    t.join()
    (line,) = parsed(out)
    assert line["level"] == "CRITICAL" and line["error_type"] == "ValueError" and "worker-x" in line["message"]
    assert "private detail" not in out.getvalue() and "Traceback" not in out.getvalue()


def test_the_log_context_is_per_thread_of_work(out: Captured) -> None:
    """Two invocations at once each log their own correlation id (contextvars, not a shared dict)."""
    barrier = threading.Barrier(2)

    def work(cid: str) -> None:
        with bound(correlation_id=cid):
            barrier.wait()
            logging.getLogger("tests.obs").info("working")

    threads = [threading.Thread(target=work, args=(c,)) for c in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(x["correlation_id"] for x in parsed(out)) == ["a", "b"]
    assert log_context() == {}


def _bedrock_client(captured: list[Any], status: int = 200, body: bytes = b"{}", **headers: str) -> Any:
    """A real bedrock-runtime client whose HTTP send is answered by botocore's ``before-send`` event."""
    client = boto3.client(
        "bedrock-runtime",
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
        config=Config(retries={"mode": "standard", "total_max_attempts": 2}),
    )

    def answer(request: Any, **_: Any) -> AWSResponse:
        captured.append(request)
        return AWSResponse(request.url, status, {"Content-Type": "application/json", **headers}, _Raw(body))

    client.meta.events.register("before-send.bedrock-runtime", answer)
    return client


class _Raw:
    def __init__(self, body: bytes) -> None:
        self._body = body

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self._body

    def read(self, *_: Any, **__: Any) -> bytes:
        body, self._body = self._body, b""
        return body


def test_bedrock_calls_carry_the_correlation_id_signed() -> None:
    captured: list[Any] = []
    embedder = Embedder(_bedrock_client(captured, body=b'{"embeddings": [[0.5, 0.5]]}'), "m", batch_size=1)
    with bound(correlation_id="Gq1zBG0xDoEF7Hw="):
        assert embedder.embed_documents(["one", "two"]) == [[0.5, 0.5], [0.5, 0.5]]  # on the embedder's pool
    embedder.embed_query("no context")
    first, second, third = captured
    for request in (first, second):
        value = request.headers[CORRELATION_HEADER]
        assert (value.decode() if isinstance(value, bytes) else value) == "Gq1zBG0xDoEF7Hw="
        signed = request.headers["Authorization"].decode().split("SignedHeaders=")[1]
        assert CORRELATION_HEADER.lower() in signed
    assert CORRELATION_HEADER not in third.headers


def test_throttled_bedrock_attempts_are_counted_as_metrics() -> None:
    captured: list[Any] = []
    body = json.dumps({"message": "slow down"}).encode()
    client = _bedrock_client(captured, status=429, body=body, **{"x-amzn-ErrorType": "ThrottlingException"})
    model = ChatModel(client, "m")
    values: list[tuple[str, float, str]] = []
    token = set_metric_sink(lambda n, v, u: values.append((n, v, u)))
    try:
        with pytest.raises(Throttled):
            list(model.stream("s", [{"role": "user", "content": "hi"}]))
    finally:
        reset_metric_sink(token)
    assert len(captured) == 2, "botocore retried the throttled call once"
    assert values == [("BedrockThrottles", 1, "Count")] * 2


def _ws_event() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((EVENTS / "websocket_message_chat.json").read_text())
    return data


def test_correlation_fields_of_an_api_gateway_event() -> None:
    event = _ws_event()
    fields = correlation_fields(event)
    ctx = event["requestContext"]
    assert fields["correlation_id"] == ctx["requestId"] and fields["connection_id"] == ctx["connectionId"]
    assert fields["request_id"] == json.loads(event["body"]).get("request_id")
    assert correlation_fields({"Records": []}) == {}


def test_the_runtime_logs_start_end_and_report(out: Captured) -> None:
    context = LambdaContext("fn", 30, 128, "us-east-1")
    event = _ws_event()
    assert run_invocation(lambda e, c: {"ok": True}, event, context, "fn") == {"ok": True}
    with pytest.raises(RuntimeError):
        run_invocation(lambda e, c: (_ for _ in ()).throw(RuntimeError("secret")), {}, context, "fn")
    lines = parsed(out)
    assert [x.get("phase") for x in lines[:3]] == ["START", "END", "REPORT"]
    assert all(x["aws_request_id"] == context.aws_request_id for x in lines)
    assert lines[0]["correlation_id"] == event["requestContext"]["requestId"]
    assert lines[3]["correlation_id"] == context.aws_request_id  # no requestContext: the invocation's own id
    report = lines[2]
    (declared,) = report["_aws"]["CloudWatchMetrics"]
    assert {m["Name"] for m in declared["Metrics"]} == {"Duration", "Errors"} and report["Errors"] == 0
    failed = [x for x in lines if x["level"] == "ERROR"]
    assert failed and failed[0]["error_type"] == "RuntimeError" and "secret" not in out.getvalue()
    assert lines[-1]["Errors"] == 1


def test_instrumented_handler_writes_one_emf_line_with_the_correlation_fields(out: Captured) -> None:
    service = f"fn-{uuid.uuid4().hex[:6]}"  # Powertools keeps one logger per service name in the process

    def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
        record_metric("TimeToFirstToken", 12.5, "Milliseconds")
        record_metric("NoContext", 1, "Count")
        logging.getLogger("chat.service").info("answered")
        return {"statusCode": 200}

    observed = instrument(handler, service=service, namespace="ns-test")
    event = _ws_event()
    assert observed(event, LambdaContext(service, 30, 128, "us-east-1")) == {"statusCode": 200}
    assert not record_metric("Outside", 1), "no metrics outside an invocation"
    lines = parsed(out)
    answered = next(x for x in lines if x["message"] == "answered")
    assert answered["correlation_id"] == event["requestContext"]["requestId"]
    assert answered["function_name"] == service and answered["function_request_id"]
    (emf,) = [x for x in lines if "_aws" in x]
    (declared,) = emf["_aws"]["CloudWatchMetrics"]
    assert declared["Namespace"] == "ns-test" and declared["Dimensions"] == [["service"]]
    assert {m["Name"]: m["Unit"] for m in declared["Metrics"]} == {
        "TimeToFirstToken": "Milliseconds",
        "NoContext": "Count",
    }
    assert emf["TimeToFirstToken"] == [12.5] and emf["service"] == service
    assert emf["correlation_id"] == answered["correlation_id"] and emf["connection_id"]
    assert log_context() == {}, "the invocation's keys end with it"


def test_formatter_drops_exc_text_and_stack_info() -> None:
    record = logging.LogRecord("x", logging.ERROR, __file__, 1, "m", None, None)
    record.exc_text = "Traceback (most recent call last): secret"
    record.stack_info = 'File "x.py", line 1'
    line = JsonFormatter("s").format(record)
    assert "Traceback" not in line and "File" not in line
