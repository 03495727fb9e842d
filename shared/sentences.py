"""Where a sentence ends in streamed text.

Both coalescers of an answer's text (the LLM service's hand-over to its stream, ``LLM_STREAM_FLUSH_MS``, and
the chat function's token frames, ``RAG_TOKEN_FLUSH_MS``) send what they hold when a sentence ends, besides
their interval. An answer usually ends with a sentence, and the end of the stream is known only once the
model has evaluated its last token and sampled the end-of-generation one: without this, a short answer's last
words reached the client one token's evaluation later than they were generated.
"""

from __future__ import annotations

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
