"""Find (and with ``--repair`` fix) drift between the raw documents and the index: ``python -m ingestion.doctor``.

    python -m ingestion.doctor              # report only; exit status 1 when drift is found
    python -m ingestion.doctor --repair     # repair what it finds, check again, report both
    python -m ingestion.doctor --json       # the report as one JSON object (for scripts)
    localrag doctor [--repair] [--json]     # the same, from the CLI

It works on the configured store (``RAG_DOCUMENTS_URI`` and ``RAG_LANCEDB_URI``, a folder or S3, with the
ingestion lambda's ``RAG_*`` settings), every tenant. The raw documents are the source of truth (ingestion
writes a raw copy before its chunks; a delete removes the chunks first), so a write cut short by a crash
(``kill -9``, a lost S3 connection) leaves one of these, each repaired the way ``python -m ingestion.reindex``
would:

``missing_chunks``    a raw copy with no chunks: re-embedded from the raw copy (its original file parsed
                      again, if it has one).
``ghost_chunks``      chunks of a document with no raw copy: deleted.
``version_mismatch``  chunks of another version than the raw copy (raw ``version`` vs chunk ``doc_version``
                      when both carry one; for data written before versions, chunk texts, numbering or
                      title that differ from what the raw copy chunks into): re-embedded from the raw copy.
``missing_original``  a raw copy whose original file is gone: re-indexed from the text it kept (the raw copy
                      then names no original).
``orphan_original``   a file under ``originals/`` no raw copy names (an ingest_object cut short, or the old
                      version's file left behind): deleted.
``stale_tmp``         a ``.tmp-*`` file in a documents folder (a write cut short): deleted.
``stale_upload``      an upload never ingested, older than the upload limit (on S3 a lifecycle rule does
                      this): deleted.

Files younger than ``--min-age`` seconds (default 3600) are left alone, since a write in progress makes
them; a document is re-checked just before it is reported. Run it on an idle stack for an exact report;
a repair is safe while the stack runs (it writes as ingestion does).

Exit status: 0 when there is no drift (or ``--repair`` fixed all of it), 1 when drift remains, 2 when the
store cannot be checked at all (e.g. an index of another embedding model: see ``ingestion.reindex``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from ingestion.parsers import Section, parse_inline
from ingestion.parsers import parse_document as parse_file
from ingestion.reindex import all_documents, index_document, indexed_tenants, remove_ghost
from shared import wiring
from shared.errors import RagError
from shared.identity import DEFAULT_TENANT
from shared.object_store import (
    ORIGINALS_PREFIX,
    STALE_UPLOAD_S,
    UPLOADS_PREFIX,
    LocalObjectStore,
    ObjectStore,
    S3ObjectStore,
    tenant_prefix,
)
from shared.protocol import Document
from shared.vector_store import EmbeddingMismatch, tenant_filter

if TYPE_CHECKING:
    from ingestion.service import IngestionService
    from ingestion.settings import Settings
    from shared.vector_store import VectorStore

log = logging.getLogger(__name__)

# The raw copy's version and the chunks' (the same value per write); data written before has neither.
RAW_VERSION_KEY = "version"
CHUNK_VERSION_COLUMN = "doc_version"
DEFAULT_MIN_AGE_S = 3600.0
TMP_PREFIX = ".tmp-"

KINDS = (
    "missing_chunks",
    "ghost_chunks",
    "version_mismatch",
    "missing_original",
    "orphan_original",
    "stale_tmp",
    "stale_upload",
)
# Repaired by indexing the document again from its raw copy.
_REINDEX = frozenset({"missing_chunks", "version_mismatch", "missing_original"})


class DoctorError(Exception):
    """The store cannot be checked at all (the message says why)."""


@dataclass
class Finding:
    kind: str
    tenant: str | None
    detail: str
    doc_id: str | None = None
    key: str | None = None  # a store key (for files)
    repaired: bool = False
    error: str | None = None

    def line(self) -> str:
        what = f"{self.tenant}/{self.doc_id}" if self.doc_id is not None else (self.key or "")
        if self.doc_id is not None and self.tenant == DEFAULT_TENANT:
            what = self.doc_id
        state = " [repaired]" if self.repaired else (f" [repair failed: {self.error}]" if self.error else "")
        return f"{self.kind:<17} {what}: {self.detail}{state}"


@dataclass
class Report:
    documents_uri: str
    lancedb_uri: str
    tenants: int = 0
    documents: int = 0
    chunks: int = 0
    findings: list[Finding] = field(default_factory=list)
    repair: bool = False
    remaining: list[Finding] = field(default_factory=list)  # after a repair: what the check found again
    seconds: float = 0.0

    @property
    def drift(self) -> int:
        return len(self.findings)

    @property
    def repaired(self) -> int:
        return sum(1 for f in self.findings if f.repaired)

    @property
    def clean(self) -> bool:
        """No drift left: none found, or repaired and not found again."""
        if not self.repair:
            return not self.findings
        return not self.remaining

    def counts(self) -> dict[str, int]:
        return {kind: sum(1 for f in self.findings if f.kind == kind) for kind in KINDS}

    def as_json(self) -> dict[str, Any]:
        return {
            "documents_uri": self.documents_uri,
            "lancedb_uri": self.lancedb_uri,
            "tenants": self.tenants,
            "documents": self.documents,
            "chunks": self.chunks,
            "drift": self.drift,
            "counts": self.counts(),
            "repair": self.repair,
            "repaired": self.repaired,
            "remaining": len(self.remaining) if self.repair else self.drift,
            "clean": self.clean,
            "findings": [asdict(f) for f in self.findings],
            "remaining_findings": [asdict(f) for f in self.remaining],
            "seconds": round(self.seconds, 3),
        }

    def text(self) -> str:
        lines = [
            f"checked {self.documents} documents ({self.chunks} chunks) of {self.tenants} tenant(s): "
            f"{self.documents_uri} vs {self.lancedb_uri}"
        ]
        if not self.findings:
            lines.append("no drift: every raw copy has its chunks, every chunk its raw copy")
            return "\n".join(lines)
        counts = ", ".join(f"{n} {kind}" for kind, n in self.counts().items() if n)
        lines.append(f"drift found: {self.drift} ({counts})")
        lines.extend("  " + f.line() for f in self.findings)
        if not self.repair:
            lines.append("run with --repair to fix it (python -m ingestion.doctor --repair / localrag doctor --repair)")
        elif self.remaining:
            lines.append(f"after repair, still {len(self.remaining)}:")
            lines.extend("  " + f.line() for f in self.remaining)
        else:
            lines.append(f"repaired {self.repaired}; checked again: no drift")
        return "\n".join(lines)


# ------------------------------------------------------------------------------------ object ages


def _ages(store: ObjectStore, prefix: str, *, with_tmp: bool = False) -> dict[str, float]:
    """Key -> age in seconds of the objects under ``prefix`` (a folder, ending in /); with ``with_tmp``,
    the ``.tmp-*`` files of a local folder too (its keys() hides them)."""
    now = time.time()
    if isinstance(store, LocalObjectStore):
        folder = store.root / prefix.rstrip("/") if prefix else store.root
        if not folder.is_dir():
            return {}
        out: dict[str, float] = {}
        for path in folder.rglob("*"):
            with contextlib.suppress(FileNotFoundError):  # removed meanwhile
                if not path.is_file():
                    continue
                if path.name.startswith(TMP_PREFIX) and not with_tmp:
                    continue
                out[path.relative_to(store.root).as_posix()] = now - path.stat().st_mtime
        return out
    if isinstance(store, S3ObjectStore):
        full = store._full(prefix)
        strip = len(store._full(""))
        found: dict[str, float] = {}
        for page in store.client.get_paginator("list_objects_v2").paginate(Bucket=store.bucket, Prefix=full):
            for obj in page.get("Contents", []):
                found[obj["Key"][strip:]] = now - obj["LastModified"].timestamp()
        return found
    return dict.fromkeys(store.keys(prefix), float("inf"))


# ------------------------------------------------------------------------------------ the checks


def _chunk_rows(store: VectorStore, tenant: str) -> dict[str, list[dict[str, Any]]]:
    """doc_id -> its chunk rows (chunk number, text, title and version if the table has one), by number."""
    table = store.chunks()
    columns = ["doc_id", "chunk", "text", "title"]
    if CHUNK_VERSION_COLUMN in table.schema.names:
        columns.append(CHUNK_VERSION_COLUMN)
    rows = table.search().where(tenant_filter(tenant)).select(columns).limit(None).to_arrow().to_pylist()
    out: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        out.setdefault(str(row["doc_id"]), []).append(row)
    for doc_rows in out.values():
        doc_rows.sort(key=lambda r: int(r["chunk"]))
    return out


def expected_chunk_texts(service: IngestionService, raw: dict[str, Any], tenant: str) -> list[str] | None:
    """The chunk texts the raw copy indexes into (as ingestion chunks it: its original file parsed again,
    else its text by its format); None when that cannot be known (the original is gone, or will not parse)."""
    doc = Document.model_validate({k: raw[k] for k in Document.model_fields if k in raw})
    limits = service.parse_limits()
    original = raw.get("original")
    try:
        if isinstance(original, dict) and isinstance(original.get("key"), str) and original.get("filename"):
            data = service.tenant_objects(tenant).read(original["key"])
            sections = parse_file(data, str(original["filename"]), limits=limits).sections
        elif doc.format is not None:
            sections = parse_inline(doc.text, doc.format, limits=limits).sections
        else:
            sections = [Section(doc.text)]
    except (RagError, ValueError):
        return None
    return [c.text for s in sections for c in service.chunker.split(s.text)]


def version_drift(
    service: IngestionService, raw: dict[str, Any], rows: list[dict[str, Any]], tenant: str
) -> str | None:
    """Why the chunks are not the raw copy's version, or None when they are."""
    numbers = [int(r["chunk"]) for r in rows]
    if numbers != list(range(len(rows))):
        dup = len(numbers) - len(set(numbers))
        return f"chunks numbered {numbers[:8]}{'...' if len(numbers) > 8 else ''} ({dup} duplicated)"
    version = raw.get(RAW_VERSION_KEY)
    versions = {r.get(CHUNK_VERSION_COLUMN) for r in rows}
    if version is not None and None not in versions:
        if versions != {version}:
            return f"raw copy is version {version}, chunks are {sorted(str(v) for v in versions)}"
        return None
    title = str(raw.get("title") or "")
    if any(str(r.get("title") or "") != title for r in rows):
        return "chunk titles differ from the raw copy's title"
    expected = expected_chunk_texts(service, raw, tenant)
    if expected is None:
        return None  # unknowable here (a missing original is reported on its own)
    if len(expected) != len(rows):
        return f"raw copy chunks into {len(expected)}, the index holds {len(rows)}"
    if [str(r["text"]) for r in rows] != expected:
        return "chunk texts differ from the raw copy's"
    return None


