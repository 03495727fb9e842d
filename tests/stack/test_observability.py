"""Observability on the real processes: JSON log lines, one correlation id from the gateway through the chat
function to the embedding and LLM services, the local Lambda runtime's START/END/REPORT lines, the chat
function's CloudWatch EMF metrics line, and failures logged by type and place, never with a traceback.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from shared.stack import Stack
from tests.conftest import StackFactory, WsClient
from tests.support import auth
from tests.support.timeouts import scaled


@pytest.fixture(scope="module")
def stack(start_stack: StackFactory) -> Stack:
    return start_stack("observability", RAG_MAX_DISTANCE="2.0")


def lines(stack: Stack, service: str) -> list[dict[str, Any]]:
    """The service's log, each line parsed: every line a Python process writes is one JSON object."""
    out = []
    for raw in stack.by_name[service].log().splitlines():
        if raw.startswith("{"):
            out.append(json.loads(raw))
    return out


def wait_lines(stack: Stack, service: str, match: Callable[[dict[str, Any]], bool], what: str) -> list[dict[str, Any]]:
    deadline = time.monotonic() + scaled(30)
    while True:
        found = [line for line in lines(stack, service) if match(line)]
        if found or time.monotonic() > deadline:
            assert found, f"no {what} in the {service} log"
            return found
        time.sleep(0.1)


def test_one_correlation_id_from_the_gateway_to_the_bedrock_stand_ins(stack: Stack) -> None:
    doc_id = f"obs-{uuid.uuid4().hex[:8]}"
    rid = f"obs-chat-{uuid.uuid4().hex[:8]}"
    with WsClient(stack.ws_url) as c:
        reply = c.request(
            {
                "action": "ingest",
                "request_id": "obs-ingest",
                "document": {"id": doc_id, "text": "The quokka lighthouse keeper logs every ship in a green ledger."},
            }
        )
        assert reply["type"] == "ingest_result", reply
        replies = c.chat({"action": "chat", "request_id": rid, "question": "What does the lighthouse keeper log?"})
    end = replies[-1]
    assert end["type"] == "stream_end" and end["sources"], end

    # The gateway logged the message with API Gateway's requestId as its correlation id.
    (routed,) = wait_lines(stack, "gateway", lambda x: x.get("request_id") == rid, "line of the chat message")
    cid = routed["correlation_id"]
    for key in ("timestamp", "level", "service", "logger", "message", "connection_id"):
        assert routed.get(key), (key, routed)
    assert routed["service"] == "gateway"

    # Its requestId is fresh per message (as API Gateway's): the ingest message had another one.
    ingest_line = wait_lines(stack, "gateway", lambda x: x.get("request_id") == "obs-ingest", "ingest line")[0]
    assert ingest_line["correlation_id"] != cid and ingest_line["connection_id"] == routed["connection_id"]

    # The chat function: its runtime's START/REPORT, Powertools' Lambda context, the client's request_id.
    # REPORT is the invocation's last line, written after the reply went out: wait for it, then read them all.
    wait_lines(stack, "chat", lambda x: x.get("correlation_id") == cid and x.get("phase") == "REPORT", "REPORT line")
    chat = [x for x in lines(stack, "chat") if x.get("correlation_id") == cid]
    phases = {x.get("phase") for x in chat}
    assert {"START", "END", "REPORT"} <= phases, phases
    report = next(x for x in chat if x.get("phase") == "REPORT")
    assert report["Duration"] > 0 and report["aws_request_id"] and report["_aws"]["CloudWatchMetrics"]
    assert any(x.get("request_id") == rid and x.get("function_request_id") for x in chat), chat
    assert all(x["connection_id"] == routed["connection_id"] for x in chat if "connection_id" in x)

    # The chat function's metrics: one EMF line for the invocation, with the correlation id.
    (emf,) = wait_lines(
        stack, "chat", lambda x: x.get("correlation_id") == cid and "TimeToFirstToken" in x, "EMF metrics line"
    )
    declared = {m["Name"]: m["Unit"] for m in emf["_aws"]["CloudWatchMetrics"][0]["Metrics"]}
    assert declared["TimeToFirstToken"] == "Milliseconds" and declared["RetrievalTime"] == "Milliseconds"
    assert declared["SourcesKept"] == "Count" and declared["NoContext"] == "Count"
    assert emf["_aws"]["CloudWatchMetrics"][0]["Namespace"] == "localrag"
    assert emf["service"] == "chat" and emf["NoContext"] in (0, 0.0, [0.0])
    assert emf["SourcesKept"] in (len(end["sources"]), [float(len(end["sources"]))])

    # The Bedrock stand-ins got the id in X-Localrag-Correlation-Id and logged it.
    # (Each writes its access line once the response is out, so each waits for its own line.)
    wait_lines(
        stack,
        "embedding",
        lambda x: x.get("correlation_id") == cid and "/invoke" in x["message"],
        "embedding request line",
    )
    wait_lines(
        stack, "llm", lambda x: x.get("correlation_id") == cid and "converse-stream" in x["message"], "LLM request line"
    )


def test_a_failing_invocation_is_logged_by_type_and_place_without_a_traceback(stack: Stack) -> None:
    """An event the ingestion handler cannot take (a JSON list): Lambda's Unhandled answer to the caller, and in
    the log one line naming the exception's type and where it was raised -- no traceback, no message."""
    client = auth.lambda_client(stack, "ingestion")
    before = len(lines(stack, "ingestion"))
    resp = client.invoke(FunctionName="ingestion", Payload=b"[1, 2]")
    assert resp["FunctionError"] == "Unhandled"
    error_type = json.loads(resp["Payload"].read())["errorType"]

    def failed(x: dict[str, Any]) -> bool:
        return x.get("level") == "ERROR" and x.get("error_type") == error_type

    wait_lines(stack, "ingestion", failed, "error line")
    new = stack.by_name["ingestion"].log().splitlines()[before:]
    line = next(json.loads(x) for x in new if x.startswith("{") and failed(json.loads(x)))
    assert line["error_where"] and ".py:" in line["error_where"], line
    assert not any("Traceback" in x or 'File "' in x for x in new), new
    # The runtime still serves it.
    resp = client.invoke(FunctionName="ingestion", Payload=json.dumps({"Records": []}).encode())
    assert "FunctionError" not in resp
