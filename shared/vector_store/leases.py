"""Per-document leases: one writer of a tenant's document at a time, across processes and hosts.

A lease is a row of the ``document_leases`` table, one per (tenant, document id) ever written: ``key``
(``{tenant}/{doc_id}``: a tenant id holds no ``/``), the holder's token and the lease's expiry (epoch ms;
NULL while free). Taking leases is ONE ``merge_insert`` keyed on ``key``: insert the rows that do not exist,
and update those that are free, expired or already this holder's. ``key`` is the table's (unenforced)
primary key, so LanceDB's commit-conflict check covers inserts too: two processes inserting the same
new key, or updating the same row, cannot both commit -- the later one is re-run on the new version, where
the row exists and is held, and takes nothing. (Without the primary key, an insert-only race is not a
conflict in LanceDB 0.40: both inserts commit and both writers think they hold the document.)

A holder renews its lease while it works (every third of the lease), and gives it up when done; a holder
that died holds the document until its lease expires. A writer checks that it still holds its leases
just before writing (``confirm``): a holder that stalled past its lease (and lost the document to
another) then writes nothing. Clocks are wall clocks (epoch ms): compared across processes and hosts.

Every take, renewal and release is a commit: a new version of the table and a new small fragment (or
deletion file). Left alone, each commit makes the next slower (the merge joins every fragment; finding the
latest version lists every manifest): measured, a take + release went from ~20 ms to ~95 ms over the first
600 documents. So once a process has made ``compact_every`` commits, its next release compacts the table and
removes the versions older than ``keep_versions`` (Table.optimize, ~20-50 ms on a small table): a take +
release then stays ~20 ms. Compaction is a commit like the others: LanceDB's conflict checks order it with
the takes (a take that loses to it is re-run on the new version; a compaction that loses is tried again
at a later release). It runs in the releasing thread, after the release, never in a background thread: a
Lambda environment is frozen once the invocation returns, and a compaction thawed minutes later would
commit on a base whose intermediate versions another process may have removed meanwhile -- that is also
why ``keep_versions`` must be far longer than any take's read-to-commit time (with the versions removed at
once, concurrent takes were seen both committing; LanceDB warns against it too).
"""

from __future__ import annotations

import logging
import random
import threading
import time
import uuid
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import pyarrow as pa

from shared.identity import valid_tenant
from shared.stages import stage

log = logging.getLogger(__name__)

LEASES_TABLE = "document_leases"
KEY_COLUMN = "key"
HOLDER_COLUMN = "holder"
UNTIL_COLUMN = "until"
# The schema metadata that makes a column the table's unenforced primary key (what
# ``Table.set_unenforced_primary_key`` writes), set when the table is created, so that no process ever
# sees the table without it.
PRIMARY_KEY_METADATA = {"lance-schema:unenforced-primary-key:position": "1"}

LEASES_SCHEMA = pa.schema(
    [
        pa.field(KEY_COLUMN, pa.string(), nullable=False, metadata=PRIMARY_KEY_METADATA),
        pa.field("tenant", pa.string(), nullable=False),
        pa.field("doc_id", pa.string(), nullable=False),
        pa.field(HOLDER_COLUMN, pa.string()),
        pa.field(UNTIL_COLUMN, pa.int64()),
    ]
)

# Waiting for a held document: polls (reads only; a commit only once something looks free) at growing
# intervals up to this, with jitter.
POLL_MAX_S = 0.25
# A merge_insert whose commit retries ran out (many writers at once) is tried again this many times.
COMMIT_ATTEMPTS = 5
# Compact the table (at a release) once a process has made this many commits, removing the versions older
# than KEEP_VERSIONS: a reader or writer on a version that old has long moved on (every operation here reads
# the latest version, and commits within milliseconds to seconds), and LanceDB never removes files it cannot
# tell are unreferenced.
COMPACT_EVERY = 64
KEEP_VERSIONS = timedelta(minutes=1)