def _original_key(raw: dict[str, Any]) -> str | None:
    original = raw.get("original")
    key = original.get("key") if isinstance(original, dict) else None
    return key if isinstance(key, str) else None


def check(
    service: IngestionService,
    store: VectorStore,
    *,
    min_age_s: float = DEFAULT_MIN_AGE_S,
    upload_max_age_s: float = STALE_UPLOAD_S,
) -> tuple[list[Finding], dict[str, int]]:
    """Every drift between the raw documents and the index, and what was checked (tenants, documents,
    chunks). Reads only."""
    settings = service.settings
    objects_root = service.objects
    ids = all_documents(settings.documents_uri, lambda: wiring.s3_client(settings))
    raw_tenants = sorted({t for t, _ in ids} | {DEFAULT_TENANT})
    findings: list[Finding] = []
    stats = {"tenants": 0, "documents": len(ids), "chunks": 0}
    tenants = indexed_tenants(store, raw_tenants)
    stats["tenants"] = len(tenants)
    for tenant in tenants:
        objects = service.tenant_objects(tenant)
        chunks = _chunk_rows(store, tenant)
        stats["chunks"] += sum(len(r) for r in chunks.values())
        doc_ids = [d for t, d in ids if t == tenant]
        named_originals: set[str] = set()
        for doc_id in doc_ids:
            raw = objects.get_document(doc_id)
            if raw is None:
                continue  # deleted since it was listed
            original_key = _original_key(raw)
            if original_key is not None:
                named_originals.add(original_key)
            rows = chunks.get(doc_id, [])
            if not rows:
                if store.count_chunks(doc_id, tenant=tenant) == 0:  # still none (not being written now)
                    findings.append(Finding("missing_chunks", tenant, "a raw copy with no chunks", doc_id=doc_id))
                continue
            if original_key is not None and objects.size(original_key) is None:
                findings.append(
                    Finding("missing_original", tenant, f"its original file {original_key} is gone", doc_id=doc_id)
                )
                continue
            why = version_drift(service, raw, rows, tenant)
            if why is not None:
                findings.append(Finding("version_mismatch", tenant, why, doc_id=doc_id))
        for doc_id in sorted(set(chunks) - set(doc_ids)):
            if objects.get_document(doc_id) is None:  # re-checked: not written since the listing
                n = len(chunks[doc_id])
                findings.append(Finding("ghost_chunks", tenant, f"{n} chunks with no raw copy", doc_id=doc_id))
        prefix = tenant_prefix(tenant)
        for key, age in sorted(_ages(objects_root, prefix + ORIGINALS_PREFIX).items()):
            rel = key[len(prefix) :]
            if rel not in named_originals and age >= min_age_s:
                findings.append(Finding("orphan_original", tenant, "an original file no raw copy names", key=key))
    if isinstance(objects_root, LocalObjectStore):
        for key, age in sorted(_ages(objects_root, "", with_tmp=True).items()):
            if key.rsplit("/", 1)[-1].startswith(TMP_PREFIX) and age >= min_age_s:
                findings.append(Finding("stale_tmp", None, f"a write cut short, {age:.0f} s old", key=key))
    for key, age in sorted(_ages(objects_root, UPLOADS_PREFIX).items()):
        if age >= upload_max_age_s:
            findings.append(Finding("stale_upload", None, f"never ingested, {age / 3600:.1f} h old", key=key))
    return findings, stats


