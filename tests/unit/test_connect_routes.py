"""Connects do not wait behind a function's concurrency; when a call a connect needs is throttled, it waits
within a bound and is then refused as throttled (429), never as a bare 500.

The functions are the real local Lambda runtime (shared/lambda_runtime.py, which answers 429 past its
concurrency) hosting small handlers that can hold a slot until the test lets go; the gateway is the real
application. The stack test tests/stack/test_connect_burst.py does the same at scale.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

import gateway.authorization
import gateway.integration
from gateway.app import create_app
from gateway.keys import INTEGRATION
from gateway.settings import DEFAULT_ROUTES, Settings
from shared.identity import Principal
from shared.lambda_runtime import RUNTIME_STATE, create_runtime_app
from shared.settings import AuthSettings, InternalAuthSettings
from shared.sigv4 import SigningKey
from tests.support.timeouts import scaled

INTERNAL = SigningKey("LRINTTESTKEY0000002", "internal-secret-for-the-connect-tests")
ALPHA = Principal("alpha", "key:a1", "api_key")
ROUTED = {**DEFAULT_ROUTES, "$connect": "chat", "$disconnect": "chat"}  # the pre-issue-11 routes


@dataclass
class Functions:
    """The chat and authorizer handlers: chat holds its slot on a message until released; the authorizer
    allows every credential, and holds its slot for the credential ``key-hold`` until released."""

    release: threading.Event = field(default_factory=threading.Event)
    events: list[tuple[str, str]] = field(default_factory=list)  # (function, eventType or "AUTHORIZE")

    def chat(self, event: dict[str, Any], _context: Any) -> dict[str, Any]:
        kind = event["requestContext"]["eventType"]
        self.events.append(("chat", kind))
        if kind == "MESSAGE":
            self.release.wait(scaled(30))
        return {"statusCode": 200}

    def authorizer(self, event: dict[str, Any], _context: Any) -> dict[str, Any]:
        self.events.append(("authorizer", "AUTHORIZE"))
        if event["headers"].get("Authorization") == "Bearer key-hold":
            self.release.wait(scaled(30))
        statement = {"Action": "execute-api:Invoke", "Effect": "Allow", "Resource": event["methodArn"]}
        return {
            "principalId": ALPHA.principal,
            "policyDocument": {"Version": "2012-10-17", "Statement": [statement]},
            "context": ALPHA.context(),
        }

    def of(self, function: str) -> list[str]:
        return [kind for f, kind in self.events if f == function]


@dataclass
class Harness:
    client: TestClient[Any, Any]
    functions: Functions
    runtimes: dict[str, web.Application]
    app: web.Application

    def state(self, function: str) -> dict[str, Any]:
        return self.runtimes[function][RUNTIME_STATE]

    async def connect(self, key: str = "key-alpha") -> aiohttp.ClientWebSocketResponse:
        return await self.client.ws_connect("/local", headers={"Authorization": f"Bearer {key}"})

    async def refused(self, key: str = "key-alpha") -> tuple[int, Any]:
        async with self.client.get(
            "/local",
            headers={
                "Authorization": f"Bearer {key}",
                "Connection": "Upgrade",
                "Upgrade": "websocket",
                "Sec-WebSocket-Version": "13",
                "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
            },
        ) as resp:
            return resp.status, await resp.json()

    async def until(self, condition: Any, what: str) -> None:
        for _ in range(int(scaled(10) / 0.01)):
            if condition():
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"timed out waiting for {what}")


@asynccontextmanager
async def harness(**settings: Any) -> AsyncIterator[Harness]:
    functions = Functions()
    keys = {INTERNAL.access_key_id: INTERNAL.secret_access_key}
    runtimes = {
        "chat": create_runtime_app(functions.chat, function_name="chat", max_concurrency=1, keys=keys),
        "authorizer": create_runtime_app(
            functions.authorizer, function_name="authorizer", max_concurrency=1, keys=keys
        ),
    }
    try:
        async with TestServer(runtimes["chat"]) as chat, TestServer(runtimes["authorizer"]) as authorizer:
            urls = {
                name: str(server.make_url(f"/2015-03-31/functions/{name}/invocations"))
                for name, server in (("chat", chat), ("authorizer", authorizer), ("ingestion", chat))
            }
            app = create_app(
                Settings(
                    functions=urls,
                    internal=InternalAuthSettings(
                        access_key_id=INTERNAL.access_key_id, secret_access_key=INTERNAL.secret_access_key
                    ),
                    auth=AuthSettings(auth=["api_key"]),
                    authorizer_ttl_s=0,
                    **settings,
                )
            )
            async with TestClient(TestServer(app)) as client:
                yield Harness(client, functions, runtimes, app)
    finally:
        functions.release.set()  # no handler thread outlives the test


def run(scenario: Any) -> None:
    asyncio.run(scenario)


@pytest.fixture
def short_bound(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Give up on a throttled connect after 0.3 s instead of 10 s."""
    monkeypatch.setattr(gateway.integration, "CONNECTION_THROTTLE_WAIT_S", 0.3)
    monkeypatch.setattr(gateway.authorization, "CONNECTION_THROTTLE_WAIT_S", 0.3)
    yield


