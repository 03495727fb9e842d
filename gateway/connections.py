"""The gateway's table of open connections: WebSocket ones, and the HTTP API's pseudo-connections.

A pseudo-connection (``QueueSocket``) stands in for a socket while one HTTP API request is served: the
lambda replies through ``@connections`` exactly as for a WebSocket client, and the messages land in an
``asyncio.Queue`` that the HTTP handler turns into its response. Closing it (the request is done, or its
client left) makes later posts answer 410 GoneException, as for a closed WebSocket.
"""

from __future__ import annotations

import asyncio
import base64
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, Protocol


def new_connection_id() -> str:
    """An id shaped like API Gateway's (12 random bytes, base64: 16 characters)."""
    return base64.b64encode(secrets.token_bytes(12)).decode()


# API Gateway's own requestIds (in the messages it sends a client itself) have the same shape.
new_request_id = new_connection_id


class Socket(Protocol):
    """What the gateway uses of a connection's socket (aiohttp's WebSocketResponse, or a QueueSocket)."""

    @property
    def closed(self) -> bool: ...

    async def send_str(self, data: str) -> None: ...

    async def send_bytes(self, data: bytes) -> None: ...

    async def close(self, *, code: int = ..., message: bytes = ...) -> bool: ...


class QueueSocket:
    """A pseudo-socket for an HTTP API request: each message sent to it is put on `queue` (as UTF-8 bytes).

    ``None`` on the queue means "no more messages" (the socket was closed, or ``finish()`` was called when
    the invocation ended). Sending to a closed QueueSocket raises ConnectionResetError, which the
    @connections API answers with 410 GoneException.
    """

    def __init__(self) -> None:
        self.queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    async def send_str(self, data: str) -> None:
        await self.send_bytes(data.encode("utf-8"))

    async def send_bytes(self, data: bytes) -> None:
        if self._closed:
            raise ConnectionResetError("the HTTP request is over")
        self.queue.put_nowait(data)

    def finish(self) -> None:
        """No more messages will come (the invocation returned, so every reply has been posted)."""
        self.queue.put_nowait(None)

    def shut(self) -> bool:
        """Close now (it never blocks): later sends fail, and the reader gets None. False if already closed."""
        if self._closed:
            return False
        self._closed = True
        self.queue.put_nowait(None)
        return True

    async def close(self, *, code: int = 1000, message: bytes = b"") -> bool:
        return self.shut()


@dataclass
class Connection:
    id: str
    ws: Socket
    source_ip: str
    user_agent: str
    connected_at: float = field(default_factory=time.time)
    last_active: float = field(default_factory=time.monotonic)
    last_active_wall: float = field(default_factory=time.time)
    inflight: int = 0
    send_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    # requestContext.authorizer of every event of this connection ({"principalId", **context}), set by
    # the $connect authorizer (or the /v1 request's); None only where identity does not apply.
    authorizer: dict[str, Any] | None = None
    # The close code the gateway closed the connection with (idle, too old): $disconnect reports it, not the
    # code the client echoed.
    closed_with: int | None = None

    def touch(self) -> None:
        self.last_active = time.monotonic()
        self.last_active_wall = time.time()

    async def send(self, data: bytes) -> None:
        """Send in order: one frame at a time per connection."""
        async with self.send_lock:
            try:
                await self.ws.send_str(data.decode("utf-8"))
            except UnicodeDecodeError:
                await self.ws.send_bytes(data)
        self.touch()


class ConnectionTable:
    def __init__(self) -> None:
        self._by_id: dict[str, Connection] = {}

    def add(self, conn: Connection) -> None:
        self._by_id[conn.id] = conn

    def remove(self, connection_id: str) -> None:
        self._by_id.pop(connection_id, None)

    def get(self, connection_id: str) -> Connection | None:
        conn = self._by_id.get(connection_id)
        if conn is not None and conn.ws.closed:
            return None
        return conn

    def __len__(self) -> int:
        return len(self._by_id)

    def all(self) -> list[Connection]:
        return list(self._by_id.values())