def _repair(service: IngestionService, store: VectorStore, finding: Finding) -> None:
    """Repair one finding (raises on failure)."""
    if finding.kind in _REINDEX:
        assert finding.tenant is not None and finding.doc_id is not None
        index_document(service, finding.tenant, finding.doc_id)  # None: deleted meanwhile, nothing to repair
    elif finding.kind == "ghost_chunks":
        assert finding.tenant is not None and finding.doc_id is not None
        remove_ghost(service, store, finding.tenant, finding.doc_id)
    elif finding.kind in ("orphan_original", "stale_upload"):
        assert finding.key is not None
        service.objects.delete(finding.key)
    elif finding.kind == "stale_tmp":
        assert finding.key is not None and isinstance(service.objects, LocalObjectStore)
        (service.objects.root / finding.key).unlink(missing_ok=True)
    else:  # pragma: no cover - every kind is handled above
        raise ValueError(finding.kind)


def diagnose(
    service: IngestionService,
    store: VectorStore,
    *,
    repair: bool = False,
    min_age_s: float = DEFAULT_MIN_AGE_S,
    upload_max_age_s: float = STALE_UPLOAD_S,
    progress: Callable[[str], None] | None = None,
) -> Report:
    """Check the store; with ``repair``, repair every finding, then check again (``Report.remaining``)."""
    say = progress or (lambda _: None)
    started = time.perf_counter()
    settings = service.settings
    report = Report(settings.documents_uri, settings.lancedb_uri, repair=repair)
    try:
        store.chunks()
    except EmbeddingMismatch as exc:
        raise DoctorError(f"{exc}; rebuild the index first (python -m ingestion.reindex)") from None
    report.findings, stats = check(service, store, min_age_s=min_age_s, upload_max_age_s=upload_max_age_s)
    report.tenants, report.documents, report.chunks = stats["tenants"], stats["documents"], stats["chunks"]
    if repair and report.findings:
        for finding in report.findings:
            try:
                _repair(service, store, finding)
                finding.repaired = True
                say(f"repaired: {finding.line()}")
            except Exception as exc:
                finding.error = exc.message if isinstance(exc, RagError) else type(exc).__name__
                log.warning("repairing %s failed", finding.line(), exc_info=not isinstance(exc, RagError))
                say(f"FAILED: {finding.line()}")
        report.remaining, _ = check(service, store, min_age_s=min_age_s, upload_max_age_s=upload_max_age_s)
    report.seconds = time.perf_counter() - started
    return report


