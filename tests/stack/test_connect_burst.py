"""Connections under load: a connect never waits for a function (issue 11).

``$connect`` has no function (``shared/protocol.py`` MOCK_ROUTES; template.yaml: a MOCK integration) and
there is no ``$disconnect`` route: the REQUEST authorizer's answer alone admits a connection. So
connections open while every one of the chat function's slots is held by a generating answer, and a
burst opens as fast as the gateway accepts them. Every connect here is authenticated (tenant alpha's API
key), through the real authorizer process. No timing is asserted: the figures are printed (``-s``).
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect

from shared.stack import Stack
from tests.conftest import StackFactory
from tests.support.auth import keys_for
from tests.support.timeouts import scaled

CHATS = 4  # CHAT_MAX_CONCURRENCY's default: every slot of the chat function
BURST = 500  # API Gateway's quota: 500 new connections per second per account and region
CONNECTORS, CONNECTS_EACH = 50, 20


@pytest.fixture(scope="module")
def stack(start_stack: StackFactory) -> Stack:
    # The tiny test model never stops by itself: each answer runs to RAG_MAX_TOKENS (capped by the LLM's
    # context), and the LLM serves one at a time, so 4 chats hold the 4 chat slots for as long as that takes.
    # API Gateway's connect quota (GATEWAY_CONNECT_RATE_LIMIT, 500/s: tests/unit/test_gateway_limits.py) is
    # lifted: these tests show that a connect waits for no function, not the quota.
    return start_stack("connect-burst", RAG_MAX_TOKENS="4000", GATEWAY_CONNECT_RATE_LIMIT="1000000")


def runtime(stack: Stack, name: str) -> dict[str, Any]:
    """A function runtime's /health: its busy slots and invocation count."""
    with urllib.request.urlopen(f"{stack.by_name[name].url}/health", timeout=scaled(10)) as resp:
        state: dict[str, Any] = json.loads(resp.read())
    return state


async def open_ws(stack: Stack) -> ClientConnection:
    key = keys_for(stack.http_url).alpha
    return await connect(
        stack.ws_url,
        additional_headers={"Authorization": f"Bearer {key}"},
        open_timeout=scaled(30),
        close_timeout=scaled(10),
        max_size=2**22,
    )


async def attempt(opening: Callable[[], Awaitable[ClientConnection]], failures: list[str]) -> ClientConnection | None:
    try:
        return await opening()
    except Exception as exc:  # a refused handshake (InvalidStatus), a timeout, a reset: all count as lost
        failures.append(f"{type(exc).__name__}: {exc}")
        return None


def test_1000_connects_from_50_parallel_connectors_lose_none(stack: Stack) -> None:
    """50 clients each connect and close 20 times, all at once (1,000 connects on an idle stack)."""
    invoked = runtime(stack, "chat")["invocations"]

    async def connector(failures: list[str]) -> int:
        opened = 0
        for _ in range(CONNECTS_EACH):
            ws = await attempt(lambda: open_ws(stack), failures)
            if ws is not None:
                opened += 1
                await ws.close()
        return opened

    async def run() -> tuple[int, list[str], float]:
        failures: list[str] = []
        t0 = time.perf_counter()
        opened = await asyncio.gather(*(connector(failures) for _ in range(CONNECTORS)))
        return sum(opened), failures, time.perf_counter() - t0

    opened, failures, took = asyncio.run(run())
    print(f"\n{CONNECTORS} x {CONNECTS_EACH} connects: {opened} opened, {len(failures)} lost, {took:.1f}s")
    assert failures == [], f"{len(failures)} of {CONNECTORS * CONNECTS_EACH} lost, e.g. {failures[:3]}"
    assert opened == CONNECTORS * CONNECTS_EACH
    # Neither $connect nor $disconnect invoked the chat function (or any other but the authorizer).
    assert runtime(stack, "chat")["invocations"] == invoked


def test_a_burst_of_500_connects_opens_while_4_chats_generate(stack: Stack) -> None:
    async def run() -> None:
        chats = [await open_ws(stack) for _ in range(CHATS)]
        finished: list[str] = []

        async def read(ws: ClientConnection) -> None:
            async for frame in ws:
                if json.loads(frame)["type"] in ("stream_end", "error"):
                    finished.append(str(frame)[:300])
                    return

        readers = [asyncio.create_task(read(ws)) for ws in chats]
        for i, ws in enumerate(chats):
            await ws.send(json.dumps({"action": "chat", "request_id": f"c{i}", "question": f"Tell me a story {i}"}))
        # Every slot of the chat function is taken by a generating answer.
        deadline = time.monotonic() + scaled(60)
        while runtime(stack, "chat")["busy"] < CHATS:
            assert time.monotonic() < deadline, f"the chats did not all start: {runtime(stack, 'chat')}"
            assert not finished, f"a chat ended before the burst: {finished}"
            await asyncio.sleep(0.05)

        failures: list[str] = []
        t0 = time.perf_counter()
        burst = await asyncio.gather(*(attempt(lambda: open_ws(stack), failures) for _ in range(BURST)))
        took = time.perf_counter() - t0
        opened = [ws for ws in burst if ws is not None]
        state = runtime(stack, "chat")
        lost = len(failures)
        print(f"\nburst of {BURST} connects, {CHATS} chats generating: {len(opened)} opened, {lost} lost, {took:.1f}s")
        try:
            assert failures == [], f"{len(failures)} of {BURST} refused, e.g. {failures[:3]}"
            assert len(opened) == BURST
            # The burst really met busy slots: the chats were still generating when it had opened.
            assert not finished, f"a chat ended during the burst (raise RAG_MAX_TOKENS): {finished}"
            assert state["busy"] == CHATS, state
        finally:
            await asyncio.gather(*(ws.close() for ws in opened))
            for ws in chats:
                await ws.close()
            for task in readers:
                task.cancel()
            await asyncio.gather(*readers, return_exceptions=True)

    asyncio.run(run())
