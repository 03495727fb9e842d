"""The one knob for every wait in the suite: ``TEST_TIMEOUT_FACTOR=2`` doubles them all (slow machines).

Every deadline a test sets (health checks, socket timeouts, polling loops, subprocess timeouts,
browser waits) is ``scaled(seconds)``; no test asserts how long something took (timing is bench/'s job).
"""

from __future__ import annotations

import os

TIMEOUT_FACTOR = float(os.environ.get("TEST_TIMEOUT_FACTOR", "1"))


def scaled(seconds: float) -> float:
    """``seconds`` times TEST_TIMEOUT_FACTOR."""
    return seconds * TIMEOUT_FACTOR
