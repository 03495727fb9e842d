"""Document parsers (ingestion/parsers.py) and the ingestion service's file handling, without processes:
real parsers (pypdf, markdown-it-py, BeautifulSoup), the real chunker and tokenizer, a real local object
store in a temporary folder; only the embedder and the vector store are in-memory stand-ins."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from fpdf import FPDF

from ingestion.chunker import Chunker
from ingestion.parsers import CorruptDocument, NoTextLayer, UnsupportedType, parse_document
from ingestion.service import IngestionService, safe_filename
from ingestion.settings import Settings
from shared import wiring
from shared.bedrock import Embedder
from shared.client.cli import discover, load_batchable
from shared.errors import DocumentNotFound, DocumentTooLarge, EmptyDocument, RagError
from shared.events import KinesisEventRecord, S3EventRecord, event_kind
from shared.identity import DEFAULT_TENANT as T
from shared.object_store import (
    LocalObjectStore,
    ObjectNotFound,
    is_upload_key,
    local_upload_url,
    sign_upload,
    verify_upload,
)
from shared.protocol import Document, ErrorCode
from shared.vector_store import VectorStore
from tests.conftest import StackFactory
from tests.support.paths import EVENTS
from tests.support.procs import port_of, reserve_port

# ---------------------------------------------------------------------- test files


def make_pdf(pages: Sequence[str], *, title: str | None = None, outline: Sequence[str] | None = None) -> bytes:
    """A real PDF with one text page per entry (fpdf2); `outline` adds a bookmark per page."""
    pdf = FPDF()
    pdf.set_font("helvetica", size=11)
    if title:
        pdf.set_title(title)
    for i, text in enumerate(pages):
        pdf.add_page()
        if outline:
            pdf.start_section(outline[i])
        pdf.multi_cell(0, 6, text)
    return bytes(pdf.output())


def make_image_only_pdf(n_pages: int = 2) -> bytes:
    """Pages with drawings and no text at all: what a scan without OCR looks like to a parser."""
    pdf = FPDF()
    for _ in range(n_pages):
        pdf.add_page()
        pdf.set_fill_color(120, 120, 120)
        pdf.rect(20, 20, 150, 200, style="F")
    return bytes(pdf.output())


MARKDOWN = """---
title: Field guide
author: someone
---
A short preamble before any heading.

# Volcanoes

## Setup

Put on boots before climbing.

### Install

Install the seismometer on bedrock.

```
# not a heading: a comment in a code block
```

## Eruptions

Setext heading below.

Lava types
----------

Basalt lava is runny.

