"""The document id of a file, defined once: used by the CLI (a file under the folder it was given) and by
the ingestion service (a file under the bucket's ``inbox/``, an upload's file name).

The id is the file's path relative to its root with ``/`` -> ``:``; within each path component the
characters a document id may not hold (``#``, ``\\``, control characters) and the two this rule gives a
meaning (``%`` and ``:``) are percent-encoded (UTF-8), as is whitespace at either end of the id. So every
path gets an id the protocol accepts (``Document.id``), and two paths never share one. An id longer than
the protocol allows (in characters or in UTF-8 bytes) keeps its head and ends in ``~`` plus 16 hex digits
of the full id's SHA-256.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import PurePath
from urllib.parse import quote

from shared.protocol import MAX_ID_BYTES, MAX_ID_CHARS  # Document.id's limits

SEPARATOR = ":"
_ENCODE = re.compile(r"[%:#/\\\x00-\x1f\x7f]")
_HASH_CHARS = 16


def _pct(text: str) -> str:
    return quote(text, safe="")


def doc_id_for(path: str | PurePath) -> str:
    """The document id of a relative path: a ``PurePath`` (any flavour) or a ``/``-separated string.

    ``"notes/C# tips.md"`` -> ``"notes:C%23 tips.md"``; ``"a:b.md"`` -> ``"a%3Ab.md"``. Raises ValueError
    for an empty path."""
    parts = path.parts if isinstance(path, PurePath) else path.split("/")
    if not parts or not any(parts):
        raise ValueError("a document id needs a non-empty path")
    doc_id = SEPARATOR.join(_ENCODE.sub(lambda m: _pct(m.group()), part) for part in parts)
    core = doc_id.strip()
    lead = doc_id[: len(doc_id) - len(doc_id.lstrip())]
    trail = doc_id[len(doc_id.rstrip()) :] if core else ""
    doc_id = _pct(lead) + core + _pct(trail)
    if doc_id in (".", ".."):  # a name object stores give a meaning to
        doc_id = doc_id.replace(".", "%2E")
    if len(doc_id) > MAX_ID_CHARS or len(doc_id.encode("utf-8")) > MAX_ID_BYTES:
        digest = hashlib.sha256(doc_id.encode("utf-8")).hexdigest()[:_HASH_CHARS]
        head = doc_id[: MAX_ID_CHARS - _HASH_CHARS - 1]
        # Within the byte limit too, cut at a character (a non-ASCII character is 2 to 4 bytes).
        head = head.encode("utf-8")[: MAX_ID_BYTES - _HASH_CHARS - 1].decode("utf-8", errors="ignore")
        if "%" in head[-2:]:  # do not cut an escape in half
            head = head[: head.rindex("%")]
        doc_id = f"{head.rstrip()}~{digest}"
    return doc_id
