"""Write documents and conversations straight into a running stack's stores, as ingestion and chat write
them: for the paging tests, which need 10,000 documents or a 200-turn conversation and not the time it
takes to embed or generate them."""

from __future__ import annotations

import uuid

from shared.object_store import LocalObjectStore, TenantObjects
from shared.stack import Stack
from shared.timing import iso_utc
from shared.vector_store import MessageRow, VectorStore


def seed_documents(stack: Stack, tenant: str, ids: list[str]) -> None:
    """Raw documents (no chunks: they list as ``failed``, as a document whose indexing failed does)."""
    assert stack.config is not None and not str(stack.config.documents_uri).startswith("s3://")
    objects = TenantObjects(LocalObjectStore(str(stack.config.documents_uri)), tenant)
    for i, doc_id in enumerate(ids):
        objects.put_document(doc_id, {"id": doc_id, "title": f"Seeded document {i}", "text": f"text {i}"})


def seed_conversation(stack: Stack, tenant: str, principal: str, turns: int) -> tuple[str, list[MessageRow]]:
    """A conversation of ``turns`` question/answer pairs of ``principal``; its id and its messages."""
    assert stack.config is not None
    from shared.settings import RagSettings

    dimension = RagSettings().embedding_dimension
    store = VectorStore(str(stack.config.lancedb_uri), dimension=dimension, model_id=RagSettings().embedding_model_id)
    conversation = str(uuid.uuid4())
    source = {"n": 1, "doc_id": "seeded", "title": "Seeded", "chunk": 0, "distance": 0.4, "excerpt": "w " * 150}
    now = iso_utc()
    rows: list[MessageRow] = []
    for turn in range(turns):
        rows.append(MessageRow(str(uuid.uuid4()), conversation, 2 * turn, "user", f"Question number {turn}?", now))
        rows.append(
            MessageRow(
                str(uuid.uuid4()),
                conversation,
                2 * turn + 1,
                "assistant",
                f"Answer number {turn}. " + "Some words of the answer. " * 40,
                now,
                {"sources": [source], "max_distance": 0.7, "prompt": "context"},
            )
        )
    store.append_messages(rows, tenant=tenant, principal=principal)
    return conversation, rows
