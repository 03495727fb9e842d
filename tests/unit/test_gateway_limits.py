"""API Gateway's WebSocket quotas, as a client (and a lambda calling @connections) observes them.

The gateway is served in this process (``create_app``) in front of the stand-in Lambda Invoke API of
``test_settings_gateway`` (SigV4-checked, records events, can hold a MESSAGE invocation); @connections is
called with boto3, so errors are checked in botocore's shape. No process is started.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import boto3
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from botocore.config import Config
from botocore.exceptions import ClientError

from gateway.keys import MANAGEMENT_APP
from shared.client.frames import frames, send_text
from shared.protocol import MAX_MESSAGE_BYTES
from tests.unit.test_settings_gateway import INTERNAL_ID, INTERNAL_SECRET, PATIENCE_S, Functions, search


class Late(Functions):
    """Functions whose held MESSAGE invocations return a body (a two-way reply) once released."""

    async def invoke(self, request: web.Request) -> web.Response:
        held = self.hold and request.match_info["name"] != "authorizer"
        response = await super().invoke(request)
        if held:
            return web.json_response({"statusCode": 200, "body": json.dumps({"type": "late"})})
        return response


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in list(os.environ):
        if name.startswith(("GATEWAY_", "RAG_", "LOCALRAG_")):
            monkeypatch.delenv(name)
    yield


@asynccontextmanager
async def gateway(
    monkeypatch: pytest.MonkeyPatch, functions: Functions | None = None, **env: str
) -> AsyncIterator[tuple[TestClient[Any, Any], TestClient[Any, Any], Functions]]:
    """(public client, @connections client, the functions) of a gateway built from ``env``."""
    from gateway.app import create_app
    from gateway.settings import Settings

    functions = functions or Functions()
    async with TestServer(functions.app()) as stand_in:
        url = str(stand_in.make_url("")).rstrip("/")
        names = ("ingestion", "chat", "authorizer")
        base = {
            "GATEWAY_FUNCTIONS": json.dumps({n: f"{url}/2015-03-31/functions/{n}/invocations" for n in names}),
            "LOCALRAG_INTERNAL_ACCESS_KEY_ID": INTERNAL_ID,
            "LOCALRAG_INTERNAL_SECRET_ACCESS_KEY": INTERNAL_SECRET,
        }
        for k, v in {**base, **env}.items():
            monkeypatch.setenv(k, v)
        app = create_app(Settings())
        async with TestClient(TestServer(app)) as client, TestClient(TestServer(app[MANAGEMENT_APP])) as internal:
            yield client, internal, functions


def management(internal: TestClient[Any, Any]) -> Any:
    return boto3.client(
        "apigatewaymanagementapi",
        endpoint_url=str(internal.make_url("/local")),
        region_name="us-east-1",
        aws_access_key_id=INTERNAL_ID,
        aws_secret_access_key=INTERNAL_SECRET,
        config=Config(retries={"max_attempts": 1, "mode": "standard"}),
    )


async def connect(client: TestClient[Any, Any]) -> aiohttp.ClientWebSocketResponse:
    return await client.ws_connect("/local", headers={"Authorization": "Bearer good"})


async def receive_json(ws: aiohttp.ClientWebSocketResponse) -> dict[str, Any]:
    msg = await ws.receive(timeout=PATIENCE_S)
    assert msg.type == aiohttp.WSMsgType.TEXT, (msg.type, ws.close_code)
    data: dict[str, Any] = json.loads(msg.data)
    return data


def padded_search(size: int) -> str:
    """A search message of exactly `size` bytes."""
    text = search("x")
    return text.replace('"x"', '"' + "x" * (size - len(text) + 1) + '"')


# ---------------------------------------------------------------------------------- frames and messages


def test_frames_split_a_message_and_carry_every_byte() -> None:
    wire = frames(b"a" * 70_000, limit=32 * 1024)
    assert [b & 0x8F for b in (wire[0],)] == [0x01]  # a text frame without FIN opens the message
    assert wire[-(70_000 - 2 * 32 * 1024) - 8] & 0x80  # the last frame has FIN (2-byte length header + mask)


@pytest.mark.parametrize("size", [40_000, MAX_MESSAGE_BYTES])
def test_a_fragmented_message_up_to_128_kb_is_accepted(monkeypatch: pytest.MonkeyPatch, size: int) -> None:
    async def run() -> None:
        async with gateway(monkeypatch) as (client, _, functions):
            ws = await connect(client)
            await send_text(ws, padded_search(size))
            assert await functions.wait_messages(1)
            assert len(functions.messages()[0][1]["body"].encode()) == size

    asyncio.run(run())


@pytest.mark.parametrize(
    "how",
    [
        "one frame over 32 KB",
        "129 KB in 32 KB frames",
    ],
)
def test_over_the_limits_the_connection_closes_with_1009(monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    async def run() -> None:
        async with gateway(monkeypatch) as (client, _, functions):
            ws = await connect(client)
            if how == "one frame over 32 KB":
                await ws.send_str(padded_search(32 * 1024 + 1))
            else:
                await send_text(ws, padded_search(MAX_MESSAGE_BYTES + 1))
            msg = await ws.receive(timeout=PATIENCE_S)
            assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED), msg
            assert ws.close_code == 1009
            assert functions.messages() == []

    asyncio.run(run())


def test_a_32_kb_frame_is_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    async def run() -> None:
        async with gateway(monkeypatch) as (client, _, functions):
            ws = await connect(client)
            await ws.send_str(padded_search(32 * 1024))
            assert await functions.wait_messages(1)

    asyncio.run(run())


def test_connections_post_enforces_128_kb(monkeypatch: pytest.MonkeyPatch) -> None:
    async def run() -> None:
        async with gateway(monkeypatch) as (client, internal, functions):
            ws = await connect(client)
            await ws.send_str(search())
            assert await functions.wait_messages(1)
            cid = functions.messages()[0][1]["requestContext"]["connectionId"]
            api = management(internal)
            fits = json.dumps({"type": "pad", "x": "y" * (MAX_MESSAGE_BYTES - 24)}).encode()
            assert len(fits) == MAX_MESSAGE_BYTES
            await asyncio.to_thread(api.post_to_connection, ConnectionId=cid, Data=fits)
            assert (await receive_json(ws))["type"] == "pad"
            with pytest.raises(ClientError) as err:
                await asyncio.to_thread(api.post_to_connection, ConnectionId=cid, Data=fits + b" ")
            assert err.value.response["Error"]["Code"] == "PayloadTooLargeException"
            assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 413

    asyncio.run(run())


# ---------------------------------------------------------------------------------- integration timeout


def test_integration_timeout_tells_the_client_and_the_function_runs_on(monkeypatch: pytest.MonkeyPatch) -> None:
    async def run() -> None:
        functions = Late()
        functions.hold = True
        async with gateway(monkeypatch, functions, GATEWAY_INTEGRATION_TIMEOUT_S="0.2") as (client, internal, _):
            ws = await connect(client)
            await ws.send_str(search())
            assert await functions.wait_messages(1)
            event = functions.messages()[0][1]
            notice = await receive_json(ws)
            assert notice == {
                "message": "Endpoint request timed out",
                "connectionId": event["requestContext"]["connectionId"],
                "requestId": event["requestContext"]["requestId"],
            }
            # The function is still at work: what it posts now reaches the client.
            api = management(internal)
            cid = notice["connectionId"]
            await asyncio.to_thread(api.post_to_connection, ConnectionId=cid, Data=b'{"type": "token"}')
            assert (await receive_json(ws))["type"] == "token"
            # It returns a two-way reply at last: dropped.
            functions.hold = False
            functions.release.set()
            health = await client.get("/health")
            for _ in range(50):
                if (await health.json())["running_on"] == 0:
                    break
                await asyncio.sleep(0.05)
                health = await client.get("/health")
            stats = await health.json()
            assert stats["timed_out"] == 1 and stats["running_on"] == 0
            await ws.send_str(search(request_id="after"))
            assert await functions.wait_messages(2)
            with pytest.raises(TimeoutError):
                msg = await ws.receive(timeout=0.5)
                raise AssertionError(f"the dropped reply arrived: {msg.data}")

    asyncio.run(run())


# ---------------------------------------------------------------------------------- connection duration


def test_the_longest_connection_closes_with_1001_and_disconnect_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway.settings import DEFAULT_ROUTES

    routes = json.dumps({**DEFAULT_ROUTES, "$disconnect": "chat"})

    async def run() -> None:
        async with gateway(monkeypatch, GATEWAY_MAX_CONNECTION_S="0.5", GATEWAY_ROUTES=routes) as (client, _, fns):
            ws = await connect(client)
            # Busy, never idle: it is the age that closes it.
            for _ in range(200):
                if ws.closed:
                    break
                await ws.send_str(search())
                try:
                    await ws.receive(timeout=0.05)
                except TimeoutError:
                    continue
            assert ws.closed and ws.close_code == 1001
            for _ in range(100):
                if any(e["requestContext"]["eventType"] == "DISCONNECT" for _, e in fns.events):
                    break
                await asyncio.sleep(0.02)
            disconnects = [e for _, e in fns.events if e["requestContext"]["eventType"] == "DISCONNECT"]
            assert len(disconnects) == 1 and disconnects[0]["requestContext"]["disconnectStatusCode"] == 1001

    asyncio.run(run())


# ---------------------------------------------------------------------------------- throttling


def test_a_throttled_message_gets_too_many_requests_and_the_connection_stays(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {"GATEWAY_THROTTLING_RATE_LIMIT": "0.001", "GATEWAY_THROTTLING_BURST_LIMIT": "1"}

    async def run() -> None:
        async with gateway(monkeypatch, **env) as (client, _, functions):
            ws = await connect(client)
            await ws.send_str(search(request_id="a"))
            assert await functions.wait_messages(1)
            await ws.send_str(search(request_id="b"))
            reply = await receive_json(ws)
            assert reply["message"] == "Too Many Requests" and set(reply) == {"message", "connectionId", "requestId"}
            assert reply["connectionId"] == functions.messages()[0][1]["requestContext"]["connectionId"]
            assert len(functions.messages()) == 1 and not ws.closed
            await ws.ping()
            assert not ws.closed

    asyncio.run(run())


def test_connects_over_the_rate_get_429(monkeypatch: pytest.MonkeyPatch) -> None:
    async def run() -> None:
        async with gateway(monkeypatch, GATEWAY_CONNECT_RATE_LIMIT="0.001") as (client, _, functions):
            await (await connect(client)).close()
            with pytest.raises(aiohttp.WSServerHandshakeError) as err:
                await connect(client)
            assert err.value.status == 429
            assert len(functions.authorizations()) == 1  # refused before the authorizer
            resp = await client.get("/local", headers={"Authorization": "Bearer good"})
            assert resp.status == 429 and (await resp.json())["message"] == "Too Many Requests"

    asyncio.run(run())


def test_connections_calls_over_the_rate_get_limit_exceeded(monkeypatch: pytest.MonkeyPatch) -> None:
    async def run() -> None:
        async with gateway(monkeypatch, GATEWAY_MANAGEMENT_RATE_LIMIT="0.001") as (_, internal, _f):
            api = management(internal)
            with pytest.raises(ClientError) as gone:
                await asyncio.to_thread(api.get_connection, ConnectionId="bm8tc3VjaA==")
            assert gone.value.response["Error"]["Code"] == "GoneException"
            with pytest.raises(ClientError) as limited:
                await asyncio.to_thread(api.get_connection, ConnectionId="bm8tc3VjaA==")
            assert limited.value.response["Error"]["Code"] == "LimitExceededException"
            assert limited.value.response["ResponseMetadata"]["HTTPStatusCode"] == 429

    asyncio.run(run())