class DocumentBusy(Exception):
    """Another writer holds the document(s) (past the wait allowed)."""

    def __init__(self, tenant: str, doc_ids: Collection[str], until_ms: int | None = None) -> None:
        names = ", ".join(repr(d) for d in sorted(doc_ids)[:3]) + (" ..." if len(doc_ids) > 3 else "")
        super().__init__(f"document {names} is being written by another request")
        self.tenant = tenant
        self.doc_ids = frozenset(doc_ids)
        self.until_ms = until_ms


def lease_key(tenant: str, doc_id: str) -> str:
    if not valid_tenant(tenant):
        raise ValueError("invalid tenant id")
    return f"{tenant}/{doc_id}"


def _sql_str(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _now_ms() -> int:
    return int(time.time() * 1000)


def has_primary_key(table: Any) -> bool:
    meta = table.schema.field(KEY_COLUMN).metadata or {}
    return any(k.startswith(b"lance-schema:unenforced-primary-key") for k in meta)


@dataclass
class Lease:
    """A holder's leases on some of a tenant's documents (``doc_ids``), under one token."""

    tenant: str
    doc_ids: frozenset[str]
    token: str
    lease_s: float
    until_ms: int = 0  # when it expires unless renewed, as this holder last set it (epoch ms)
    lost: bool = False  # a renewal found the lease taken (it had expired): the holder must not write
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)


