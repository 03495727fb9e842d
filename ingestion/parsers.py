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
  hidden elements), one section per ``<h1>``-``<h6>`` like Markdown; the title is ``<title>``. Read by a
  streaming visitor (the standard library's ``html.parser``): no tree is built and nothing recurses, and
  end tags HTML lets a page leave out (``<p>``, ``<li>``, ``<td>`` ...) are implied as a browser does.

Every parser is bounded (``ParseLimits``, from the ingestion settings): the text it extracts (the document
size limit), the HTML nesting depth and element count (Markdown: blocks), and the time it may take. Over
a limit -> ``document_too_complex`` (or ``document_too_large`` for the text), an error about the file
itself: retrying cannot help, so nothing retries it. Errors are typed (``RagError`` subclasses with the
protocol's codes) and safe to show a client.
"""

from __future__ import annotations

import io
import logging
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Any

from shared.errors import DocumentTooLarge, EmptyDocument, RagError
from shared.formats import FORMATS, UnsupportedType, format_for
from shared.protocol import ErrorCode, TextFormat

log = logging.getLogger(__name__)

__all__ = [
    "PARSERS",
    "TEXT_READERS",
    "CorruptDocument",
    "DocumentTooComplex",
    "NoTextLayer",
    "ParseLimits",
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


class DocumentTooComplex(RagError):
    """The file is over a parser limit (nesting, elements, time): a property of the file, never retried."""

    code = ErrorCode.DOCUMENT_TOO_COMPLEX


# ---------------------------------------------------------------------- limits


@dataclass(frozen=True)
class ParseLimits:
    """What one parse may cost. The defaults are the ingestion settings' (RAG_PARSE_*)."""

    max_depth: int = 512  # HTML elements open inside each other
    max_elements: int = 1_000_000  # HTML elements; Markdown blocks
    max_chars: int = 10 * 1024 * 1024  # text extracted (the document size limit)
    timeout_s: float = 60.0  # wall-clock time of one parse


class _Budget:
    """The parse's deadline, looked at every so often by the parsers that can stop half way."""

    def __init__(self, limits: ParseLimits, what: str) -> None:
        self.timeout_s = limits.timeout_s
        self.what = what
        self.deadline = time.monotonic() + limits.timeout_s

    def check(self) -> None:
        if time.monotonic() > self.deadline:
            raise DocumentTooComplex(
                f"reading the {self.what} took more than {self.timeout_s:g} s, the limit (RAG_PARSE_TIMEOUT_S)"
            )


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


Parse = Callable[[bytes, ParseLimits], ParsedDocument]
ReadText = Callable[[str, ParseLimits], ParsedDocument]


def _non_empty(parsed: ParsedDocument) -> ParsedDocument:
    sections = [s for s in parsed.sections if s.text.strip()]
    if not sections:
        raise EmptyDocument(f"the {parsed.format} file has no text")
    return ParsedDocument(title=parsed.title, sections=sections, format=parsed.format, date=parsed.date)


def parse_document(
    data: bytes, filename: str, content_type: str | None = None, *, limits: ParseLimits | None = None
) -> ParsedDocument:
    """Parse a file; raises UnsupportedType, CorruptDocument, NoTextLayer, EmptyDocument, DocumentTooLarge
    or DocumentTooComplex."""
    fmt = format_for(filename, content_type)
    return _non_empty(_bounded(lambda: PARSERS[fmt.name](data, limits or ParseLimits()), fmt.name))


def parse_inline(text: str, fmt: TextFormat, *, limits: ParseLimits | None = None) -> ParsedDocument:
    """Parse the text of a document sent in a message with ``format``: the same sections, title and date
    as a file of that format; raises EmptyDocument (or DocumentTooComplex)."""
    return _non_empty(_bounded(lambda: TEXT_READERS[fmt](text, limits or ParseLimits()), fmt))


def _bounded(parse: Callable[[], ParsedDocument], what: str) -> ParsedDocument:
    """A parser's result; a RecursionError (a parser library recursing on a deeply nested file) is the
    file's fault, so it becomes DocumentTooComplex rather than a (retryable) internal error."""
    try:
        return parse()
    except RecursionError:
        log.info("%s parser recursed too deep", what)
        raise DocumentTooComplex(f"the {what} file is nested too deeply to read") from None


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


def read_text(text: str, limits: ParseLimits | None = None) -> ParsedDocument:
    return ParsedDocument(title=None, sections=[Section(text.strip())], format="text")


def parse_text(data: bytes, limits: ParseLimits | None = None) -> ParsedDocument:
    return read_text(decode_text(data), limits)


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


def parse_markdown(data: bytes, limits: ParseLimits | None = None) -> ParsedDocument:
    return read_markdown(decode_text(data), limits)


def _markdown_headings(text: str, limits: ParseLimits) -> list[tuple[int, int, int, str]]:
    """The top-level headings of a Markdown text: (line, end line, level, text).

    markdown-it-py's block parser finds them (so a ``#`` in a code block is not one), with two bounds: only
    the headings' own text is parsed inline (the rest of the text never becomes inline tokens), and a rule
    run before each block counts the blocks, looks at the clock and keeps only the headings of the blocks
    already read (so memory does not grow with the number of blocks). markdown-it-py caps the nesting
    itself (its ``maxNesting``: deeper quotes and lists are read as text)."""
    from markdown_it import MarkdownIt

    md = MarkdownIt("commonmark").enable("table").disable("inline")
    inline_md = MarkdownIt("commonmark")  # for the headings' text only
    budget = _Budget(limits, "Markdown")
    headings: list[tuple[int, int, int, str]] = []
    blocks = 0

    def harvest(tokens: list[Any]) -> None:
        for i, tok in enumerate(tokens):
            if tok.type == "heading_open" and tok.level == 0 and tok.map:
                inline = tokens[i + 1].content if i + 1 < len(tokens) else ""
                parsed = inline_md.parseInline(inline)
                heading = _inline_text(parsed[0]) if parsed else ""
                headings.append((tok.map[0], tok.map[1], int(tok.tag[1]), heading))

    def watch(state: Any, start_line: int, end_line: int, silent: bool) -> bool:
        nonlocal blocks
        blocks += 1
        if blocks > limits.max_elements:
            raise DocumentTooComplex(
                f"the Markdown has more than {limits.max_elements} blocks, the limit (RAG_PARSE_MAX_ELEMENTS)"
            )
        if blocks % _CLOCK_EVERY == 0:
            budget.check()
        if state.level == 0 and state.tokens:  # a top-level block starts: every earlier one is complete
            harvest(state.tokens)
            state.tokens.clear()
        return False  # never consumes anything: the usual rules read the block

    md.block.ruler.before(md.block.ruler.__rules__[0].name, "localrag_watch", watch)
    harvest(md.parse(text))
    return headings


def read_markdown(text: str, limits: ParseLimits | None = None) -> ParsedDocument:
    limits = limits or ParseLimits()
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
    # Top-level headings only (a heading inside a list or a quote is content).
    headings = _markdown_headings(text, limits)
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


def parse_pdf(data: bytes, limits: ParseLimits | None = None) -> ParsedDocument:
    from pypdf import PdfReader

    limits = limits or ParseLimits()
    budget = _Budget(limits, "PDF")

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
    chars = 0
    for index, page in enumerate(pages):
        budget.check()
        try:
            text = _tidy(page.extract_text() or "")
        except RecursionError:
            raise DocumentTooComplex(f"page {index + 1} of the PDF is nested too deeply to read") from None
        except Exception:
            log.info("PDF page %d unreadable", index + 1, exc_info=True)
            failed += 1
            continue
        if not text:
            continue
        chars += len(text)
        if chars > limits.max_chars:
            raise DocumentTooLarge(f"the PDF's text is over {limits.max_chars} characters, the limit")
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
# Elements that never have content or an end tag.
_HTML_VOID = frozenset(
    [
        "area",
        "base",
        "br",
        "col",
        "embed",
        "hr",
        "img",
        "input",
        "keygen",
        "link",
        "meta",
        "param",
        "source",
        "track",
        "wbr",
        "basefont",
        "bgsound",
        "frame",
    ]
)
# The elements a <head> holds: any other start tag (or <body>) means the head has ended.
_HTML_HEAD_CONTENT = frozenset(["title", "meta", "link", "style", "script", "noscript", "base", "template"])
# HTML's "default scope" boundaries: an implied end tag never reaches past these.
_HTML_SCOPE = frozenset(["applet", "caption", "html", "table", "td", "th", "marquee", "object", "template", "button"])
# Start tags that close an open <p> (HTML's "close a p element in button scope").
_HTML_CLOSES_P = frozenset(
    [
        "address",
        "article",
        "aside",
        "blockquote",
        "center",
        "details",
        "dialog",
        "dir",
        "div",
        "dl",
        "fieldset",
        "figcaption",
        "figure",
        "footer",
        "form",
        "h1",
        "h2",
        "h3",
        "h4",
        "h5",
        "h6",
        "header",
        "hgroup",
        "hr",
        "li",
        "dd",
        "dt",
        "main",
        "menu",
        "nav",
        "ol",
        "p",
        "pre",
        "section",
        "summary",
        "table",
        "ul",
    ]
)
# Elements whose end tag may be left out: (the group's members, the start tags that close an open member,
# the elements an implied end tag does not reach past). So a page of unclosed <p>, <li> or <td> stays flat.
_HTML_IMPLIED: tuple[tuple[frozenset[str], frozenset[str], frozenset[str]], ...] = (
    (frozenset({"p"}), _HTML_CLOSES_P, _HTML_SCOPE),
    (frozenset({"li"}), frozenset({"li"}), _HTML_SCOPE | {"ul", "ol"}),
    (frozenset({"dt", "dd"}), frozenset({"dt", "dd"}), _HTML_SCOPE | {"dl"}),
    (frozenset(_HTML_HEADINGS), frozenset(_HTML_HEADINGS), _HTML_SCOPE),
    (frozenset({"thead", "tbody", "tfoot"}), frozenset({"thead", "tbody", "tfoot"}), frozenset({"table", "html"})),
    (frozenset({"tr"}), frozenset({"tr", "thead", "tbody", "tfoot"}), frozenset({"table", "html"})),
    (frozenset({"td", "th"}), frozenset({"td", "th", "tr", "thead", "tbody", "tfoot"}), frozenset({"table", "html"})),
    (frozenset({"option"}), frozenset({"option", "optgroup"}), frozenset({"select", "datalist", "html"})),
)
_NO_GROUP: tuple[int | None, ...] = (None,) * len(_HTML_IMPLIED)
# Per element name: the groups its start tag closes an open member of; and, for the names that are a
# group's member or boundary, its role in each group (1 member, 0 boundary, -1 neither).
_HTML_CLOSES = {
    name: tuple(g for g, (_, closers, _) in enumerate(_HTML_IMPLIED) if name in closers)
    for name in frozenset().union(*(closers for _, closers, _ in _HTML_IMPLIED))
}
_HTML_ROLES = {
    name: tuple(1 if name in members else 0 if name in scope else -1 for members, _, scope in _HTML_IMPLIED)
    for name in frozenset().union(*(members | scope for members, _, scope in _HTML_IMPLIED))
}
_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([A-Za-z0-9._:-]+)""", re.I)
# How many events between two looks at the clock.
_CLOCK_EVERY = 1024


def _html_hidden(attrs: dict[str, str | None]) -> bool:
    if "hidden" in attrs or (attrs.get("aria-hidden") or "").lower() == "true":
        return True
    if (attrs.get("role") or "").lower() in _HTML_DROP_ROLES:
        return True
    return bool(_HIDDEN_STYLE.search(attrs.get("style") or ""))


def decode_html(data: bytes) -> str:
    """The text of an HTML file: by its byte-order mark, else the charset its <meta> declares (in the first
    4 KB, as browsers look), else UTF-8, else the best guess of bs4's UnicodeDammit."""
    for bom, encoding in ((b"\xef\xbb\xbf", "utf-8-sig"), (b"\xff\xfe", "utf-16"), (b"\xfe\xff", "utf-16")):
        if data.startswith(bom):
            return data.decode(encoding, errors="replace")
    declared = _CHARSET.search(data[:4096])
    if declared is not None:
        try:
            return data.decode(declared.group(1).decode("ascii"), errors="replace")
        except LookupError:
            pass  # an unknown charset: guess
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        from bs4.dammit import UnicodeDammit

        guessed = UnicodeDammit(data, is_html=True).unicode_markup
        return guessed if guessed is not None else data.decode("windows-1252", errors="replace")


@dataclass
class _Open:
    """An open element: what its end does, and for each group of _HTML_IMPLIED the stack index of the
    nearest open member an implied end tag may close (None: none in scope)."""

    name: str
    dropped: bool  # this element (and so all it holds) is not content
    block: bool
    groups: tuple[int | None, ...]


class _HtmlText(HTMLParser):
    """A streaming visitor: visible text and headings as ``Section``s, without building a tree (nothing
    recurses; memory is the text kept plus the open elements, at most ``limits.max_depth``)."""

    def __init__(self, limits: ParseLimits, budget: _Budget) -> None:
        super().__init__(convert_charrefs=True)
        self.limits = limits
        self.budget = budget
        self.stack: list[_Open] = []
        self.open_counts: dict[str, int] = {}
        self.dropped = 0  # open elements that are not content
        self.articles = 0  # open <article>/<main> that are content
        self.pre = 0
        self.elements = 0
        self.events = 0
        self.chars = 0
        self.title: list[str] | None = None  # the first <title>'s text, while it is read
        self.title_text = ""
        self.heading: list[str] | None = None  # the open heading's text
        self.heading_at = -1  # its index in the stack
        self.sections: list[Section] = []
        self.path = _HeadingPath()
        self.current: dict[str, Any] = {}
        self.first_h1: str | None = None
        self.buf: list[str] = []
        self.breaks = 0  # line breaks owed before the next text (block edges: 2, <br>: 1 more)

    # -- text

    def _text(self, text: str) -> None:
        if self.heading is not None:
            self.heading.append(text)
            return
        if self.breaks:
            self.buf.append("\n" * self.breaks)
            self.breaks = 0
        self.buf.append(text)
        self.chars += len(text)
        if self.chars > self.limits.max_chars:
            raise DocumentTooLarge(
                f"the HTML's text is over {self.limits.max_chars} characters; the limit is {self.limits.max_chars}"
            )
        if len(self.buf) > 8192:
            self.buf[:] = ["".join(self.buf)]

    def _block_edge(self) -> None:
        if self.heading is not None:
            self.heading.append(" ")
        elif self.buf:
            self.breaks = max(self.breaks, 2)

    def flush(self) -> None:
        text = _tidy("".join(self.buf))
        if text:
            self.sections.append(Section(text, dict(self.current)))
        self.buf.clear()
        self.breaks = 0

    def handle_data(self, data: str) -> None:
        self._tick()
        if self.title is not None:
            self.title.append(data)
        if self.dropped:
            return
        self._text(data if self.pre else _HTML_WS.sub(" ", data))

    # -- elements

    def _tick(self) -> None:
        self.events += 1
        if self.events % _CLOCK_EVERY == 0:
            self.budget.check()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._tick()
        self.elements += 1
        name = tag.lower()
        if self.stack and self.stack[-1].name == "head" and name not in _HTML_HEAD_CONTENT:
            self._pop_to(len(self.stack) - 1)  # the head ended where the body's content starts
        for g in _HTML_CLOSES.get(name, ()):
            at = self.stack[-1].groups[g] if self.stack else None
            if at is not None:
                self._pop_to(at)
        if name == "title" and self.title is None and not self.title_text:
            self.title = []
        if name in _HTML_VOID:
            if name == "br" and not self.dropped:
                if self.heading is not None:
                    self.heading.append(" ")
                elif self.buf:
                    self.breaks += 1
            elif name == "hr" and not self.dropped:
                self._block_edge()
            return
        self._push(name, attrs)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        # <br/>, <div/>: an element with nothing in it.
        self.handle_starttag(tag, attrs)
        if tag.lower() not in _HTML_VOID:
            self.handle_endtag(tag)

    def handle_endtag(self, tag: str) -> None:
        self._tick()
        name = tag.lower()
        if name == "br":  # </br> is read as <br>
            self.handle_starttag(name, [])
            return
        if not self.open_counts.get(name):
            return  # nothing to close: a stray end tag
        at = len(self.stack) - 1
        while self.stack[at].name != name:
            at -= 1
        self._pop_to(at)

    def _push(self, name: str, attrs: list[tuple[str, str | None]]) -> None:
        if len(self.stack) >= self.limits.max_depth:
            raise DocumentTooComplex(
                f"the HTML nests elements more than {self.limits.max_depth} deep; the limit is {self.limits.max_depth}"
            )
        if self.elements > self.limits.max_elements:
            raise DocumentTooComplex(f"the HTML has more than {self.limits.max_elements} elements, the limit")
        index = len(self.stack)
        groups = self.stack[-1].groups if self.stack else _NO_GROUP
        roles = _HTML_ROLES.get(name)
        if roles is not None:
            groups = tuple(index if r == 1 else None if r == 0 else at for r, at in zip(roles, groups, strict=True))
        dropped = (
            name in _HTML_DROP
            or name == "title"
            or (name == "header" and not self.articles)  # the site's banner; an article's own header is content
            or (bool(attrs) and _html_hidden(dict(attrs)))
        )
        entry = _Open(name, dropped, name in _HTML_BLOCKS, groups)
        self.stack.append(entry)
        self.open_counts[name] = self.open_counts.get(name, 0) + 1
        if dropped:
            self.dropped += 1
            return
        if self.dropped:
            return
        if name in ("article", "main"):
            self.articles += 1
        elif name == "pre":
            self.pre += 1
        if name in _HTML_HEADINGS and self.heading is None:
            self.heading, self.heading_at = [], index
        elif entry.block:
            self._block_edge()

    def _pop_to(self, index: int) -> None:
        """Close the open elements from the innermost down to (and including) ``stack[index]``."""
        while len(self.stack) > index:
            entry = self.stack.pop()
            self.open_counts[entry.name] -= 1
            if entry.name == "title" and self.title is not None:
                self.title_text = " ".join("".join(self.title).split())
                self.title = None
            if entry.dropped:
                self.dropped -= 1
                continue
            if self.dropped:
                continue
            if entry.name in ("article", "main"):
                self.articles -= 1
            elif entry.name == "pre":
                self.pre -= 1
            if len(self.stack) == self.heading_at and self.heading is not None:
                self._end_heading(entry.name)
            elif entry.block:
                self._block_edge()
            elif entry.name in ("td", "th"):
                self._text(" ")

    def _end_heading(self, name: str) -> None:
        heading = " ".join("".join(self.heading or ()).split())
        self.heading = None
        if not heading:
            return  # an empty heading starts no section
        self.flush()
        self.current = {"heading": self.path.enter(_HTML_HEADINGS[name], heading)}
        if self.first_h1 is None and name == "h1":
            self.first_h1 = heading
        self.buf.append(heading)
        self.chars += len(heading)
        self.breaks = 2

    def finish(self) -> ParsedDocument:
        self.close()
        self._pop_to(0)
        self.flush()
        return ParsedDocument(title=self.title_text or self.first_h1, sections=self.sections, format="html")


def parse_html(data: bytes, limits: ParseLimits | None = None) -> ParsedDocument:
    limits = limits or ParseLimits()
    budget = _Budget(limits, "HTML")
    text = decode_html(data)
    visitor = _HtmlText(limits, budget)
    try:
        visitor.feed(text)
        return visitor.finish()
    except RagError:
        raise
    except RecursionError:  # not expected (nothing here recurses), but never a retryable internal error
        raise DocumentTooComplex("the HTML is too deeply nested to read") from None
    except Exception:
        log.info("unparseable HTML", exc_info=True)
        raise CorruptDocument("the file is not readable HTML") from None


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
