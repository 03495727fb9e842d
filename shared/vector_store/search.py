"""Search over the chunks table: the vector list, the full-text (BM25) list, their fusion by reciprocal
rank, and the one distance threshold that gates every mode."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, get_args, overload

from shared.errors import RagError
from shared.protocol import SearchMode
from shared.vector_store.fulltext import FTS_COLUMN
from shared.vector_store.schema import Match
from shared.vector_store.vector_index import DEFAULT_SEARCH, VECTOR_COLUMN, SearchParams, exact_distances

log = logging.getLogger(__name__)

SEARCH_MODES: tuple[str, ...] = get_args(SearchMode)

# Reciprocal rank fusion constant: score = sum 1 / (k + rank). Cormack et al. (2009) and LanceDB's
# RRFReranker use 60; on the SciFact train split 10 gives nDCG@10 0.721 vs 0.711 for 60 (50-deep lists).
RRF_K = 10
# Each list fused by hybrid search is at least this deep (and at least top_k), so a passage ranked
# moderately by both retrievers can still win.
HYBRID_CANDIDATES = 50

_COLUMNS = ("id", "doc_id", "chunk", "title", "text", "date", "source", "metadata")


class FullTextSearchFailed(RagError):
    """The full-text query failed (the details are in the log; ``__cause__`` holds LanceDB's error)."""


@dataclass(frozen=True)
class SearchHits(Sequence[Match]):
    """The matches of one search, best first, and how they were found.

    ``mode`` is the mode that ran: a ``hybrid`` or ``fts`` request is served by ``vector`` search when
    there is no query text or no full-text index, and a ``hybrid`` one also when the full-text query
    fails; ``fallback`` then says why (None when the requested mode ran)."""

    matches: tuple[Match, ...]
    mode: SearchMode
    fallback: str | None = None

    @overload
    def __getitem__(self, index: int) -> Match: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[Match]: ...

    def __getitem__(self, index: int | slice) -> Match | Sequence[Match]:
        return self.matches[index]

    def __len__(self) -> int:
        return len(self.matches)

    def __iter__(self) -> Iterator[Match]:
        return iter(self.matches)


def vector_hits(
    table: Any, vector: Sequence[float], limit: int, where: str, params: SearchParams = DEFAULT_SEARCH
) -> list[dict[str, Any]]:
    """The ``limit`` nearest rows matching ``where`` by cosine distance (``_distance`` = 1 - cos, 0 .. 2).

    ``where`` is a prefilter: applied before the nearest rows are taken, so the ``limit`` rows are the
    nearest of the rows it admits (a postfilter would take the nearest of all rows, then drop some).

    With a vector index (``params``: nprobes, refine_factor) the candidates come from the index plus a
    flat scan of the rows it does not hold yet; when the prefilter left fewer than ``limit`` rows in the
    ``nprobes`` partitions searched (a small tenant), the query runs again over as many partitions as it
    takes (without an index: the same flat scan again, of the few rows the prefilter admits). Either way
    ``_distance`` is exact (SearchParams: an index's candidates are re-ranked by their full vectors), so
    the threshold gate compares exact cosine distances."""

    def query() -> Any:
        return (
            table.search([float(x) for x in vector], vector_column_name=VECTOR_COLUMN)
            .distance_type("cosine")
            .where(where, prefilter=True)
            .limit(limit)
            .select([*_COLUMNS, "_distance"])
        )

    rows: list[dict[str, Any]] = params.apply(query()).to_list()
    if len(rows) < limit and params.use_index:  # the nearest partitions held too few of the rows admitted
        rows = params.apply(query(), widen=True).to_list()
    return rows


def fts_hits(table: Any, vector: Sequence[float], text: str, limit: int, where: str) -> list[dict[str, Any]]:
    """BM25 hits among the rows matching ``where`` (a prefilter), best first, each with ``_distance``
    computed from its stored vector.

    Raises FullTextSearchFailed when LanceDB cannot run the query (a missing or damaged index, say)."""
    try:
        rows: list[dict[str, Any]] = (
            table.search(text, query_type="fts", fts_columns=FTS_COLUMN)
            .where(where, prefilter=True)
            .limit(limit)
            .select([*_COLUMNS, "vector", "_score"])
            .to_list()
        )
    except Exception as exc:
        log.warning("full-text search failed: %s", type(exc).__name__)
        raise FullTextSearchFailed("full-text search failed (see the service log)") from exc
    exact_distances(rows, vector)
    return rows


def rrf_fuse(lists: Sequence[Sequence[dict[str, Any]]], *, k: int = RRF_K) -> list[tuple[dict[str, Any], float | None]]:
    """Reciprocal rank fusion of ranked row lists (rows keyed by ``id``): score = sum 1 / (k + rank).

    Ranks count from 1. A row in several lists keeps the first list's copy (the vector list's, with
    LanceDB's own ``_distance``). Ties keep first-seen order (the first list's order, then the next).
    """
    if k <= 0:
        raise ValueError("k must be positive")
    scores: dict[str, float] = {}
    rows: dict[str, dict[str, Any]] = {}
    for ranked in lists:
        for rank, row in enumerate(ranked, start=1):
            key = row["id"]
            scores[key] = scores.get(key, 0.0) + 1.0 / (k + rank)
            rows.setdefault(key, row)
    order = sorted(scores, key=lambda key: -scores[key])  # stable: ties keep first-seen order
    return [(rows[key], scores[key]) for key in order]


def search_table(
    table: Any,
    vector: Sequence[float],
    *,
    mode: SearchMode,
    query_text: str,
    top_k: int,
    max_distance: float,
    where: str,
    rrf_k: int = RRF_K,
    candidates: int = HYBRID_CANDIDATES,
    fallback: str | None = None,
    params: SearchParams = DEFAULT_SEARCH,
) -> SearchHits:
    """Run one search in ``mode`` (the caller has checked that it can run: text, index) over the rows
    ``where`` admits (the tenant's: a prefilter on both lists) and gate it.

    ``hybrid`` degrades to the vector list when the full-text query fails (logged, and reported in the
    result's ``mode`` and ``fallback``); in ``fts`` mode that failure is raised (FullTextSearchFailed).
    ``params``: how the vector list uses the vector index (see SearchParams).
    """
    depth = top_k if mode == "vector" else max(top_k, candidates)
    ranked: list[tuple[dict[str, Any], float | None]]
    if mode == "vector":
        ranked = [(r, None) for r in vector_hits(table, vector, depth, where, params)]
    elif mode == "fts":
        ranked = [(r, float(r["_score"])) for r in fts_hits(table, vector, query_text, depth, where)]
    else:
        vector_rows = vector_hits(table, vector, depth, where, params)
        try:
            fts_rows = fts_hits(table, vector, query_text, depth, where)
        except FullTextSearchFailed:
            log.warning("hybrid search uses the vector list only: the full-text search failed")
            mode, fallback = "vector", "the full-text search failed"
            ranked = [(r, None) for r in vector_rows]
        else:
            ranked = rrf_fuse([vector_rows, fts_rows], k=rrf_k)
    return SearchHits(gate(ranked, top_k=top_k, max_distance=max_distance), mode, fallback)


def gate(
    ranked: Sequence[tuple[dict[str, Any], float | None]], *, top_k: int, max_distance: float
) -> tuple[Match, ...]:
    """The first ``top_k`` ranked rows within ``max_distance`` (cosine), in their ranked order."""
    out: list[Match] = []
    for r, score in ranked:
        d = float(r["_distance"])
        if d > max_distance:
            continue
        out.append(to_match(r, d, score))
        if len(out) >= top_k:
            break
    return tuple(out)


def to_match(r: dict[str, Any], distance: float, score: float | None) -> Match:
    """A search row (chunk columns plus ``_distance``) as a Match."""
    metadata: dict[str, Any] = json.loads(r["metadata"] or "{}")
    page = metadata.get("page")
    heading = metadata.get("heading")
    return Match(
        doc_id=r["doc_id"],
        chunk=int(r["chunk"]),
        title=r["title"] or "",
        text=r["text"] or "",
        distance=distance,
        date=r["date"],
        source=r["source"],
        metadata=metadata,
        score=score,
        page=_page(page),
        heading=str(heading) if isinstance(heading, str) and heading else None,
    )


def _page(value: Any) -> int | None:
    """metadata["page"] as an int (an int, a whole float or a digit string), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None