class DocumentLeases:
    """Taking, renewing and giving up document leases on the ``document_leases`` table (``table()`` opens
    it: VectorStore.document_leases)."""

    def __init__(
        self,
        table: Callable[[], Any],
        *,
        compact_every: int = COMPACT_EVERY,
        keep_versions: timedelta = KEEP_VERSIONS,
        background: Callable[[str, Callable[[], object]], None] | None = None,
    ) -> None:
        self._table = table
        self.compact_every = compact_every  # 0: never (compact() still can be called)
        # Where a due compaction runs: ``background(key, job)`` (the store's upkeep thread), so that the
        # release that makes it due returns at once; None: in the releasing thread.
        self._background = background
        self.keep_versions = keep_versions
        self.compactions = 0  # done by this process
        self._commits = 0  # since the last compaction
        self._count_lock = threading.Lock()
        self._compacting = threading.Lock()

    # ------------------------------------------------------------------ upkeep

    def _committed(self) -> None:
        with self._count_lock:
            self._commits += 1

    def _compact_if_due(self) -> None:
        """After a release: compact once ``compact_every`` commits have been made since the last compaction
        (unless another thread of this process is compacting), in the background when there is one."""
        with self._count_lock:
            if self.compact_every <= 0 or self._commits < self.compact_every:
                return
        if self._background is not None:
            self._background(f"{LEASES_TABLE}.compact", self._compact_now)
            return
        self._compact_now()

    def _compact_now(self) -> None:
        if not self._compacting.acquire(blocking=False):
            return
        try:
            if self._compact():
                with self._count_lock:
                    self._commits = 0
        finally:
            self._compacting.release()

    def compact(self) -> bool:
        """Compact the table's fragments and remove the versions older than ``keep_versions`` now; whether it
        was done (False: a concurrent commit won)."""
        with self._compacting:
            return self._compact()

    def _compact(self) -> bool:
        t0 = time.perf_counter()
        try:
            with stage("lease_compaction"):
                self._table().optimize(cleanup_older_than=self.keep_versions)
        except Exception as exc:  # e.g. preempted by a take: a later release tries again
            log.info("compacting %s skipped: %s", LEASES_TABLE, type(exc).__name__)
            return False
        self.compactions += 1
        log.debug("compacted %s in %.0f ms", LEASES_TABLE, (time.perf_counter() - t0) * 1000)
        return True

    # ------------------------------------------------------------------ taking

    def try_acquire(
        self, tenant: str, doc_ids: Collection[str], *, lease_s: float, token: str | None = None, peek: bool = True
    ) -> Lease:
        """Take, in one commit, the leases of those of ``doc_ids`` that are free now (never held, released,
        expired, or this token's already); the others are left alone. Returns the lease on what was taken
        (possibly nothing). ``peek``: read first, and commit only if some look free (waiters poll so);
        False: commit at once (a first attempt, which usually succeeds)."""
        with stage("lease_acquire"):
            return self._try_acquire(tenant, doc_ids, lease_s=lease_s, token=token, peek=peek)

    def _try_acquire(
        self, tenant: str, doc_ids: Collection[str], *, lease_s: float, token: str | None, peek: bool
    ) -> Lease:
        token = token or uuid.uuid4().hex
        wanted = sorted(set(doc_ids))
        if not wanted:
            return Lease(tenant, frozenset(), token, lease_s)
        table = self._table()
        now = _now_ms()
        held = self._held_by_others(table, tenant, wanted, token, now) if peek else set()
        free = [d for d in wanted if d not in held]
        if not free:
            return Lease(tenant, frozenset(), token, lease_s)
        until = now + int(lease_s * 1000)
        data = pa.Table.from_pylist(
            [
                {
                    KEY_COLUMN: lease_key(tenant, d),
                    "tenant": tenant,
                    "doc_id": d,
                    HOLDER_COLUMN: token,
                    UNTIL_COLUMN: until,
                }
                for d in free
            ],
            schema=table.schema,
        )
        takeable = (
            f"target.{HOLDER_COLUMN} IS NULL OR target.{UNTIL_COLUMN} IS NULL OR target.{UNTIL_COLUMN} < {now} "
            f"OR target.{HOLDER_COLUMN} = {_sql_str(token)}"
        )
        for attempt in range(1, COMMIT_ATTEMPTS + 1):
            try:
                result = (
                    table.merge_insert(KEY_COLUMN)
                    .when_matched_update_all(where=takeable)
                    .when_not_matched_insert_all()
                    .execute(data)
                )
            except Exception as exc:  # e.g. the commit's conflict retries ran out: see what is ours
                log.warning("taking document leases failed (%s, attempt %d)", type(exc).__name__, attempt)
                continue
            self._committed()
            if int(result.num_inserted_rows) + int(result.num_updated_rows) == len(free):
                return Lease(tenant, frozenset(free), token, lease_s, until)
            break
        # Some were taken by another writer meanwhile (or the commit failed): what this token holds now.
        return Lease(tenant, frozenset(self._held_by(table, tenant, free, token)), token, lease_s, until)

    def acquire(self, tenant: str, doc_ids: Collection[str], *, lease_s: float, wait_s: float) -> Lease:
        """Take the leases of all of ``doc_ids``, waiting up to ``wait_s`` for writers that hold some of
        them; DocumentBusy when they are still held then (nothing is held then).

        Never waits while holding: when only some could be taken, they are given up before waiting, so
        two writers of overlapping sets cannot deadlock."""
        wanted = frozenset(doc_ids)
        deadline = time.monotonic() + wait_s
        delay = 0.01
        first = True
        while True:
            lease = self.try_acquire(tenant, wanted, lease_s=lease_s, peek=not first)
            first = False
            if lease.doc_ids == wanted:
                return lease
            if lease.doc_ids:
                self.release(lease)
            if time.monotonic() >= deadline:
                raise DocumentBusy(tenant, wanted - lease.doc_ids, self.held_until(tenant, wanted))
            delay = min(delay * 2, POLL_MAX_S)
            time.sleep(min(delay * random.uniform(0.5, 1.0), max(0.0, deadline - time.monotonic())))

    def _rows(self, table: Any, tenant: str, doc_ids: Collection[str]) -> list[dict[str, Any]]:
        keys = ", ".join(_sql_str(lease_key(tenant, d)) for d in doc_ids)
        query = table.search().where(f"{KEY_COLUMN} IN ({keys})").select(["doc_id", HOLDER_COLUMN, UNTIL_COLUMN])
        rows: list[dict[str, Any]] = query.limit(None).to_list()
        return rows

    def _held_by_others(self, table: Any, tenant: str, doc_ids: Collection[str], token: str, now: int) -> set[str]:
        return {
            str(r["doc_id"])
            for r in self._rows(table, tenant, doc_ids)
            if r[HOLDER_COLUMN] is not None
            and r[HOLDER_COLUMN] != token
            and r[UNTIL_COLUMN] is not None
            and int(r[UNTIL_COLUMN]) >= now
        }

    def _held_by(self, table: Any, tenant: str, doc_ids: Collection[str], token: str) -> set[str]:
        return {str(r["doc_id"]) for r in self._rows(table, tenant, doc_ids) if r[HOLDER_COLUMN] == token}

    def held_until(self, tenant: str, doc_ids: Collection[str]) -> int | None:
        """When the last of the others' unexpired leases on ``doc_ids`` expires (epoch ms), if any is held."""
        now = _now_ms()
        untils = [
            int(r[UNTIL_COLUMN])
            for r in self._rows(self._table(), tenant, doc_ids)
            if r[HOLDER_COLUMN] is not None and r[UNTIL_COLUMN] is not None and int(r[UNTIL_COLUMN]) >= now
        ]
        return max(untils) if untils else None

    # ------------------------------------------------------------------ holding

    def renew(self, lease: Lease) -> bool:
        """Extend the lease by its length from now; whether every document of it is still this holder's
        (False: one expired and was taken; the lease is then marked lost)."""
        if not lease.doc_ids:
            return True
        keys = ", ".join(_sql_str(lease_key(lease.tenant, d)) for d in sorted(lease.doc_ids))
        until = _now_ms() + int(lease.lease_s * 1000)
        with stage("lease_renew"):
            result = self._table().update(
                where=f"{KEY_COLUMN} IN ({keys}) AND {HOLDER_COLUMN} = {_sql_str(lease.token)}",
                values={UNTIL_COLUMN: until},
            )
        self._committed()
        if int(result.rows_updated) != len(lease.doc_ids):
            lease.lost = True
        else:
            lease.until_ms = until
        return not lease.lost

    def confirm(self, lease: Lease) -> None:
        """Before a write: make sure the lease has at least half its length left (renewing it if not: a
        lease nobody else can take before it expires needs no commit); DocumentBusy when it was lost --
        write nothing then."""
        if lease.lost:
            raise DocumentBusy(lease.tenant, lease.doc_ids)
        if lease.until_ms - _now_ms() > lease.lease_s * 500:
            return
        if not self.renew(lease):
            raise DocumentBusy(lease.tenant, lease.doc_ids)

    def release(self, lease: Lease) -> None:
        """Give the leases up (best effort: else they expire). Leases no longer this holder's are left alone."""
        lease._stop.set()
        if not lease.doc_ids:
            return
        keys = ", ".join(_sql_str(lease_key(lease.tenant, d)) for d in sorted(lease.doc_ids))
        try:
            with stage("lease_release"):
                self._table().update(
                    where=f"{KEY_COLUMN} IN ({keys}) AND {HOLDER_COLUMN} = {_sql_str(lease.token)}",
                    values_sql={HOLDER_COLUMN: "CAST(NULL AS STRING)", UNTIL_COLUMN: "CAST(NULL AS BIGINT)"},
                )
            self._committed()
        except Exception as exc:
            log.warning(
                "giving up document leases failed (%s); they expire in %.0f s", type(exc).__name__, lease.lease_s
            )
            return
        self._compact_if_due()

    @contextmanager
    def kept(self, lease: Lease) -> Iterator[Lease]:
        """Keep ``lease`` renewed (a thread renews it every third of its length) until the block ends, then
        give it up."""
        thread = threading.Thread(target=self._keep, args=(lease,), name="lease-renewal", daemon=True)
        thread.start()
        try:
            yield lease
        finally:
            lease._stop.set()
            thread.join()
            self.release(lease)

    def _keep(self, lease: Lease) -> None:
        while not lease._stop.wait(lease.lease_s / 3):
            try:
                if not self.renew(lease):
                    log.warning(
                        "a document lease expired and was taken by another writer: %s", sorted(lease.doc_ids)[:3]
                    )
                    return
            except Exception as exc:  # it may then expire; confirm() before the write settles it
                log.warning("renewing document leases failed: %s", type(exc).__name__)