def main(argv: list[str] | None = None, settings: Settings | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ingestion.doctor",
        description="Find (and with --repair fix) drift between the raw documents and the index: raw copies "
        "without chunks, chunks without a raw copy, version mismatches, missing or orphaned originals, "
        "stale temporary files and uploads. Works on RAG_DOCUMENTS_URI / RAG_LANCEDB_URI.",
    )
    parser.add_argument("--repair", action="store_true", help="repair what is found, then check again")
    parser.add_argument("--json", action="store_true", help="print the report as one JSON object")
    parser.add_argument(
        "--min-age",
        type=float,
        default=DEFAULT_MIN_AGE_S,
        metavar="SECONDS",
        help="leave files younger than this alone: a write in progress makes them (default: %(default)s)",
    )
    parser.add_argument(
        "--upload-max-age",
        type=float,
        default=STALE_UPLOAD_S,
        metavar="SECONDS",
        help="uploads older than this were never ingested (default: %(default)s, as the gateway prunes)",
    )
    parser.add_argument("--log-level", default="WARNING")
    args = parser.parse_args(argv)

    from ingestion.handler import build_service
    from ingestion.settings import Settings
    from shared.logs import configure_logging

    configure_logging(args.log_level)
    settings = settings or Settings()
    store = wiring.vector_store(settings)
    service = build_service(settings, store=store)
    progress = None if args.json else (lambda text: print(text, file=sys.stderr, flush=True))
    try:
        report = diagnose(
            service,
            store,
            repair=args.repair,
            min_age_s=args.min_age,
            upload_max_age_s=args.upload_max_age,
            progress=progress,
        )
    except DoctorError as exc:
        print(f"doctor: cannot check: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report.as_json(), ensure_ascii=False) if args.json else report.text(), flush=True)
    return 0 if report.clean else 1


if __name__ == "__main__":
    sys.exit(main())
