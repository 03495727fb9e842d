"""Faults: ``kill -9`` each service in the middle of an ingest, a delete and a chat.

One stack (LanceDB and the documents on S3: a moto server of this module's own), with a TCP tap in front
of every service another one calls -- embedding, llm, the ingestion and chat functions, and S3 -- so that a
kill lands *in the middle* deterministically: the test waits until the tap has passed the target its
request (or, for the gateway, until the function it invoked is at work) and then kills, never by sleeping.

For every service x operation (6 x 3 = 18 faults):

1. the client gets a typed error (a stable code) or its connection closes, within a bounded wait; an
   operation the killed service is not part of succeeds;
2. the killed process is started again on the same address (shared/stack.py ``Process.restart``);
3. ``ingestion.doctor`` checks the store: it repairs whatever the fault left (a raw copy whose chunks were
   never committed, ...) and then finds no drift; a conversation holds no half turn;
4. the same operation succeeds; no chunk is lost or duplicated.

moto keeps its objects in memory: killing it is an S3 that lost every object (real S3 and MinIO keep them).
It is started again at once (empty, with its bucket), since the functions' S3 clients retry; once the
client has its answer, the functions and the authorizer (whose open tables and caches belong to the lost
store) are stopped, whatever they retried into the empty bucket is removed, the API keys are made again,
and they start again. So the S3 faults check the client's side and the recovery, not the store's content.

The counts are written to ``artifacts/faults.json`` and printed by the last test.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from websockets.exceptions import ConnectionClosed

from ingestion.doctor import diagnose
from ingestion.handler import build_service
from ingestion.settings import Settings
from shared import wiring
from shared.protocol import ErrorCode
from shared.serving import listening_socket
from shared.stack import ROOT, Stack, StackConfig, plan, wait_healthy
from tests.conftest import S3_ENV, WsClient, s3_client
from tests.support.auth import setup_stack_keys
from tests.support.paths import ARTIFACTS
from tests.support.timeouts import scaled

BUCKET = "rag-faults"
TENANT = "alpha"  # WsClient's default key
SERVICES = ("embedding", "llm", "ingestion", "chat", "gateway", "s3")
OPERATIONS = ("ingest", "delete", "chat")
CODES = {c.value for c in ErrorCode}
QUESTION = "How do volcanoes erupt?"
VOLCANO = {
    "id": "volcanoes",
    "title": "Volcanoes",
    "text": "A volcano forms where molten rock called magma rises through the Earth's crust. Pressure from "
    "dissolved gases builds up until the magma erupts at the surface as lava, ash and volcanic gas.",
}
# Long enough for several chunks (and an embedding call that takes a moment).
LONG_TEXT = " ".join(
    f"Paragraph {i}: lava flows, ash clouds and pyroclastic surges follow when magma chamber pressure "
    f"exceeds the strength of the overlying rock; geologists watch tilt and gas ratios number {i}."
    for i in range(60)
)


# ------------------------------------------------------------------------------------ the taps


class Tap:
    """A TCP proxy in front of one service: bytes pass both ways unchanged; the client->service bytes of
    every connection since :meth:`mark` are kept, so a test can wait for a request to have reached it."""

    def __init__(self, name: str, target_port: int) -> None:
        self.name = name
        self.target_port = target_port
        self._server = listening_socket("127.0.0.1", 0)
        self.port = int(self._server.getsockname()[1])
        self._cond = threading.Condition()
        self._seen: dict[int, bytearray] = {}
        self._ids = itertools.count()
        threading.Thread(target=self._accept, name=f"tap-{name}", daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def mark(self) -> None:
        """Forget what was seen so far."""
        with self._cond:
            self._seen = {}

    def wait_for(self, pattern: bytes, timeout: float) -> None:
        """Wait until a request matching ``pattern`` (a regex over one connection's bytes since mark) has
        been passed to the service."""
        regex = re.compile(pattern)

        def seen() -> bool:
            return any(regex.search(buf) for buf in self._seen.values())

        with self._cond:
            if not self._cond.wait_for(seen, timeout):
                raise TimeoutError(f"{self.name}: no request matching {pattern!r} within {timeout:.0f} s")

    def close(self) -> None:
        self._server.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=scaled(5))
        except OSError:  # the service is down: the client sees its connection closed
            client.close()
            return
        upstream.settimeout(None)
        conn = next(self._ids)
        back = threading.Thread(target=self._pump, args=(upstream, client, None), daemon=True)
        back.start()
        self._pump(client, upstream, conn)
        back.join()
        client.close()
        upstream.close()

    def _pump(self, src: socket.socket, dst: socket.socket, conn: int | None) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
                if conn is not None:
                    with self._cond:
                        buf = self._seen.setdefault(conn, bytearray())
                        buf += data
                        del buf[: max(0, len(buf) - (1 << 20))]
                        self._cond.notify_all()
        except OSError:
            pass
        finally:
            for s in (src, dst):  # one side is gone: so is the other
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)


# ------------------------------------------------------------------------------------ moto, killable


class Moto:
    """moto's S3 server on a fixed port, so that it can be killed and started again at the same address."""

    def __init__(self, log_dir: Path) -> None:
        with listening_socket("127.0.0.1", 0) as probe:
            self.port = int(probe.getsockname()[1])
        self.log_path = log_dir / "moto.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        wait_healthy(f"{self.url}/moto-api/", self.proc, timeout=scaled(60))
        s3_client(self.url).create_bucket(Bucket=BUCKET)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(scaled(10))


# ------------------------------------------------------------------------------------ the stack


@dataclass
class Faults:
    stack: Stack
    moto: Moto
    taps: dict[str, Tap]
    settings: Settings
    expected_chunks: dict[str, int] = field(default_factory=dict)  # doc id -> chunks of its last ingest
    results: list[dict[str, Any]] = field(default_factory=list)

    def kill(self, service: str) -> None:
        if service == "s3":
            self.moto.kill()
        else:
            self.stack.kill(service)

    def restart(self, service: str) -> None:
        if service == "s3":
            self.moto.start()  # empty: moto kept its objects in memory
        else:
            self.stack.restart(service, timeout=scaled(180))

    def after_s3_lost_everything(self) -> None:
        """An S3 that lost every object: what the functions retried into the empty bucket meanwhile is
        the rest of a table whose files are gone (not drift to repair but a lost store), so the functions
        and the authorizer, whose open tables and caches belong to it, are stopped, the bucket emptied,
        the keys made again, and they start again."""
        names = ("authorizer", "ingestion", "chat")
        for name in names:
            self.stack.by_name[name].stop()
        s3 = s3_client(self.moto.url)
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
            for obj in page.get("Contents", []):
                s3.delete_object(Bucket=BUCKET, Key=obj["Key"])
        setup_stack_keys(self.stack)
        for name in names:
            self.stack.restart(name, timeout=scaled(180))
        self.expected_chunks.clear()

    def mark(self) -> None:
        for tap in self.taps.values():
            tap.mark()


@pytest.fixture(scope="module")
def faults(tiny_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Faults]:
    log_dir = ARTIFACTS / "logs" / "faults"
    log_dir.mkdir(parents=True, exist_ok=True)
    moto = Moto(log_dir)
    moto.start()
    s3_tap = Tap("s3", moto.port)
    cfg = StackConfig.any_ports(
        llm_model_path=tiny_gguf,
        data_dir=tmp_path_factory.mktemp("stack-faults"),
        s3_endpoint_url=s3_tap.url,
        lancedb_uri=f"s3://{BUCKET}/lancedb",
        documents_uri=f"s3://{BUCKET}/documents",
        extra_env={"RAG_MAX_TOKENS": "16", **S3_ENV},
    )
    processes = plan(cfg)
    by = {p.name: p for p in processes}
    taps = {name: Tap(name, by[name].port) for name in ("embedding", "llm", "ingestion", "chat")}
    taps["s3"] = s3_tap
    # Every call between services goes through a tap (the gateway's public port is the clients').
    for name in ("ingestion", "chat"):
        by[name].env["RAG_EMBEDDING_ENDPOINT_URL"] = taps["embedding"].url
    by["chat"].env["RAG_LLM_ENDPOINT_URL"] = taps["llm"].url
    functions = json.loads(by["gateway"].env["GATEWAY_FUNCTIONS"])
    for name in ("ingestion", "chat"):
        functions[name] = functions[name].replace(by[name].url, taps[name].url)
    by["gateway"].env["GATEWAY_FUNCTIONS"] = json.dumps(functions)
    stack = Stack(processes, cfg)
    saved = {k: os.environ.get(k) for k in S3_ENV}
    os.environ.update(S3_ENV)  # the doctor in this process reads the store with them
    try:
        stack.start(log_dir, timeout=scaled(240))
        setup_stack_keys(stack)
        settings = Settings(
            documents_uri=cfg.documents_uri,
            lancedb_uri=cfg.lancedb_uri,
            s3_endpoint_url=moto.url,
            embedding_endpoint_url=by["embedding"].url,
        )
        yield Faults(stack, moto, taps, settings)
    finally:
        stack.stop()
        moto.stop()
        for tap in taps.values():
            tap.close()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# ------------------------------------------------------------------------------------ helpers


def _outcome(client: WsClient, message: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
    """What the client got: "ok", "error:<code>" (a stable code) or "closed"; a hang fails (bounded recv)."""
    try:
        replies = client.chat(message) if message["action"] == "chat" else [client.request(message)]
    except ConnectionClosed:
        return "closed", []
    last = replies[-1]
    if last["type"] == "error":
        assert last["code"] in CODES, last
        assert "Traceback" not in last["message"], last
        return f"error:{last['code']}", replies
    return "ok", replies


def _ingest(f: Faults, client: WsClient, doc: dict[str, Any]) -> None:
    reply = client.request({"action": "ingest", "request_id": f"i-{uuid.uuid4().hex[:6]}", "document": doc})
    assert reply["type"] == "ingest_result", reply
    f.expected_chunks[doc["id"]] = reply["chunks"]


def _doc(doc_id: str) -> dict[str, Any]:
    return {"id": doc_id, "title": f"Eruptions {doc_id}", "text": LONG_TEXT}


def _raw_put(doc_id: str) -> bytes:
    """The PUT of the raw copy of tenant alpha's document (ids here need no quoting)."""
    assert quote(doc_id, safe="") == doc_id
    return rb"PUT [^ ]*/documents/tenants/" + TENANT.encode() + rb"/" + re.escape(doc_id.encode()) + rb"\.json"


INVOKE = {name: f"POST /2015-03-31/functions/{name}/invocations".encode() for name in ("ingestion", "chat")}
EMBED = rb"POST /model/[^ ]+/invoke "
GENERATE = rb"POST /model/[^ ]+/converse"
LANCE_WRITE = rb"PUT [^ ]*/lancedb/chunks\.lance/"


def _trigger(op: str, service: str, doc_id: str) -> tuple[str, bytes]:
    """The tap and the request after which ``service`` is killed, for ``op``."""
    if op == "ingest":
        return {
            "embedding": ("embedding", EMBED),
            "gateway": ("embedding", EMBED),  # the function is at work
            "ingestion": ("s3", LANCE_WRITE),  # its raw copy stored, its chunks being committed
            "s3": ("s3", _raw_put(doc_id)),
        }.get(service, ("ingestion", INVOKE["ingestion"]))
    if op == "delete":
        return {
            "ingestion": ("s3", LANCE_WRITE),  # removing its chunks
            "s3": ("s3", LANCE_WRITE),
        }.get(service, ("ingestion", INVOKE["ingestion"]))
    return {
        "embedding": ("embedding", EMBED),
        "ingestion": ("chat", INVOKE["chat"]),
    }.get(service, ("llm", GENERATE))  # llm, chat, gateway, s3: while the answer is generated


def _doctor(f: Faults) -> list[str]:
    """Repair what the fault left; the kinds found. After the repair the doctor finds nothing."""
    store = wiring.vector_store(f.settings)
    service = build_service(f.settings, store=store)
    report = diagnose(service, store, repair=True, min_age_s=0)
    assert report.clean, report.text()
    return [x.kind for x in report.findings]


def _settle(f: Faults) -> None:
    """Wait until no function invocation is still at work (a killed gateway leaves its lambda running)."""
    for name in ("ingestion", "chat"):
        proc = f.stack.by_name[name]

        def idle(text: str) -> bool:
            text = text.rsplit("restarted (restart", 1)[-1]
            return text.count("START RequestId") == text.count("END RequestId")

        deadline = scaled(120)
        end = time.monotonic() + deadline
        while not idle(proc.log()):
            assert time.monotonic() < end, f"{name} still busy after {deadline:.0f} s"
            time.sleep(0.1)


def _chunk_counts(f: Faults) -> tuple[int, int]:
    """Chunks lost and duplicated over the documents ingested: (expected - present, rows - distinct)."""
    store = wiring.vector_store(f.settings)
    rows = store.chunks().search().where(f"tenant = '{TENANT}'").select(["doc_id", "chunk"]).limit(None).to_list()
    lost = dup = 0
    for doc_id, expected in f.expected_chunks.items():
        mine = [int(r["chunk"]) for r in rows if r["doc_id"] == doc_id]
        dup += len(mine) - len(set(mine))
        lost += max(0, expected - len(set(mine)))
    return lost, dup


def _roles(client: WsClient, conversation: str) -> list[str]:
    reply = client.request({"action": "history", "request_id": "h", "conversation_id": conversation})
    if reply["type"] == "error":
        assert reply["code"] == "unknown_conversation", reply
        return []
    return [m["role"] for m in reply["messages"]]


# ------------------------------------------------------------------------------------ the faults


@pytest.mark.parametrize("service", SERVICES)
@pytest.mark.parametrize("op", OPERATIONS)
def test_kill_in_the_middle(faults: Faults, op: str, service: str) -> None:
    f = faults
    doc_id = f"{op}-{service}"
    conversation: str | None = None
    with WsClient(f.stack.ws_url) as client:
        if op == "delete":
            _ingest(f, client, _doc(doc_id))
            message: dict[str, Any] = {"action": "delete_document", "request_id": "d", "doc_id": doc_id}
        elif op == "ingest":
            message = {"action": "ingest", "request_id": "i", "document": _doc(doc_id)}
        else:
            if "volcanoes" not in f.expected_chunks:
                _ingest(f, client, VOLCANO)
            first = client.chat({"action": "chat", "request_id": "c0", "question": QUESTION})
            assert first[-1]["type"] == "stream_end", first[-1]
            conversation = first[-1]["conversation_id"]
            message = {"action": "chat", "request_id": "c1", "conversation_id": conversation, "question": QUESTION}
        tap, pattern = _trigger(op, service, doc_id)
        f.mark()
        client.send(message)
        f.taps[tap].wait_for(pattern, scaled(60))
        f.kill(service)
        if service == "s3":
            f.restart(service)  # a dead S3 is retried by the functions' clients: let it come back (empty)
        # What the client got (bounded: the client's recv has a deadline).
        try:
            replies = [client.recv()]
            while replies[-1]["type"] not in ("stream_end", "error") and message["action"] == "chat":
                replies.append(client.recv())
            last = replies[-1]
            if last["type"] == "error":
                assert last["code"] in CODES, last
                got = f"error:{last['code']}"
            else:
                got = "ok"
        except ConnectionClosed:
            got = "closed"
    on_path = {
        "ingest": {"embedding", "ingestion", "gateway", "s3"},
        "delete": {"ingestion", "gateway", "s3"},
        "chat": {"embedding", "llm", "chat", "gateway", "s3"},
    }[op]
    if service not in on_path:
        assert got == "ok", (op, service, got)
    if service == "gateway":
        assert got == "closed", got
    if service == "s3":
        f.after_s3_lost_everything()
    else:
        f.restart(service)
    _settle(f)
    found = _doctor(f)

    with WsClient(f.stack.ws_url) as client:
        # Nothing half written: the document is whole or absent; the conversation has whole turns only.
        half_turn = 0
        if conversation is not None:
            roles = _roles(client, conversation)
            half_turn = int(roles != ["user", "assistant"] * (len(roles) // 2))
            assert not half_turn, roles
        # After the restart the same operation succeeds.
        if op == "ingest":
            again, replies = _outcome(client, message)
            assert again == "ok", (again, replies)
            f.expected_chunks[doc_id] = replies[-1]["chunks"]
        elif op == "delete":
            if service != "s3":
                again, replies = _outcome(client, message)
                assert again == "ok" or again == "error:document_not_found", (again, replies)
            f.expected_chunks.pop(doc_id, None)
            listed = client.request({"action": "list_documents", "request_id": "l"})
            assert doc_id not in [d["id"] for d in listed["documents"]], listed
        else:
            if "volcanoes" not in f.expected_chunks:
                _ingest(f, client, VOLCANO)
            again, replies = _outcome(client, {"action": "chat", "request_id": "c2", "question": QUESTION})
            assert again == "ok", (again, replies)
    lost, dup = _chunk_counts(f)
    f.results.append(
        {"service": service, "op": op, "client": got, "doctor_found": found, "half_turns": half_turn}
        | {"chunks_lost": lost, "chunks_duplicated": dup}
    )
    assert (lost, dup) == (0, 0)


def test_localrag_doctor_reports_no_drift(faults: Faults) -> None:
    """``localrag doctor --json`` (the CLI runs ``python -m ingestion.doctor``) on the store the faults hit."""
    env = {
        **os.environ,
        **S3_ENV,
        "RAG_DOCUMENTS_URI": f"s3://{BUCKET}/documents",
        "RAG_LANCEDB_URI": f"s3://{BUCKET}/lancedb",
        "RAG_S3_ENDPOINT_URL": faults.moto.url,
    }
    result = subprocess.run(
        [sys.executable, "-m", "shared.client.cli", "doctor", "--json"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=scaled(120),
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout)
    assert (report["drift"], report["clean"]) == (0, True)
    assert report["documents"] >= 1 and report["chunks"] >= 1


def test_fault_counts(faults: Faults) -> None:
    """Every service was killed in the middle of every operation; nothing lost, duplicated or half written."""
    done = {(r["service"], r["op"]) for r in faults.results}
    assert done == {(s, o) for s in SERVICES for o in OPERATIONS}
    summary = {
        "faults": len(faults.results),
        "chunks_lost": sum(r["chunks_lost"] for r in faults.results),
        "chunks_duplicated": sum(r["chunks_duplicated"] for r in faults.results),
        "half_turns": sum(r["half_turns"] for r in faults.results),
        "drift_repaired": sum(len(r["doctor_found"]) for r in faults.results),
        "results": faults.results,
    }
    (ARTIFACTS / "faults.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps({k: v for k, v in summary.items() if k != "results"}))
    for r in faults.results:
        print(f"{r['service']:>10} x {r['op']:<6}: client {r['client']:<28} doctor {r['doctor_found']}")
    assert (summary["chunks_lost"], summary["chunks_duplicated"], summary["half_turns"]) == (0, 0, 0)