- # a heading inside a list item is content
"""


# ---------------------------------------------------------------------- formats


# The format table itself (shared/formats.py) is tested in tests/unit/test_formats.py.


# ---------------------------------------------------------------------- text


def test_text_utf8_bom_and_utf16() -> None:
    assert parse_document("\ufeffCafé au lait.".encode(), "a.txt").sections[0].text == "Café au lait."
    assert parse_document("Grüße".encode("utf-16"), "a.txt").text == "Grüße"
    doc = parse_document(b"  plain text  ", "a.txt")
    assert doc.title is None and doc.format == "text" and doc.sections[0].metadata == {}


@pytest.mark.parametrize("data", [b"\xff\xd8\xff\xe0 jpeg bytes \x00\x01", b"abc\x00def"])
def test_binary_named_txt_is_corrupt(data: bytes) -> None:
    with pytest.raises(CorruptDocument):
        parse_document(data, "photo.txt")


def test_blank_text_is_empty() -> None:
    with pytest.raises(EmptyDocument):
        parse_document(b" \n\t ", "blank.txt")


# ---------------------------------------------------------------------- markdown


def test_markdown_sections_carry_their_heading_path() -> None:
    doc = parse_document(MARKDOWN.encode(), "guide.md")
    assert doc.title == "Field guide"  # front matter wins over the first heading
    got = [(s.metadata.get("heading"), s.text.splitlines()[0]) for s in doc.sections]
    assert got == [
        (None, "A short preamble before any heading."),
        ("Volcanoes > Setup", "Setup"),
        ("Volcanoes > Setup > Install", "Install"),
        ("Volcanoes > Eruptions", "Eruptions"),
        ("Volcanoes > Lava types", "Lava types"),  # a setext "----" heading is an h2
    ]
    install = doc.sections[2].text
    assert "# not a heading" in install  # a code block's '#' is not a heading
    assert "a heading inside a list item" in doc.sections[-1].text
    assert all("author:" not in s.text for s in doc.sections)  # front matter is not content


def test_markdown_title_from_first_h1_and_inline_markup() -> None:
    doc = parse_document(b"# The **bold** `title`\n\nBody.\n\n## [Linked](http://x) part\n\nMore.", "x.md")
    assert doc.title == "The bold title"
    assert [s.metadata["heading"] for s in doc.sections] == ["The bold title", "The bold title > Linked part"]


def test_markdown_without_headings_is_one_section() -> None:
    doc = parse_document(b"Just a paragraph.\n\nAnd another.", "x.md")
    assert len(doc.sections) == 1 and doc.sections[0].metadata == {} and doc.title is None


# ---------------------------------------------------------------------- PDF


def test_pdf_one_section_per_page_with_page_numbers_and_outline_headings() -> None:
    data = make_pdf(
        ["Magma rises through the crust.", "", "Ash clouds travel far.", "Lava cools into basalt."],
        title="Volcano notes",
        outline=["Origins", "Blank", "Eruptions", "Aftermath"],
    )
    doc = parse_document(data, "notes.pdf")
    assert doc.title == "Volcano notes" and doc.format == "pdf"
    assert [s.metadata for s in doc.sections] == [
        {"page": 1, "heading": "Origins"},
        {"page": 3, "heading": "Eruptions"},  # page 2 has no text: no section
        {"page": 4, "heading": "Aftermath"},
    ]
    assert "Ash clouds travel far." in doc.sections[1].text


def test_pdf_without_outline_or_title() -> None:
    doc = parse_document(make_pdf(["One.", "Two."]), "x.pdf")
    assert doc.title is None and [s.metadata for s in doc.sections] == [{"page": 1}, {"page": 2}]


def test_pdf_without_text_layer() -> None:
    with pytest.raises(NoTextLayer) as info:
        parse_document(make_image_only_pdf(), "scan.pdf")
    assert info.value.code == ErrorCode.NO_TEXT_LAYER and "no text layer" in info.value.message


@pytest.mark.parametrize(
    "data",
    [
        b"%PDF-1.7\nthis is not really a pdf",
        b"hello, I am a text file with a .pdf name",
        b"",
        "truncated",
    ],
)
def test_corrupt_pdf(data: bytes | str) -> None:
    if data == "truncated":
        data = make_pdf(["A page of text that will be cut off."])[:300]
    assert isinstance(data, bytes)
    with pytest.raises(CorruptDocument) as info:
        parse_document(data, "broken.pdf")
    assert info.value.code == ErrorCode.CORRUPT_DOCUMENT
    assert "Traceback" not in info.value.message


def test_password_protected_pdf_is_refused() -> None:
    pdf = FPDF()
    pdf.set_font("helvetica", size=11)
    pdf.add_page()
    pdf.multi_cell(0, 6, "Locked text.")
    pdf.set_encryption(owner_password="owner", user_password="user")
    with pytest.raises(CorruptDocument, match="password"):
        parse_document(bytes(pdf.output()), "locked.pdf")


# ---------------------------------------------------------------------- HTML

HTML = b"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title> Geysers &amp; hot springs </title>
<style>body { color: red }</style><script>var tracking = "do not index";</script></head>
<body>
<header><a href="/">Home</a> | <a href="/about">About us</a></header>
<nav><ul><li>Menu item</li></ul></nav>
<main>
<article>
<header><p class="byline">By a geologist</p></header>
<h1>Geysers</h1>
<p>A geyser is a spring that
   erupts intermittently.</p>
<div hidden>hidden text</div><span style="display: none">invisible</span>
<h2>Old Faithful</h2>
<p>It erupts about every <b>90</b>&nbsp;minutes.</p>
<pre>line one
line two</pre>
<!-- a comment -->
<table><tr><td>cell a</td><td>cell b</td></tr></table>
</article>
</main>
<aside>Related links</aside>
<footer>Copyright 2025</footer>
<noscript>enable js</noscript>
</body></html>"""


