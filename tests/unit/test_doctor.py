"""``python -m ingestion.doctor``: drift between the raw documents and the index, found and repaired.

Real LanceDB and a real documents folder in tmp, the real ingestion service (the MiniLM model in process):
a store is ingested cleanly, then broken the ways a write cut short leaves it (a raw copy without chunks,
chunks without a raw copy, a raw copy of another version, an original gone or orphaned, a ``.tmp-*`` file,
an old upload). The doctor reports each, repairs each, and then finds nothing.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ingestion.doctor import DEFAULT_MIN_AGE_S, KINDS, diagnose, expected_chunk_texts, main, version_drift
from ingestion.handler import build_service
from ingestion.service import IngestionService
from ingestion.settings import Settings
from shared import wiring
from shared.client.cli import build_parser, doctor_command
from shared.identity import DEFAULT_TENANT as T
from shared.object_store import originals_prefix
from shared.protocol import Document
from shared.vector_store import VectorStore
from tests.support.embedder import InProcessEmbedder

VOLCANO = (
    "A volcano forms where molten rock called magma rises through the Earth's crust. Pressure from dissolved "
    "gases builds up until the magma erupts at the surface as lava, ash and volcanic gas. " * 6
)
BREAD = "Bread is made from flour, water, salt and yeast. The dough is kneaded, left to rise and baked. " * 8
TIDES_MD = (
    "# Tides\n\nOcean notes.\n\n## Causes\n\nTides are caused by the gravitational pull of the Moon and the Sun.\n\n"
    "## Timing\n\nMost coasts see two high tides and two low tides every lunar day.\n"
)


@pytest.fixture(scope="module")
def embedder() -> InProcessEmbedder:
    return InProcessEmbedder()


@pytest.fixture
def stores(tmp_path: Path, embedder: InProcessEmbedder) -> Iterator[tuple[IngestionService, VectorStore, Settings]]:
    settings = Settings(lancedb_uri=str(tmp_path / "lancedb"), documents_uri=str(tmp_path / "documents"))
    store = wiring.vector_store(settings)
    yield build_service(settings, embedder=embedder, store=store), store, settings


def _upload(service: IngestionService, tenant: str, filename: str, data: bytes) -> str:
    key = f"uploads/{tenant}/{uuid.uuid4().hex}/{filename}"
    service.objects.write(key, data)
    return key


def _ingest_all(service: IngestionService) -> None:
    service.ingest(Document(id="volcanoes", title="Volcanoes", text=VOLCANO), tenant=T)
    service.ingest(Document(id="bread", title="Bread", text=BREAD), tenant=T)
    service.ingest(Document(id="notes", title="", text=TIDES_MD, format="markdown"), tenant=T)
    service.ingest_object(_upload(service, T, "tides.md", TIDES_MD.encode()), "tides", tenant=T)
    service.ingest(Document(id="acme-doc", title="Acme", text=BREAD), tenant="acme")


def _chunk_texts(store: VectorStore, doc_id: str, tenant: str = T) -> list[str]:
    rows = store.chunks().search().where(f"tenant = '{tenant}' AND doc_id = '{doc_id}'").limit(None).to_list()
    return [str(r["text"]) for r in sorted(rows, key=lambda r: int(r["chunk"]))]


def _age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


def test_a_clean_store_has_no_drift(stores: tuple[IngestionService, VectorStore, Settings]) -> None:
    service, store, _settings = stores
    _ingest_all(service)
    report = diagnose(service, store, min_age_s=0)
    assert report.findings == []
    assert report.clean
    assert (report.documents, report.tenants) == (5, 2)
    assert report.chunks == sum(store.count_chunks(tenant=t) for t in (T, "acme"))
    # What the raw copy chunks into is what ingestion indexed: text, Markdown text, a file's original.
    for doc_id in ("volcanoes", "notes", "tides"):
        raw = service.tenant_objects(T).get_document(doc_id)
        assert raw is not None
        assert expected_chunk_texts(service, raw, T) == _chunk_texts(store, doc_id)


def test_every_kind_of_drift_is_found_and_repaired(
    stores: tuple[IngestionService, VectorStore, Settings], capsys: pytest.CaptureFixture[str]
) -> None:
    service, store, settings = stores
    _ingest_all(service)
    objects = service.tenant_objects(T)
    root = Path(settings.documents_uri)
    # A raw copy with no chunks (a kill between the raw copy and the chunks' commit).
    store.delete_document("volcanoes", tenant=T)
    # Chunks with no raw copy (another tenant's: every tenant is checked).
    service.tenant_objects("acme").delete_document("acme-doc")
    # The raw copy of another version than the chunks (a re-ingest cut short after its raw copy).
    objects.put_document("bread", Document(id="bread", title="Bread", text=VOLCANO).model_dump())
    # A raw copy whose original file is gone.
    tides = objects.get_document("tides")
    assert tides is not None and tides["original"]["key"].startswith(originals_prefix("tides"))
    objects.delete(tides["original"]["key"])
    # An original no raw copy names (an ingest_object cut short after copying its upload).
    orphan = root / "originals" / "lost" / "lost.md"
    orphan.parent.mkdir(parents=True)
    orphan.write_text(TIDES_MD)
    # A write cut short, and an upload never ingested.
    tmp = root / ".tmp-x1y2z3"
    tmp.write_text("{")
    upload = root / _upload(service, T, "old.txt", b"never ingested")
    _age(upload, 2 * 24 * 3600)

    report = diagnose(service, store, min_age_s=0)
    assert report.counts() == {
        "missing_chunks": 1,
        "ghost_chunks": 1,
        "version_mismatch": 1,
        "missing_original": 1,
        "orphan_original": 1,
        "stale_tmp": 1,
        "stale_upload": 1,
    }
    assert set(report.counts()) == set(KINDS)
    assert {(f.kind, f.tenant, f.doc_id) for f in report.findings if f.doc_id} == {
        ("missing_chunks", T, "volcanoes"),
        ("ghost_chunks", "acme", "acme-doc"),
        ("version_mismatch", T, "bread"),
        ("missing_original", T, "tides"),
    }
    assert not report.clean
    assert store.count_chunks("volcanoes", tenant=T) == 0  # a report changes nothing
    assert tmp.exists() and orphan.exists() and upload.exists()

    # The CLI entry: the same report, exit status 1 (drift found, not repaired); --json is one object.
    assert main(["--json", "--min-age", "0"], settings=settings) == 1
    out = json.loads(capsys.readouterr().out)
    assert (out["drift"], out["remaining"], out["clean"]) == (7, 7, False)

    repaired = diagnose(service, store, repair=True, min_age_s=0)
    assert repaired.repaired == 7 and repaired.remaining == []
    assert repaired.clean
    assert _chunk_texts(store, "volcanoes")  # re-embedded from its raw copy
    assert store.count_chunks("acme-doc", tenant="acme") == 0  # the ghost is gone
    bread = objects.get_document("bread")
    assert bread is not None and _chunk_texts(store, "bread") == expected_chunk_texts(service, bread, T)
    tides_now = objects.get_document("tides")
    assert tides_now is not None and "original" not in tides_now  # indexed from the text it kept
    assert _chunk_texts(store, "tides")
    assert not tmp.exists() and not orphan.exists() and not upload.exists()

    assert main(["--min-age", "0"], settings=settings) == 0
    assert "no drift" in capsys.readouterr().out


def test_young_files_are_left_alone(stores: tuple[IngestionService, VectorStore, Settings]) -> None:
    """A ``.tmp-*`` file or an original younger than --min-age is a write in progress, not drift."""
    service, store, settings = stores
    root = Path(settings.documents_uri)
    root.mkdir(parents=True, exist_ok=True)
    (root / ".tmp-young").write_text("{")
    young = root / "originals" / "new" / "new.md"
    young.parent.mkdir(parents=True)
    young.write_text(TIDES_MD)
    assert diagnose(service, store).findings == []
    _age(young, DEFAULT_MIN_AGE_S + 60)
    assert [f.kind for f in diagnose(service, store).findings] == ["orphan_original"]


@pytest.mark.parametrize(
    ("raw", "rows", "why"),
    [
        # With versions: the chunks' doc_version must be the raw copy's.
        ({"version": "v2", "text": "x"}, [{"chunk": 0, "doc_version": "v2", "text": "y"}], None),
        ({"version": "v2", "text": "x"}, [{"chunk": 0, "doc_version": "v1", "text": "x"}], "raw copy is version v2"),
        ({"version": "v2", "text": "x"}, [{"chunk": 0, "doc_version": "v2"}, {"chunk": 1, "doc_version": "v1"}], "v1"),
        # Duplicated or missing chunk numbers, whatever the versions say.
        ({"version": "v1"}, [{"chunk": 0, "doc_version": "v1"}, {"chunk": 0, "doc_version": "v1"}], "1 duplicated"),
        ({"version": "v1"}, [{"chunk": 1, "doc_version": "v1"}], "chunks numbered [1]"),
    ],
)
def testversion_drift(raw: dict[str, Any], rows: list[dict[str, Any]], why: str | None) -> None:
    found = version_drift(None, raw, rows, T)  # type: ignore[arg-type]  # versions decide: no chunking
    assert found is None if why is None else (found is not None and why in found)


def test_localrag_doctor_runs_the_checker() -> None:
    """``localrag doctor`` runs ``python -m ingestion.doctor`` (shared/ imports no service) with its options."""
    args = build_parser().parse_args(
        ["doctor", "--repair", "--json", "--min-age", "0", "--documents-uri", "s3://b/docs", "--lancedb-uri", "/x"]
    )
    argv, env = doctor_command(args)
    assert argv[1:] == ["-m", "ingestion.doctor", "--repair", "--json", "--min-age", "0.0"]
    assert (env["RAG_DOCUMENTS_URI"], env["RAG_LANCEDB_URI"]) == ("s3://b/docs", "/x")
    argv, _ = doctor_command(build_parser().parse_args(["doctor"]))
    assert argv[1:] == ["-m", "ingestion.doctor"]
