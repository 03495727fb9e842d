"""Concurrent writers of one document end as if they had run one after the other: randomized interleavings
on real processes.

Two ingestion lambda runtimes (``python -m ingestion``, as the stack runs them) on one store (a folder; and,
fewer, moto's S3), the real embedding service, invoked at the same moment through the Invoke API (boto3's
lambda client, SigV4-signed) with random mixes of: ``ingest`` (WebSocket; two versions), ``ingest_object``
(an upload), ``delete_document``, an S3 ObjectCreated / ObjectRemoved notification for the document's
inbox file, and Kinesis put / delete records -- a few at a time on two document ids. The replies of the
WebSocket requests are collected by a stand-in for the gateway's @connections endpoint. A request that gets
``document_busy`` (S3/Kinesis: a batch item failure) is retried, as a client or Lambda would.

After each interleaving, for every document: the raw copy, the original and the chunks agree (the chunks
are the raw copy's text chunked, of its version; the original the raw copy names exists and is the only
one kept), the listing is exactly the documents that have chunks, and the whole state (which write each
document holds, where its original is, whether its inbox file is there) is the state one of the serial
orders of the requests that took effect leads to, each request's outcome matching that order too.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import random
import re
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import boto3
import pytest
from botocore.config import Config

from shared.identity import DEFAULT_TENANT
from shared.object_store import ObjectStore, TenantObjects, open_object_store, originals_prefix
from shared.stack import internal_key_env, new_internal_key
from tests.conftest import S3_ENV, s3_client
from tests.support.paths import EVENTS
from tests.support.procs import Service, start_service, stop_service
from tests.support.timeouts import scaled

MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"
INTERNAL_KEY = new_internal_key()
DOCS = ("race-a.txt", "race-b.txt")  # also their inbox files' names (inbox/race-a.txt -> id race-a.txt)
KINDS = ("ingest", "ingest_object", "delete", "s3_created", "s3_removed", "kinesis_put", "kinesis_delete")
BUSY_ATTEMPTS = 6  # a request refused busy this many times is given up (it took no effect)
# Short waits, so that some requests do get document_busy (and are retried); short leases are renewed.
LEASE_ENV = {"RAG_DOCUMENT_LEASE_S": "5", "RAG_DOCUMENT_LEASE_WAIT_S": "0.1"}


# ---------------------------------------------------------------------------------------------- the model


@dataclass(frozen=True)
class Doc:
    tag: str  # which request's text it holds
    original: str | None  # None, "inbox", or the original's file name under originals/{doc}/


@dataclass
class World:
    docs: dict[str, Doc | None]
    inbox: dict[str, str | None]  # the tag of each document's inbox file, None when there is none

    def copy(self) -> World:
        return World(dict(self.docs), dict(self.inbox))

    def key(self) -> tuple[Any, ...]:
        return tuple((d, self.docs.get(d), self.inbox.get(d)) for d in DOCS)


@dataclass
class Op:
    kind: str
    doc: str
    tag: str
    outcome: str = "?"  # "ok", "noop" (not found), "failed" (gave up; no effect), or an error code
    busy_retries: int = 0  # WebSocket requests answered document_busy
    record_retries: int = 0  # S3/Kinesis invocations with a batch item failure (busy, or a file gone)
    upload_key: str | None = None
    filename: str | None = None


def apply(world: World, op: Op) -> str:
    """``op`` run alone on ``world`` (changed in place): what it does, and its outcome ("ok" or "noop")."""
    doc = world.docs.get(op.doc)
    if op.kind in ("ingest", "kinesis_put"):
        world.docs[op.doc] = Doc(op.tag, None)
        return "ok"
    if op.kind == "ingest_object":
        world.docs[op.doc] = Doc(op.tag, op.filename)
        return "ok"
    if op.kind in ("delete", "kinesis_delete"):
        if doc is None:
            return "noop"
        if doc.original == "inbox":
            world.inbox[op.doc] = None  # deleting a document deletes its inbox file
        world.docs[op.doc] = None
        return "ok"
    if op.kind == "s3_created":
        if world.inbox.get(op.doc) is None:
            return "noop"  # the file is gone (object_not_found)
        world.docs[op.doc] = Doc(str(world.inbox[op.doc]), "inbox")
        return "ok"
    if op.kind == "s3_removed":
        if doc is not None and doc.original == "inbox":
            world.docs[op.doc] = None
            return "ok"
        return "noop"
    raise AssertionError(op.kind)


def consistent(outcome: str, model: str, kind: str) -> bool:
    if kind in ("kinesis_delete", "s3_removed"):  # a no-op is a success for these
        return outcome == "ok"
    return outcome == model


def serial_outcomes(before: World, ops: list[Op]) -> set[tuple[Any, ...]]:
    """The final states of every serial order of ``ops`` in which each op's outcome is the one it had.
    (Requests given up -- busy every time, or an S3 record whose file is gone -- took no effect: they are
    left out.)"""
    finals = set()
    for order in itertools.permutations(ops):
        world = before.copy()
        if all(consistent(op.outcome, apply(world, op), op.kind) for op in order):
            finals.add(world.key())
    return finals


# ---------------------------------------------------------------------------------------------- the rig


class Replies:
    """A stand-in for the gateway's @connections: keeps what each connection was sent."""

    def __init__(self) -> None:
        self.sent: dict[str, list[dict[str, Any]]] = {}
        self.lock = threading.Lock()
        replies = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                conn = unquote(self.path.rsplit("/@connections/", 1)[1])
                with replies.lock:
                    replies.sent.setdefault(conn, []).append(json.loads(body))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/local"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def take(self, conn: str) -> list[dict[str, Any]]:
        with self.lock:
            return self.sent.pop(conn, [])

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class Rig:
    lambdas: list[Any]  # one boto3 lambda client per ingestion process
    objects: ObjectStore  # the documents store, as the test sees it
    bucket: str | None  # S3: the bucket; None: a folder
    prefix: str  # S3: the documents prefix in the bucket
    replies: Replies
    store: Any  # a VectorStore on the same LanceDB
    chunker: Any
    counts: Counter[str] = field(default_factory=Counter)


