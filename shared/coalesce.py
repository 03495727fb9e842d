"""Coalescing streamed text: which generated text goes out together.

Two places hold an answer's text back, with one policy: the LLM service, handing text to its ConverseStream
response (``LLM_STREAM_FLUSH_MS``: each hand-over wakes its event loop, the chat function and the gateway
while llama.cpp uses every core), and the chat function, posting ``token`` frames (``RAG_TOKEN_FLUSH_MS``,
``RAG_TOKEN_FLUSH_BYTES``: each frame is an @connections post, an HTTP round trip to the gateway and, on AWS,
one billed API Gateway message).

The policy:

* the first text of an answer goes out at once: coalescing never delays the time to first token;
* after that, text is gathered and goes out when ``flush_ms`` have passed since the last post, or when
  ``flush_bytes`` (UTF-8) are gathered, or when it ends a sentence (``ends_sentence``), whichever comes
  first. An answer usually ends with a sentence, and the end of the stream is known only once the model has
  evaluated its last token and sampled the end-of-generation one: without the sentence rule, a short
  answer's last words reached the client one token's evaluation later than they were generated;
* what is left goes out when the stream ends.

The policy is checked as text arrives (no timer thread): gathered text waits at most one token past
``flush_ms`` while the model generates. ``flush_ms=0`` posts every token as it comes.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

# What may follow the punctuation: closing quotes, brackets, Markdown emphasis.
_CLOSERS = "\"')]}*_\u201d\u2019\u00bb"
_ENDS = ".!?\u3002\uff01\uff1f"
TAIL_CHARS = 8  # how much of the text seen so far ``ends_sentence`` needs


def ends_sentence(tail: str) -> bool:
    """Whether text ending in ``tail`` (its last TAIL_CHARS characters or more) ends a sentence: ``.``, ``!``
    or ``?`` (or their CJK forms) after a letter or a closer, not after a digit ("1." of a list, "1.2") or a
    space, optionally followed by closers. Whitespace after it does not count: that goes with the next text."""
    t = tail.rstrip(_CLOSERS)
    return len(t) >= 2 and t[-1] in _ENDS and not t[-2].isdigit() and not t[-2].isspace()


class TokenCoalescer:
    """Feed it text as it is generated; it says what to post now."""

    def __init__(
        self, flush_ms: float, flush_bytes: int = sys.maxsize, clock: Callable[[], float] = time.perf_counter
    ) -> None:
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
