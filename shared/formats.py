"""The file formats the stack reads, defined once: what a file is, and how its bytes travel.

A file's format is picked by its extension, else by its content type. Each format says whether its text
may be sent inline (read by the client and sent in an ``ingest``/``ingest_batch`` message with
``document.format`` set, so the server parses it with the same parser as an upload) or whether the file
must be uploaded (``upload_url``, PUT, ``ingest_object``: the server reads the bytes), and the content
type to upload it with. The parsers themselves are the ingestion service's (``ingestion/parsers.py``,
one per format name here); the CLI, the client library and ``upload_url`` validation use this table.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import get_args

from shared.errors import RagError
from shared.protocol import ErrorCode, TextFormat


class UnsupportedType(RagError):
    code = ErrorCode.UNSUPPORTED_TYPE


@dataclass(frozen=True)
class FileFormat:
    name: str
    extensions: tuple[str, ...]  # lower case, with the dot
    content_types: tuple[str, ...]  # the first is the one to upload with
    # True: a client may read the file as UTF-8 text and send it in a message with ``format=name``;
    # False: the file is uploaded and the server reads its bytes (a PDF; HTML, whose charset is in the bytes).
    inline: bool
    # True: the parser may find the document's title in the file (front matter, a heading, metadata).
    titled: bool

    @property
    def content_type(self) -> str:
        """The Content-Type to upload a file of this format with."""
        return self.content_types[0]


class FormatTable:
    """Formats by extension and by content type; a format plugs in with one ``register`` call (and a
    parser of the same name in ingestion/parsers.py)."""

    def __init__(self, formats: Iterable[FileFormat] = ()) -> None:
        self._by_ext: dict[str, FileFormat] = {}
        self._by_type: dict[str, FileFormat] = {}
        self._by_name: dict[str, FileFormat] = {}
        for fmt in formats:
            self.register(fmt)

    def register(self, fmt: FileFormat) -> FileFormat:
        if not fmt.content_types:
            raise ValueError(f"format {fmt.name!r} needs a content type to upload with")
        self._by_name[fmt.name] = fmt
        for ext in fmt.extensions:
            self._by_ext[ext.lower()] = fmt
        for ct in fmt.content_types:
            self._by_type[ct.lower()] = fmt
        return fmt

    def __iter__(self) -> Iterator[FileFormat]:
        return iter(self._by_name.values())

    @property
    def names(self) -> list[str]:
        return list(self._by_name)

    @property
    def extensions(self) -> list[str]:
        return sorted(self._by_ext)

    def named(self, name: str) -> FileFormat:
        return self._by_name[name]

    def find(self, filename: str, content_type: str | None = None) -> FileFormat | None:
        """The format of a file: by extension; by content type when the extension is unknown; else None."""
        ext = PurePosixPath(filename.replace("\\", "/")).suffix.lower()
        if ext in self._by_ext:
            return self._by_ext[ext]
        return self._by_type.get((content_type or "").split(";")[0].strip().lower())

    def lookup(self, filename: str, content_type: str | None = None) -> FileFormat:
        """``find``, or UnsupportedType naming the extensions that are supported."""
        fmt = self.find(filename, content_type)
        if fmt is None:
            ext = PurePosixPath(filename.replace("\\", "/")).suffix.lower()
            shown = ext or "(no extension)"
            raise UnsupportedType(
                f"unsupported file type {shown[:32]!r}; supported: {', '.join(self.extensions)}",
            )
        return fmt


FORMATS = FormatTable(
    [
        FileFormat("text", (".txt", ".text"), ("text/plain",), inline=True, titled=False),
        FileFormat("markdown", (".md", ".markdown"), ("text/markdown", "text/x-markdown"), inline=True, titled=True),
        FileFormat("pdf", (".pdf",), ("application/pdf",), inline=False, titled=True),
        FileFormat("html", (".html", ".htm"), ("text/html", "application/xhtml+xml"), inline=False, titled=True),
    ]
)

# The protocol's Document.format names exactly the formats whose text may be sent inline.
if set(get_args(TextFormat)) != {f.name for f in FORMATS if f.inline}:
    raise RuntimeError("shared.protocol.TextFormat must list the inline formats of shared.formats.FORMATS")


def format_for(filename: str, content_type: str | None = None) -> FileFormat:
    """The format of a file (by extension, else content type); raises UnsupportedType."""
    return FORMATS.lookup(filename, content_type)


def find_format(filename: str, content_type: str | None = None) -> FileFormat | None:
    return FORMATS.find(filename, content_type)
