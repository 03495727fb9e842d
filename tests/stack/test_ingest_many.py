"""IngestionService.ingest_many, the batch path (Kinesis batches): real embedding service (MiniLM in its own
process), real LanceDB, real local object store. A batch must index exactly what one-by-one ``ingest``
does, fail bad documents alone, keep the order of repeated ids, and write nothing when it cannot embed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ingestion.handler import build_service
from ingestion.service import IngestionService, IngestOutcome
from ingestion.settings import Settings
from shared.errors import DocumentTooLarge, EmptyDocument, RagError, UpstreamUnavailable
from shared.identity import DEFAULT_TENANT as T
from shared.protocol import Document
from shared.stack import Stack
from tests.conftest import StackFactory
from tests.stack.test_upload import local_stack
from tests.support.procs import port_of, refusing_port

# Several chunks each at 40 word-pieces, of different lengths (so the batch mixes them when sorting).
TEXTS = {
    "tides": "Tides rise and fall twice a day. The moon pulls the near ocean towards it. "
    "The far side bulges too, because the earth is pulled away from that water. "
    "Spring tides come when sun and moon line up; neap tides when they are at right angles.",
    "bread": "Mix flour, water and salt with the starter. Knead until smooth and let it rise overnight. "
    "Bake in a hot oven with steam for a crisp crust.",
    "auroras": "Auroras are lights in polar skies. Charged particles from the sun follow the magnetic field. "
    "They excite oxygen, which glows green and red, and nitrogen, which glows blue and purple. "
    "Strong solar storms push them far from the poles. Cameras see colours the eye misses at night.",
    "volcano": "Molten rock pushes up through the crust and bursts out as lava and ash.",
}


@pytest.fixture(scope="module")
def stack(start_stack: StackFactory) -> Stack:
    return local_stack(start_stack)


def service_at(root: Path, embedding_url: str, **overrides: Any) -> IngestionService:
    settings = Settings(
        lancedb_uri=str(root / "lancedb"),
        documents_uri=str(root / "documents"),
        embedding_endpoint_url=embedding_url,
        s3_endpoint_url=None,
        chunk_tokens=40,
        chunk_overlap_tokens=8,
        **overrides,
    )
    return build_service(settings)


def embedding_url(stack: Stack) -> str:
    return stack.by_name["embedding"].url


def doc(doc_id: str, text: str | None = None, **extra: Any) -> Document:
    return Document(id=doc_id, title=doc_id.title(), text=TEXTS[doc_id] if text is None else text, **extra)


def rows_by_doc(service: IngestionService) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for r in sorted(service.store.chunks().to_arrow().to_pylist(), key=lambda r: (r["doc_id"], r["chunk"])):
        out.setdefault(r["doc_id"], []).append(r)
    return out


def test_a_batch_indexes_exactly_what_one_by_one_ingest_does(stack: Stack, tmp_path: Path) -> None:
    one = service_at(tmp_path / "one", embedding_url(stack))
    many = service_at(tmp_path / "many", embedding_url(stack))
    docs = [doc(d, source=f"{d}.txt", metadata={"topic": d}) for d in TEXTS]
    singles = [one.ingest(d, tenant=T) for d in docs]
    batch = many.ingest_many(docs, tenant=T)
    assert all(isinstance(o, IngestOutcome) for o in batch)
    assert [(o.doc_id, o.chunks, o.tokens) for o in singles] == [
        (o.doc_id, o.chunks, o.tokens) for o in batch if isinstance(o, IngestOutcome)
    ]
    assert sum(o.chunks for o in singles) > len(docs)  # several chunks per document, embedded in one pass
    a, b = rows_by_doc(one), rows_by_doc(many)
    assert a.keys() == b.keys() == set(TEXTS)
    for doc_id in a:
        fields = ("chunk", "title", "text", "source", "metadata")
        assert [{k: r[k] for k in fields} for r in a[doc_id]] == [{k: r[k] for k in fields} for r in b[doc_id]]
        # Same texts, batched differently (sorted by length): the same vectors up to float noise.
        np.testing.assert_allclose(
            np.array([r["vector"] for r in a[doc_id]]), np.array([r["vector"] for r in b[doc_id]]), atol=1e-5
        )
    assert sorted(many.tenant_objects(T).document_ids()) == sorted(TEXTS)
    # Found by the chat's search like any other document.
    query = many.embedder.embed_query("why are there two tides a day")
    assert many.store.search(query, tenant=T, top_k=1, max_distance=2.0)[0].doc_id == "tides"


def test_bad_documents_fail_alone_and_repeated_ids_keep_their_order(stack: Stack, tmp_path: Path) -> None:
    svc = service_at(tmp_path, embedding_url(stack), max_document_bytes=400)
    svc.ingest(doc("bread", TEXTS["auroras"]), tenant=T)  # an older version (several chunks), replaced by the batch
    old_chunks = svc.store.count_chunks("bread", tenant=T)
    out = svc.ingest_many(
        [
            doc("tides"),
            doc("empty", "   \n "),
            doc("huge", "word " * 200),
            doc("bread", "Sourdough needs a lively starter."),
            doc("volcano"),
            doc("bread", "Rye bread is dense and keeps for a week."),
        ],
        tenant=T,
    )
    assert [type(o) for o in out] == [
        IngestOutcome,
        EmptyDocument,
        DocumentTooLarge,
        IngestOutcome,
        IngestOutcome,
        IngestOutcome,
    ]
    first_bread, last_bread = out[3], out[5]
    assert isinstance(first_bread, IngestOutcome) and isinstance(last_bread, IngestOutcome)
    # The first new version replaced the old one; the second replaced the first.
    assert first_bread.replaced_chunks == old_chunks > 1 and last_bread.replaced_chunks == 1
    rows = rows_by_doc(svc)
    assert set(rows) == {"tides", "bread", "volcano"}  # nothing of the bad ones
    assert [r["text"] for r in rows["bread"]] == ["Rye bread is dense and keeps for a week."]
    assert svc.tenant_objects(T).get_document("bread")["text"] == "Rye bread is dense and keeps for a week."  # type: ignore[index]
    assert svc.tenant_objects(T).get_document("empty") is None and svc.tenant_objects(T).get_document("huge") is None
    assert isinstance(out[1], RagError) and out[1].code.value == "empty_document"


def test_embedding_down_fails_the_batch_and_writes_nothing(tmp_path: Path) -> None:
    with refusing_port() as dead:  # nothing listens there
        svc = service_at(tmp_path, f"http://127.0.0.1:{port_of(dead)}")
        out = svc.ingest_many([doc("tides"), doc("bread"), doc("empty", " ")], tenant=T)
    assert [type(o) for o in out] == [UpstreamUnavailable, UpstreamUnavailable, EmptyDocument]
    assert svc.store.count_chunks(tenant=T) == 0 and svc.tenant_objects(T).document_ids() == []
    # The leases taken while embedding were given up: another writer gets them at once.
    assert svc.store.document_leases().try_acquire(T, ["tides", "bread"], lease_s=1).doc_ids == {"tides", "bread"}
