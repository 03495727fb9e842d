"""Files too large for a WebSocket message: upload_url -> plain HTTP PUT -> ingest_object, end to end.

Five real processes, twice: documents in a local folder (the gateway serves the presigned-PUT stand-in,
HMAC-signed by the ingestion lambda) and in S3 (moto's server; boto3 presigned PUT URLs, built with
RAG_S3_PUBLIC_ENDPOINT_URL, the endpoint as the client reaches it).
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import lancedb
import pytest

from shared.object_store import sign_upload
from shared.protocol import SERVER_MESSAGE
from shared.stack import Stack
from shared.vector_store import sql_str, storage_options_for
from tests.conftest import StackFactory, WsClient, s3_client
from tests.stack.test_documents import make_image_only_pdf, make_pdf
from tests.support.auth import TENANT_A, TENANT_DEFAULT
from tests.support.timeouts import scaled

MAX_UPLOAD_BYTES = 1_000_000
STACK_ENV = {"RAG_MAX_DISTANCE": "0.7", "RAG_MAX_UPLOAD_BYTES": str(MAX_UPLOAD_BYTES)}


def local_stack(start_stack: StackFactory) -> Stack:
    return start_stack("upload", **STACK_ENV)


def s3_stack(start_stack: StackFactory, moto_url: str) -> Stack:
    # Presigned URLs name "localhost": the endpoint as the client sees it, not the lambdas' 127.0.0.1.
    public = moto_url.replace("127.0.0.1", "localhost")
    return start_stack("upload-s3", s3_endpoint=moto_url, RAG_S3_PUBLIC_ENDPOINT_URL=public, **STACK_ENV)


@pytest.fixture(scope="module", params=["local", "s3"])
def stack(request: pytest.FixtureRequest, start_stack: StackFactory) -> Stack:
    if request.param == "s3":
        return s3_stack(start_stack, request.getfixturevalue("moto_s3"))
    return local_stack(start_stack)


@pytest.fixture
def client(stack: Stack) -> Iterator[WsClient]:
    c = WsClient(stack.ws_url, timeout=180)
    yield c
    c.close()


@pytest.fixture(scope="module")
def folder_stack(start_stack: StackFactory) -> Stack:
    """The local-folder stack only: the gateway's PUT stand-in serves local folders (on S3, S3 checks)."""
    return local_stack(start_stack)


@pytest.fixture
def folder_client(folder_stack: Stack) -> Iterator[WsClient]:
    c = WsClient(folder_stack.ws_url, timeout=180)
    yield c
    c.close()


# ---------------------------------------------------------------------- helpers


def http_put(url: str, data: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=data, method="PUT", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=scaled(60)) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def upload(client: WsClient, filename: str, data: bytes, content_type: str, size: int | None = None) -> str:
    ticket = client.request(
        {
            "action": "upload_url",
            "request_id": "u",
            "filename": filename,
            "content_type": content_type,
            "size": size or len(data),
        }
    )
    SERVER_MESSAGE.validate_python(ticket)
    assert ticket["type"] == "upload_url" and ticket["method"] == "PUT", ticket
    assert ticket["headers"] == {"Content-Type": content_type} and ticket["expires_in"] > 0
    status, body = http_put(ticket["url"], data, ticket["headers"])
    assert status == 200, body
    key: str = ticket["key"]
    return key


def ingest_object(client: WsClient, key: str, **fields: Any) -> dict[str, Any]:
    reply = client.request({"action": "ingest_object", "request_id": "io", "key": key, **fields})
    SERVER_MESSAGE.validate_python(reply)
    return reply


