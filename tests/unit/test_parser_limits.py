"""Parsers bounded in depth, elements, text and time (typed errors, never retried), and document ids and
file names bounded in bytes: long, non-ASCII and dot-leading ids in the documents store. No processes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from ingestion.parsers import DocumentTooComplex, ParseLimits, parse_document, parse_inline
from ingestion.reindex import list_document_ids
from ingestion.service import safe_filename
from shared.doc_ids import doc_id_for
from shared.errors import DocumentTooLarge, RagError
from shared.events import WebSocketEvent
from shared.object_store import LocalObjectStore, TenantObjects, doc_name, originals_prefix
from shared.protocol import (
    MAX_ID_BYTES,
    MAX_ID_CHARS,
    DeleteDocumentRequest,
    Document,
    ErrorCode,
    IngestObjectRequest,
    UploadUrlRequest,
    request_id_of,
)
from shared.ws_lambda import parse_request
from tests.support.paths import EVENTS

# ---------------------------------------------------------------------- HTML


def test_deeply_nested_html_is_too_complex_not_a_recursion() -> None:
    data = b"<div>" * 2000 + b"deep" + b"</div>" * 2000
    with pytest.raises(DocumentTooComplex) as info:
        parse_document(data, "deep.html")
    assert info.value.code == ErrorCode.DOCUMENT_TOO_COMPLEX and "512" in info.value.message
    # Unclosed, as deep: the same, found as soon as the limit is passed.
    with pytest.raises(DocumentTooComplex):
        parse_document(b"<div>" * 100_000, "open.html")
    # Within the limit it reads.
    assert "deep" in parse_document(data, "deep.html", limits=ParseLimits(max_depth=4096)).text


def test_omitted_end_tags_do_not_nest() -> None:
    """Legacy HTML leaves </p>, </li>, </td> out: they are implied, so 10,000 of them stay flat."""
    items = "".join(f"<li>item {i}" for i in range(10_000))
    rows = "".join(f"<tr><td>a{i}<td>b{i}" for i in range(2_000))
    paras = "".join(f"<p>para {i}" for i in range(10_000))
    html = f"<html><head><title>Legacy</title><body><ul>{items}</ul><table>{rows}</table>{paras}"
    doc = parse_document(html.encode(), "legacy.html", limits=ParseLimits(max_depth=32))
    assert doc.title == "Legacy"
    assert "item 9999" in doc.text and "a1999 b1999" in doc.text and "para 9999" in doc.text
    assert "item 0\n\nitem 1" in doc.text and "Legacy" not in doc.text


def test_flat_html_of_many_elements_streams() -> None:
    data = b"<p>a</p>" * 50_000
    doc = parse_document(data, "flat.html")
    assert doc.text.count("a") == 50_000
    with pytest.raises(DocumentTooComplex) as info:
        parse_document(data, "flat.html", limits=ParseLimits(max_elements=10_000))
    assert "10000 elements" in info.value.message
    with pytest.raises(DocumentTooLarge):
        parse_document(data, "flat.html", limits=ParseLimits(max_chars=1_000))


def test_the_parse_time_budget_is_a_typed_error() -> None:
    with pytest.raises(DocumentTooComplex) as info:
        parse_document(b"<p>a</p>" * 20_000, "slow.html", limits=ParseLimits(timeout_s=1e-9))
    assert "RAG_PARSE_TIMEOUT_S" in info.value.message


def test_headings_sections_and_hidden_parts_of_streamed_html() -> None:
    html = (
        b"<html><head><title>T</title></head><body><h1>One <span hidden>x</span></h1><p>first"
        b"<h2>Two</h2><p>second<br>line<div style='display:none'>gone</div><script>no()</script>"
        b"<h2></h2><p>still two</p><header>banner</header><article><header>byline</header></article>"
    )
    doc = parse_document(html, "s.html")
    assert doc.title == "T"
    assert [(s.metadata.get("heading"), s.text) for s in doc.sections] == [
        ("One", "One\n\nfirst"),
        ("One > Two", "Two\n\nsecond\nline\n\nstill two\n\nbyline"),
    ]


# ---------------------------------------------------------------------- Markdown


def test_markdown_blocks_are_counted_and_timed() -> None:
    text = "# h\n\nx\n\n" * 2_000
    assert len(parse_inline(text, "markdown").sections) == 2_000
    with pytest.raises(DocumentTooComplex) as info:
        parse_inline(text, "markdown", limits=ParseLimits(max_elements=1_000))
    assert "RAG_PARSE_MAX_ELEMENTS" in info.value.message
    with pytest.raises(DocumentTooComplex):
        parse_document(text.encode(), "t.md", limits=ParseLimits(timeout_s=1e-9))
    # Deep quotes and lists are capped by markdown-it itself; emphasis is never parsed beyond headings.
    assert parse_document(b">" * 50_000 + b" x\n", "q.md").text
    assert parse_document(b"*a* " * 100_000 + b"\n# Title *em*\n\nbody", "e.md").title == "Title em"


# ---------------------------------------------------------------------- ids and file names


def test_ids_and_file_names_are_limited_in_bytes_up_front() -> None:
    Document(id="é" * (MAX_ID_BYTES // 2), text="x")
    for bad in ("語" * 171, "é" * 200 + "語" * 40):  # within 256 characters, over 512 bytes
        with pytest.raises(ValidationError, match=f"bytes in UTF-8; the limit is {MAX_ID_BYTES}"):
            Document(id=bad, text="x")
        with pytest.raises(ValidationError, match="the limit is"):
            DeleteDocumentRequest(action="delete_document", doc_id=bad)
        with pytest.raises(ValidationError, match="the limit is"):
            IngestObjectRequest(action="ingest_object", key="k", doc_id=bad)
    with pytest.raises(ValidationError, match="the file name is 1500 bytes in UTF-8; the limit is 1024"):
        UploadUrlRequest(action="upload_url", filename="語" * 500, size=1)
    UploadUrlRequest(action="upload_url", filename="é" * 500 + ".md", size=1)


def test_long_non_ascii_paths_get_ids_within_both_limits() -> None:
    long_id = doc_id_for("文档/" + "語" * 300 + ".md")
    assert len(long_id) <= MAX_ID_CHARS and len(long_id.encode()) <= MAX_ID_BYTES
    Document(id=long_id, text="x")
    assert doc_id_for("文档/" + "語" * 300 + ".md") == long_id != doc_id_for("文档/" + "語" * 301 + ".md")


def test_stored_file_names_fit_255_bytes_and_keep_the_extension() -> None:
    name = safe_filename("ü" * 200 + ".pdf")
    assert len(name.encode()) <= 200 and name.endswith(".pdf") and name.startswith("üü")
    assert safe_filename("a" * 199 + ".md") == "a" * 197 + ".md"
    assert safe_filename("short.txt") == "short.txt"


def _all_files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_the_store_holds_long_non_ascii_and_dot_ids(tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path)
    objects = TenantObjects(store, "default")
    ids = ["é" * 256, "語" * 170, "x" * 256, ".hidden", "..", ".", "plain", "a+b~c"]
    for doc_id in ids:
        objects.put_document(doc_id, {"id": doc_id, "text": doc_id})
    assert objects.document_ids() == sorted(ids)
    assert list_document_ids(str(tmp_path), lambda: None) == sorted(ids)  # what reindex rebuilds
    assert originals_prefix("..") == "originals/%2E%2E/" and originals_prefix(".x") == "originals/.x/"
    for doc_id in ids:
        assert (objects.get_document(doc_id) or {})["text"] == doc_id
        assert len((doc_name(doc_id) + ".json").encode()) <= 255
    assert all(len(os.path.basename(f).encode()) <= 255 for f in _all_files(tmp_path))
    # Names of short ids are what they always were: an existing store reads as before.
    assert (tmp_path / "plain.json").is_file() and (tmp_path / ".hidden.json").is_file()
    assert (tmp_path / "a%2Bb~c.json").is_file()
    for doc_id in ids:
        assert objects.delete_document(doc_id) is True
    assert objects.document_ids() == [] and _all_files(tmp_path) == []


def test_a_hashed_name_only_lists_the_id_it_belongs_to(tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path)
    objects = TenantObjects(store, "default")
    long_id = "é" * 200
    objects.put_document(long_id, {"id": long_id, "text": "x"})
    (name,) = [p.name for p in tmp_path.iterdir()]
    assert "+" in name
    (tmp_path / name).write_text(json.dumps({"id": "someone-else", "text": "x"}))
    assert objects.document_ids() == []


# ---------------------------------------------------------------------- nested JSON


def _message(body: str) -> WebSocketEvent:
    event = json.loads((EVENTS / "websocket_message_chat.json").read_text())
    return WebSocketEvent.model_validate({**event, "body": body, "isBase64Encoded": False})


@pytest.mark.parametrize("body", ["[" * 100_000 + "]" * 100_000, '{"a":' * 50_000 + "1" + "}" * 50_000])
def test_deeply_nested_json_is_malformed(body: str) -> None:
    assert request_id_of(body.encode()) is None
    with pytest.raises(RagError) as info:
        parse_request(_message(body))
    assert info.value.code == ErrorCode.MALFORMED_JSON
