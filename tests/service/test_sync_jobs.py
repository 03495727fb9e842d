"""Sync jobs and pending uploads in the documents store (shared/sync_jobs.py), on a local folder and on
moto's S3 server: conditional writes, claims that two syncs never share, the worker's records, a job whose
worker died, and the event the ingestion function is invoked with.

Each "process" here is its own SyncJobs over its own store object (for S3 its own boto3 client), as two
api processes / execution environments are; the stack test (tests/stack/test_http_api.py) runs two real
api processes.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from shared.errors import RagError
from shared.object_store import ConditionalJson, LocalObjectStore, ObjectStore, S3ObjectStore
from shared.protocol import ErrorCode
from shared.sync_jobs import (
    INTERRUPTED,
    SYNC_PREFIX,
    Failure,
    SyncJobs,
    UploadRecord,
    new_job_id,
    sync_event,
    sync_target,
)
from tests.conftest import s3_client

StoreFactory = Callable[[], ObjectStore]


@pytest.fixture(params=["folder", "s3"])
def new_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreFactory]:
    """A factory of store objects over ONE store (each call: a new client, as another process has)."""
    if request.param == "folder":
        yield lambda: LocalObjectStore(tmp_path / "documents")
        return
    endpoint = request.getfixturevalue("moto_s3")
    bucket = f"sync-{uuid.uuid4().hex[:12]}"
    s3_client(endpoint).create_bucket(Bucket=bucket)
    yield lambda: S3ObjectStore(s3_client(endpoint), f"s3://{bucket}/documents")


def upload(doc_id: str, n: int = 0) -> UploadRecord:
    return UploadRecord(
        id=doc_id,
        key=f"uploads/alpha/{uuid.uuid4().hex}/{doc_id}",
        name=doc_id,
        size=10 + n,
        content_type="text/plain",
        created_at="2026-01-01T00:00:00.000Z",
    )


def test_conditional_writes(new_store: StoreFactory) -> None:
    a, b = ConditionalJson(new_store(), lock_dir=SYNC_PREFIX), ConditionalJson(new_store(), lock_dir=SYNC_PREFIX)
    assert a.put("sync/t/x.json", {"v": 1}, create=True)
    assert not b.put("sync/t/x.json", {"v": 2}, create=True)  # already there
    got = b.get("sync/t/x.json")
    assert got is not None and got[0] == {"v": 1}
    assert a.put("sync/t/x.json", {"v": 3}, if_match=got[1])
    assert not b.put("sync/t/x.json", {"v": 4}, if_match=got[1])  # b read a version that is gone
    assert a.get("sync/t/x.json") == b.get("sync/t/x.json") and b.get("sync/t/x.json")[0] == {"v": 3}  # type: ignore[index]


def test_concurrent_syncs_never_share_an_upload(new_store: StoreFactory) -> None:
    first = SyncJobs(new_store())
    ids = [f"doc-{i}.txt" for i in range(12)]
    for i, doc_id in enumerate(ids):
        first.add_upload("alpha", upload(doc_id, i))
    processes = [SyncJobs(new_store()) for _ in range(4)]
    start = threading.Barrier(len(processes))

    def sync(jobs: SyncJobs) -> list[str]:
        start.wait()
        return [d.id for d in jobs.create_job("alpha").documents]

    with ThreadPoolExecutor(len(processes)) as pool:
        taken = list(pool.map(sync, processes))
    claimed = [doc for job in taken for doc in job]
    assert sorted(claimed) == sorted(ids)  # every upload in exactly one job
    assert len(first.jobs("alpha")) == 4 and all(j.status == "queued" for j in first.jobs("alpha"))
    assert first.create_job("alpha").documents == []  # all held by live jobs
    assert first.jobs("beta") == [] and first.uploads("beta") == []  # per tenant


def test_worker_records_each_document(new_store: StoreFactory) -> None:
    api, worker = SyncJobs(new_store()), SyncJobs(new_store())
    for doc_id in ("good.txt", "ghost.txt", "busy.txt", "crash.txt"):
        api.add_upload("alpha", upload(doc_id))
    job = api.create_job("alpha")
    assert job.status == "queued" and len(job.documents) == 4

    def ingest(key: str, doc_id: str) -> object:
        if doc_id == "ghost.txt":
            raise RagError("no uploaded object", ErrorCode.OBJECT_NOT_FOUND)
        if doc_id == "busy.txt":
            raise RagError("the document is being written", ErrorCode.DOCUMENT_BUSY)
        if doc_id == "crash.txt":
            raise ZeroDivisionError("a bug")
        return None

    done = worker.run("alpha", job.id, ingest)
    assert done is not None and done.status == "failed" and done.started_at and done.finished_at
    states = {d.id: (d.state, d.error.code if d.error else None) for d in done.documents}
    assert states == {
        "good.txt": ("done", None),
        "ghost.txt": ("failed", "object_not_found"),
        "busy.txt": ("failed", "document_busy"),
        "crash.txt": ("failed", "internal_error"),
    }
    assert "a bug" not in str(done.model_dump())  # an unexpected error's text is not shown
    assert api.job("alpha", job.id) == done  # what the worker wrote is what any process reads
    # The indexed upload is forgotten, the failed ones say why; only the transient failures sync again.
    pending = {u.id: u for u in api.uploads("alpha")}
    assert sorted(pending) == ["busy.txt", "crash.txt", "ghost.txt"]
    assert all(u.status == "failed" and u.job_id is None for u in pending.values())
    again = api.create_job("alpha")
    assert sorted(d.id for d in again.documents) == ["busy.txt", "crash.txt"]
    # Running a finished job again (a duplicate delivery) changes nothing.
    assert worker.run("alpha", job.id, ingest) == done
    assert api.drop_upload("alpha", "ghost.txt") and not api.drop_upload("alpha", "ghost.txt")


def test_a_new_upload_of_the_same_id_is_kept(new_store: StoreFactory) -> None:
    jobs = SyncJobs(new_store())
    jobs.add_upload("alpha", upload("a.txt"))
    job = jobs.create_job("alpha")
    newer = upload("a.txt", 1)

    def ingest(key: str, doc_id: str) -> object:
        jobs.add_upload("alpha", newer)  # a new upload URL issued while the old file is being indexed
        return None

    assert jobs.run("alpha", job.id, ingest).status == "done"  # type: ignore[union-attr]
    assert jobs.uploads("alpha") == [newer]


def test_a_job_whose_worker_died_goes_stale(new_store: StoreFactory) -> None:
    jobs = SyncJobs(new_store())
    jobs.add_upload("alpha", upload("a.txt"))
    job = jobs.create_job("alpha")
    assert jobs.create_job("alpha").documents == []  # held
    # No worker ever updates it: seen from a process whose threshold it has passed (written an hour ago).
    records = ConditionalJson(new_store(), lock_dir=SYNC_PREFIX)
    key = f"sync/alpha/jobs/{job.id}.json"
    got = records.get(key)
    assert got is not None
    assert records.put(key, {**got[0], "updated": got[0]["updated"] - 3600}, if_match=got[1])
    later = SyncJobs(new_store(), stale_after_s=600)
    shown = later.job("alpha", job.id)
    assert shown is not None and shown.status == "failed"
    assert [d.error.code for d in shown.documents if d.error] == [INTERRUPTED]
    assert [d.id for d in later.create_job("alpha").documents] == ["a.txt"]  # its upload syncs again
    assert SyncJobs(new_store(), stale_after_s=7200).job("alpha", job.id).status == "queued"  # type: ignore[union-attr]


def test_a_job_that_could_not_start(new_store: StoreFactory) -> None:
    jobs = SyncJobs(new_store())
    jobs.add_upload("alpha", upload("a.txt"))
    job = jobs.create_job("alpha")
    jobs.fail_job("alpha", job.id, Failure(code="throttled", message="too many sync jobs at once"))
    failed = jobs.job("alpha", job.id)
    assert failed is not None and failed.status == "failed" and failed.documents[0].error.code == "throttled"  # type: ignore[union-attr]
    assert [u.status for u in jobs.uploads("alpha")] == ["failed"]
    assert [d.id for d in jobs.create_job("alpha").documents] == ["a.txt"]  # transient: synced again


def test_sync_events() -> None:
    job_id = new_job_id()
    assert len(job_id) == 21 and job_id > "sync-0"
    target = sync_target(sync_event("alpha", job_id))
    assert target is not None and (target.tenant, target.job_id) == ("alpha", job_id)
    bads = [
        {},
        {"kb_sync": {"tenant": "alpha"}},
        {"kb_sync": {"tenant": "../x", "job_id": job_id}},
        {"kb_sync": {"tenant": "alpha", "job_id": "../../auth/keys"}},
        {**sync_event("alpha", job_id), "Records": []},
        {"requestContext": {}, "body": "{}"},
    ]
    assert [sync_target(b) for b in bads] == [None] * len(bads)
