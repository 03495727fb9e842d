"""Document parsers: bytes of a file (or the text of an inline document) -> sections with metadata.

What a file is (its format, by extension or content type) is decided by the one format table,
``shared.formats.FORMATS``; here each format name has its parser (``PARSERS``), and the formats whose
text may come inline in a message also have a reader of that text (``TEXT_READERS``), so a Markdown
file gets the same sections, title and date whether it was uploaded or sent in ``ingest_batch``. Every
parser returns a ``ParsedDocument``: an optional title (and date) and a list of ``Section(text,
metadata)``. The ingestion service chunks each section on its own, so a chunk never spans two sections,
and copies the section's metadata into each of its chunks:

- ``.txt``: one section, no metadata (UTF-8, or UTF-16 with a byte-order mark).
- ``.md`` / ``.markdown``: one section per heading (markdown-it-py finds them, so a ``#`` inside a code
  block is not a heading); ``heading`` is the path of headings it sits under, ``"Setup > Install"``.
  Text before the first heading is a section without a heading. A YAML front-matter ``title:`` or else
  the first ``#`` heading is the title; a front-matter ``date:`` is the date.
- ``.pdf``: one section per page (pypdf's text layer), ``page`` = 1-based page number, so chunks never
  span pages; when the PDF has an outline (bookmarks), ``heading`` is the path of the last outline entry
  that starts on or before the page. The title is the PDF's Title metadata. No text on any page ->
  ``no_text_layer`` (a scan needs OCR first); unreadable -> ``corrupt_document``.
- ``.html`` / ``.htm``: visible text only (no script, style, nav, aside, footer, page header, forms or
  hidden elements), one section per ``<h1>``-``<h6>`` like Markdown; the title is ``<title>``.

Errors are typed (``RagError`` subclasses with the protocol's codes) and safe to show a client.
"""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from shared.errors import EmptyDocument, RagError
from shared.formats import FORMATS, UnsupportedType, format_for
from shared.protocol import ErrorCode, TextFormat

log = logging.getLogger(__name__)

__all__ = [
    "PARSERS",
    "TEXT_READERS",
    "CorruptDocument",
    "NoTextLayer",
    "ParsedDocument",
    "Section",
    "UnsupportedType",
    "parse_document",
    "parse_inline",
]


# ---------------------------------------------------------------------- errors


class CorruptDocument(RagError):
    code = ErrorCode.CORRUPT_DOCUMENT


class NoTextLayer(RagError):
    code = ErrorCode.NO_TEXT_LAYER


# ---------------------------------------------------------------------- model

HEADING_SEPARATOR = " > "
MAX_DATE_CHARS = 64  # shared.protocol.Document.date's max_length


@dataclass(frozen=True)
class Section:
    """A stretch of text that chunks must not cross, with what to attach to its chunks."""

    text: str
    metadata: dict[str, Any] = field(default_factory=dict)  # "page": int (1-based), "heading": str


@dataclass(frozen=True)
class ParsedDocument:
    title: str | None
    sections: list[Section]
    format: str
    date: str | None = None

    @property
    def text(self) -> str:
        return "\n\n".join(s.text for s in self.sections)


Parse = Callable[[bytes], ParsedDocument]
ReadText = Callable[[str], ParsedDocument]


def _non_empty(parsed: ParsedDocument) -> ParsedDocument:
    sections = [s for s in parsed.sections if s.text.strip()]
    if not sections:
        raise EmptyDocument(f"the {parsed.format} file has no text")
    return ParsedDocument(title=parsed.title, sections=sections, format=parsed.format, date=parsed.date)


def parse_document(data: bytes, filename: str, content_type: str | None = None) -> ParsedDocument:
    """Parse a file; raises UnsupportedType, CorruptDocument, NoTextLayer or EmptyDocument."""
    fmt = format_for(filename, content_type)
    return _non_empty(PARSERS[fmt.name](data))


def parse_inline(text: str, fmt: TextFormat) -> ParsedDocument:
    """Parse the text of a document sent in a message with ``format``: the same sections, title and date
    as a file of that format; raises EmptyDocument."""
    return _non_empty(TEXT_READERS[fmt](text))