def test_html_visible_text_only_with_headings_and_title() -> None:
    doc = parse_document(HTML, "geysers.html")
    assert doc.title == "Geysers & hot springs"
    text = doc.text
    for gone in ("tracking", "color: red", "Home", "Menu item", "hidden text", "invisible", "Related links",
                 "Copyright", "enable js", "a comment"):  # fmt: skip
        assert gone not in text, gone
    assert "By a geologist" in text  # an article's own header is content
    assert "A geyser is a spring that erupts intermittently." in text
    assert "every 90 minutes" in text
    assert "line one\nline two" in text  # <pre> keeps its lines
    assert "cell a cell b" in text
    assert [s.metadata.get("heading") for s in doc.sections] == [None, "Geysers", "Geysers > Old Faithful"]


def test_html_charset_and_title_fallback() -> None:
    latin1 = '<html><head><meta charset="iso-8859-1"></head><body><h1>Caf\xe9</h1><p>Cr\xe8me.</p></body></html>'
    doc = parse_document(latin1.encode("latin-1"), "x.htm")
    assert doc.title == "Café" and "Crème." in doc.text


def test_html_without_visible_text_is_empty() -> None:
    with pytest.raises(EmptyDocument):
        parse_document(b"<html><head><title>t</title><script>x()</script></head><body> </body></html>", "e.html")


# ---------------------------------------------------------------------- upload signatures and keys


def test_upload_signature_binds_method_key_expiry_and_content_type() -> None:
    key = "uploads/" + "a" * 32 + "/report.pdf"
    sig = sign_upload("s3cret", "PUT", key, 2_000_000_000, "application/pdf")
    assert verify_upload("s3cret", "PUT", key, 2_000_000_000, "application/pdf", sig)
    for args in (
        ("other", "PUT", key, 2_000_000_000, "application/pdf"),
        ("s3cret", "GET", key, 2_000_000_000, "application/pdf"),
        ("s3cret", "PUT", key + "x", 2_000_000_000, "application/pdf"),
        ("s3cret", "PUT", key, 2_000_000_001, "application/pdf"),
        ("s3cret", "PUT", key, 2_000_000_000, "text/plain"),
    ):
        assert not verify_upload(*args, sig)
    url = local_upload_url("http://127.0.0.1:8000/local/", "s3cret", "uploads/" + "b" * 32 + "/My File.md", "x/y", 60)
    assert url.startswith("http://127.0.0.1:8000/local/uploads/" + "b" * 32 + "/My%20File.md?expires=")


def test_upload_keys_and_names() -> None:
    assert is_upload_key("uploads/" + "0" * 32 + "/a b.pdf")
    for bad in ("uploads/xyz/a.pdf", "uploads/" + "0" * 32 + "/../x", "documents/a.json", "uploads/" + "0" * 32 + "/"):
        assert not is_upload_key(bad), bad
    assert safe_filename("../../etc/passwd") == "passwd"
    assert safe_filename("C:\\Users\\me\\notes #1.md") == "notes _1.md"
    assert safe_filename("..") == "file"
    assert len(safe_filename("x" * 300 + ".pdf")) == 200 and safe_filename("x" * 300 + ".pdf").endswith(".pdf")


# ---------------------------------------------------------------------- event models


def test_event_fixtures_parse() -> None:
    created = json.loads((EVENTS / "s3_object_created.json").read_text())
    removed = json.loads((EVENTS / "s3_object_removed.json").read_text())
    kinesis = json.loads((EVENTS / "kinesis_batch.json").read_text())
    assert event_kind(created) == event_kind(removed) == "s3"
    assert event_kind(kinesis) == "kinesis"
    assert event_kind(json.loads((EVENTS / "websocket_message_ingest.json").read_text())) == "websocket"
    assert event_kind({"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": "b"}) == "s3_test"
    assert event_kind({"hello": "world"}) == event_kind({"Records": []}) == "unknown"
    rec = S3EventRecord.model_validate(created["Records"][0])
    assert rec.action == "created" and " " in rec.s3.object.decoded_key and "+" not in rec.s3.object.decoded_key
    assert S3EventRecord.model_validate(removed["Records"][0]).action == "removed"
    minio = {**created["Records"][0], "eventSource": "minio:s3", "eventName": "s3:ObjectCreated:Put"}
    assert S3EventRecord.model_validate(minio).action == "created"
    k = KinesisEventRecord.model_validate(kinesis["Records"][0])
    payload = json.loads(k.kinesis.payload())
    assert {"doc_id", "text", "source", "ts"} <= set(payload)


# ---------------------------------------------------------------------- the service, on real parts
# The embedding service of a test stack (MiniLM in its own process), LanceDB in a temporary folder, the
# local object store in tmp_path.