@pytest.fixture(scope="module")
def embedding(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    svc = start_service("embedding", "embedding", {}, Path(tmp_path_factory.mktemp("race-embedding")))
    yield svc
    stop_service(svc)


@contextlib.contextmanager
def start_rig(
    root: Path, embedding: Service, *, s3_endpoint: str | None = None, bucket: str | None = None
) -> Iterator[Rig]:
    """Two ingestion runtimes on one store (a folder under ``root``, or the S3 bucket), and the test's view
    of it."""
    from ingestion.chunker import Chunker
    from ingestion.settings import Settings
    from shared.vector_store import VectorStore

    replies = Replies()
    if bucket is not None:
        assert s3_endpoint is not None
        lancedb_uri, documents_uri = f"s3://{bucket}/lancedb", f"s3://{bucket}/documents"
        store_env = {**S3_ENV, "RAG_S3_ENDPOINT_URL": s3_endpoint}
    else:
        lancedb_uri, documents_uri = str(root / "lancedb"), str(root / "documents")
        store_env = {}
    env = {
        "RAG_LANCEDB_URI": lancedb_uri,
        "RAG_DOCUMENTS_URI": documents_uri,
        "RAG_EMBEDDING_ENDPOINT_URL": embedding.url,
        "RAG_CONNECTIONS_ENDPOINT_URL": replies.url,
        "RAG_UPLOAD_SECRET": "race-secret",
        "INGESTION_MAX_CONCURRENCY": "8",
        **LEASE_ENV,
        **store_env,
        **internal_key_env(INTERNAL_KEY),
    }
    with ThreadPoolExecutor(2) as pool:
        procs = list(pool.map(lambda i: start_service(f"ingestion-{i}", "ingestion", env, root / "logs"), (0, 1)))
    try:
        clients = [
            boto3.client(
                "lambda",
                endpoint_url=p.url,
                region_name="us-east-1",
                aws_access_key_id=INTERNAL_KEY.access_key_id,
                aws_secret_access_key=INTERNAL_KEY.secret_access_key,
                config=Config(retries={"max_attempts": 1}, read_timeout=scaled(120), max_pool_connections=16),
            )
            for p in procs
        ]
        settings = Settings(_env_file=None)  # type: ignore[call-arg]
        objects = open_object_store(documents_uri, lambda: s3_client(str(s3_endpoint)))
        storage = {}
        if bucket is not None:
            storage = {
                "endpoint": str(s3_endpoint),
                "allow_http": "true",
                "region": "us-east-1",
                "virtual_hosted_style_request": "false",
                "aws_access_key_id": "test",
                "aws_secret_access_key": "test",
            }
        yield Rig(
            lambdas=clients,
            objects=objects,
            bucket=bucket,
            prefix="documents/" if bucket is not None else "",
            replies=replies,
            store=VectorStore(lancedb_uri, dimension=384, model_id=MODEL_ID, storage_options=storage or None),
            chunker=Chunker(
                settings.chunk_tokens, settings.chunk_overlap_tokens, model_max_tokens=settings.embed_max_tokens
            ),
        )
    finally:
        for p in procs:
            stop_service(p)
        replies.close()


# ---------------------------------------------------------------------------------------------- requests


def _text(op: Op) -> str:
    return f"Race document {op.doc}, written by request {op.tag}. Basalt cools into columns."


def _ws_event(conn: str, body: dict[str, Any]) -> dict[str, Any]:
    event = json.loads((EVENTS / "websocket_message_ingest.json").read_text())
    ctx = event["requestContext"]
    ctx["connectionId"] = conn
    ctx["routeKey"] = body["action"]
    ctx["domainName"], ctx["stage"] = "127.0.0.1:1", "local"
    ctx["authorizer"] = {
        "principalId": "key:race",
        "tenant": DEFAULT_TENANT,
        "principal": "key:race",
        "auth": "api_key",
    }
    event["body"] = json.dumps(body)
    return event


def _s3_event(rig: Rig, op: Op, created: bool) -> dict[str, Any]:
    event = json.loads((EVENTS / "s3_object_created.json").read_text())
    record = event["Records"][0]
    record["eventName"] = "ObjectCreated:Put" if created else "ObjectRemoved:Delete"
    record["s3"]["bucket"]["name"] = rig.bucket or "local"
    record["s3"]["object"]["key"] = f"{rig.prefix}inbox/{op.doc}"
    return event


def _kinesis_event(op: Op) -> dict[str, Any]:
    data: dict[str, Any] = {"doc_id": op.doc}
    data |= {"op": "delete"} if op.kind == "kinesis_delete" else {"text": _text(op)}
    record = {
        "eventSource": "aws:kinesis",
        "kinesis": {
            "partitionKey": op.doc,
            "sequenceNumber": str(uuid.uuid4().int),
            "data": base64.b64encode(json.dumps(data).encode()).decode(),
        },
    }
    return {"Records": [record]}


def prepare(rig: Rig, world: World, op: Op) -> None:
    """What happens before the request is sent: the upload PUT, the inbox file written or removed."""
    if op.kind == "ingest_object":
        op.filename = f"{op.tag}.txt"
        op.upload_key = f"uploads/{DEFAULT_TENANT}/{uuid.uuid4().hex}/{op.filename}"
        rig.objects.write(op.upload_key, _text(op).encode(), "text/plain")
    elif op.kind == "s3_created":
        rig.objects.write(f"inbox/{op.doc}", _text(op).encode(), "text/plain")
        world.inbox[op.doc] = op.tag
    elif op.kind == "s3_removed":
        rig.objects.delete(f"inbox/{op.doc}")
        world.inbox[op.doc] = None


def send(rig: Rig, op: Op, rng: random.Random) -> None:
    """Send ``op`` to one of the two processes (at random), retrying while it is busy; sets its outcome."""
    for _ in range(BUSY_ATTEMPTS):
        client = rig.lambdas[rng.randrange(len(rig.lambdas))]
        outcome = _send_once(rig, client, op)
        if outcome not in ("document_busy", "retry"):
            op.outcome = outcome
            return
        if outcome == "retry":
            op.record_retries += 1
        else:
            op.busy_retries += 1
        time.sleep(rng.uniform(0.0, 0.05))
    op.outcome = "failed"


def _send_once(rig: Rig, client: Any, op: Op) -> str:
    if op.kind in ("ingest", "ingest_object", "delete"):
        conn = uuid.uuid4().hex
        if op.kind == "ingest":
            body: dict[str, Any] = {
                "action": "ingest",
                "request_id": op.tag,
                "document": {"id": op.doc, "text": _text(op)},
            }
        elif op.kind == "ingest_object":
            body = {"action": "ingest_object", "request_id": op.tag, "key": op.upload_key, "doc_id": op.doc}
        else:
            body = {"action": "delete_document", "request_id": op.tag, "doc_id": op.doc}
        answer = _invoke(client, _ws_event(conn, body))
        assert answer == {"statusCode": 200}, answer
        (reply,) = rig.replies.take(conn)
        if reply["type"] == "error":
            code = str(reply["code"])
            return "noop" if code in ("document_not_found", "object_not_found") else code
        return "ok"
    if op.kind in ("s3_created", "s3_removed"):
        answer = _invoke(client, _s3_event(rig, op, op.kind == "s3_created"))
    else:
        answer = _invoke(client, _kinesis_event(op))
    # A failed record (busy, or for ObjectCreated also a file that is gone) is retried, as Lambda would.
    return "retry" if answer["batchItemFailures"] else "ok"


def _invoke(client: Any, event: dict[str, Any]) -> Any:
    resp = client.invoke(FunctionName="ingestion", Payload=json.dumps(event).encode())
    payload = json.loads(resp["Payload"].read())
    assert "FunctionError" not in resp, payload
    return payload


# ---------------------------------------------------------------------------------------------- the state


def observed(rig: Rig) -> World:
    """The stores' state as the model's World, after checking that each document's parts agree."""
    objects = TenantObjects(rig.objects, DEFAULT_TENANT)
    table = rig.store.chunks()
    rows: dict[str, list[dict[str, Any]]] = {}
    for r in table.search().select(["doc_id", "chunk", "text", "doc_version", "tenant"]).limit(None).to_list():
        rows.setdefault(r["doc_id"], []).append(r)
    listed = set(objects.document_ids())
    assert listed == set(rows), f"listed {sorted(listed)}, with chunks {sorted(rows)}"  # no ghosts either way
    world = World({}, {})
    for d in DOCS:
        raw = objects.get_document(d)
        kept = sorted(objects.root.keys(originals_prefix(d)))
        inbox = objects.read(f"inbox/{d}").decode() if objects.size(f"inbox/{d}") is not None else None
        world.inbox[d] = _tag_of(inbox) if inbox is not None else None
        if raw is None:
            assert d not in rows, f"{d}: chunks without a raw copy"
            assert not kept, f"{d}: originals without a raw copy: {kept}"
            world.docs[d] = None
            continue
        mine = sorted(rows.get(d, []), key=lambda r: r["chunk"])
        assert mine, f"{d}: a raw copy without chunks"
        assert {r["doc_version"] for r in mine} == {raw.get("version")}, f"{d}: raw version vs chunk versions"
        assert [r["text"] for r in mine] == [c.text for c in rig.chunker.split(raw["text"])], f"{d}: chunks vs raw"
        original = raw.get("original")
        if original is None:
            where = None
            assert not kept, f"{d}: originals of another version left: {kept}"
        elif original["key"] == f"inbox/{d}":
            where = "inbox"
            assert not kept, f"{d}: originals of another version left: {kept}"
            assert inbox is not None and _tag_of(inbox) == _tag_of(raw["text"]), f"{d}: inbox file vs raw copy"
        else:
            where = original["filename"]
            assert kept == [original["key"]], f"{d}: originals {kept}, raw copy names {original['key']}"
            assert objects.read(original["key"]).decode() == raw["text"], f"{d}: original vs raw copy"
        world.docs[d] = Doc(_tag_of(raw["text"]), where)
    return world


def _tag_of(text: str) -> str:
    return text.split("written by request ", 1)[1].split(".", 1)[0]


# ---------------------------------------------------------------------------------------------- the test


def run_interleavings(rig: Rig, n: int, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    world = observed(rig)
    kinds: Counter[str] = Counter()
    outcomes: Counter[str] = Counter()
    busy_retries = record_retries = 0
    ops_total = 0
    failures: list[str] = []
    failed_checks: Counter[str] = Counter()
    with ThreadPoolExecutor(4) as pool:
        for i in range(n):
            docs = [DOCS[0]] if rng.random() < 0.6 else list(DOCS)
            ops: list[Op] = []
            s3_done: set[str] = set()
            for j in range(rng.choice((2, 3, 3, 4))):
                doc = rng.choice(docs)
                choices = [k for k in KINDS if not (k.startswith("s3") and doc in s3_done)]
                kind = rng.choice(choices)
                if kind.startswith("s3"):
                    s3_done.add(doc)
                ops.append(Op(kind, doc, f"t{i}x{j}"))
            for op in ops:
                prepare(rig, world, op)
            before = world.copy()
            delays = [rng.uniform(0, 0.03) for _ in ops]
            start = threading.Barrier(len(ops))
            seeds = [rng.randrange(1 << 30) for _ in ops]

            for f in [pool.submit(_run, rig, start, d, op, sd) for d, op, sd in zip(delays, ops, seeds, strict=True)]:
                f.result()
            ops_total += len(ops)
            kinds.update(op.kind for op in ops)
            outcomes.update(f"{op.kind}:{op.outcome}" for op in ops)
            busy_retries += sum(op.busy_retries for op in ops)
            record_retries += sum(op.record_retries for op in ops)
            try:
                after = observed(rig)
            except AssertionError as exc:
                failed_checks[_check_name(exc)] += 1
                failures.append(f"interleaving {i} {[(o.kind, o.doc, o.outcome) for o in ops]}: {exc}")
                world = _rebuild(rig)
                continue
            finals = serial_outcomes(before, [op for op in ops if op.outcome != "failed"])
            if after.key() not in finals:
                failed_checks["not the end of any serial order"] += 1
                failures.append(
                    f"interleaving {i}: {[(o.kind, o.doc, o.tag, o.outcome) for o in ops]} from {before.key()} "
                    f"ended {after.key()}, not the end of any serial order"
                )
            world = after
    return {
        "interleavings": n,
        "ops": ops_total,
        "kinds": dict(kinds),
        "outcomes": dict(sorted(outcomes.items())),
        "busy_retries": busy_retries,
        "record_retries": record_retries,
        "failures": failures,
        "failed_checks": dict(failed_checks),
    }


def _check_name(exc: AssertionError) -> str:
    """Which check failed ("chunks vs raw", "listed", "originals" ...), without the details."""
    message = str(exc).split("\n", 1)[0]
    message = message.split(": ", 1)[1] if message.startswith(DOCS) else message
    return re.split(r"[\[{]|originals/", message, maxsplit=1)[0].strip()


def _run(rig: Rig, start: threading.Barrier, delay: float, op: Op, seed: int) -> None:
    start.wait(scaled(30))
    time.sleep(delay)
    send(rig, op, random.Random(seed))


def _rebuild(rig: Rig) -> World:
    """After a failed check: start the next interleaving from a clean slate (delete both documents)."""
    objects = TenantObjects(rig.objects, DEFAULT_TENANT)
    for d in DOCS:
        rig.store.delete_document(d, tenant=DEFAULT_TENANT)
        objects.delete_prefix(originals_prefix(d))
        objects.delete_document(d)
        objects.delete(f"inbox/{d}")
    return World(dict.fromkeys(DOCS), dict.fromkeys(DOCS))


def _report(where: str, seed: int, result: dict[str, Any]) -> None:
    print(
        f"\n{where} (seed {seed}): {result['interleavings']} interleavings, {result['ops']} requests, "
        f"document_busy retries {result['busy_retries']}, record retries {result['record_retries']}, "
        f"interleavings failing a check {len(result['failures'])} {result['failed_checks']}\n"
        f"  requests by kind {result['kinds']}\n  outcomes {result['outcomes']}"
    )
    for f in result["failures"][:10]:
        print("  " + f)


FOLDER_INTERLEAVINGS = 200
S3_INTERLEAVINGS = 8


def test_concurrent_writes_of_a_document_end_as_some_serial_order(embedding: Service, tmp_path: Path) -> None:
    seed = random.randrange(1 << 30)
    with start_rig(tmp_path, embedding) as rig:
        result = run_interleavings(rig, FOLDER_INTERLEAVINGS, seed)
    _report("folder", seed, result)
    assert not result["failures"], result["failures"][:5]
    assert result["outcomes"], result
    # The requests did overlap: some waited for a lease held by another and were refused busy.
    assert result["busy_retries"] > 0, result


def test_concurrent_writes_on_s3(embedding: Service, moto_s3: str, tmp_path: Path) -> None:
    seed = random.randrange(1 << 30)
    bucket = f"race-{uuid.uuid4().hex[:8]}"
    s3_client(moto_s3).create_bucket(Bucket=bucket)
    with start_rig(tmp_path, embedding, s3_endpoint=moto_s3, bucket=bucket) as rig:
        result = run_interleavings(rig, S3_INTERLEAVINGS, seed)
    _report("S3", seed, result)
    assert not result["failures"], result["failures"][:5]