def store_keys(stack: Stack) -> set[str]:
    """Every object in the documents store, relative to it."""
    cfg = stack.config
    assert cfg is not None and cfg.documents_uri
    if cfg.documents_uri.startswith("s3://"):
        assert cfg.s3_endpoint_url
        bucket, _, prefix = cfg.documents_uri.removeprefix("s3://").partition("/")
        s3 = s3_client(cfg.s3_endpoint_url)
        out = set()
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/"):
            out.update(o["Key"].removeprefix(prefix + "/") for o in page.get("Contents", []))
        return out
    root = Path(cfg.documents_uri)
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def read_object(stack: Stack, key: str) -> bytes:
    cfg = stack.config
    assert cfg is not None and cfg.documents_uri
    if cfg.documents_uri.startswith("s3://"):
        assert cfg.s3_endpoint_url
        bucket, _, prefix = cfg.documents_uri.removeprefix("s3://").partition("/")
        data: bytes = s3_client(cfg.s3_endpoint_url).get_object(Bucket=bucket, Key=f"{prefix}/{key}")["Body"].read()
        return data
    return (Path(cfg.documents_uri) / key).read_bytes()


def write_object(stack: Stack, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
    """Put an object straight into the store (as another writer of the bucket / folder would)."""
    cfg = stack.config
    assert cfg is not None and cfg.documents_uri
    if cfg.documents_uri.startswith("s3://"):
        assert cfg.s3_endpoint_url
        bucket, _, prefix = cfg.documents_uri.removeprefix("s3://").partition("/")
        s3_client(cfg.s3_endpoint_url).put_object(
            Bucket=bucket, Key=f"{prefix}/{key}", Body=data, ContentType=content_type
        )
        return
    path = Path(cfg.documents_uri) / key
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def tenant_key(key: str, tenant: str = TENANT_A) -> str:
    """A key of the tenant's folder as a key of the store (the default tenant's folder is the store's root)."""
    return key if tenant == TENANT_DEFAULT else f"tenants/{tenant}/{key}"


def doc_keys(stack: Stack, doc_id: str, tenant: str = TENANT_A) -> set[str]:
    """The document's raw JSON and originals, relative to its tenant's folder (WsClient: tenant alpha)."""
    keys = {k.removeprefix(tenant_key("", tenant)) for k in store_keys(stack) if k.startswith(tenant_key("", tenant))}
    return {k for k in keys if k == f"{doc_id}.json" or k.startswith(f"originals/{doc_id}/")}


def chunk_rows(stack: Stack, doc_id: str) -> list[dict[str, Any]]:
    """The document's rows straight from LanceDB, metadata decoded, by chunk number."""
    cfg = stack.config
    assert cfg is not None and cfg.lancedb_uri
    opts = storage_options_for(
        cfg.lancedb_uri,
        cfg.s3_endpoint_url,
        "us-east-1",
        {"aws_access_key_id": "test", "aws_secret_access_key": "test"} if cfg.s3_endpoint_url else None,
    )
    table = lancedb.connect(cfg.lancedb_uri, storage_options=opts or None).open_table("chunks")
    rows = (
        table.search()
        .where(f"doc_id = {sql_str(doc_id)}")
        .select(["doc_id", "chunk", "title", "text", "source", "metadata"])
        .limit(100_000)
        .to_list()
    )
    for r in rows:
        r["metadata"] = json.loads(r["metadata"] or "{}")
    return sorted(rows, key=lambda r: int(r["chunk"]))


def search(client: WsClient, query: str, **kw: Any) -> list[dict[str, Any]]:
    r = client.request({"action": "search", "request_id": "s", "query": query, **kw})
    assert r["type"] == "search_result", r
    results: list[dict[str, Any]] = r["results"]
    return results


def check_source_fields(sources: list[dict[str, Any]], rows: dict[tuple[str, int], dict[str, Any]]) -> None:
    """Sources agree with the stored chunk metadata; when the protocol carries page/heading, they match it."""
    for s in sources:
        row = rows.get((s["doc_id"], s["chunk"]))
        if row is None:
            continue
        for field in ("page", "heading"):
            if field in s:
                assert s[field] == row["metadata"].get(field), (s, row["metadata"])


def assert_error(reply: dict[str, Any], code: str) -> None:
    SERVER_MESSAGE.validate_python(reply)
    assert reply["type"] == "error" and reply["code"] == code, reply
    assert "Traceback" not in reply["message"] and 'File "' not in reply["message"]


# ---------------------------------------------------------------------- test documents

TOPICS = [
    "Keeping accounts means recording every invoice, receipt and payment in a ledger.",
    "A vegetable garden needs six hours of sun, rich soil and regular watering.",
    "Chess openings such as the Sicilian Defence fight for the centre of the board.",
    "Bicycle chains should be cleaned and oiled every few hundred kilometres.",
    "Jazz musicians improvise over chord changes, trading solos around the band.",
    "A good cup of tea depends on fresh water, the right temperature and steeping time.",
]


def big_markdown() -> bytes:
    """A handbook of > 128 KB (too large for one WebSocket message) with nested headings."""
    parts = ["# Handbook", "", "This handbook collects notes on many unrelated subjects.", ""]
    for i in range(60):
        parts += [f"## Chapter {i}", ""]
        for j in range(10):
            parts += [" ".join(TOPICS[(i + j + k) % len(TOPICS)] for k in range(3)), ""]
        if i == 37:
            parts += [
                "## Geothermal energy",
                "",
                "Heat from deep underground can make electricity.",
                "",
                "### Drilling wells",
                "",
                "Engineers drill geothermal wells kilometres into hot granite, pump water down one borehole "
                "and bring superheated steam up another to spin turbines.",
                "",
            ]
    data = "\n".join(parts).encode()
    assert len(data) > 128 * 1024
    return data


PDF_PAGES = [
    "Volcanoes form where magma rises through the crust and erupts as lava and ash.",
    "Sourdough bread rises thanks to a starter of wild yeast and lactic acid bacteria.",
    "Glaciers are slow rivers of ice that carve deep U-shaped valleys over many centuries.",
]


# ---------------------------------------------------------------------- the happy path


def test_large_markdown_upload_is_searchable_by_heading(client: WsClient, stack: Stack) -> None:
    data = big_markdown()
    key = upload(client, "handbook.md", data, "text/markdown")
    assert key.startswith("uploads/") and key.endswith("/handbook.md")
    out = ingest_object(client, key)
    assert out["type"] == "ingest_result" and out["doc_id"] == "handbook.md" and out["chunks"] > 50, out
    assert out["replaced_chunks"] == 0 or out["replaced_chunks"] == out["chunks"]

    rows = chunk_rows(stack, "handbook.md")
    assert [r["chunk"] for r in rows] == list(range(out["chunks"]))  # numbered across the document
    assert all(r["title"] == "Handbook" and r["metadata"].get("heading") for r in rows)
    results = search(client, "drilling geothermal wells into hot granite for steam turbines")
    assert results and results[0]["doc_id"] == "handbook.md", results
    top = rows[results[0]["chunk"]]
    assert top["metadata"]["heading"] == "Handbook > Geothermal energy > Drilling wells"
    assert "Drilling wells" in top["text"] and "Chapter" not in top["text"]  # no chunk spans two sections
    check_source_fields(results, {("handbook.md", r["chunk"]): r for r in rows})

    # The upload became the document's original, byte for byte; nothing is left in uploads/.
    assert doc_keys(stack, "handbook.md") == {"handbook.md.json", "originals/handbook.md/handbook.md"}
    assert read_object(stack, tenant_key("originals/handbook.md/handbook.md")) == data
    assert not any(k.startswith("uploads/") for k in store_keys(stack))
    raw = json.loads(read_object(stack, tenant_key("handbook.md.json")))
    assert raw["id"] == "handbook.md" and raw["title"] == "Handbook" and raw["source"] == "handbook.md"
    assert raw["original"] == {
        "key": "originals/handbook.md/handbook.md",
        "filename": "handbook.md",
        "content_type": "text/markdown",
        "size": len(data),
        "format": "markdown",
    }


def test_pdf_upload_pages_question_reupload_and_delete(client: WsClient, stack: Stack) -> None:
    pdf = make_pdf(PDF_PAGES, title="Nature notes", outline=["Volcanoes", "Bread", "Glaciers"])
    key = upload(client, "nature notes.pdf", pdf, "application/pdf")
    out = ingest_object(client, key, doc_id="nature", title="Nature, three pages")
    assert out["type"] == "ingest_result" and out["doc_id"] == "nature" and out["chunks"] == 3, out
    rows = chunk_rows(stack, "nature")
    assert [(r["chunk"], r["metadata"]["page"], r["metadata"]["heading"]) for r in rows] == [
        (0, 1, "Volcanoes"),
        (1, 2, "Bread"),
        (2, 3, "Glaciers"),
    ]
    assert {r["title"] for r in rows} == {"Nature, three pages"} and {r["source"] for r in rows} == {"nature notes.pdf"}
    by_chunk = {("nature", r["chunk"]): r for r in rows}

    results = search(client, "sourdough starter with wild yeast")
    assert results and (results[0]["doc_id"], results[0]["chunk"]) == ("nature", 1), results
    check_source_fields(results, by_chunk)

    replies = client.chat({"action": "chat", "request_id": "q", "question": "How do glaciers carve valleys?"})
    end = replies[-1]
    assert end["type"] == "stream_end" and end["prompt"] == "context", end
    cited = [s for s in end["sources"] if s["doc_id"] == "nature"]
    assert cited and by_chunk[("nature", cited[0]["chunk"])]["metadata"]["page"] == 3
    check_source_fields(end["sources"], by_chunk)
    assert doc_keys(stack, "nature") == {"nature.json", "originals/nature/nature notes.pdf"}

    # Re-upload (another file, same document id): replaces the chunks and the original.
    key2 = upload(client, "nature-v2.pdf", make_pdf(["Only one page about coral reefs now."]), "application/pdf")
    again = ingest_object(client, key2, doc_id="nature")
    assert again["chunks"] == 1 and again["replaced_chunks"] == 3, again
    assert [r["metadata"]["page"] for r in chunk_rows(stack, "nature")] == [1]
    assert doc_keys(stack, "nature") == {"nature.json", "originals/nature/nature-v2.pdf"}
    assert all(r["doc_id"] != "nature" for r in search(client, "sourdough starter with wild yeast"))

    gone = client.request({"action": "delete_document", "request_id": "d", "doc_id": "nature"})
    assert gone == {"type": "document_deleted", "request_id": "d", "doc_id": "nature", "chunks_deleted": 1}
    assert chunk_rows(stack, "nature") == [] and doc_keys(stack, "nature") == set()
    assert not any(k.startswith(("uploads/", tenant_key("originals/nature"))) for k in store_keys(stack))


def test_html_and_text_uploads(client: WsClient, stack: Stack) -> None:
    html = (
        b"<html><head><title>Tide tables</title><script>trackVisitor()</script></head><body>"
        b"<nav>Home About</nav><h1>Tides</h1><p>The Moon's gravity raises two tidal bulges.</p></body></html>"
    )
    out = ingest_object(client, upload(client, "tides.html", html, "text/html"))
    assert out["type"] == "ingest_result" and out["chunks"] == 1
    (row,) = chunk_rows(stack, "tides.html")
    assert row["title"] == "Tide tables" and row["metadata"]["heading"] == "Tides"
    assert "trackVisitor" not in row["text"] and "Home" not in row["text"]
    out = ingest_object(client, upload(client, "plain.txt", "Plain café notes.".encode(), "text/plain"))
    assert out["type"] == "ingest_result" and chunk_rows(stack, "plain.txt")[0]["text"] == "Plain café notes."
    for doc in ("tides.html", "plain.txt"):
        client.request({"action": "delete_document", "request_id": "d", "doc_id": doc})
        assert doc_keys(stack, doc) == set()


# ---------------------------------------------------------------------- bad input: nothing left behind


def assert_nothing_left(stack: Stack, before: set[str], doc_id: str) -> None:
    assert store_keys(stack) == before, store_keys(stack) ^ before
    assert chunk_rows(stack, doc_id) == []


def test_refused_before_upload(client: WsClient, stack: Stack) -> None:
    before = store_keys(stack)
    r = client.request({"action": "upload_url", "request_id": "a", "filename": "deck.pptx", "size": 10})
    assert_error(r, "unsupported_type")
    assert r["request_id"] == "a" and ".pdf" in r["message"]
    r = client.request({"action": "upload_url", "request_id": "b", "filename": "big.pdf", "size": MAX_UPLOAD_BYTES + 1})
    assert_error(r, "document_too_large")
    r = client.request({"action": "upload_url", "request_id": "c", "filename": "x.md", "size": 0})
    assert_error(r, "invalid_request")
    assert store_keys(stack) == before


@pytest.mark.parametrize(
    ("filename", "content", "code"),
    [
        ("broken.pdf", b"%PDF-1.7\n1 0 obj << /Type /Catalog >> garbage", "corrupt_document"),
        ("scan.pdf", "image-only", "no_text_layer"),
        ("blank.md", b"\n\n   \n", "empty_document"),
    ],
)
def test_bad_files_leave_nothing(
    client: WsClient, stack: Stack, filename: str, content: bytes | str, code: str
) -> None:
    data = make_image_only_pdf() if content == "image-only" else content
    assert isinstance(data, bytes)
    before = store_keys(stack)
    key = upload(client, filename, data, "application/octet-stream")
    assert key in store_keys(stack)
    r = ingest_object(client, key)
    assert_error(r, code)
    if code == "no_text_layer":
        assert "text layer" in r["message"]
    assert_nothing_left(stack, before, filename)


def test_object_larger_than_the_limit_at_ingest_time(client: WsClient, stack: Stack) -> None:
    """The declared size passed, the stored object is larger: refused at ingest_object, and removed."""
    before = store_keys(stack)
    cfg = stack.config
    assert cfg is not None
    big = b"word " * (MAX_UPLOAD_BYTES // 5 + 10)
    ticket = client.request(
        {"action": "upload_url", "request_id": "t", "filename": "sneaky.txt", "content_type": "text/plain", "size": 10}
    )
    if cfg.s3_endpoint_url:
        # A presigned S3 PUT cannot cap the body: S3 takes it, ingest_object checks the real size.
        assert http_put(ticket["url"], big, ticket["headers"])[0] == 200
    else:
        # The gateway caps the body (413, below); another writer of the folder could still put one there.
        write_object(stack, ticket["key"], big)
    assert_error(ingest_object(client, ticket["key"]), "document_too_large")
    assert_nothing_left(stack, before, "sneaky.txt")


def test_unknown_keys(client: WsClient, stack: Stack) -> None:
    before = store_keys(stack)
    assert_error(ingest_object(client, "uploads/" + "0" * 32 + "/never-uploaded.md"), "object_not_found")
    assert_error(ingest_object(client, "../../etc/passwd"), "object_not_found")
    client.request({"action": "ingest", "request_id": "i", "document": {"id": "plain", "text": "Some text."}})
    assert_error(ingest_object(client, "plain.json"), "object_not_found")  # only uploads can be ingested
    client.request({"action": "delete_document", "request_id": "d", "doc_id": "plain"})
    # An upload is consumed by a successful ingest: a second ingest_object finds nothing.
    key = upload(client, "once.md", b"# Once\n\nOnly once.", "text/markdown")
    assert ingest_object(client, key)["type"] == "ingest_result"
    assert_error(ingest_object(client, key), "object_not_found")
    client.request({"action": "delete_document", "request_id": "d", "doc_id": "once.md"})
    r = ingest_object(client, upload(client, "bad-id.md", b"text", "text/markdown"), doc_id="a/b")
    assert_error(r, "invalid_request")
    assert not any(k.startswith(tenant_key("originals/")) for k in store_keys(stack) - before)


# ---------------------------------------------------------------------- the local PUT stand-in


def _with_query(url: str, **changes: str) -> str:
    parts = urlsplit(url)
    q = {k: v[0] for k, v in parse_qs(parts.query).items()} | changes
    return parts._replace(query=urlencode(q)).geturl()


def test_local_put_refuses_bad_signatures_expiry_and_oversize(folder_client: WsClient, folder_stack: Stack) -> None:
    client, stack = folder_client, folder_stack
    cfg = stack.config
    assert cfg is not None
    ticket = client.request(
        {"action": "upload_url", "request_id": "t", "filename": "n.md", "content_type": "text/markdown", "size": 5}
    )
    url, headers, key = ticket["url"], ticket["headers"], ticket["key"]
    before = store_keys(stack)

    def refused(
        status: int, code: str, put_url: str, data: bytes = b"hello", hdrs: dict[str, str] | None = None
    ) -> None:
        got, body = http_put(put_url, data, hdrs or headers)
        assert got == status and f"<Code>{code}</Code>".encode() in body, (got, body)
        assert store_keys(stack) == before
        assert not list(Path(cfg.documents_uri or "").rglob(".part-*"))

    sig = parse_qs(urlsplit(url).query)["signature"][0]
    refused(403, "SignatureDoesNotMatch", _with_query(url, signature=("0" if sig[0] != "0" else "1") + sig[1:]))
    refused(403, "SignatureDoesNotMatch", _with_query(url, expires=str(int(time.time()) + 10_000)))
    refused(403, "SignatureDoesNotMatch", url.replace("/n.md?", "/other.md?"))
    refused(403, "SignatureDoesNotMatch", url, hdrs={"Content-Type": "text/plain"})
    refused(403, "AccessDenied", _with_query(url, signature=""))
    refused(403, "AccessDenied", url.split("?")[0])
    # Correctly signed, but expired.
    past = int(time.time()) - 5
    expired = _with_query(
        url, expires=str(past), signature=sign_upload(cfg.upload_secret, "PUT", key, past, "text/markdown")
    )
    refused(403, "AccessDenied", expired)
    # Too large: by Content-Length, before reading the body.
    refused(413, "EntityTooLarge", url, data=b"x" * (MAX_UPLOAD_BYTES + 1))
    # A browser on another origin may PUT (the signature is the credential): CORS preflight.
    pre = urllib.request.Request(
        url, method="OPTIONS", headers={"Origin": "http://localhost:1", "Access-Control-Request-Method": "PUT"}
    )
    with urllib.request.urlopen(pre, timeout=scaled(10)) as resp:
        assert resp.status == 204 and resp.headers["Access-Control-Allow-Origin"] == "*"
        assert "Content-Type" in resp.headers["Access-Control-Allow-Headers"]
    # The real URL works.
    assert http_put(url, b"# N\n\nNotes.", headers)[0] == 200
    assert store_keys(stack) == before | {key}
    assert ingest_object(client, key)["type"] == "ingest_result"
    client.request({"action": "delete_document", "request_id": "d", "doc_id": "n.md"})


def test_local_put_streams_and_caps_a_body_without_length(folder_stack: Stack) -> None:
    """Chunked transfer (no Content-Length): the gateway counts while streaming and stops at the cap."""
    stack = folder_stack
    cfg = stack.config
    assert cfg is not None
    key = "uploads/" + "ab" * 16 + "/stream.txt"
    expires = int(time.time()) + 60
    base = f"{stack.by_name['gateway'].url}/local/{key}"
    url = f"{base}?expires={expires}&signature={sign_upload(cfg.upload_secret, 'PUT', key, expires, 'text/plain')}"
    before = store_keys(stack)

    def chunks(total: int) -> Iterator[bytes]:
        sent = 0
        while sent < total:
            n = min(65536, total - sent)
            sent += n
            yield b"y" * n

    def put_chunked(total: int) -> int:
        req = urllib.request.Request(url, data=chunks(total), method="PUT", headers={"Content-Type": "text/plain"})
        try:
            with urllib.request.urlopen(req, timeout=scaled(60)) as resp:
                return int(resp.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)
        except (ConnectionError, urllib.error.URLError):
            return -1  # the server may close while the client is still sending

    assert put_chunked(MAX_UPLOAD_BYTES + 300_000) in (413, -1)
    assert store_keys(stack) == before and not list(Path(cfg.documents_uri or "").rglob(".part-*"))
    assert put_chunked(200_000) == 200
    assert read_object(stack, key) == b"y" * 200_000
    (Path(cfg.documents_uri or "") / key).unlink()
    (Path(cfg.documents_uri or "") / key).parent.rmdir()