class RecordingEmbedder:
    """The real embedder, remembering what it was asked to embed."""

    def __init__(self, inner: Embedder) -> None:
        self.inner = inner
        self.texts: list[str] = []

    def embed_documents(self, texts: Sequence[str]) -> list[list[float]]:
        self.texts.extend(texts)
        return self.inner.embed_documents(texts)

    def embed_query(self, text: str) -> list[float]:
        return self.inner.embed_query(text)


def _embedder(url: str) -> Embedder:
    return wiring.embedder(Settings(embedding_endpoint_url=url, s3_endpoint_url=None))


@pytest.fixture(scope="module")
def embedding_url(start_stack: StackFactory) -> str:
    from tests.stack.test_upload import local_stack  # here: test_upload imports this module

    return local_stack(start_stack).by_name["embedding"].url


GW = "http://gw/local"  # the gateway an upload_url request came through


@pytest.fixture
def service(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, embedding_url: str) -> IngestionService:
    return IngestionService(
        Settings(max_document_bytes=1_000_000, max_upload_bytes=200_000, upload_url_expires_s=900),
        chunker=Chunker(64, 8),
        embedder=RecordingEmbedder(_embedder(embedding_url)),
        store=VectorStore(
            str(tmp_path_factory.mktemp("lancedb")), dimension=384, model_id=Settings().embedding_model_id
        ),
        objects=LocalObjectStore(tmp_path, upload_secret="k"),
    )


def _rows(service: IngestionService) -> dict[str, list[SimpleNamespace]]:
    """Every chunk in LanceDB, by document and chunk number, metadata decoded."""
    out: dict[str, list[SimpleNamespace]] = {}
    assert isinstance(service.store, VectorStore)
    for r in sorted(service.store.chunks().to_arrow().to_pylist(), key=lambda r: (r["doc_id"], r["chunk"])):
        meta = r["metadata"]
        r["metadata"] = json.loads(meta) if isinstance(meta, str) else meta
        out.setdefault(r["doc_id"], []).append(SimpleNamespace(**r))
    return out


def _upload(service: IngestionService, name: str, data: bytes) -> str:
    ticket = service.upload_url(name, "application/octet-stream", max(len(data), 1), gateway_url=GW, tenant=T)
    root: Path = service.objects.root  # type: ignore[attr-defined]
    (root / ticket.key).parent.mkdir(parents=True, exist_ok=True)
    (root / ticket.key).write_bytes(data)
    return ticket.key


def _files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def test_markdown_upload_chunks_never_span_sections_and_are_numbered_across_the_document(
    service: IngestionService, tmp_path: Path
) -> None:
    long_section = " ".join(f"Sentence {i} about installing seismometers on bedrock." for i in range(40))
    md = MARKDOWN.replace("Install the seismometer on bedrock.", long_section)
    key = _upload(service, "guide.md", md.encode())
    out = service.ingest_object(key, tenant=T)
    rows = _rows(service)["guide.md"]
    assert out.doc_id == "guide.md" and out.chunks == len(rows) > 5
    assert [r.chunk for r in rows] == list(range(len(rows)))
    sections = parse_document(md.encode(), "guide.md").sections
    for r in rows:
        heading = r.metadata.get("heading")
        owner = [s for s in sections if s.metadata.get("heading") == heading]
        assert len(owner) == 1 and r.text in owner[0].text  # within exactly one section
        assert r.metadata["format"] == "markdown" and r.title == "Field guide" and r.source == "guide.md"
    assert sum(r.metadata.get("heading") == "Volcanoes > Setup > Install" for r in rows) > 2
    # The upload became the original; the raw JSON says where it is.
    assert _files(tmp_path) == ["guide.md.json", "originals/guide.md/guide.md"]
    raw = json.loads((tmp_path / "guide.md.json").read_text())
    assert raw["original"]["key"] == "originals/guide.md/guide.md" and raw["original"]["format"] == "markdown"
    assert "Basalt lava is runny." in raw["text"]
    assert set(out.timings_ms) >= {"read", "parse", "chunk", "embed", "store", "total"}


