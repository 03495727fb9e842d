"""The gateway's table of open WebSocket connections."""

from __future__ import annotations

import asyncio
import base64
import secrets
import time
from dataclasses import dataclass, field

from aiohttp import web


def new_connection_id() -> str:
    """An id shaped like API Gateway's (12 random bytes, base64: 16 characters)."""
    return base64.b64encode(secrets.token_bytes(12)).decode()


@dataclass
class Connection:
    id: str
    ws: web.WebSocketResponse
    source_ip: str
    user_agent: str
    connected_at: float = field(default_factory=time.time)
    last_active: float = field(default_factory=time.monotonic)
    last_active_wall: float = field(default_factory=time.time)
    inflight: int = 0
    send_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

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
