"""The one format table (shared/formats.py), the one document-id rule (shared/doc_ids.py), and the parsers
behind them (ingestion/parsers.py): no processes, no models."""

from __future__ import annotations

import asyncio
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import get_args

import pytest
from pydantic import ValidationError

from ingestion.parsers import PARSERS, TEXT_READERS, ParsedDocument, Section, parse_document, parse_inline
from shared.client import cli
from shared.client.ws_client import content_type_for
from shared.doc_ids import MAX_ID_CHARS, doc_id_for
from shared.formats import FORMATS, FileFormat, FormatTable, UnsupportedType, find_format, format_for
from shared.protocol import Document, ErrorCode, TextFormat

# ---------------------------------------------------------------------- the format table


def test_table_picks_by_extension_then_content_type() -> None:
    assert format_for("notes.TXT").name == "text"
    assert format_for("a/b/guide.markdown").name == "markdown"
    assert format_for("report.pdf", "text/plain").name == "pdf"  # the extension wins
    assert format_for("page.htm").name == "html"
    assert format_for("no-extension", "text/markdown; charset=utf-8").name == "markdown"
    assert {".txt", ".md", ".pdf", ".html", ".htm"} <= set(FORMATS.extensions)
    for name, ctype in (("slides.pptx", None), ("archive", "application/octet-stream"), ("x.docx", "text/nope")):
        assert find_format(name, ctype) is None
        with pytest.raises(UnsupportedType) as info:
            format_for(name, ctype)
        assert info.value.code == ErrorCode.UNSUPPORTED_TYPE and ".pdf" in info.value.message


def test_what_travels_inline_and_what_is_uploaded() -> None:
    inline = {f.name for f in FORMATS if f.inline}
    assert inline == {"text", "markdown"} == set(get_args(TextFormat))
    assert {f.name: f.content_type for f in FORMATS} == {
        "text": "text/plain",
        "markdown": "text/markdown",
        "pdf": "application/pdf",
        "html": "text/html",
    }
    # The client uploads with the table's content type; anything else is only a guess.
    assert content_type_for("Guide.MD") == "text/markdown" and content_type_for("x.htm") == "text/html"
    assert content_type_for("photo.png") == "image/png"


def test_every_format_has_a_parser() -> None:
    assert set(PARSERS) == set(FORMATS.names)
    assert set(TEXT_READERS) == {f.name for f in FORMATS if f.inline}


def test_a_new_format_plugs_in() -> None:
    table = FormatTable(FORMATS)
    csv = table.register(FileFormat("csv", (".csv",), ("text/csv",), inline=True, titled=False))
    assert table.lookup("data.CSV") is csv and table.lookup("export", "text/csv") is csv
    assert table.lookup("notes.md").name == "markdown"
    assert find_format("data.csv") is None  # the shared table is untouched


# ---------------------------------------------------------------------- one parser, inline or uploaded

MARKDOWN = """---
title: Field guide
date: 2025-01-31
---
Preamble.

# Volcanoes

## Setup

Boots first.

```
# a comment, not a heading
```
"""


def test_inline_markdown_is_parsed_as_the_file_is() -> None:
    as_file = parse_document(MARKDOWN.encode(), "guide.md")
    inline = parse_inline(MARKDOWN, "markdown")
    assert inline == as_file
    assert (inline.title, inline.date, inline.format) == ("Field guide", "2025-01-31", "markdown")
    assert [s.metadata for s in inline.sections] == [{}, {"heading": "Volcanoes > Setup"}]
    # CRLF text (as a client may send it) gives the same sections.
    assert parse_inline(MARKDOWN.replace("\n", "\r\n"), "markdown") == as_file
    assert parse_inline("  plain  \n", "text") == ParsedDocument(None, [Section("plain")], "text")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("# Volcanoes\n\nText.", "Volcanoes"),
        ("Intro line\n\n## Second level ##\n\nText.", None),  # only a level-1 heading is a title
        ("# **Bold** and [a link](http://x) with `code_span`\n\nText.", "Bold and a link with code_span"),
        ("#hashtag is not a heading\n\n# Real\n\nText.", "Real"),
        ("```\n# inside a fence\n```\n\n# After the fence\n\nText.", "After the fence"),
        ("Setext Title\n============\n\nBody", "Setext Title"),
        ("---\ntitle: 'From front matter'\ndate: 2025-01-31\n---\n# Heading\n\nText.", "From front matter"),
        ("Just prose.\n", None),
    ],
)
def test_markdown_title(text: str, expected: str | None) -> None:
    assert parse_inline(text, "markdown").title == expected


