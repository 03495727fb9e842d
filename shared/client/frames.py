"""Sending a WebSocket message in frames of at most 32 KB, as API Gateway requires of a client.

API Gateway closes a connection with 1009 when a frame is larger than 32 KB; a message of up to 128 KB must
be split into several frames (RFC 6455 5.4: a first text frame without FIN, continuation frames, the last
with FIN). aiohttp sends a message as one frame and has no way to fragment, so the frames are written here,
masked as a client's must be, in one write to the transport (no other frame can come between them).
"""

from __future__ import annotations

import os
import struct
from typing import Any

import aiohttp

# API Gateway's WebSocket frame size quota.
FRAME_BYTES = 32 * 1024
_TEXT, _CONTINUATION = 0x1, 0x0


def text_fragments(text: str, limit: int = FRAME_BYTES) -> list[str]:
    """`text` cut into the fewest pieces of at most `limit` bytes of UTF-8 each, never inside a character: for
    clients that fragment a message themselves (the `websockets` library sends an iterable of str as one
    message in fragments)."""
    pieces: list[str] = []
    start = used = 0
    for i, ch in enumerate(text):
        size = len(ch.encode("utf-8"))
        if used + size > limit:
            pieces.append(text[start:i])
            start, used = i, 0
        used += size
    pieces.append(text[start:])
    return pieces


def frames(payload: bytes, limit: int = FRAME_BYTES) -> bytes:
    """`payload` as masked client frames of at most `limit` bytes each (a text message)."""
    out = bytearray()
    pieces = [payload[i : i + limit] for i in range(0, len(payload), limit)] or [b""]
    for n, piece in enumerate(pieces):
        first = (0x80 if n == len(pieces) - 1 else 0) | (_TEXT if n == 0 else _CONTINUATION)
        size = len(piece)
        if size < 126:
            out += struct.pack("!BB", first, 0x80 | size)
        elif size < 65536:
            out += struct.pack("!BBH", first, 0x80 | 126, size)
        else:
            out += struct.pack("!BBQ", first, 0x80 | 127, size)
        mask = os.urandom(4)
        out += mask
        masked = int.from_bytes(piece, "big") ^ int.from_bytes((mask * (size // 4 + 1))[:size], "big")
        out += masked.to_bytes(size, "big")
    return bytes(out)


async def send_text(ws: aiohttp.ClientWebSocketResponse, text: str, limit: int = FRAME_BYTES) -> None:
    """Send `text` as one message: in one frame if it fits in `limit` bytes, else fragmented."""
    data = text.encode("utf-8")
    writer: Any = getattr(ws, "_writer", None)
    if len(data) <= limit or writer is None or ws.compress:
        await ws.send_str(text)  # small, or a compressed connection (its frames are aiohttp's to write)
        return
    if writer.transport is None or writer.transport.is_closing():
        raise aiohttp.ClientConnectionResetError("Cannot write to closing transport")
    writer.transport.write(frames(data, limit))