async def hold_chat_slot(h: Harness) -> aiohttp.ClientWebSocketResponse:
    """A connection whose message holds the chat function's only slot (until functions.release)."""
    ws = await h.connect()
    await ws.send_str(json.dumps({"action": "search", "request_id": "hold", "query": "x"}))
    await h.until(lambda: h.state("chat")["busy"] == 1, "the chat slot to be taken")
    return ws


def test_connect_and_disconnect_invoke_no_function_by_default() -> None:
    async def scenario() -> None:
        async with harness() as h:
            holder = await hold_chat_slot(h)
            for _ in range(5):  # the chat function's slot is taken: connects do not care
                ws = await h.connect()
                await ws.close()
            h.functions.release.set()
            await holder.close()
            await h.until(lambda: h.state("chat")["busy"] == 0, "the slot to be free")
            assert h.functions.of("chat") == ["MESSAGE"]  # no CONNECT, no DISCONNECT
            assert h.state("chat")["throttles"] == 0

    run(scenario())


def test_a_routed_connect_waits_for_a_throttled_function_then_opens() -> None:
    async def scenario() -> None:
        async with harness(routes=ROUTED) as h:
            holder = await hold_chat_slot(h)
            pending = asyncio.ensure_future(h.connect())
            await h.until(lambda: h.state("chat")["throttles"] >= 2, "the connect to be throttled twice")
            assert not pending.done()
            h.functions.release.set()  # the slot frees up: the retried connect gets it
            ws = await asyncio.wait_for(pending, scaled(10))
            await ws.close()
            await holder.close()
            assert h.app[INTEGRATION].stats.throttled >= 2
            assert h.functions.of("chat").count("CONNECT") == 2  # the holder's and this one (once it got in)

    run(scenario())


def test_a_connect_throttled_past_the_bound_is_refused_429_throttled(short_bound: None) -> None:
    async def scenario() -> None:
        async with harness(routes=ROUTED) as h:
            holder = await hold_chat_slot(h)
            status, body = await h.refused()
            assert (status, body) == (429, {"message": "Too Many Requests", "code": "throttled"})
            assert h.state("chat")["throttles"] >= 2  # it was retried before giving up
            h.functions.release.set()
            await holder.close()

    run(scenario())


def test_a_throttled_authorizer_is_waited_for_then_refused_429_not_500(short_bound: None) -> None:
    async def scenario() -> None:
        async with harness() as h:
            # key-hold takes the authorizer's only slot; another credential is throttled meanwhile.
            held = asyncio.ensure_future(h.connect("key-hold"))
            await h.until(lambda: h.state("authorizer")["busy"] == 1, "the authorizer slot to be taken")
            status, body = await h.refused("key-alpha")
            assert (status, body) == (429, {"message": "Too Many Requests", "code": "throttled"})
            # Within the bound, a throttled authorization waits its turn and succeeds.
            pending = asyncio.ensure_future(h.connect("key-alpha"))
            await h.until(lambda: h.state("authorizer")["throttles"] >= 3, "another throttled attempt")
            h.functions.release.set()
            for ws in await asyncio.gather(held, pending):
                await ws.close()

    run(scenario())


def test_a_throttled_message_is_not_retried_it_gets_a_throttled_error() -> None:
    async def scenario() -> None:
        async with harness() as h:
            holder = await hold_chat_slot(h)
            ws = await h.connect()
            await ws.send_str(json.dumps({"action": "search", "request_id": "r2", "query": "y"}))
            reply = json.loads((await ws.receive(timeout=scaled(10))).data)
            assert reply["type"] == "error" and reply["code"] == "throttled" and reply["request_id"] == "r2"
            assert h.state("chat")["throttles"] == 1
            h.functions.release.set()
            await ws.close()
            await holder.close()

    run(scenario())


def test_the_runtime_frees_every_slot_it_took() -> None:
    """Many invocations at once, most of them throttled: once all are answered, no slot is left taken."""

    async def scenario() -> None:
        async with harness() as h:
            h.functions.release.set()  # messages do not hold their slot
            sockets = [await h.connect() for _ in range(20)]
            for i, ws in enumerate(sockets):
                for j in range(4):
                    await ws.send_str(json.dumps({"action": "search", "request_id": f"{i}-{j}", "query": "x"}))
            state = h.state("chat")
            await h.until(lambda: state["invocations"] + state["throttles"] == 80, "every message to be answered")
            await h.until(lambda: state["busy"] == 0, "every slot to be freed")
            # and the one slot still serves
            served = state["invocations"]
            await sockets[0].send_str(json.dumps({"action": "search", "request_id": "last", "query": "x"}))
            await h.until(lambda: state["invocations"] == served + 1 and state["busy"] == 0, "the last one")
            assert state["throttles"] == 80 - served
            for ws in sockets:
                await ws.close()

    run(scenario())
