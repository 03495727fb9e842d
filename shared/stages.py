"""Where an invocation's time goes, stage by stage: ``with collecting() as ms:`` around the work, ``with
stage("embed"):`` around each part of it; ``ms`` then maps each stage to its milliseconds (a stage entered
several times adds up). Outside ``collecting`` a stage costs one ContextVar read and records nothing.

The Kinesis batch path logs the stages of each batch (ingestion/service.py, ``ingest_kinesis_records``; the
document leases time their commits, shared/vector_store/leases.py), which bench/kinesis.py turns into its
per-stage table.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

_CURRENT: ContextVar[dict[str, float] | None] = ContextVar("ingestion_stages", default=None)


@contextmanager
def collecting() -> Iterator[dict[str, float]]:
    """Collect the stages timed in this block (this context only: other threads' work is not counted)."""
    stages: dict[str, float] = {}
    token = _CURRENT.set(stages)
    try:
        yield stages
    finally:
        _CURRENT.reset(token)
        for name, ms in stages.items():
            stages[name] = round(ms, 2)


@contextmanager
def stage(name: str) -> Iterator[None]:
    """Add the block's milliseconds to stage ``name`` of the current collection (if any)."""
    stages = _CURRENT.get()
    if stages is None:
        yield
        return
    t0 = time.perf_counter()
    try:
        yield
    finally:
        stages[name] = stages.get(name, 0.0) + (time.perf_counter() - t0) * 1000
