"""When the full-text index's upkeep folds (shared/vector_store/fulltext.py): by unindexed rows, by this process's
commits, and commit-count folds kept to FOLD_DUTY of the time. No LanceDB here (tests/service/test_hybrid.py folds a
real table): the index statistics and the optimize are stand-ins, and the clock is a counter the optimize moves."""

from __future__ import annotations

from typing import Any

import pytest

import shared.vector_store.upkeep as upkeep
from shared.vector_store.fulltext import FullTextIndex
from shared.vector_store.upkeep import FOLD_DUTY


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Recorded(FullTextIndex):
    """The fold's decisions: ``unindexed`` is what the index statistics say; an optimize takes ``fold_s``."""

    def __init__(self, clock: Clock, fold_s: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.name = "text_idx"
        self.clock, self.fold_s = clock, fold_s
        self.unindexed = 0
        self.optimized = 0

    def unindexed_rows(self, table: Any) -> int:
        return self.unindexed

    def _optimize(self, table: Any, attempts: int) -> None:
        self.optimized += 1
        self.clock.now += self.fold_s
        self.unindexed = 0


def write(idx: Recorded, rows: int = 1) -> None:
    """One commit of ``rows``: counted, and folded (as the store's upkeep does) when due."""
    idx.unindexed += rows
    if idx.due(rows):
        idx.fold(None)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(upkeep.time, "monotonic", c)
    return c


def test_a_fold_comes_after_fold_commits_commits_however_few_rows(clock: Clock) -> None:
    idx = Recorded(clock, 0.1, reindex_rows=10_000, fold_commits=4)
    for _ in range(3):
        write(idx)
    assert idx.optimized == 0 and idx.unindexed == 3  # the first write looked at the statistics: 1 row
    write(idx)
    assert idx.optimized == 1 and idx.unindexed == 0


def test_commit_count_folds_keep_to_their_share_of_the_time(clock: Clock) -> None:
    idx = Recorded(clock, 2.0, reindex_rows=10_000, fold_commits=2)
    write(idx)
    write(idx)
    assert idx.optimized == 1  # took 2 s: the next commit-count fold waits 2 * (1 / FOLD_DUTY - 1) s
    wait = 2.0 * (1 / FOLD_DUTY - 1)
    for _ in range(5):
        write(idx)
    assert idx.optimized == 1 and idx.unindexed == 5
    clock.now += wait - 0.5
    write(idx)
    assert idx.optimized == 1
    clock.now += 0.5
    write(idx)  # the commits made meanwhile still count
    assert idx.optimized == 2 and idx.unindexed == 0


def test_rows_still_fold_while_commit_folds_wait(clock: Clock) -> None:
    idx = Recorded(clock, 2.0, reindex_rows=8, fold_commits=2)
    write(idx)
    write(idx)
    assert idx.optimized == 1
    write(idx, rows=10)  # within the commit folds' wait, but past reindex_rows
    assert idx.optimized == 2


def test_zero_fold_commits_folds_by_rows_only(clock: Clock) -> None:
    idx = Recorded(clock, 0.1, reindex_rows=10, fold_commits=0)
    for _ in range(9):
        write(idx)
    assert idx.optimized == 0
    write(idx)
    assert idx.optimized == 1


def test_a_failed_fold_keeps_its_commits(clock: Clock) -> None:
    class Failing(Recorded):
        def _optimize(self, table: Any, attempts: int) -> None:
            raise RuntimeError("store unavailable")

    idx = Failing(clock, 0.1, reindex_rows=10_000, fold_commits=2)
    write(idx)
    write(idx)  # due: the optimize fails; the commits still count, so the next write tries again
    assert idx.due(1)
