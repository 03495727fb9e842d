"""Bad input over a real WebSocket: a typed error with a stable code, the connection stays usable,
nothing is partly written, no exception text reaches the client."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed

from shared.protocol import SERVER_MESSAGE
from shared.stack import Process, Stack
from tests.conftest import ARTIFACTS, StackFactory, WsClient
from tests.support import auth
from tests.support.procs import port_of, refusing_port
from tests.support.timeouts import scaled

LEAK_MARKERS = ("Traceback", 'File "', "Error:", "hunter2", "Exception")


@pytest.fixture(scope="module")
def stack(start_stack: StackFactory) -> Stack:
    return start_stack("e2e-local", RAG_MAX_DISTANCE="0.7")


@pytest.fixture
def client(stack: Stack) -> Iterator[WsClient]:
    c = WsClient(stack.ws_url)
    yield c
    c.close()


def assert_error(reply: dict[str, Any], code: str, request_id: str | None = None) -> None:
    SERVER_MESSAGE.validate_python(reply)
    assert reply["type"] == "error", reply
    assert reply["code"] == code, reply
    assert reply["request_id"] == request_id
    assert not any(m in reply["message"] for m in LEAK_MARKERS), reply["message"]


def assert_still_usable(client: WsClient) -> None:
    r = client.request({"action": "search", "request_id": "alive", "query": "anything", "max_distance": 2.0})
    assert r["type"] == "search_result" and r["request_id"] == "alive"


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        ("{not json", "malformed_json"),
        ("[1, 2, 3]", "malformed_json"),
        ('"just a string"', "malformed_json"),
        ('{"action": "dance"}', "unknown_action"),
        ('{"question": "no action"}', "unknown_action"),
        ('{"action": 42}', "unknown_action"),
        ("", "empty_message"),
        ("   ", "empty_message"),
    ],
)
def test_unparseable_messages(client: WsClient, raw: str, code: str) -> None:
    client.send(raw)
    assert_error(client.recv(), code)
    assert_still_usable(client)


@pytest.mark.parametrize(
    ("message", "field"),
    [
        ({"action": "chat", "request_id": "r1"}, "question"),
        ({"action": "chat", "request_id": "r1", "question": "hi", "top_k": "five"}, "top_k"),
        ({"action": "chat", "request_id": "r1", "question": "hi", "max_distance": 3.5}, "max_distance"),
        ({"action": "ingest", "request_id": "r1", "document": {"id": 7, "text": "x"}}, "document.id"),
        ({"action": "ingest", "request_id": "r1", "document": {"id": "a/b", "text": "x"}}, "document.id"),
        ({"action": "ingest", "request_id": "r1"}, "document"),
        ({"action": "search", "request_id": "r1", "query": ""}, "query"),
        ({"action": "history", "request_id": "r1"}, "conversation_id"),
        ({"action": "delete_document", "request_id": "r1", "doc_id": None}, "doc_id"),
        ({"action": "search", "request_id": "r1", "query": "q", "surprise": 1}, "surprise"),
        ({"action": "ingest_batch", "request_id": "r1", "documents": []}, "documents"),
        (
            {
                "action": "ingest_batch",
                "request_id": "r1",
                "documents": [{"id": f"d{i}", "text": "x"} for i in range(101)],
            },
            "documents",
        ),
        # One bad document refuses the whole message: nothing of it is written (checked below).
        (
            {
                "action": "ingest_batch",
                "request_id": "r1",
                "documents": [{"id": "fine-1", "text": "Fine."}, {"id": "x#y", "text": "x"}],
            },
            "documents.1.id",
        ),
    ],
)
def test_invalid_fields_name_the_field(client: WsClient, message: dict[str, Any], field: str) -> None:
    reply = client.request(message)
    assert_error(reply, "invalid_request", "r1")
    assert field in reply["message"]
    assert_still_usable(client)


def test_oversize_message_closes_the_connection_with_1009(stack: Stack, client: WsClient) -> None:
    """As API Gateway does for a message over 128 KB (or a frame over 32 KB): close 1009, nothing ingested."""
    doc = {"id": "big", "title": "Big", "text": "word " * 30_000}  # ~150 KB > 128 KB
    client.send({"action": "ingest", "request_id": "big", "document": doc})
    with pytest.raises(ConnectionClosed):
        client.recv()
    assert client.ws.close_code == 1009
    with WsClient(stack.ws_url) as other:
        r = other.request({"action": "search", "request_id": "s", "query": "word", "top_k": 50, "max_distance": 2.0})
    assert all(s["doc_id"] != "big" for s in r["results"])


def test_invalid_utf8_binary_frame(client: WsClient) -> None:
    client.send(b'{"action": "search", "query": "\xff\xfe\xfa"}')
    assert_error(client.recv(), "invalid_utf8")
    assert_still_usable(client)


def test_valid_utf8_binary_frame_is_accepted(client: WsClient) -> None:
    client.send(json.dumps({"action": "search", "request_id": "b", "query": "caf\u00e9"}).encode())
    r = client.recv()
    assert r["type"] == "search_result" and r["request_id"] == "b"


def test_empty_document_writes_nothing(client: WsClient) -> None:
    reply = client.request({"action": "ingest", "request_id": "e", "document": {"id": "blank", "text": " \n\t "}})
    assert_error(reply, "empty_document", "e")
    r = client.request({"action": "delete_document", "request_id": "d", "doc_id": "blank"})
    assert_error(r, "document_not_found", "d")  # neither chunks nor a raw copy were written


def test_a_batch_refused_as_a_whole_writes_nothing(client: WsClient) -> None:
    bad = {"action": "ingest_batch", "request_id": "b", "documents": [{"id": "fine-2", "text": "Fine."}, {"id": 3}]}
    assert_error(client.request(bad), "invalid_request", "b")
    r = client.request({"action": "delete_document", "request_id": "d", "doc_id": "fine-2"})
    assert_error(r, "document_not_found", "d")


def test_a_batch_fails_bad_documents_alone(client: WsClient) -> None:
    docs = [
        {"id": "batch-tides", "title": "Tides", "text": "The moon's pull raises two tidal bulges a day."},
        {"id": "batch-blank", "text": "  \n "},
        {"id": "batch-comets", "title": "Comets", "text": "A comet's tail always points away from the sun."},
    ]
    reply = client.request({"action": "ingest_batch", "request_id": "ib", "documents": docs})
    SERVER_MESSAGE.validate_python(reply)
    assert reply["type"] == "ingest_batch_result" and reply["request_id"] == "ib", reply
    assert (reply["ingested"], reply["failed"]) == (2, 1)
    assert [(r["doc_id"], r["status"]) for r in reply["results"]] == [
        ("batch-tides", "ingested"),
        ("batch-blank", "failed"),
        ("batch-comets", "ingested"),
    ]
    assert reply["results"][0]["chunks"] == 1 and reply["results"][1]["error"]["code"] == "empty_document"
    assert not any(m in reply["results"][1]["error"]["message"] for m in LEAK_MARKERS)
    r = client.request({"action": "search", "request_id": "s", "query": "why does a comet's tail point away"})
    assert r["results"][0]["doc_id"] == "batch-comets"
    # Sent again: each replaces its earlier version.
    again = client.request({"action": "ingest_batch", "request_id": "ib2", "documents": [docs[0], docs[2]]})
    assert [r["replaced_chunks"] for r in again["results"]] == [1, 1]
    for doc_id in ("batch-tides", "batch-comets"):
        client.request({"action": "delete_document", "request_id": "del", "doc_id": doc_id})
    r = client.request({"action": "delete_document", "request_id": "d", "doc_id": "batch-blank"})
    assert_error(r, "document_not_found", "d")


def test_unknown_conversation(client: WsClient) -> None:
    replies = client.chat({"action": "chat", "request_id": "c", "conversation_id": "nope", "question": "hi"})
    assert len(replies) == 1
    assert_error(replies[0], "unknown_conversation", "c")
    assert_error(
        client.request({"action": "history", "request_id": "h", "conversation_id": "nope"}), "unknown_conversation", "h"
    )
    assert_still_usable(client)


def test_concurrent_requests_on_one_connection_are_answered_by_id(client: WsClient) -> None:
    for i in range(4):
        client.send({"action": "search", "request_id": f"p{i}", "query": f"query {i}"})
    ids = {client.recv()["request_id"] for _ in range(4)}
    assert ids == {"p0", "p1", "p2", "p3"}


# ---------------------------------------------------------------- failing lambdas


@pytest.fixture(scope="module")
def faulty_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A gateway whose 'chat' function crashes and whose 'ingestion' function times out."""
    log_dir = ARTIFACTS / "logs" / "faulty"
    with auth.standalone_authorizer(tmp_path_factory.mktemp("faulty"), log_dir) as authz:
        crash = Process(
            "crash", "shared.lambda_runtime", authz.env(), args=["tests.support.faulty_handlers.crash"]
        ).bind()
        slow = Process(
            "slow",
            "shared.lambda_runtime",
            authz.env(),
            args=["tests.support.faulty_handlers.slow", "--timeout", "1"],
        ).bind()
        functions = authz.functions(
            chat=f"{crash.url}/2015-03-31/functions/crash/invocations",
            ingestion=f"{slow.url}/2015-03-31/functions/slow/invocations",
        )
        gateway = Process("gateway", "gateway", {**authz.env(), "GATEWAY_FUNCTIONS": json.dumps(functions)}).bind()
        gateway.env["GATEWAY_PORT"] = str(gateway.port)
        gateway.env["GATEWAY_MANAGEMENT_PORT"] = "0"
        authz.register(gateway.url)
        procs = [crash, slow, gateway]
        try:
            for p in procs:
                p.start(log_dir)
            for p in procs:
                p.wait_healthy(scaled(60))
            yield f"ws://127.0.0.1:{gateway.port}/local"
        finally:
            for p in reversed(procs):
                p.stop()


