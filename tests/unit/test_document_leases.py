"""Document leases (shared/vector_store/leases.py) on a real LanceDB in a temporary folder: taking, waiting,
expiry, renewal, release, batches, and contention from threads over separate connections."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import lancedb
import pyarrow as pa
import pytest

from shared.vector_store import CHUNKS_TABLE, VectorStore, chunks_schema
from shared.vector_store.leases import LEASES_TABLE, DocumentBusy, DocumentLeases, has_primary_key
from shared.vector_store.upkeep import Upkeep
from tests.support.timeouts import scaled

T = "alpha"


def leases(path: Path, **kw: Any) -> DocumentLeases:
    """A fresh connection's leases (as another process would have); ``kw``: DocumentLeases' upkeep settings."""
    store = VectorStore(str(path), dimension=4, model_id="test", full_text=False)
    return DocumentLeases(store._leases_table, **kw) if kw else store.document_leases()


def test_a_held_document_is_refused_until_released(tmp_path: Path) -> None:
    a, b = leases(tmp_path), leases(tmp_path)
    held = a.acquire(T, ["doc"], lease_s=60, wait_s=0)
    assert held.doc_ids == {"doc"}
    with pytest.raises(DocumentBusy) as busy:
        b.acquire(T, ["doc"], lease_s=60, wait_s=0.2)
    assert busy.value.doc_ids == {"doc"} and busy.value.until_ms is not None
    assert b.acquire("beta", ["doc"], lease_s=60, wait_s=0).doc_ids == {"doc"}  # another tenant's document
    assert b.acquire(T, ["other"], lease_s=60, wait_s=0).doc_ids == {"other"}
    a.release(held)
    assert b.acquire(T, ["doc"], lease_s=60, wait_s=0).doc_ids == {"doc"}


def test_a_waiter_gets_the_document_when_the_holder_releases_it(tmp_path: Path) -> None:
    a, b = leases(tmp_path), leases(tmp_path)
    held = a.acquire(T, ["doc"], lease_s=60, wait_s=0)
    threading.Timer(0.3, a.release, args=(held,)).start()
    assert b.acquire(T, ["doc"], lease_s=60, wait_s=scaled(30)).doc_ids == {"doc"}


def test_an_expired_lease_is_taken_over_and_its_holder_may_not_write(tmp_path: Path) -> None:
    a, b = leases(tmp_path), leases(tmp_path)
    dead = a.acquire(T, ["doc"], lease_s=0.2, wait_s=0)  # a holder that died: never renewed nor released
    taken = b.acquire(T, ["doc"], lease_s=60, wait_s=scaled(30))
    assert taken.doc_ids == {"doc"}
    assert not a.renew(dead) and dead.lost
    with pytest.raises(DocumentBusy):
        a.confirm(dead)
    a.release(dead)  # giving up a lease that is no longer yours leaves the new holder's alone
    with pytest.raises(DocumentBusy):
        a.acquire(T, ["doc"], lease_s=60, wait_s=0)
    b.confirm(taken)


def test_a_kept_lease_outlives_its_length_and_is_released_after(tmp_path: Path) -> None:
    a, b = leases(tmp_path), leases(tmp_path)
    lease = a.acquire(T, ["doc"], lease_s=scaled(1.0), wait_s=0)
    with a.kept(lease):
        deadline = time.monotonic() + scaled(2.5)  # longer than the lease: held throughout, by renewals
        while time.monotonic() < deadline:
            assert not b.try_acquire(T, ["doc"], lease_s=60).doc_ids
            time.sleep(0.05)
        assert not lease.lost
        a.confirm(lease)
    assert b.try_acquire(T, ["doc"], lease_s=60).doc_ids == {"doc"}  # released at once, not expired


def test_confirm_renews_a_lease_near_its_end(tmp_path: Path) -> None:
    a = leases(tmp_path)
    lease = a.acquire(T, ["doc"], lease_s=0.4, wait_s=0)
    first = lease.until_ms
    time.sleep(0.25)  # less than half of it left: confirm renews
    a.confirm(lease)
    assert lease.until_ms > first


def test_a_batch_takes_what_is_free_in_one_go_and_never_waits_holding(tmp_path: Path) -> None:
    a, b = leases(tmp_path), leases(tmp_path)
    held = a.acquire(T, ["b"], lease_s=60, wait_s=0)
    some = b.try_acquire(T, ["a", "b", "c"], lease_s=60)
    assert some.doc_ids == {"a", "c"}
    b.release(some)
    with pytest.raises(DocumentBusy) as busy:
        b.acquire(T, ["a", "b"], lease_s=60, wait_s=0.2)
    assert busy.value.doc_ids == {"b"}
    assert a.try_acquire(T, ["a"], lease_s=60).doc_ids == {"a"}  # "a" was given back, not kept while waiting
    a.release(held)


@pytest.mark.parametrize("compact_every", [0, 3], ids=["uncompacted", "compacted-meanwhile"])
def test_threads_on_separate_connections_never_hold_one_document_together(tmp_path: Path, compact_every: int) -> None:
    # Eight writers, each on its own connection, all trying at the same moment, round after round, on one
    # new document per round (an insert race) and on one old document (an update race); with
    # compact_every, each writer's compactions (at a release, every third commit) race with the takes too.
    writers = [leases(tmp_path, compact_every=compact_every) for _ in range(8)]
    rounds = 15
    barrier = threading.Barrier(len(writers))
    wins: Counter[tuple[str, int]] = Counter()
    lock = threading.Lock()

    def run(w: DocumentLeases) -> None:
        for r in range(rounds):
            for doc in (f"new-{r}", "old"):
                barrier.wait(scaled(60))
                lease = w.try_acquire(T, [doc], lease_s=60, peek=False)
                if lease.doc_ids:
                    with lock:
                        wins[(doc.split("-")[0], r)] += 1
                barrier.wait(scaled(60))
                w.release(lease)

    threads = [threading.Thread(target=run, args=(w,)) for w in writers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(scaled(300))
    assert sorted(wins.values()) == [1] * (2 * rounds), wins  # exactly one winner every time
    rows = lancedb.connect(tmp_path).open_table(LEASES_TABLE).to_arrow().column("key").to_pylist()
    assert len(rows) == len(set(rows)) == rounds + 1  # one row per document: no duplicate inserts
    if compact_every:
        assert sum(w.compactions for w in writers) > 0


def fragments(path: Path) -> int:
    stats: Any = lancedb.connect(path).open_table(LEASES_TABLE).stats()  # (a dict at run time)
    return int(stats["fragment_stats"]["num_fragments"])


def versions(path: Path) -> int:
    return len(lancedb.connect(path).open_table(LEASES_TABLE).list_versions())


@pytest.mark.filterwarnings("ignore:optimize\\(cleanup_older_than=0\\):UserWarning")  # one writer: safe here
@pytest.mark.parametrize("compact_every", [0, 8])
def test_the_leases_table_is_compacted_as_leases_come_and_go(tmp_path: Path, compact_every: int) -> None:
    # Each take and release is a commit (a version, a fragment); every compact_every commits the table is
    # compacted at the next release and the versions older than keep_versions removed. The leases still work.
    w = leases(tmp_path, compact_every=compact_every, keep_versions=timedelta(0))
    for i in range(40):
        w.release(w.try_acquire(T, [f"doc-{i}"], lease_s=60, peek=False))
    if compact_every:
        assert w.compactions == 40 * 2 // compact_every
        assert fragments(tmp_path) <= compact_every and versions(tmp_path) <= compact_every + 1
    else:
        assert w.compactions == 0
        assert fragments(tmp_path) >= 40 and versions(tmp_path) > 80
    assert has_primary_key(lancedb.connect(tmp_path).open_table(LEASES_TABLE))
    held = w.acquire(T, ["doc-3"], lease_s=60, wait_s=0)
    assert not leases(tmp_path).try_acquire(T, ["doc-3", "doc-4"], lease_s=60).doc_ids - {"doc-4"}
    w.release(held)


def test_waiting_writers_take_turns(tmp_path: Path) -> None:
    # A read-modify-write of a shared counter under the lease, from six threads: no update is lost.
    path = tmp_path / "counter"
    path.write_text("0")
    writers = [leases(tmp_path) for _ in range(6)]

    def run(w: DocumentLeases) -> None:
        for _ in range(5):
            lease = w.acquire(T, ["counter"], lease_s=60, wait_s=scaled(120))
            with w.kept(lease):
                n = int(path.read_text())
                time.sleep(0.005)
                path.write_text(str(n + 1))

    threads = [threading.Thread(target=run, args=(w,)) for w in writers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(scaled(300))
    assert path.read_text() == "30"


def test_the_leases_table_has_its_primary_key(tmp_path: Path) -> None:
    leases(tmp_path).try_acquire(T, ["doc"], lease_s=1)
    assert has_primary_key(lancedb.connect(tmp_path).open_table(LEASES_TABLE))
    # A table some process created without it gets it when opened.
    other = tmp_path / "other"
    lancedb.connect(other).create_table(
        LEASES_TABLE,
        schema=pa.schema(
            [
                pa.field("key", pa.string(), nullable=False),
                pa.field("tenant", pa.string(), nullable=False),
                pa.field("doc_id", pa.string(), nullable=False),
                pa.field("holder", pa.string()),
                pa.field("until", pa.int64()),
            ]
        ),
    )
    assert leases(other).try_acquire(T, ["doc"], lease_s=1).doc_ids == {"doc"}
    assert has_primary_key(lancedb.connect(other).open_table(LEASES_TABLE))


def test_old_chunks_tables_get_the_doc_version_column(tmp_path: Path) -> None:
    old = pa.schema([f for f in chunks_schema(4, "test") if f.name != "doc_version"], metadata=None)
    old = old.with_metadata({"embedding_model": "test", "embedding_dimension": "4"})
    row = {
        "id": "d#0",
        "doc_id": "d",
        "chunk": 0,
        "title": "",
        "text": "x",
        "vector": [0.0, 0.0, 0.0, 1.0],
        "tenant": "default",
    }
    lancedb.connect(tmp_path).create_table(CHUNKS_TABLE, data=pa.Table.from_pylist([row], schema=old))
    table = VectorStore(str(tmp_path), dimension=4, model_id="test", full_text=False).chunks()
    assert table.to_arrow().column("doc_version").to_pylist() == [None]


@pytest.mark.filterwarnings("ignore:optimize\\(cleanup_older_than=0\\):UserWarning")  # one writer: safe here
def test_a_due_compaction_runs_in_the_background_not_in_the_release(tmp_path: Path) -> None:
    # The store's leases hand a due compaction to its upkeep thread: the release that makes it due returns
    # without it (a Kinesis batch used to wait ~140 ms for it every 32 batches), and it is done soon after.
    upkeep = Upkeep("leases-test")
    submitted: list[str] = []
    gate = threading.Event()

    def background(key: str, job: Callable[[], object]) -> None:
        submitted.append(key)

        def held() -> object:
            gate.wait(30)
            return job()

        upkeep.submit(key, held)

    w = DocumentLeases(leases(tmp_path)._table, compact_every=4, keep_versions=timedelta(0), background=background)
    for i in range(2):
        w.release(w.try_acquire(T, [f"doc-{i}"], lease_s=60, peek=False))
    assert submitted == [f"{LEASES_TABLE}.compact"] and w.compactions == 0  # due, handed over, not yet run
    held = w.acquire(T, ["doc-9"], lease_s=60, wait_s=0)  # the leases work while it waits
    assert held.doc_ids == {"doc-9"}
    gate.set()
    assert upkeep.wait_idle(60)
    assert w.compactions == 1
    w.release(held)
    assert fragments(tmp_path) <= 2
