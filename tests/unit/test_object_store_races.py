"""The local documents folder under concurrent use: ingest_object deletes its upload and prunes the emptied
folders while upload_url (another invocation, another process on Lambda) prunes stale uploads and the
gateway writes new ones. Every interleaving must leave each caller a clean result, never an exception."""

from __future__ import annotations

import threading
from pathlib import Path

from shared.object_store import UPLOADS_PREFIX, LocalObjectStore

ROUNDS = 500


def test_pruning_uploads_while_another_caller_empties_the_folder(tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path)
    uploads = tmp_path / UPLOADS_PREFIX.rstrip("/")
    errors: list[BaseException] = []
    done = threading.Event()

    def upload_then_ingest() -> None:
        # What the gateway's PUT and ingest_object do to the folder: create uploads/{id}/file, then delete
        # it (which removes uploads/{id}/ and, once empty, uploads/ itself).
        try:
            for i in range(ROUNDS):
                key = f"{UPLOADS_PREFIX}{i:032x}/notes.md"
                path = tmp_path / key
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(b"# notes\n")
                store.delete(key)
        except BaseException as exc:
            errors.append(exc)
        finally:
            done.set()

    def prune() -> int:
        calls = 0
        try:
            while not done.is_set():
                store.prune_uploads()  # nothing is stale: it only walks the folder the other thread empties
                calls += 1
        except BaseException as exc:
            errors.append(exc)
        return calls

    writer = threading.Thread(target=upload_then_ingest)
    writer.start()
    calls = prune()
    writer.join()
    assert not errors, errors
    assert calls > 0
    assert not uploads.exists() or not any(uploads.iterdir())


def test_two_callers_deleting_one_prefix_at_once(tmp_path: Path) -> None:
    """Two invocations clearing the same originals/ prefix (two deletes of one document): both finish,
    the files are deleted exactly once between them, and nothing is left."""
    store = LocalObjectStore(tmp_path)
    for round_ in range(100):
        for n in range(8):
            path = tmp_path / "originals" / "doc" / f"{round_}-{n}.md"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"x")
        counts: list[int] = []
        errors: list[BaseException] = []
        barrier = threading.Barrier(2)

        def clear(barrier: threading.Barrier, counts: list[int], errors: list[BaseException]) -> None:
            try:
                barrier.wait()
                counts.append(store.delete_prefix("originals/doc/"))
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=clear, args=(barrier, counts, errors)) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        assert sum(counts) == 8
        assert not (tmp_path / "originals" / "doc").exists()