def test_crashing_lambda_becomes_a_generic_error(faulty_gateway: str) -> None:
    c = WsClient(faulty_gateway, timeout=20)
    try:
        reply = c.request({"action": "search", "request_id": "x", "query": "q"})
        assert_error(reply, "function_error", "x")
        # The connection is still open and answers again.
        assert_error(c.request({"action": "search", "request_id": "y", "query": "q"}), "function_error", "y")
    finally:
        c.close()


def test_timed_out_lambda_becomes_a_timeout_error(faulty_gateway: str) -> None:
    c = WsClient(faulty_gateway, timeout=20)
    try:
        reply = c.request({"action": "ingest", "request_id": "t", "document": {"id": "d", "text": "x"}})
        assert_error(reply, "upstream_timeout", "t")
    finally:
        c.close()


def test_unreachable_lambda_becomes_unavailable(tmp_path_factory: pytest.TempPathFactory) -> None:
    log_dir = ARTIFACTS / "logs" / "unreachable"
    with refusing_port() as dead, auth.standalone_authorizer(tmp_path_factory.mktemp("unreachable"), log_dir) as authz:
        functions = authz.functions(
            chat=f"http://127.0.0.1:{port_of(dead)}/2015-03-31/functions/chat/invocations", ingestion="http://x"
        )
        gateway = Process(
            "gateway",
            "gateway",
            {
                **authz.env(),
                "GATEWAY_FUNCTIONS": json.dumps(functions),
                "GATEWAY_ROUTES": json.dumps({"search": "chat"}),  # no $connect route: connections are accepted
                "GATEWAY_MANAGEMENT_PORT": "0",
            },
        ).bind()
        gateway.env["GATEWAY_PORT"] = str(gateway.port)
        authz.register(gateway.url)
        gateway.start(log_dir)
        try:
            gateway.wait_healthy(scaled(60))
            c = WsClient(f"ws://127.0.0.1:{gateway.port}/local", timeout=20)
            try:
                reply = c.request({"action": "search", "request_id": "u", "query": "q"})
                assert_error(reply, "upstream_unavailable", "u")
            finally:
                c.close()
        finally:
            gateway.stop()


