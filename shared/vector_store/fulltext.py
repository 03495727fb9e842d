"""Upkeep of LanceDB's native full-text (BM25) index on the chunk text: find or create it, count the rows
it does not hold yet, and fold them in (Table.optimize, which also compacts the table's small files) once
there are enough of them, or once enough commits left small files."""

from __future__ import annotations

import logging
import threading
from typing import Any

from lancedb.index import FTS

from shared.vector_store.schema import CHUNKS_TABLE
from shared.vector_store.upkeep import WriteCounter, fold_when_due, optimize_table, unindexed_rows

log = logging.getLogger(__name__)

# The full-text index: the chunk text, English stemming, stop words removed, case/accents folded.
FTS_COLUMN = "text"
# Rows written since the full-text index was last updated are still searched (by a flat scan, so they
# are findable at once); past this many such rows a write folds them into the index (Table.optimize).
FTS_REINDEX_ROWS = 256
# Every commit leaves at least one small file (fragment), which every later commit and query of the table
# reads: a stream of one-document writes (Kinesis) made 256 of them between row-count folds, the commit
# growing from ~24 to ~55 ms. So a fold also comes after this many commits by this process, however few
# rows they held, at most upkeep.FOLD_DUTY of the time (WriteCounter).
FTS_FOLD_COMMITS = 32


def fts_index_name(table: Any) -> str | None:
    """The name of the full-text index on FTS_COLUMN, if the table has one."""
    for idx in table.list_indices():
        if str(idx.index_type).upper() == "FTS" and list(idx.columns) == [FTS_COLUMN]:
            return str(idx.name)
    return None


def ensure_fts_index(table: Any) -> str | None:
    """The full-text index on the chunk text: found, or created (it indexes the rows present now).

    Created on an empty table it costs nothing; on a table written by an older version it indexes
    what is there. Another process may create it at the same moment: then we use theirs.
    """
    name = fts_index_name(table)
    if name is not None:
        return name
    try:
        table.create_index(FTS_COLUMN, config=FTS(), replace=False)
    except Exception as exc:  # a concurrent creator, or a store that refuses: re-check, else no FTS
        log.debug("creating the full-text index failed: %s", type(exc).__name__)
    name = fts_index_name(table)
    if name is None:
        log.warning("no full-text index on %s.%s: fts/hybrid search fall back to vector", CHUNKS_TABLE, FTS_COLUMN)
    return name


class FullTextIndex:
    """One process's view of the chunks table's full-text index: its name, and when to update it.

    ``enabled``: keep the index at all (for the fts and hybrid modes). ``reindex_rows``: fold the
    unindexed rows into the index once a write leaves at least this many (0: never on a write).
    ``fold_commits``: fold (and so compact the table's small files) after this many commits by this
    process however few rows they held, at most upkeep.FOLD_DUTY of the time (0: by rows only).
    """

    def __init__(
        self, *, enabled: bool = True, reindex_rows: int = FTS_REINDEX_ROWS, fold_commits: int = FTS_FOLD_COMMITS
    ) -> None:
        self.enabled = enabled
        self.reindex_rows = reindex_rows
        self.name: str | None = None
        self._optimize_lock = threading.Lock()
        # Unindexed rows as far as this process knows (its own writes since it last read the index
        # statistics; starts at the threshold so that the first write looks at the real number), and its
        # commits since its last fold.
        self._written = WriteCounter(reindex_rows, commits=fold_commits)

    def open(self, table: Any) -> None:
        """Find or create the index on a freshly opened chunks table (when enabled)."""
        if self.enabled:
            self.name = ensure_fts_index(table)

    def available(self, table: Any) -> bool:
        """Whether there is an index to search; looks again if another process may have made it since."""
        if self.name is None and self.enabled:
            self.name = fts_index_name(table)
        return self.name is not None

    def unindexed_rows(self, table: Any) -> int:
        """Rows not yet in the full-text index (searched by a flat scan until the next optimize)."""
        return unindexed_rows(table, self.name)

    def optimize(self, table: Any, attempts: int = 3) -> None:
        """Fold new rows into the full-text index and compact small files (LanceDB Table.optimize).

        Old versions are kept (LanceDB's default: 7 days), so readers on another process are safe. A
        concurrent write can preempt the compaction commit ("Retryable commit conflict"; the write
        itself always wins): then it is retried, up to ``attempts`` times.
        """
        with self._optimize_lock:
            self._optimize(table, attempts)

    def _optimize(self, table: Any, attempts: int) -> None:
        optimize_table(table, attempts)

    def due(self, rows: int) -> bool:
        """Count one more commit of ``rows`` by this process; whether it is time to look at the index (its
        own count of unindexed rows reached reindex_rows, or this is its first write) or to compact (its
        commits reached fold_commits). Then ``fold``."""
        return self.name is not None and self._written.add(rows)

    def fold(self, table: Any) -> None:
        """Keep the flat-scanned tail of the full-text index short: every unindexed row costs each
        full-text query ~0.2 ms, while an optimize costs ~0.2-1 s (measured on 10k SciFact chunks).

        Run by the store's background upkeep after a write that was ``due``, not on the writer's path: an
        optimize inline made the write that triggered it, and everything queued behind it, 0.2-0.3 s slower
        (bench-kinesis). The index statistics (~10 ms) are read here, not after every write."""
        if not self._optimize_lock.acquire(blocking=False):
            return  # another thread is optimizing right now
        try:
            fold_when_due(
                self._written, self.reindex_rows, lambda: self.unindexed_rows(table), lambda: self._optimize(table, 3)
            )
        except Exception as exc:  # best effort: the rows stay searchable by the flat scan
            log.warning("updating the full-text index failed (will retry after a later write): %s", type(exc).__name__)
        finally:
            self._optimize_lock.release()
