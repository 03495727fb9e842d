"""API Gateway's quotas the gateway enforces itself: token-bucket throttles and the WebSocket frame size.

- ``TokenBucket``: the stage's message throttle (rate and burst), the new-connection rate and the
  @connections rate, each answered as API Gateway answers it (``gateway/websocket.py``,
  ``gateway/management.py``).
- ``FrameLimitedResponse``: a WebSocketResponse that closes the connection with 1009 when a client sends a
  frame larger than ``max_frame_bytes`` (API Gateway: 32 KB). aiohttp limits only a whole message
  (``max_msg_size``), so the frame headers are read as the bytes arrive, before aiohttp's own parser sees
  them. Compression is never negotiated (API Gateway offers none): a frame's size is its size on the wire.
"""

from __future__ import annotations

import time
from typing import Any

from aiohttp import WSCloseCode, web
from aiohttp.http_websocket import WebSocketError
from aiohttp.web_request import BaseRequest


class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` (at least one) saved up; ``take()`` spends one if there is
    one. It starts full, as API Gateway's buckets do."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = max(1.0, float(burst))
        self._tokens = self.burst
        self._at = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True


class _FrameScanner:
    """Stands between the transport and aiohttp's WebSocket parser: follows the frame headers in the byte
    stream (RFC 6455 5.2) and fails the connection with 1009 at the first data frame over ``limit``."""

    def __init__(self, parser: Any, queue: Any, limit: int) -> None:
        self._parser = parser
        self._queue = queue
        self._limit = limit
        self._header = bytearray()  # the current frame's header so far
        self._skip = 0  # payload bytes of the current frame still to come
        self._failed = False

    def feed_eof(self) -> Any:
        return self._parser.feed_eof()

    def feed_data(self, data: bytes) -> tuple[bool, bytes]:
        if self._failed:
            return True, b""
        if self._too_big(memoryview(data)):
            self._failed = True
            self._queue.set_exception(
                WebSocketError(WSCloseCode.MESSAGE_TOO_BIG, f"a frame is over the {self._limit}-byte frame limit")
            )
            return True, b""
        result: tuple[bool, bytes] = self._parser.feed_data(data)
        return result

    def _too_big(self, data: memoryview) -> bool:
        pos = 0
        while pos < len(data):
            if self._skip:
                step = min(self._skip, len(data) - pos)
                self._skip -= step
                pos += step
                continue
            self._header.append(data[pos])
            pos += 1
            size = self._frame_size()
            if size is None:
                continue
            opcode = self._header[0] & 0x0F
            masked = self._header[1] & 0x80
            self._header.clear()
            if opcode < 0x8 and size > self._limit:  # data frames (text, binary, continuation)
                return True
            self._skip = size + (4 if masked else 0)
        return False

    def _frame_size(self) -> int | None:
        """The payload length once the header holds it, else None (more header bytes to come)."""
        h = self._header
        if len(h) < 2:
            return None
        n = h[1] & 0x7F
        if n < 126:
            return n
        width = 2 if n == 126 else 8
        if len(h) < 2 + width:
            return None
        return int.from_bytes(h[2 : 2 + width], "big")


class FrameLimitedResponse(web.WebSocketResponse):
    """A WebSocketResponse that refuses frames over ``max_frame_bytes`` (close 1009), never compressed."""

    def __init__(self, *, max_frame_bytes: int, **kwargs: Any) -> None:
        super().__init__(compress=False, **kwargs)
        self._max_frame_bytes = max_frame_bytes

    def _post_start(self, request: BaseRequest, protocol: str | None, writer: Any) -> None:
        # aiohttp's own parser stays in charge; the scanner sees the bytes first, those that arrived with the
        # handshake (the protocol's tail, fed by set_parser) included.
        proto: Any = request.protocol
        tail, proto._message_tail = proto._message_tail, b""
        super()._post_start(request, protocol, writer)
        scanner = _FrameScanner(self._parser, self._reader, self._max_frame_bytes)
        proto._payload_parser = scanner
        if tail:
            scanner.feed_data(tail)
