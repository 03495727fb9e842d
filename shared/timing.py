"""The time helpers every service uses: elapsed milliseconds for timings, ISO-8601 UTC timestamps."""

from __future__ import annotations

import time
from datetime import UTC, datetime


def timed_ms(start: float) -> float:
    """Milliseconds since ``start`` (a ``time.perf_counter()`` reading), to two decimals."""
    return round((time.perf_counter() - start) * 1000, 2)


def iso_utc(ts: float | None = None, *, z: bool = False) -> str:
    """An ISO-8601 UTC timestamp to the millisecond: ``2026-01-02T03:04:05.678+00:00``, or
    ``2026-01-02T03:04:05.678Z`` with ``z`` (the form the AWS APIs answer with).

    ``ts``: seconds since the epoch (``time.time()``); now when omitted.
    """
    when = datetime.now(UTC) if ts is None else datetime.fromtimestamp(ts, tz=UTC)
    text = when.isoformat(timespec="milliseconds")
    return text.removesuffix("+00:00") + "Z" if z else text
