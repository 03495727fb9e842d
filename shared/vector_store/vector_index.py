"""The ANN index on the chunk vectors: when it is created, folded forward and retrained, and how search
uses it.

Lifecycle (``VectorIndex.upkeep``; run in the background after writes, and by ``localrag reindex``
through ``VectorStore.ensure_vector_index``):

- **created** once the chunks table holds ``min_rows`` rows (below that a flat scan is as fast: see
  ``VectorIndexPolicy``), trained on the rows present then (cosine distance);
- **optimized** (LanceDB Table.optimize) once ``fold_rows`` rows were written since: the new rows are
  added to the existing partitions. Until then they are found by LanceDB's flat search of the unindexed
  part, so a new chunk is searchable at once either way;
- **retrained** (rebuilt on the current rows, same name, ``replace=True``) once the table has grown by
  ``retrain_growth`` times the rows it was trained on: partitions trained on 10k rows fit 1M poorly.
  The trained row count is kept in the vector field's metadata (``TRAINED_ROWS_KEY``).

Across processes one builder at a time: a build holds a lease (shared.vector_store.leases) on a reserved
key; a process that finds it held leaves the build to the holder. Two processes creating the index at
the same moment anyway (e.g. a lease table that cannot be written) cannot both commit it: the later
create fails ("already exists"), which is logged and ignored.

``RAG_VECTOR_INDEX=off`` builds nothing, and search bypasses an index that exists (exact flat search).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from lancedb.index import HnswSq, IvfPq

from shared.timing import timed_ms
from shared.vector_store.upkeep import WriteCounter, optimize_table, unindexed_rows

log = logging.getLogger(__name__)

VECTOR_COLUMN = "vector"
VECTOR_INDEX_NAME = "vector_idx"
# The vector field's metadata key holding how many rows the index was (re)trained on.
TRAINED_ROWS_KEY = "localrag:vector-index-trained-rows"
# IVF training needs some rows: a forced build of a smaller table is not attempted (PQ codebooks are
# trained on 256 centroids per sub-vector).
MIN_TRAIN_ROWS = 256

VectorIndexMode = Literal["auto", "off"]
VectorIndexType = Literal["IVF_HNSW_SQ", "IVF_PQ"]
Action = Literal["none", "created", "optimized", "retrained"]

# Defaults, chosen by measurement: 100k real-neighbourhood MiniLM vectors (SciFact chunks grown by
# bench/scale_data.py), 2 cores. Flat top-10 p50 grows with the rows (10k: 12 ms, 25k: 46 ms, 50k: 150 ms
# on a loaded machine) while the index answers in ~10 ms: it pays from ~20k rows. IVF_HNSW_SQ builds 5x
# faster than IVF_PQ (88 s vs 485 s at 100k) and reaches recall@10 0.97 with 20 of its 40 partitions and
# refine 4 (IVF_PQ: 0.93 at refine 4, 0.985 at refine 10).
DEFAULT_MIN_ROWS = 20_000
DEFAULT_INDEX_TYPE: VectorIndexType = "IVF_HNSW_SQ"
DEFAULT_NPROBES = 20
DEFAULT_REFINE_FACTOR = 4
# On S3 re-ranking reads each candidate's full vector with a ranged GET of its own (~100 a query at refine 4):
# moto, 30k chunks, nprobes 20: 1.7 s a query through the product at refine 4, 0.7 s with no re-ranking and the
# exact distances computed from the matches' vectors, recall@10 1.0 vs 0.98 (100k: 0.96). 1: re-rank only the
# limit's candidates, which is what makes their distances exact (the least any search through the index does).
S3_REFINE_FACTOR = 1
# Trained on 25k and folded forward to 100k (4x), recall@10 is still 0.98 (refine 4): retrain at 4x.
DEFAULT_RETRAIN_GROWTH = 4.0
# Unindexed rows are flat-scanned by every query (10k: ~12 ms) and folding costs ~2 ms per row (75k rows:
# 140 s, loaded): fold every 5k rows, a ~10 s background optimize that keeps the flat part under ~6 ms.
DEFAULT_FOLD_ROWS = 5_000


@dataclass(frozen=True)
class VectorIndexPolicy:
    """How the chunks table's vector index is built and searched (from RagSettings, RAG_VECTOR_*).

    ``mode``: ``auto`` (build and use one once it pays) or ``off`` (never build; exact flat search).
    ``min_rows``: build it once the table holds this many rows. ``index_type``: IVF_HNSW_SQ or IVF_PQ.
    ``nprobes``: IVF partitions searched at least (more when a narrow tenant filter leaves fewer than
    the limit). ``refine_factor``: re-rank ``limit * refine_factor`` candidates by their full vectors
    (at least 1: the re-ranking is what makes the distances exact). ``retrain_growth``: rebuild once the
    table has this many times the rows the index was trained on. ``fold_rows``: fold new rows in (optimize)
    once a process has written this many.
    """

    mode: VectorIndexMode = "auto"
    min_rows: int = DEFAULT_MIN_ROWS
    index_type: VectorIndexType = DEFAULT_INDEX_TYPE
    nprobes: int = DEFAULT_NPROBES
    refine_factor: int = DEFAULT_REFINE_FACTOR
    retrain_growth: float = DEFAULT_RETRAIN_GROWTH
    fold_rows: int = DEFAULT_FOLD_ROWS

    def __post_init__(self) -> None:
        if self.mode not in ("auto", "off"):
            raise ValueError("mode must be 'auto' or 'off'")
        if self.index_type not in ("IVF_HNSW_SQ", "IVF_PQ"):
            raise ValueError("index_type must be IVF_HNSW_SQ or IVF_PQ")
        if self.min_rows < 1 or self.nprobes < 1 or self.refine_factor < 1 or self.fold_rows < 1:
            raise ValueError("min_rows, nprobes, refine_factor and fold_rows must be positive")
        if self.retrain_growth <= 1.0:
            raise ValueError("retrain_growth must be > 1")

    @property
    def enabled(self) -> bool:
        return self.mode == "auto"

    def config(self, rows: int, dimension: int) -> Any:
        """The LanceDB index config for a table of ``rows`` vectors of ``dimension`` (cosine)."""
        partitions = num_partitions(rows, self.index_type)
        if self.index_type == "IVF_PQ":
            # 8 dimensions per PQ sub-vector (384 -> 48 sub-vectors): finer codes than LanceDB's default
            # of 16, for recall; refine_factor re-ranks by the full vectors anyway.
            sub = dimension // 8 if dimension % 8 == 0 else None
            return IvfPq(distance_type="cosine", num_partitions=partitions, num_sub_vectors=sub)
        return HnswSq(distance_type="cosine", num_partitions=partitions)


def num_partitions(rows: int, index_type: VectorIndexType) -> int:
    """IVF partitions for ``rows`` vectors: about sqrt(rows) for IVF_PQ (LanceDB's default), fewer and
    larger for IVF_HNSW_SQ (each partition is a graph searched in log time)."""
    if index_type == "IVF_PQ":
        return max(1, round(math.sqrt(rows)))
    return max(1, round(math.sqrt(rows) / 8))


def vector_index(table: Any) -> Any | None:
    """The vector index on VECTOR_COLUMN, if the table has one."""
    for idx in table.list_indices():
        if list(idx.columns) == [VECTOR_COLUMN] and "FTS" not in str(idx.index_type).upper():
            return idx
    return None


def trained_rows(table: Any) -> int | None:
    """The rows the vector index was last (re)trained on, as recorded in the vector field's metadata."""
    meta = table.schema.field(VECTOR_COLUMN).metadata or {}
    value = meta.get(TRAINED_ROWS_KEY.encode())
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def exact_distances(rows: Sequence[dict[str, Any]], vector: Sequence[float]) -> None:
    """Set each row's ``_distance`` to the exact cosine distance from its stored ``vector`` to
    ``vector`` (1 - cos, 0 .. 2), and drop the stored vector: for full-text hits, which carry no distance."""
    if not rows:
        return
    q = np.asarray(vector, dtype=np.float32)
    m = np.asarray([r[VECTOR_COLUMN] for r in rows], dtype=np.float32)
    cos = (m @ q) / np.maximum(np.linalg.norm(m, axis=1) * np.linalg.norm(q), 1e-12)
    for r, c in zip(rows, cos, strict=True):
        r["_distance"] = float(1.0 - c)
        del r[VECTOR_COLUMN]


@dataclass(frozen=True)
class SearchParams:
    """What a vector query is told about the index: use it (``nprobes``, ``refine_factor``) or bypass it.

    Either way the ``_distance`` LanceDB returns is exact: a flat scan computes it from the full vectors, and
    so does the re-ranking of an index's candidates (an index's own, quantized, distances are approximate;
    the threshold gate compares exact ones). So a search through the index always re-ranks, at least the
    limit's own candidates (``refine_factor`` 1)."""

    use_index: bool = True
    nprobes: int = DEFAULT_NPROBES
    refine_factor: int = DEFAULT_REFINE_FACTOR

    def apply(self, query: Any, *, widen: bool = False) -> Any:
        """The LanceDB vector query with these parameters (no effect on a table without an index).

        ``widen``: search partitions past ``nprobes`` (up to all) until the limit is filled; for a query
        whose prefilter (a small tenant in a large table) left fewer rows than the limit in the nearest
        ``nprobes`` partitions. (Not the default: LanceDB then searches every partition, measured.)"""
        if not self.use_index:
            return query.bypass_vector_index()
        query = query.minimum_nprobes(self.nprobes).maximum_nprobes(0) if widen else query.nprobes(self.nprobes)
        return query.refine_factor(max(1, self.refine_factor))


# The parameters of a search through a store's default policy.
DEFAULT_SEARCH = SearchParams()

Lease = Callable[[], AbstractContextManager[bool]]


class VectorIndex:
    """One process's view of the chunks table's vector index: the policy, and when to act on it.

    ``lease``: a context manager factory that holds the cross-process build lease while the block runs
    and yields whether it got it (VectorStore passes one on the document_leases table)."""

    def __init__(self, policy: VectorIndexPolicy, *, dimension: int, lease: Lease) -> None:
        self.policy = policy
        self.dimension = dimension
        self._lease = lease
        self._lock = threading.Lock()
        self.written = WriteCounter(policy.fold_rows)

    def search_params(self) -> SearchParams:
        return SearchParams(self.policy.enabled, self.policy.nprobes, self.policy.refine_factor)

    def due(self, rows: int) -> bool:
        """After a write of ``rows`` rows: whether an upkeep may have something to do."""
        if not self.policy.enabled:
            return False
        return self.written.add(rows)

    def plan(self, table: Any, *, force: bool = False, explicit: bool = False) -> tuple[Action, int]:
        """What an upkeep would do now, and how many rows the vector index lacks (reads the row count and
        the index statistics)."""
        if not self.policy.enabled:
            return "none", 0
        rows = int(table.count_rows())
        idx = vector_index(table)
        if idx is None:
            return ("created" if rows >= (MIN_TRAIN_ROWS if force else self.policy.min_rows) else "none"), 0
        trained = trained_rows(table) or int(table.index_stats(idx.name).num_indexed_rows or 0)
        if force or rows >= trained * self.policy.retrain_growth:
            return "retrained", 0
        pending = unindexed_rows(table, idx.name)
        if pending >= (1 if explicit else self.policy.fold_rows):
            return "optimized", 0
        return "none", pending

    def upkeep(self, table: Any, *, force: bool = False, explicit: bool = False) -> Action:
        """Create, retrain or fold the index as the policy says; returns what was done.

        ``explicit`` (VectorStore.ensure_vector_index): fold any unindexed row, not only past fold_rows.
        ``force``: build now whatever the thresholds (create from MIN_TRAIN_ROWS rows; else retrain)."""
        with self._lock:  # one builder per process
            self.written.take()
            table.checkout_latest()  # (a reader's handle may lag: RAG_READ_CONSISTENCY_S)
            action, pending = self.plan(table, force=force, explicit=explicit)
            if action != "none":
                with self._lease() as held:
                    if not held:
                        log.info("vector index upkeep left to another process (it holds the build lease)")
                        return "none"  # (this process looks again after fold_rows more rows)
                    action, pending = self.plan(table, force=force, explicit=explicit)  # (done meanwhile?)
                    if action in ("created", "retrained"):
                        action = self._build(table, replace=action == "retrained")
                    elif action == "optimized":
                        optimize_table(table)
            self.written.credit(pending)
            return action

    def _build(self, table: Any, *, replace: bool) -> Action:
        rows = int(table.count_rows())
        config = self.policy.config(rows, self.dimension)
        t0 = time.perf_counter()
        try:
            table.create_index(VECTOR_COLUMN, config=config, name=VECTOR_INDEX_NAME, replace=replace)
        except Exception as exc:  # another process created it first (without the lease): use theirs
            if replace or vector_index(table) is None:
                raise
            log.info("the vector index was created by another process (%s)", type(exc).__name__)
            return "none"
        stats = table.index_stats(VECTOR_INDEX_NAME)
        indexed = int(stats.num_indexed_rows) if stats is not None else rows
        try:
            table.update_field_metadata({"path": VECTOR_COLUMN, "metadata": {TRAINED_ROWS_KEY: str(indexed)}})
        except Exception as exc:  # the next upkeep falls back on the indexed row count
            log.warning("recording the vector index's trained rows failed: %s", type(exc).__name__)
        log.info(
            "%s the %s vector index on %d rows (%d partitions) in %.0f ms",
            "retrained" if replace else "created",
            self.policy.index_type,
            indexed,
            num_partitions(rows, self.policy.index_type),
            timed_ms(t0),
        )
        return "retrained" if replace else "created"