# ---------------------------------------------------------------------- helpers

_SPACES = re.compile(r"[ \t\f\v\u00a0\u200b]+")
_BLANK_LINES = re.compile(r"\n{3,}")


def _tidy(text: str) -> str:
    """Collapse runs of spaces, strip each line, keep at most one blank line between paragraphs."""
    lines = [_SPACES.sub(" ", line).strip() for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n")]
    return _BLANK_LINES.sub("\n\n", "\n".join(lines)).strip()


def decode_text(data: bytes) -> str:
    """UTF-8 (a BOM is dropped), or UTF-16 with a BOM. Anything else is not a text file."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            return data.decode("utf-16")
        except UnicodeDecodeError:
            raise CorruptDocument("the file is not valid UTF-16 text") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise CorruptDocument("the file is not UTF-8 text") from None
    if "\x00" in text:
        raise CorruptDocument("the file is binary, not text")
    return text


class _HeadingPath:
    """Tracks the headings above the current point: level -> text."""

    def __init__(self) -> None:
        self._stack: list[tuple[int, str]] = []

    def enter(self, level: int, text: str) -> str:
        while self._stack and self._stack[-1][0] >= level:
            self._stack.pop()
        self._stack.append((level, text))
        return HEADING_SEPARATOR.join(t for _, t in self._stack if t)


# ---------------------------------------------------------------------- text


def read_text(text: str) -> ParsedDocument:
    return ParsedDocument(title=None, sections=[Section(text.strip())], format="text")


def parse_text(data: bytes) -> ParsedDocument:
    return read_text(decode_text(data))


# ---------------------------------------------------------------------- markdown

_FRONT_MATTER = re.compile(r"\A---[ \t]*\n(.*?\n)(?:---|\.\.\.)[ \t]*(?:\n|\Z)", re.S)
_FM_TITLE = re.compile(r"^title:[ \t]*(.+?)[ \t]*$", re.M)
_FM_DATE = re.compile(r"^date:[ \t]*(.+?)[ \t]*$", re.M)


def _inline_text(token: Any) -> str:
    """Plain text of an inline token (emphasis, links and code spans reduced to their text)."""
    parts: list[str] = []
    for child in token.children or []:
        if child.type in ("text", "code_inline", "html_inline"):
            parts.append(child.content)
        elif child.type in ("softbreak", "hardbreak"):
            parts.append(" ")
        elif child.type == "image":
            parts.append(child.content)
    return " ".join("".join(parts).split())


def _fm_value(pattern: re.Pattern[str], front_matter: str) -> str | None:
    m = pattern.search(front_matter)
    return (m.group(1).strip().strip("'\"") or None) if m else None


def parse_markdown(data: bytes) -> ParsedDocument:
    return read_markdown(decode_text(data))


def read_markdown(text: str) -> ParsedDocument:
    from markdown_it import MarkdownIt

    text = text.replace("\r\n", "\n").replace("\r", "\n")
    title: str | None = None
    date: str | None = None
    # YAML front matter would otherwise parse as a rule and a setext heading.
    fm = _FRONT_MATTER.match(text)
    if fm:
        title = _fm_value(_FM_TITLE, fm.group(1))
        date = _fm_value(_FM_DATE, fm.group(1))
        if date is not None and len(date) > MAX_DATE_CHARS:
            date = None
        text = text[fm.end() :]
    lines = text.split("\n")
    tokens = MarkdownIt("commonmark").enable("table").parse(text)
    # Top-level headings only (a heading inside a list or a quote is content): (line, end line, level, text).
    headings: list[tuple[int, int, int, str]] = []
    for i, tok in enumerate(tokens):
        if tok.type == "heading_open" and tok.level == 0 and tok.map:
            heading = _inline_text(tokens[i + 1]) if i + 1 < len(tokens) else ""
            headings.append((tok.map[0], tok.map[1], int(tok.tag[1]), heading))
    sections: list[Section] = []
    first = headings[0][0] if headings else len(lines)
    preamble = "\n".join(lines[:first]).strip()
    if preamble:
        sections.append(Section(preamble))
    path = _HeadingPath()
    for n, (_start, end, level, heading) in enumerate(headings):
        heading_path = path.enter(level, heading)
        if title is None and level == 1 and heading:
            title = heading
        stop = headings[n + 1][0] if n + 1 < len(headings) else len(lines)
        body = "\n".join(lines[end:stop]).strip()
        if not body:
            continue  # a heading with nothing under it but subheadings: they carry its path
        section_text = f"{heading}\n\n{body}" if heading else body
        sections.append(Section(section_text, {"heading": heading_path} if heading_path else {}))
    return ParsedDocument(title=title, sections=sections, format="markdown", date=date)


# ---------------------------------------------------------------------- PDF


def _outline_entries(reader: Any) -> list[tuple[int, str]]:
    """(0-based page index, heading path) of each outline entry, in page order."""
    out: list[tuple[int, str]] = []

    def walk(items: Iterable[Any], parents: list[str]) -> None:
        last: str | None = None
        for item in items:
            if isinstance(item, list):
                walk(item, [*parents, last] if last else parents)
                continue
            title = " ".join(str(getattr(item, "title", "") or "").split())
            last = title
            try:
                page = reader.get_destination_page_number(item)
            except Exception:
                continue
            if page is not None and page >= 0 and title:
                out.append((page, HEADING_SEPARATOR.join([*parents, title])))

    try:
        walk(reader.outline, [])
    except Exception:
        log.info("PDF outline unreadable; pages get no heading", exc_info=True)
        return []
    out.sort(key=lambda e: e[0])  # stable: entries on one page keep their order
    return out


def parse_pdf(data: bytes) -> ParsedDocument:
    from pypdf import PdfReader

    try:
        reader = PdfReader(io.BytesIO(data), strict=False)
        if reader.is_encrypted and not reader.decrypt(""):
            raise CorruptDocument("the PDF is password-protected")
        pages = list(reader.pages)
    except RagError:
        raise
    except Exception:
        log.info("unreadable PDF", exc_info=True)
        raise CorruptDocument("the file is not a readable PDF") from None
    if not pages:
        raise CorruptDocument("the PDF has no pages")
    title: str | None = None
    try:
        meta = reader.metadata
        if meta is not None and meta.title:
            title = " ".join(str(meta.title).split()) or None
    except Exception:
        title = None
    outline = _outline_entries(reader)
    sections: list[Section] = []
    failed = 0
    for index, page in enumerate(pages):
        try:
            text = _tidy(page.extract_text() or "")
        except Exception:
            log.info("PDF page %d unreadable", index + 1, exc_info=True)
            failed += 1
            continue
        if not text:
            continue
        meta_: dict[str, Any] = {"page": index + 1}
        heading = next((h for p, h in reversed(outline) if p <= index), None)
        if heading:
            meta_["heading"] = heading
        sections.append(Section(text, meta_))
    if failed == len(pages):
        raise CorruptDocument("the PDF's pages could not be read")
    if not sections:
        raise NoTextLayer(
            f"the PDF has no text layer ({len(pages)} page(s) of images, e.g. a scan); run OCR on it first"
        )
    return ParsedDocument(title=title, sections=sections, format="pdf")


# ---------------------------------------------------------------------- HTML

# Never visible, or page furniture rather than content.
_HTML_DROP = frozenset(
    [
        "script",
        "style",
        "noscript",
        "template",
        "head",
        "nav",
        "aside",
        "footer",
        "form",
        "button",
        "select",
        "option",
        "textarea",
        "svg",
        "canvas",
        "iframe",
        "object",
        "embed",
        "audio",
        "video",
        "map",
        "dialog",
        "menu",
    ]
)
_HTML_DROP_ROLES = frozenset({"navigation", "banner", "contentinfo", "complementary", "search", "menu", "menubar"})
_HTML_BLOCKS = frozenset(
    [
        "address",
        "article",
        "blockquote",
        "body",
        "dd",
        "details",
        "div",
        "dl",
        "dt",
        "fieldset",
        "figcaption",
        "figure",
        "h1",
        "h2",
        "h3",
        "h4",
        "h5",
        "h6",
        "hr",
        "li",
        "main",
        "ol",
        "p",
        "pre",
        "section",
        "summary",
        "table",
        "tbody",
        "tfoot",
        "thead",
        "tr",
        "ul",
        "caption",
    ]
)
_HTML_HEADINGS = {f"h{i}": i for i in range(1, 7)}
_HTML_WS = re.compile(r"\s+")
_HIDDEN_STYLE = re.compile(r"display\s*:\s*none|visibility\s*:\s*hidden", re.I)


def _html_hidden(tag: Any) -> bool:
    attrs = tag.attrs or {}
    if "hidden" in attrs or str(attrs.get("aria-hidden", "")).lower() == "true":
        return True
    if str(attrs.get("role", "")).lower() in _HTML_DROP_ROLES:
        return True
    return bool(_HIDDEN_STYLE.search(str(attrs.get("style", ""))))


def parse_html(data: bytes) -> ParsedDocument:
    from bs4 import BeautifulSoup, Comment, Declaration, Doctype, NavigableString, ProcessingInstruction, Tag

    try:
        soup = BeautifulSoup(data, "html.parser")
    except Exception:
        log.info("unparseable HTML", exc_info=True)
        raise CorruptDocument("the file is not readable HTML") from None
    title_tag = soup.find("title")
    title = " ".join(title_tag.get_text(" ").split()) if title_tag is not None else ""
    skip_strings = (Comment, Declaration, Doctype, ProcessingInstruction)

    sections: list[Section] = []
    path = _HeadingPath()
    current: dict[str, Any] = {}
    buf: list[str] = []
    first_h1: str | None = None

    def flush() -> None:
        text = _tidy("".join(buf))
        if text:
            sections.append(Section(text, dict(current)))
        buf.clear()

    def in_article(tag: Any) -> bool:
        return tag.find_parent(["article", "main"]) is not None

    def walk(node: Any, pre: bool = False) -> None:
        nonlocal current, first_h1
        for child in node.children:
            if isinstance(child, NavigableString):
                if not isinstance(child, skip_strings):
                    # Outside <pre>, line breaks in the source are just spaces.
                    buf.append(str(child) if pre else _HTML_WS.sub(" ", str(child)))
                continue
            if not isinstance(child, Tag):
                continue
            name = (child.name or "").lower()
            if name in _HTML_DROP or _html_hidden(child):
                continue
            if name == "header" and not in_article(child):
                continue  # the site's banner; an article's own header is content
            if name in _HTML_HEADINGS:
                heading = " ".join(child.get_text(" ").split())
                if not heading:
                    continue
                flush()
                current = {"heading": path.enter(_HTML_HEADINGS[name], heading)}
                if first_h1 is None and name == "h1":
                    first_h1 = heading
                buf.append(heading + "\n\n")
                continue
            if name == "br":
                buf.append("\n")
                continue
            block = name in _HTML_BLOCKS
            if block:
                buf.append("\n\n")
            walk(child, pre or name == "pre")
            if block:
                buf.append("\n\n")
            elif name in ("td", "th"):
                buf.append(" ")

    walk(soup.body if soup.body is not None else soup)
    flush()
    return ParsedDocument(title=title or first_h1, sections=sections, format="html")


# ---------------------------------------------------------------------- one parser per format

PARSERS: dict[str, Parse] = {
    "text": parse_text,
    "markdown": parse_markdown,
    "pdf": parse_pdf,
    "html": parse_html,
}
# The formats whose text may come inline (FileFormat.inline; shared.protocol.TextFormat).
TEXT_READERS: dict[str, ReadText] = {
    "text": read_text,
    "markdown": read_markdown,
}
if set(PARSERS) != set(FORMATS.names) or set(TEXT_READERS) != {f.name for f in FORMATS if f.inline}:
    raise RuntimeError("ingestion.parsers needs a parser for every format of shared.formats.FORMATS")