def test_markdown_sent_by_the_cli_is_parsed_as_the_uploaded_file_is(
    service: IngestionService, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Regression: a small .md file the CLI packs into ingest_batch was chunked as plain text (front matter
    included, no headings), the same file uploaded by headings. Now both go through the one Markdown parser:
    the same chunks, metadata, title and date."""
    md = MARKDOWN.replace("author: someone", "date: 2025-01-31")
    folder = tmp_path_factory.mktemp("files")
    (folder / "guide.md").write_text(md)
    (candidate,), _ = discover([folder / "guide.md"])
    batched = asyncio.run(load_batchable(candidate))
    assert batched is not None
    (out,) = service.ingest_many([batched.document], tenant=T)
    assert not isinstance(out, Exception) and out.doc_id == "guide.md"
    service.ingest_object(_upload(service, "guide.md", md.encode()), doc_id="uploaded", tenant=T)
    rows = _rows(service)

    def shape(doc_id: str) -> list[tuple[Any, ...]]:
        return [(r.chunk, r.text, r.metadata, r.title, r.date) for r in rows[doc_id]]

    assert shape("guide.md") == shape("uploaded")
    assert {r.metadata.get("heading") for r in rows["guide.md"]} >= {"Volcanoes > Setup", "Volcanoes > Setup > Install"}
    assert all(r.title == "Field guide" and r.date == "2025-01-31" for r in rows["guide.md"])
    assert not any("title: Field guide" in r.text for r in rows["guide.md"])  # front matter is not content


def test_pdf_upload_keeps_pages_and_reupload_replaces(service: IngestionService, tmp_path: Path) -> None:
    pdf = make_pdf(["Page one text.", "Page two text.", "Page three text."], title="Three pages")
    out = service.ingest_object(_upload(service, "three.pdf", pdf), doc_id="report", title="My report", tenant=T)
    rows = _rows(service)["report"]
    assert out.chunks == 3 and [r.metadata["page"] for r in rows] == [1, 2, 3]
    assert rows[0].title == "My report"
    # Same document id, another file: the old original goes, the new one stays.
    again = service.ingest_object(_upload(service, "v2.md", b"# New\n\nShorter."), doc_id="report", tenant=T)
    assert again.replaced_chunks == 3 and again.chunks == 1
    assert _files(tmp_path) == ["originals/report/v2.md", "report.json"]
    # A text ingest of the same id replaces it too, and its original is gone.
    service.ingest(Document(id="report", text="Plain text now."), tenant=T)
    assert _files(tmp_path) == ["report.json"]


@pytest.mark.parametrize(
    ("name", "data", "error"),
    [
        ("broken.pdf", b"%PDF-1.4 not a pdf", CorruptDocument),
        ("scan.pdf", "image-only", NoTextLayer),
        ("blank.md", b"  \n\n ", EmptyDocument),
        ("huge.txt", b"x" * 200_001, DocumentTooLarge),
    ],
)
def test_bad_uploads_leave_nothing(
    service: IngestionService, tmp_path: Path, name: str, data: bytes | str, error: type[RagError]
) -> None:
    blob = make_image_only_pdf() if data == "image-only" else data
    assert isinstance(blob, bytes)
    ticket = service.upload_url(name, "", 10, gateway_url=GW, tenant=T)
    (tmp_path / ticket.key).parent.mkdir(parents=True)
    (tmp_path / ticket.key).write_bytes(blob)
    with pytest.raises(error):
        service.ingest_object(ticket.key, tenant=T)
    assert _files(tmp_path) == [] and not (tmp_path / "uploads").exists()
    assert _rows(service) == {}


def test_upload_url_refuses_before_the_upload(service: IngestionService) -> None:
    with pytest.raises(UnsupportedType):
        service.upload_url("slides.pptx", "application/vnd.ms-powerpoint", 10, gateway_url=GW, tenant=T)
    with pytest.raises(DocumentTooLarge):
        service.upload_url("big.pdf", "application/pdf", 200_001, gateway_url=GW, tenant=T)
    t = service.upload_url("../../x/Notes #1.md", "text/markdown", 10, gateway_url=GW, tenant=T)
    assert is_upload_key(t.key) and t.key.endswith("/Notes _1.md") and t.headers == {"Content-Type": "text/markdown"}
    assert t.url.startswith("http://gw/local/uploads/") and "signature=" in t.url and t.expires_in == 900
    expires = int(t.url.split("expires=")[1].split("&")[0])
    assert time.time() + 800 < expires <= time.time() + 901


def test_a_file_known_by_its_content_type_only_is_read_in_that_format(
    service: IngestionService, tmp_path: Path
) -> None:
    """upload_url accepts a name without a known extension by its content type; the key then names the file
    for its format, so ingest_object (which has only the key) parses it as upload_url said it would."""
    ticket = service.upload_url("README", "text/markdown", 10, gateway_url=GW, tenant=T)
    assert ticket.key.endswith("/README.md") and ticket.headers == {"Content-Type": "text/markdown"}
    (tmp_path / ticket.key).parent.mkdir(parents=True)
    (tmp_path / ticket.key).write_bytes(b"# Read me\n\n## Usage\n\nRun it.")
    assert service.ingest_object(ticket.key, tenant=T).doc_id == "README.md"
    assert [r.metadata.get("heading") for r in _rows(service)["README.md"]] == ["Read me > Usage"]


def test_missing_object_and_transient_failure(service: IngestionService, tmp_path: Path) -> None:
    with pytest.raises(ObjectNotFound):
        service.ingest_object("uploads/" + "c" * 32 + "/gone.md", tenant=T)
    with pytest.raises(ObjectNotFound):
        service.ingest_object("guide.md.json", tenant=T)  # not an upload key: never read
    key = _upload(service, "ok.md", b"# T\n\nText.")
    working = service.embedder
    dead = reserve_port()  # the embedding service is down: connections there are refused
    service.embedder = _embedder(f"http://127.0.0.1:{port_of(dead)}")
    with pytest.raises(RagError) as info:
        service.ingest_object(key, tenant=T)
    assert info.value.code == ErrorCode.UPSTREAM_UNAVAILABLE
    assert _files(tmp_path) == [key]  # kept: the client can retry ingest_object
    service.embedder = working
    dead.close()
    assert service.ingest_object(key, tenant=T).chunks == 1


def test_delete_removes_chunks_json_and_original(service: IngestionService, tmp_path: Path) -> None:
    service.ingest_object(_upload(service, "a.md", b"# A\n\nAlpha."), tenant=T)
    assert service.delete("a.md", tenant=T) == 1
    assert _files(tmp_path) == [] and list(tmp_path.iterdir()) == []
    with pytest.raises(DocumentNotFound):
        service.delete("a.md", tenant=T)


def _kinesis(seq: str, payload: Any) -> KinesisEventRecord:
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return KinesisEventRecord.model_validate(
        {
            "eventSource": "aws:kinesis",
            "kinesis": {"partitionKey": "p", "sequenceNumber": seq, "data": base64.b64encode(data).decode()},
        }
    )


def test_kinesis_records_partial_failures(service: IngestionService) -> None:
    out = service.ingest_kinesis_records(
        [
            _kinesis("1", {"doc_id": "k1", "text": "First.", "source": "feed", "ts": 1767225600}),
            _kinesis("2", b"{not json"),
            _kinesis("3", {"doc_id": "k2", "text": "   "}),
            _kinesis("4", {"doc_id": "bad/id", "text": "x"}),
            _kinesis("5", {"doc_id": "k3", "text": "Third.", "ts": "2026-01-02T03:04:05Z", "title": "T"}),
            _kinesis("6", {"doc_id": "k1", "op": "delete"}),
            _kinesis("7", {"doc_id": "never-existed", "op": "delete"}),
        ]
    )
    assert [f.item_identifier for f in out.batch_item_failures] == ["2", "3", "4"]
    rows = _rows(service)
    assert set(rows) == {"k3"} and rows["k3"][0].date == "2026-01-02T03:04:05Z"
    assert out.to_aws() == {"batchItemFailures": [{"itemIdentifier": s} for s in ("2", "3", "4")]}


def test_embedded_texts_fit_the_model_even_with_the_title(service: IngestionService) -> None:
    """A full chunk plus "title: " may exceed what the model reads: then the chunk is embedded alone."""
    service.chunker = Chunker(64, 8, model_max_tokens=66)
    service.ingest(Document(id="dense", title="A rather long title", text="understanding " * 400), tenant=T)
    service.ingest(Document(id="short", title="Short", text="One sentence. Another one."), tenant=T)
    assert isinstance(service.embedder, RecordingEmbedder)
    texts = service.embedder.texts
    assert all(service.chunker.count(t) <= 66 for t in texts)
    assert "understanding understanding" in texts[0] and not texts[0].startswith("A rather long title")
    assert texts[-1] == "Short: One sentence. Another one."  # the title is kept where it fits
