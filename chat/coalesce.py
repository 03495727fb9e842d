"""Token coalescing: which generated text goes out in which ``token`` frame.

Each frame is one @connections post: an HTTP round trip from the chat function to the gateway (SigV4-signed)
and, on AWS, one billed API Gateway message. Posting every token costs a round trip per token in the loop
that reads the model's stream, and the CPU it takes is taken from generation when they share the cores.

The policy (``RAG_TOKEN_FLUSH_MS``, ``RAG_TOKEN_FLUSH_BYTES``):

* the first text of an answer goes out at once: coalescing never delays the time to first token;
* after that, text is gathered and goes out when ``flush_ms`` have passed since the last post, or when
  ``flush_bytes`` (UTF-8) are gathered, or when it ends a sentence (``shared/sentences.py``: an answer's
  last words then go out as they come, not with the end of the stream, which is known one token later),
  whichever comes first;
* what is left goes out when the stream ends.

The policy is checked as text arrives (no timer thread): gathered text waits at most one token past
``flush_ms`` while the model generates. ``flush_ms=0`` posts every token as it comes.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from shared.sentences import TAIL_CHARS, ends_sentence


class TokenCoalescer:
    """Feed it text as it is generated; it says what to post now."""

    def __init__(self, flush_ms: float, flush_bytes: int, clock: Callable[[], float] = time.perf_counter) -> None:
        self.flush_s = flush_ms / 1000
        self.flush_bytes = flush_bytes
        self.clock = clock
        self._pending: list[str] = []
        self._pending_bytes = 0
        self._last_post: float | None = None  # None: nothing posted yet
        self._tail = ""  # the last characters of the text so far

    def add(self, text: str) -> str | None:
        """Gather ``text``; return the text to post now (everything gathered), or None to keep gathering."""
        if not text:
            return None
        self._pending.append(text)
        self._pending_bytes += len(text.encode("utf-8"))
        self._tail = (self._tail + text)[-TAIL_CHARS:]
        now = self.clock()
        if (
            self._last_post is None
            or now - self._last_post >= self.flush_s
            or self._pending_bytes >= self.flush_bytes
            or ends_sentence(self._tail)
        ):
            self._last_post = now
            return self._take()
        return None

    def flush(self) -> str | None:
        """The text still gathered (the stream ended), or None."""
        return self._take() if self._pending else None

    def _take(self) -> str:
        out = "".join(self._pending)
        self._pending, self._pending_bytes = [], 0
        return out
