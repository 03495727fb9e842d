"""Knowledge-base sync jobs and pending uploads, kept in the documents store (durable, shared by every process).

The HTTP API (``api/``) issues upload URLs and starts sync jobs; the jobs run in the ingestion function
(an asynchronous Lambda invoke of ``sync_event(...)``) or, with no function configured, in the api process.
Neither the api's memory nor an execution environment holds any of it: every api process (every Lambda
execution environment) reads the same state, and one that is killed loses nothing. Layout, in the
documents store (a folder or ``s3://bucket/prefix``), per tenant:

- ``sync/{tenant}/uploads/{doc name}.json``  an upload URL was issued for that document id and the file
  is not indexed yet (``UploadRecord``: status ``uploaded``, or ``failed`` with the error of the last sync
  that tried it; ``job_id`` while a sync job holds it);
- ``sync/{tenant}/jobs/{job id}.json``        a sync job (``JobRecord``): its documents and how each went.
  Job ids sort by creation time; the newest ``KEEP_JOBS`` are kept.

Writes are small JSON objects replaced whole (a reader sees the old or the new one). Claims and job
updates are conditional writes, so two processes never hold the same upload: on S3 ``PutObject`` with
``If-None-Match: *`` (create) or ``If-Match: <ETag>`` (replace what was read), which S3 answers 412
PreconditionFailed when it lost the race; in a local folder the same checks under an exclusive ``flock``
of ``sync/.lock`` (one machine, many processes).

A job whose worker died (a killed process, a Lambda timeout that is not retried) stops being updated:
after ``stale_after_s`` without an update it is shown failed (``interrupted``) and its uploads may be
claimed by the next sync. On AWS an asynchronous invoke that fails is retried by Lambda (twice by
default); the worker resumes the documents not done yet.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from functools import partial
from typing import Any, Literal

from pydantic import BaseModel, ValidationError

from shared.errors import RagError
from shared.identity import valid_tenant
from shared.logs import bound
from shared.object_store import ConditionalJson, ObjectStore, doc_name
from shared.protocol import ErrorCode
from shared.timing import iso_utc

log = logging.getLogger(__name__)

SYNC_PREFIX = "sync/"
KEEP_JOBS = 100
# A job not updated for this long (its worker died) is shown failed and frees its uploads. Longer than
# the ingestion function's timeout: a worker updates the job after every document.
DEFAULT_STALE_AFTER_S = 960.0
# How a sync event names its job (``{"kb_sync": {"tenant": ..., "job_id": ...}}``).
EVENT_KEY = "kb_sync"
# A sync retries a failed upload only when its failure may have been transient.
RETRYABLE = frozenset(
    {
        ErrorCode.THROTTLED.value,
        ErrorCode.UPSTREAM_UNAVAILABLE.value,
        ErrorCode.UPSTREAM_TIMEOUT.value,
        ErrorCode.FUNCTION_ERROR.value,
        ErrorCode.INTERNAL_ERROR.value,
        ErrorCode.DOCUMENT_BUSY.value,
    }
)
INTERRUPTED = "interrupted"
_CONFLICT_RETRIES = 20


class Failure(BaseModel):
    code: str
    message: str


class UploadRecord(BaseModel):
    id: str
    key: str
    name: str
    size: int
    content_type: str
    created_at: str
    status: Literal["uploaded", "failed"] = "uploaded"
    error: Failure | None = None
    job_id: str | None = None  # the sync job holding it


class JobDocument(BaseModel):
    id: str
    key: str
    state: Literal["pending", "done", "failed"] = "pending"
    error: Failure | None = None


class JobRecord(BaseModel):
    id: str
    tenant: str
    status: Literal["queued", "running", "done", "failed"] = "queued"
    documents: list[JobDocument] = []
    error: Failure | None = None  # a failure of the job itself (not of one document)
    correlation_id: str | None = None  # of the request that started it: the worker logs with it
    created_at: str
    started_at: str | None = None
    finished_at: str | None = None
    updated: float  # time.time() of the last write: a running job that stops being updated is stale

    @property
    def finished(self) -> bool:
        return self.status in ("done", "failed")

    def stale(self, now: float, stale_after_s: float) -> bool:
        return not self.finished and now - self.updated > stale_after_s

    def view(self, now: float, stale_after_s: float) -> JobRecord:
        """The job as shown: one whose worker died is failed, its unfinished documents interrupted."""
        if not self.stale(now, stale_after_s):
            return self
        gone = Failure(code=INTERRUPTED, message="the sync job stopped before this document was indexed; sync again")
        docs = [
            d if d.state != "pending" else d.model_copy(update={"state": "failed", "error": gone})
            for d in self.documents
        ]
        return self.model_copy(update={"status": "failed", "documents": docs})


class SyncTarget(BaseModel):
    """What a sync event names: whose job, which."""

    tenant: str
    job_id: str


def new_job_id() -> str:
    """``sync-`` and 16 hex digits: the creation time in ms (11 digits: they sort by it) and 5 random ones."""
    return f"sync-{int(time.time() * 1000):011x}{uuid.uuid4().hex[:5]}"


def sync_event(tenant: str, job_id: str) -> dict[str, Any]:
    """The payload the ingestion function is invoked with (asynchronously) to run a job."""
    return {EVENT_KEY: {"tenant": tenant, "job_id": job_id}}


def sync_target(event: Any) -> SyncTarget | None:
    """The job a sync event names, or None when ``event`` is not a sync event (or names no valid job)."""
    if not isinstance(event, dict) or not isinstance(event.get(EVENT_KEY), dict) or len(event) != 1:
        return None
    try:
        target = SyncTarget.model_validate(event[EVENT_KEY])
    except ValidationError:
        return None
    if not valid_tenant(target.tenant) or not _valid_job_id(target.job_id):
        return None
    return target


def _valid_job_id(job_id: str) -> bool:
    return len(job_id) == 21 and job_id.startswith("sync-") and all(c in "0123456789abcdef" for c in job_id[5:])


# ---------------------------------------------------------------------- jobs and uploads


def _uploads(tenant: str) -> str:
    if not valid_tenant(tenant):
        raise ValueError("invalid tenant id")
    return f"{SYNC_PREFIX}{tenant}/uploads/"


def _jobs(tenant: str) -> str:
    if not valid_tenant(tenant):
        raise ValueError("invalid tenant id")
    return f"{SYNC_PREFIX}{tenant}/jobs/"


# ingest(key, doc_id): index one uploaded file (raises RagError when it cannot).
Ingest = Callable[[str, str], object]


class SyncJobs:
    """A tenant's pending uploads and sync jobs in the documents store, and the worker that runs a job."""

    def __init__(self, store: ObjectStore, *, stale_after_s: float = DEFAULT_STALE_AFTER_S) -> None:
        self.records = ConditionalJson(store, lock_dir=SYNC_PREFIX)
        self.stale_after_s = stale_after_s

    # -- uploads

    def add_upload(self, tenant: str, upload: UploadRecord) -> None:
        """Remember an upload URL issued for ``upload.id`` (replacing an earlier one for the same id)."""
        self.records.put(_uploads(tenant) + doc_name(upload.id) + ".json", upload.model_dump(mode="json"))

    def uploads(self, tenant: str) -> list[UploadRecord]:
        """The tenant's uploads not indexed yet, by id."""
        found = []
        for name in self.records.names(_uploads(tenant)):
            got = self.records.get(_uploads(tenant) + name)
            if got is not None:
                found.append(UploadRecord.model_validate(got[0]))
        return sorted(found, key=lambda u: u.id)

    def drop_upload(self, tenant: str, doc_id: str) -> bool:
        """Forget the pending upload of ``doc_id``; whether there was one."""
        return self.records.delete(_uploads(tenant) + doc_name(doc_id) + ".json")

    # -- jobs

    def job(self, tenant: str, job_id: str) -> JobRecord | None:
        got = self.records.get(_jobs(tenant) + job_id + ".json")
        return JobRecord.model_validate(got[0]).view(time.time(), self.stale_after_s) if got else None

    def jobs(self, tenant: str) -> list[JobRecord]:
        """The tenant's jobs, newest first (as shown: a stale one failed)."""
        now = time.time()
        found = []
        for name in sorted(self.records.names(_jobs(tenant)), reverse=True):
            got = self.records.get(_jobs(tenant) + name)
            if got is not None:
                found.append(JobRecord.model_validate(got[0]).view(now, self.stale_after_s))
        return found

    def create_job(self, tenant: str, *, correlation_id: str | None = None) -> JobRecord:
        """A new queued job holding every upload a sync may take: not held by a live job, and either never
        synced or failed for a reason that may have been transient. Each is claimed with a conditional
        write, so a concurrent sync (another process) never takes the same one."""
        now = time.time()
        job = JobRecord(
            id=new_job_id(), tenant=tenant, created_at=iso_utc(now, z=True), updated=now, correlation_id=correlation_id
        )
        key = _jobs(tenant) + job.id + ".json"
        while not self.records.put(key, job.model_dump(mode="json"), create=True):
            job.id = new_job_id()  # the same id twice in one millisecond: another one
            key = _jobs(tenant) + job.id + ".json"
        for name in self.records.names(_uploads(tenant)):
            claimed = self._claim(tenant, _uploads(tenant) + name, job.id)
            if claimed is not None:
                job.documents.append(JobDocument(id=claimed.id, key=claimed.key))
        job.updated = time.time()
        self.records.put(key, job.model_dump(mode="json"))  # nothing else writes a job before it is launched
        self._prune(tenant)
        return job

    def _claim(self, tenant: str, key: str, job_id: str) -> UploadRecord | None:
        for _ in range(_CONFLICT_RETRIES):
            got = self.records.get(key)
            if got is None:
                return None
            upload = UploadRecord.model_validate(got[0])
            if not self._claimable(tenant, upload):
                return None
            claimed = upload.model_copy(update={"job_id": job_id})
            if self.records.put(key, claimed.model_dump(mode="json"), if_match=got[1]):
                return claimed
        return None

    def _claimable(self, tenant: str, upload: UploadRecord) -> bool:
        if upload.job_id is not None:
            holder = self.job(tenant, upload.job_id)
            # Held by a live job; a finished, stale or pruned one's hold is void.
            if holder is not None and not holder.finished:
                return False
        return upload.status == "uploaded" or (upload.error is not None and upload.error.code in RETRYABLE)

    def _prune(self, tenant: str) -> None:
        names = sorted(self.records.names(_jobs(tenant)), reverse=True)
        for name in names[KEEP_JOBS:]:
            self.records.delete(_jobs(tenant) + name)

    def fail_job(self, tenant: str, job_id: str, error: Failure) -> None:
        """The job could not be started (its worker could not be invoked): failed, its uploads released."""
        self._update(tenant, job_id, lambda job: self._finish(job, error))
        job = self.job(tenant, job_id)
        for doc in job.documents if job else []:
            self._release(tenant, doc, job_id, error)

    # -- the worker

    def run(self, tenant: str, job_id: str, ingest: Ingest) -> JobRecord | None:
        """Run a job: ``ingest`` each of its documents not done yet, one at a time, recording how each went
        in the job (after every document) and in its upload (indexed: forgotten; failed: the error). Safe to
        run again after a crash (Lambda retries a failed asynchronous invoke): it resumes. Its log lines
        carry the correlation id of the request that started it."""
        job = self._update(tenant, job_id, self._start)
        with bound(correlation_id=job.correlation_id if job else None):
            return self._run(tenant, job_id, job, ingest)

    def _run(self, tenant: str, job_id: str, job: JobRecord | None, ingest: Ingest) -> JobRecord | None:
        if job is None or job.finished:
            log.info("sync job %s: nothing to run (%s)", job_id, "missing" if job is None else job.status)
            return job
        log.info("sync job %s: %d documents", job_id, sum(d.state == "pending" for d in job.documents))
        for doc in list(job.documents):
            if doc.state != "pending":
                continue
            error: Failure | None = None
            try:
                ingest(doc.key, doc.id)
            except RagError as exc:
                error = Failure(code=exc.code.value, message=exc.message)
            except Exception as exc:
                log.error("sync job %s: %s failed: %s", job_id, doc.id, type(exc).__name__, exc_info=exc)
                error = Failure(code=ErrorCode.INTERNAL_ERROR.value, message="internal error; see the service log")
            self._release(tenant, doc, job_id, error)
            job = self._update(tenant, job_id, partial(self._record, doc_id=doc.id, error=error)) or job
        job = self._update(tenant, job_id, lambda j: self._finish(j, None)) or job
        log.info("sync job %s: %s", job_id, job.status)
        return job

    @staticmethod
    def _start(job: JobRecord) -> JobRecord | None:
        if job.finished:
            return None
        if job.status == "queued":
            return job.model_copy(update={"status": "running", "started_at": iso_utc(z=True)})
        return job  # running: a retried invoke resumes it (and refreshes `updated`)

    @staticmethod
    def _record(job: JobRecord, doc_id: str, error: Failure | None) -> JobRecord | None:
        docs = [
            d.model_copy(update={"state": "failed" if error else "done", "error": error}) if d.id == doc_id else d
            for d in job.documents
        ]
        return job.model_copy(update={"documents": docs})

    @staticmethod
    def _finish(job: JobRecord, error: Failure | None) -> JobRecord | None:
        if job.finished:
            return None
        docs = list(job.documents)
        if error is not None:
            docs = [
                d if d.state != "pending" else d.model_copy(update={"state": "failed", "error": error}) for d in docs
            ]
        failed = error is not None or any(d.state != "done" for d in docs)
        return job.model_copy(
            update={
                "status": "failed" if failed else "done",
                "documents": docs,
                "error": error,
                "finished_at": iso_utc(z=True),
                "started_at": job.started_at or iso_utc(z=True),
            }
        )

    def _update(self, tenant: str, job_id: str, change: Callable[[JobRecord], JobRecord | None]) -> JobRecord | None:
        """Read the job, apply ``change`` (None: leave it), write it back if nobody wrote it meanwhile (else
        again). Returns the job as written (or as read, when unchanged); None when there is no such job."""
        key = _jobs(tenant) + job_id + ".json"
        for _ in range(_CONFLICT_RETRIES):
            got = self.records.get(key)
            if got is None:
                return None
            job = JobRecord.model_validate(got[0])
            changed = change(job)
            if changed is None:
                return job
            changed.updated = time.time()
            if self.records.put(key, changed.model_dump(mode="json"), if_match=got[1]):
                return changed
        raise RuntimeError(f"sync job {job_id}: too many concurrent updates")

    def _release(self, tenant: str, doc: JobDocument, job_id: str, error: Failure | None) -> None:
        """After a document: its upload is forgotten (indexed) or marked failed, unless it is another upload
        of the same id by now (a new upload URL was issued meanwhile)."""
        key = _uploads(tenant) + doc_name(doc.id) + ".json"
        for _ in range(_CONFLICT_RETRIES):
            got = self.records.get(key)
            if got is None:
                return
            upload = UploadRecord.model_validate(got[0])
            if upload.key != doc.key or upload.job_id != job_id:
                return  # another upload of that id by now, or another job holds it (this one went stale)
            if error is None:
                self.records.delete(key)
                return
            update: dict[str, Any] = {"job_id": None}
            if error is not None:
                update |= {"status": "failed", "error": error}
            if self.records.put(key, upload.model_copy(update=update).model_dump(mode="json"), if_match=got[1]):
                return
