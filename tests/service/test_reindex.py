"""Switching the embedding model: a mismatch is refused, ``python -m ingestion.reindex`` rebuilds the index.

Real embedding services (two processes: the local model served as all-MiniLM-L6-v2 with Cohere bodies,
and as ``amazon.titan-embed-text-v2:0`` with Titan bodies, one text per call -- same weights, another
model id, as the switch to Bedrock Titan would be), LanceDB in a folder (and on moto's S3), the real
ingestion service process for the refusal:

1. two text documents and one Markdown file (upload -> ingest_object) are ingested with model A;
2. the ingestion service configured with model B refuses the table, clearly, and writes nothing;
3. ``python -m ingestion.reindex`` with model B and no flag refuses too, naming the two ways out;
4. ``--to-uri`` builds a new index with model B from the raw documents (the file re-parsed from its
   original, which is kept; chat history copied); ingestion with B accepts it; search works;
5. ``--drop`` rebuilds in place.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import boto3
import pytest
from aiohttp import web
from botocore.config import Config

from shared.identity import DEFAULT_TENANT as T
from shared.stack import Process, internal_key_env, new_internal_key
from shared.vector_store import CHUNKS_TABLE, MessageRow, VectorStore
from tests.conftest import S3_ENV, s3_client
from tests.support.procs import ROOT, TIMEOUT_FACTOR, Service, start_service, stop_service
from tests.unit.test_aws_mode import StandIn

# The Invoke API of the ingestion runtimes started here verifies SigV4 with the stack's internal key.
INTERNAL_KEY = new_internal_key()
INTERNAL_ENV = internal_key_env(INTERNAL_KEY)

# The refused ingestion service's log, for the no-traceback check below.
REFUSAL_LOG: dict[str, str] = {}

MINILM = "sentence-transformers/all-MiniLM-L6-v2"
TITAN = "amazon.titan-embed-text-v2:0"

DOCS = [
    {
        "id": "volcanoes",
        "title": "Volcanoes",
        "text": "A volcano forms where molten rock called magma rises through the Earth's crust. Pressure from "
        "dissolved gases builds up until the magma erupts at the surface as lava, ash and volcanic gas.",
    },
    {
        "id": "pain de campagne é",  # spaces and non-ASCII are quoted in the raw document's key
        "title": "Baking bread",
        "text": "Bread is made from flour, water, salt and yeast. The dough is kneaded, left to rise, shaped "
        "and baked in a hot oven until the crust is brown.",
    },
]
MARKDOWN = (
    "# Tides\n\nOcean notes.\n\n## Causes\n\nTides are caused by the gravitational pull of the Moon and the Sun "
    "on the oceans.\n\n## Timing\n\nMost coasts see two high tides and two low tides every lunar day.\n"
)


@pytest.fixture(scope="module")
def embedders(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Service]]:
    logs = tmp_path_factory.mktemp("reindex-logs")
    with ThreadPoolExecutor(2) as pool:
        a = pool.submit(start_service, "embedding-minilm", "embedding", {}, logs)
        b = pool.submit(start_service, "embedding-titan", "embedding", {"EMBEDDING_MODEL_ID": TITAN}, logs)
        services = {"a": a.result(), "b": b.result()}
    yield services
    for svc in services.values():
        stop_service(svc)


def env_a(svc: Service, lancedb: str | Path, documents: str | Path) -> dict[str, str]:
    return {
        "RAG_EMBEDDING_ENDPOINT_URL": svc.url,
        "RAG_EMBEDDING_MODEL_ID": MINILM,
        "RAG_EMBEDDING_FORMAT": "cohere",
        "RAG_EMBEDDING_DIMENSION": "384",
        "RAG_LANCEDB_URI": str(lancedb),
        "RAG_DOCUMENTS_URI": str(documents),
    }


def env_b(svc: Service, lancedb: str | Path, documents: str | Path) -> dict[str, str]:
    return {
        **env_a(svc, lancedb, documents),
        "RAG_EMBEDDING_MODEL_ID": TITAN,
        "RAG_EMBEDDING_FORMAT": "titan",
    }


def settings(env: dict[str, str]) -> Any:
    from ingestion.settings import Settings

    fields: dict[str, Any] = {k.removeprefix("RAG_").lower(): v for k, v in env.items()}
    return Settings(**fields)


def ingest_all(env: dict[str, str]) -> None:
    from ingestion.handler import build_service
    from shared.protocol import Document

    service = build_service(settings(env))
    for d in DOCS:
        service.ingest(Document.model_validate(d), tenant=T)
    # A file, the way clients upload one: PUT under uploads/ (here: straight into the folder), ingest_object.
    key = f"uploads/{uuid.uuid4().hex}/tides.md"
    path = Path(env["RAG_DOCUMENTS_URI"]) / key
    path.parent.mkdir(parents=True)
    path.write_text(MARKDOWN)
    service.ingest_object(key, "tides", None, tenant=T)


def store(env: dict[str, str], uri: str | Path | None = None) -> VectorStore:
    s = settings(env)
    return VectorStore(
        str(uri or s.lancedb_uri),
        dimension=s.embedding_dimension,
        model_id=s.embedding_model_id,
        storage_options=s.storage_options(),
    )


def search(env: dict[str, str], query: str, uri: str | Path | None = None) -> list[str]:
    from shared.aws_clients import make_client
    from shared.bedrock import Embedder

    s = settings(env)
    client = make_client("bedrock-runtime", endpoint_url=s.embedding_endpoint_url, region=s.aws_region)
    vec = Embedder(client, s.embedding_model_id, body_format=s.embedding_format).embed_query(query)
    return [m.doc_id for m in store(env, uri).search(vec, tenant=T, top_k=3, max_distance=2.0)]


def table_meta(uri: str | Path) -> tuple[dict[str, str], int]:
    import lancedb

    table = lancedb.connect(str(uri)).open_table(CHUNKS_TABLE)
    meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
    return meta, int(table.count_rows())


def reindex(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, "-m", "ingestion.reindex", *args],
        cwd=ROOT,
        env=full,
        capture_output=True,
        text=True,
        timeout=300 * TIMEOUT_FACTOR,
        check=False,
    )


# ----------------------------------------------------------------------------------------------------------------


def test_list_document_ids_reads_only_raw_documents(tmp_path: Path) -> None:
    from ingestion.reindex import list_document_ids
    from shared.object_store import LocalObjectStore, TenantObjects

    objects = TenantObjects(LocalObjectStore(tmp_path), T)
    for doc_id in ("a", "notes/2025 #1", "ünï"):
        objects.put_document(doc_id, {"id": doc_id, "text": "x"})
    (tmp_path / ".tmp-123").write_text("{}")  # a write in progress
    (tmp_path / "originals" / "a").mkdir(parents=True)
    (tmp_path / "originals" / "a" / "x.json").write_text("{}")  # an original file, not a raw document
    (tmp_path / "inbox").mkdir()
    (tmp_path / "inbox" / "b.json").write_text("{}")
    assert list_document_ids(str(tmp_path), lambda: None) == sorted(["a", "notes/2025 #1", "ünï"])
    assert list_document_ids(str(tmp_path / "missing"), lambda: None) == []


def _wait_healthy_or_exit(svc_proc: subprocess.Popen[bytes], url: str, timeout: float) -> bool:
    """True when the service answers /health, False when it exited."""
    deadline = time.monotonic() + timeout * TIMEOUT_FACTOR
    while time.monotonic() < deadline:
        if svc_proc.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2 * TIMEOUT_FACTOR) as resp:
                if resp.status == 200:
                    return True
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{url}: neither healthy nor exited")


def start_ingestion(env: dict[str, str], log: Path) -> tuple[subprocess.Popen[bytes], str]:
    svc = Process(log.stem, "ingestion", env={**env, **INTERNAL_ENV, "INGESTION_HOST": "127.0.0.1"}).bind()
    svc.env["INGESTION_PORT"] = str(svc.port)
    proc = svc.start(log.parent).proc  # writes log.parent / f"{log.stem}.log", i.e. `log`
    assert proc is not None
    return proc, svc.url


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10 * TIMEOUT_FACTOR)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_switching_models_refuse_then_reindex(embedders: dict[str, Service], tmp_path: Path) -> None:
    old, new, documents = tmp_path / "lancedb", tmp_path / "lancedb-titan", tmp_path / "documents"
    a = env_a(embedders["a"], old, documents)
    b = env_b(embedders["b"], old, documents)

    # 1. Model A: two text documents and a Markdown file; one chat turn in the history.
    ingest_all(a)
    meta, rows_a = table_meta(old)
    assert meta == {"embedding_model": MINILM, "embedding_dimension": "384"}
    assert search(a, "How does magma reach the surface?")[0] == "volcanoes"
    store(a).append_messages(
        [MessageRow(id="m1", conversation_id="c1", seq=0, role="user", content="hi", created_at="2025-01-01T00:00:00")],
        tenant=T,
        principal="anonymous",
    )
    original = next((documents / "originals").rglob("tides.md"))

    # 2. The real ingestion service with model B refuses the table: clearly, and nothing is written.
    replies: list[dict[str, Any]] = []

    def at_connections(_: int, request: web.Request, data: bytes) -> web.Response:
        replies.append(json.loads(data))
        return web.Response(status=200)

    with StandIn(at_connections) as connections:
        log = tmp_path / "ingestion-b.log"
        proc, url = start_ingestion({**b, "RAG_CONNECTIONS_ENDPOINT_URL": f"{connections.url}/prod"}, log)
        try:
            healthy = _wait_healthy_or_exit(proc, url, 120)
            if healthy:  # it stays up: a client must get a clear error, not a crash
                ev = json.loads((ROOT / "tests" / "events" / "websocket_message_ingest.json").read_text())
                client = boto3.client(
                    "lambda", endpoint_url=url, region_name="us-east-1",
                    aws_access_key_id=INTERNAL_KEY.access_key_id, aws_secret_access_key=INTERNAL_KEY.secret_access_key,
                    config=Config(read_timeout=120 * TIMEOUT_FACTOR),
                )  # fmt: skip
                client.invoke(FunctionName="ingestion", Payload=json.dumps(ev).encode())
        finally:
            stop(proc)
    text = log.read_text(errors="replace")
    REFUSAL_LOG["text"] = text
    mismatch = f"holds {MINILM} vectors of dimension 384, but this service embeds with {TITAN}"
    assert mismatch in text, text[-3000:]
    if healthy:
        assert replies and replies[0]["type"] == "error", replies
        assert "embedding" in replies[0]["message"] and "Traceback" not in replies[0]["message"]
    else:
        assert proc.returncode != 0
    assert table_meta(old) == (meta, rows_a)  # nothing written
    assert json.loads((documents / "volcanoes.json").read_text())["id"] == "volcanoes"

    # 3. reindex with model B and no flag: refused, with both ways out named, no traceback.
    refused = reindex(b)
    assert refused.returncode == 2, refused.stderr
    assert mismatch in refused.stderr and "--to-uri" in refused.stderr and "--drop" in refused.stderr
    assert "Traceback" not in refused.stderr

    # 4. --to-uri: a new index with model B, from the raw documents; the old one untouched.
    done = reindex(b, "--to-uri", str(new))
    assert done.returncode == 0, done.stderr + done.stdout
    progress = [line for line in done.stderr.splitlines() if line.startswith("[")]
    assert len(progress) == 3 and all("/3] " in line for line in progress), done.stderr
    assert "tides: " in done.stderr and "(original file)" in done.stderr
    assert "vector index: none" in done.stderr  # (3 documents: far below RAG_VECTOR_INDEX_MIN_ROWS)
    assert f"reindexed 3/3 documents into {new}" in done.stdout and "1 chat messages copied" in done.stdout
    assert f"RAG_LANCEDB_URI={new}" in done.stdout
    assert table_meta(new)[0] == {"embedding_model": TITAN, "embedding_dimension": "384"}
    assert table_meta(new)[1] == rows_a
    assert table_meta(old) == (meta, rows_a)
    assert original.exists(), "the original file must survive a reindex"
    assert store(b, new).conversation("c1", tenant=T, principal="anonymous")[0].content == "hi"
    b_new = {**b, "RAG_LANCEDB_URI": str(new)}
    assert search(b_new, "How does magma reach the surface?")[0] == "volcanoes"
    assert search(b_new, "What makes dough rise?")[0] == "pain de campagne é"
    assert search(b_new, "Why are there two high tides a day?")[0] == "tides"
    headings = {m.heading or m.metadata.get("heading") for m in store(b, new).search(
        search_vector(b_new, "tides moon"), tenant=T, top_k=5, max_distance=2.0) if m.doc_id == "tides"}  # fmt: skip
    assert headings & {"Tides > Causes", "Tides > Timing"}, headings

    # The ingestion service with model B now starts on the new index.
    proc, url = start_ingestion(b_new, tmp_path / "ingestion-b-new.log")
    try:
        assert _wait_healthy_or_exit(proc, url, 120), (tmp_path / "ingestion-b-new.log").read_text()[-3000:]
    finally:
        stop(proc)

    # A re-run into the same (now matching) index updates in place, idempotently (in-process this time).
    from ingestion.reindex import reindex as run_reindex

    again = run_reindex(settings(b), to_uri=str(new))
    assert (again.indexed, again.failed, again.messages_copied) == (3, {}, 0)
    assert table_meta(new)[1] == rows_a

    # 5. --drop: rebuild the old location in place.
    dropped = reindex(b, "--drop")
    assert dropped.returncode == 0, dropped.stderr
    assert f"dropped table '{CHUNKS_TABLE}' at {old}" in dropped.stderr
    assert table_meta(old) == ({"embedding_model": TITAN, "embedding_dimension": "384"}, rows_a)
    assert search(b, "How does magma reach the surface?")[0] == "volcanoes"


def test_the_refusal_is_logged_without_a_traceback() -> None:
    if "text" not in REFUSAL_LOG:
        pytest.skip("runs after test_switching_models_refuse_then_reindex")
    text = REFUSAL_LOG["text"]
    assert "EmbeddingMismatch" in text or "embeds with" in text
    assert "Traceback" not in text, text[-2000:]


def search_vector(env: dict[str, str], query: str) -> list[float]:
    from shared.aws_clients import make_client
    from shared.bedrock import Embedder

    s = settings(env)
    client = make_client("bedrock-runtime", endpoint_url=s.embedding_endpoint_url, region=s.aws_region)
    return Embedder(client, s.embedding_model_id, body_format=s.embedding_format).embed_query(query)


def test_reindex_on_s3(embedders: dict[str, Service], moto_s3: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same on S3 (moto): raw documents listed with ListObjectsV2, the index built under a new prefix."""
    from ingestion.reindex import reindex as run_reindex

    for k, v in S3_ENV.items():
        monkeypatch.setenv(k, v)
    bucket = "rag-reindex"
    s3_client(moto_s3).create_bucket(Bucket=bucket)
    s3 = {"RAG_S3_ENDPOINT_URL": moto_s3}
    a = {**env_a(embedders["a"], f"s3://{bucket}/lancedb", f"s3://{bucket}/documents"), **s3}
    b = {**env_b(embedders["b"], f"s3://{bucket}/lancedb", f"s3://{bucket}/documents"), **s3}
    from ingestion.handler import build_service
    from shared.protocol import Document

    service = build_service(settings(a))
    for d in DOCS:
        service.ingest(Document.model_validate(d), tenant=T)
    lines: list[str] = []
    summary = run_reindex(settings(b), to_uri=f"s3://{bucket}/lancedb-titan", progress=lines.append)
    assert (summary.documents, summary.indexed, summary.failed) == (2, 2, {}), lines
    keys = {o["Key"] for o in s3_client(moto_s3).list_objects_v2(Bucket=bucket)["Contents"]}
    assert {"documents/volcanoes.json", "documents/pain%20de%20campagne%20%C3%A9.json"} <= keys
    assert any(k.startswith("lancedb-titan/chunks.lance/") for k in keys)
    b_new = {**b, "RAG_LANCEDB_URI": f"s3://{bucket}/lancedb-titan"}
    assert search(b_new, "What makes dough rise?")[0] == "pain de campagne é"