# ---------------------------------------------------------------------- nesting, long and awkward ids


@pytest.mark.parametrize(
    "raw", ["[" * 60_000 + "]" * 60_000, '{"action": "search", "q": ' + "[" * 5_000 + "]" * 5_000 + "}"]
)
def test_deeply_nested_json_is_malformed_and_the_connection_survives(client: WsClient, raw: str) -> None:
    client.ws.send(raw[i : i + 32 * 1024] for i in range(0, len(raw), 32 * 1024))  # API Gateway's 32 KB frames
    assert_error(client.recv(), "malformed_json")
    assert_still_usable(client)


def _documents_dir(stack: Stack) -> Path:
    cfg = stack.config
    assert cfg is not None and cfg.documents_uri and not cfg.documents_uri.startswith("s3://")
    return Path(cfg.documents_uri)


def _listed(client: WsClient) -> set[str]:
    reply = client.request({"action": "list_documents", "request_id": "ls"})
    assert reply["type"] == "document_list", reply
    return {d["id"] for d in reply["documents"]}


def test_long_non_ascii_and_dot_ids_work_end_to_end(client: WsClient, stack: Stack) -> None:
    ids = ["語" * 170, "é" * 256, ".dotfile", ".."]  # 510 and 512 bytes of UTF-8: at the limit
    docs = [
        {"id": i, "title": "Awkward", "text": f"Awkward id number {n} about lighthouses."} for n, i in enumerate(ids)
    ]
    reply = client.request({"action": "ingest_batch", "request_id": "ib", "documents": docs})
    assert reply["type"] == "ingest_batch_result" and reply["ingested"] == len(ids), reply
    assert set(ids) <= _listed(client)
    names = [p.name for p in _documents_dir(stack).rglob("*")]
    assert all(len(n.encode()) <= 255 for n in names) and not any(n.startswith(".tmp-") for n in names)
    for doc_id in ids:
        r = client.request({"action": "delete_document", "request_id": "d", "doc_id": doc_id})
        assert r["type"] == "document_deleted" and r["chunks_deleted"] == 1, r
    assert not set(ids) & _listed(client)


