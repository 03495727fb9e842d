"""Where things are, for every test: the repository root, captured events, test artifacts."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
EVENTS = ROOT / "tests" / "events"
ARTIFACTS = Path(os.environ.get("TEST_ARTIFACTS", ROOT / "test-artifacts"))