# ---------------------------------------------------------------------- the document-id rule


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("volcanoes.md", "volcanoes.md"),
        ("a/b/c.txt", "a:b:c.txt"),
        (PurePosixPath("x/notes.md"), "x:notes.md"),
        (PureWindowsPath(r"a\b.md"), "a:b.md"),
        ("field notes/Hot springs & geysers.md", "field notes:Hot springs & geysers.md"),
        ("d/C# notes.md", "d:C%23 notes.md"),
        ("d/back\\slash.txt", "d:back%5Cslash.txt"),
        (" padded .txt ", "%20padded .txt%20"),
        ("\u3000wide", "%E3%80%80wide"),
        ("line\nbreak.md", "line%0Abreak.md"),
        ("a:b.md", "a%3Ab.md"),  # not the id of a/b.md
        ("50%.txt", "50%25.txt"),  # not the id of a file named 50%25.txt
        ("..", "%2E%2E"),
        ("x/../y", "x:..:y"),
        ("caf\u00e9.md", "caf\u00e9.md"),
    ],
)
def test_doc_id_for(path: str | PurePosixPath, expected: str) -> None:
    doc_id = doc_id_for(path)
    assert doc_id == expected
    Document(id=doc_id, text="x")  # always a valid document id


def test_doc_ids_are_distinct_and_valid_for_awkward_paths() -> None:
    paths = ["a/b.md", "a:b.md", "a%3Ab.md", "a_b.md", "a/b.md ", "a/ b.md", " ", "  ", "#", "%", ":", "/x", "x/"]
    paths += ["d/" * 200 + "deep.md", "d/" * 200 + "deeper.md", "%" * 300, "\t" * 300]
    ids = [doc_id_for(p) for p in paths]
    assert len(set(ids)) == len(ids)
    for doc_id in ids:
        assert len(doc_id) <= MAX_ID_CHARS
        Document(id=doc_id, text="x")
    long_id = doc_id_for("d/" * 200 + "deep.md")
    assert long_id.startswith("d:d:d:") and long_id[-17] == "~"
    with pytest.raises(ValueError):
        doc_id_for("")


def test_the_cli_names_files_by_the_shared_rule(tmp_path: Path) -> None:
    """The id the CLI gives a file under a folder is the id the ingestion service gives the same path
    under inbox/ (both call shared.doc_ids.doc_id_for)."""
    (tmp_path / "field notes").mkdir()
    (tmp_path / "field notes" / "C# tips.md").write_text("# Tips\n\nText.")
    (tmp_path / "a:b.txt").write_text("colon")
    found, outcomes = cli.discover([tmp_path])
    assert outcomes == []
    assert sorted(c.doc_id for c in found) == ["a%3Ab.txt", "field notes:C%23 tips.md"]


# ---------------------------------------------------------------------- what the CLI sends


def _batchable(path: Path) -> cli.Batchable:
    (candidate,), _ = cli.discover([path])
    loaded = asyncio.run(cli.load_batchable(candidate))
    assert loaded is not None
    return loaded


def test_the_cli_sends_markdown_with_its_format_and_a_fallback_title(tmp_path: Path) -> None:
    (tmp_path / "guide.md").write_bytes(b"\xef\xbb\xbf" + MARKDOWN.replace("\n", "\r\n").encode())
    (tmp_path / "notes.txt").write_text("# not a heading in a text file\n")
    md = _batchable(tmp_path / "guide.md").document
    assert (md.id, md.format, md.title) == ("guide.md", "markdown", "guide")  # the server's parser finds the title
    assert not md.text.startswith("\ufeff") and "\r" not in md.text and md.text.startswith("---\ntitle: Field guide")
    txt = _batchable(tmp_path / "notes.txt").document
    assert (txt.id, txt.format, txt.title) == ("notes.txt", "text", "notes")
    with pytest.raises(ValueError):
        cli.build_document(tmp_path / "x.pdf", tmp_path, "text", format_for("x.pdf"))


def test_the_protocol_refuses_formats_that_are_uploaded() -> None:
    with pytest.raises(ValidationError):
        Document.model_validate({"id": "x", "text": "<p>x</p>", "format": "html"})
    assert Document(id="x", text="t").format is None