def test_a_batch_with_an_id_over_the_byte_limit_writes_nothing(client: WsClient, stack: Stack) -> None:
    before = sorted(p.relative_to(_documents_dir(stack)) for p in _documents_dir(stack).rglob("*"))
    docs = [{"id": "fine-3", "text": "Fine."}, {"id": "語" * 171, "text": "Too long an id."}]
    reply = client.request({"action": "ingest_batch", "request_id": "b", "documents": docs})
    assert_error(reply, "invalid_request", "b")
    assert "documents.1.id" in reply["message"] and "the limit is 512" in reply["message"]
    after = sorted(p.relative_to(_documents_dir(stack)) for p in _documents_dir(stack).rglob("*"))
    assert after == before  # no raw copy, no original, no .tmp-* file
    assert "fine-3" not in _listed(client)
    reply = client.request({"action": "ingest", "request_id": "i", "document": docs[1]})
    assert_error(reply, "invalid_request", "i")
    assert "512" in reply["message"]


def test_a_long_non_ascii_file_name_uploads(client: WsClient) -> None:
    from tests.stack.test_upload import ingest_object, upload

    name = "ü" * 200 + ".md"  # 403 bytes of UTF-8: stored cut to 200 bytes, its extension kept
    key = upload(client, name, b"# Umlauts\n\nA file with a very long name about glaciers.", "text/markdown")
    stored = key.rsplit("/", 1)[1]
    assert stored.endswith(".md") and len(stored.encode()) <= 200
    out = ingest_object(client, key)
    assert out["type"] == "ingest_result" and out["chunks"] == 1, out
    assert out["doc_id"] in _listed(client)
    client.request({"action": "delete_document", "request_id": "d", "doc_id": out["doc_id"]})


def test_deeply_nested_html_is_refused_as_too_complex(client: WsClient) -> None:
    from tests.stack.test_upload import ingest_object, upload

    key = upload(client, "deep.html", b"<div>" * 2000 + b"deep" + b"</div>" * 2000, "text/html")
    reply = ingest_object(client, key)
    assert_error(reply, "document_too_complex", "io")
    assert "deep.html" not in _listed(client)
    assert_error(ingest_object(client, key), "object_not_found", "io")  # the bad upload was removed
