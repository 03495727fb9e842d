"""Index upkeep shared by the full-text, vector and scalar indexes: folding new rows into a table's indexes
(Table.optimize, retried when a concurrent write preempts it), counting the rows an index does not hold
yet, and the one background thread per store that runs upkeep after writes, off the writer's path."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from shared.timing import timed_ms

log = logging.getLogger(__name__)

# Table.optimize is retried this many times when a concurrent write preempts its commit.
OPTIMIZE_ATTEMPTS = 3
# Folds a WriteCounter calls for by its commit count take at most this share of the time.
FOLD_DUTY = 0.1


def optimize_table(table: Any, attempts: int = OPTIMIZE_ATTEMPTS) -> None:
    """Fold the rows written since into every index of ``table`` and compact small files (LanceDB
    Table.optimize).

    Old versions are kept (LanceDB's default: 7 days), so readers on another process are safe. A
    concurrent write can preempt the compaction commit ("Retryable commit conflict"; the write itself
    always wins): then it is retried, up to ``attempts`` times."""
    t0 = time.perf_counter()
    for attempt in range(1, attempts + 1):
        try:
            table.optimize()
            break
        except Exception as exc:
            if attempt == attempts or "retryable" not in str(exc).lower():
                raise
            log.debug("optimize preempted by a concurrent write (attempt %d): %s", attempt, type(exc).__name__)
            time.sleep(0.05 * attempt)
    log.info("optimized %s in %.0f ms", table.name, timed_ms(t0))


def index_named(table: Any, column: str, *, kind: str | None = None) -> Any | None:
    """The index on exactly ``column`` (of type ``kind``, e.g. "FTS", when given), if the table has one."""
    for idx in table.list_indices():
        if list(idx.columns) != [column]:
            continue
        if kind is None or str(idx.index_type).upper() == kind:
            return idx
    return None


def unindexed_rows(table: Any, name: str | None) -> int:
    """Rows the index ``name`` does not hold yet (searched by a flat scan until the next optimize)."""
    if name is None:
        return 0
    stats = table.index_stats(name)
    return int(stats.num_unindexed_rows) if stats is not None else 0


class WriteCounter:
    """This process's count of rows written to a table since its indexes were last looked at: the index
    statistics (~10 ms, a few reads on S3) are read only once it reaches ``threshold``, not after every
    write. Starts at the threshold, so that the first write looks at the real number.

    ``commits``: also due after this many writes (commits), however few rows they held (0: by rows only).
    Every commit leaves at least one small file that every later commit and query of the table reads, so a
    stream of small writes wants folds (which compact them) sooner than its rows say; LanceDB's own advice is
    to optimize after ~20 data modifications. Such commit-count folds keep to ``duty`` of the time: after a
    fold (``folded``), the next waits (1 / duty - 1) times its duration, so where a fold takes seconds (a
    million rows) they cannot run back to back."""

    def __init__(self, threshold: int, *, commits: int = 0, duty: float = FOLD_DUTY) -> None:
        self.threshold = threshold
        self.commits = commits
        self.duty = duty
        self._lock = threading.Lock()
        self._written = threshold
        self._commits = 0
        self._commit_fold_at = 0.0  # monotonic: no commit-count fold before

    def add(self, rows: int) -> bool:
        """Count one commit of ``rows`` more; whether a look is due (0 threshold or less: never)."""
        if self.threshold <= 0:
            return False
        with self._lock:
            self._written += rows
            self._commits += 1
            return self._written >= self.threshold or self._many_commits()

    def _many_commits(self) -> bool:
        """(under _lock) Enough commits for a fold of their own, and the duty kept."""
        return 0 < self.commits <= self._commits and time.monotonic() >= self._commit_fold_at

    def take(self) -> tuple[bool, int]:
        """An upkeep starts: the counts so far are its business; writes from now on count anew. Returns
        whether the commits call for a fold whatever the rows, and the commits taken (for ``credit``)."""
        with self._lock:
            many, commits = self._many_commits(), self._commits
            self._written, self._commits = 0, 0
            return many, commits

    def credit(self, unindexed: int, commits: int = 0) -> None:
        """The upkeep left ``unindexed`` rows outside the indexes and did not fold the ``commits`` it took:
        they count toward the next one (rows written meanwhile may be counted twice: the next look comes
        early, never late)."""
        with self._lock:
            self._written += unindexed
            self._commits += commits

    def folded(self, seconds: float) -> None:
        """A fold took ``seconds``: the next commit-count fold waits (1 / duty - 1) times as long."""
        with self._lock:
            self._commit_fold_at = time.monotonic() + seconds * (1 / self.duty - 1)


class Upkeep:
    """One daemon thread running index upkeep jobs in the background, so that a write returns without
    waiting for an index build or an optimize.

    Jobs are keyed: a job submitted while one of the same key is pending replaces it (ten writes in a
    row cause one upkeep, not ten). A job that raises is logged; the next write submits it again."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._cv = threading.Condition()
        self._pending: dict[str, Callable[[], object]] = {}
        self._running: str | None = None
        self._thread: threading.Thread | None = None

    def submit(self, key: str, job: Callable[[], object]) -> None:
        with self._cv:
            self._pending[key] = job
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name=f"upkeep-{self.name}", daemon=True)
                self._thread.start()
            self._cv.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no job is pending or running; whether that happened within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        with self._cv:
            while self._pending or self._running is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cv.wait(left)
            return True

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._pending:
                    self._running = None
                    self._cv.notify_all()
                    self._cv.wait()
                key = next(iter(self._pending))
                job = self._pending.pop(key)
                self._running = key
            try:
                job()
            except Exception as exc:  # best effort: the rows stay searchable by the flat scan
                # (its type only: LanceDB's messages carry source paths, and no exception text is logged)
                log.warning("index upkeep %r failed (tried again after a later write): %s", key, type(exc).__name__)
            finally:
                with self._cv:
                    self._running = None
                    self._cv.notify_all()


def fold_when_due(
    counter: WriteCounter, fold_rows: int, unindexed: Callable[[], int], optimize: Callable[[], object]
) -> bool:
    """The fold a due ``counter`` called for: ``optimize`` (Table.optimize: it folds the new rows into the
    indexes and compacts the table's small files) when the counter's commits call for it, or else when
    ``unindexed()`` (one statistics read) reaches ``fold_rows``; what was not folded counts toward the next
    look. Whether it optimized; a failure is raised, and the next write looks again."""
    many, commits = counter.take()
    try:
        if not many:
            pending = unindexed()
            if pending < fold_rows:
                counter.credit(pending, commits)
                return False
        started = time.monotonic()
        optimize()
    except Exception:
        counter.credit(fold_rows, commits)
        raise
    counter.folded(time.monotonic() - started)
    return True


def scalar_upkeep(table: Any, column: str, counter: WriteCounter, fold_rows: int) -> bool:
    """``fold_when_due`` for a table whose indexes are scalar: the rows the index on ``column`` lacks."""

    def unindexed() -> int:
        idx = index_named(table, column)
        return unindexed_rows(table, idx.name if idx is not None else None)

    return fold_when_due(counter, fold_rows, unindexed, lambda: optimize_table(table))
