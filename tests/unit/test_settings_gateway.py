"""Every documented gateway variable changes what the gateway does.

The gateway is built from the environment as ``python -m gateway`` builds it (``create_app(Settings())``)
and served in this process on an ephemeral port, in front of a stand-in for the Lambda Invoke API that
checks each call's SigV4 signature (the base environment's internal key), records each event, can hold
an invocation open, and serves the authorizer (Allow for the credentials in ``KEYS``, else Unauthorized).
Each row of the table is a variable, a non-default value and what a client observes; the test runs the
observation with and without the value and the two must differ. No process is started.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from shared.identity import Principal
from shared.settings_doc import settings_class, variables
from shared.sigv4 import SignatureError, verify
from tests.support.timeouts import scaled

# Long enough for anything that does happen on this machine; only waited out when nothing happens.
PATIENCE_S = scaled(3.0)
INTERNAL_ID, INTERNAL_SECRET = "LRINTSETTINGS000001", "the-settings-tests-internal-secret"
KEYS = {"good": Principal("alpha", "key:good", "api_key"), "other": Principal("beta", "key:other", "api_key")}


class Functions:
    """The Lambda Invoke API: records every event; MESSAGE invocations wait while ``hold`` is set."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.hold = False
        self.replying = False  # MESSAGE invocations return a body (what a two-way route's function does)
        self.release = asyncio.Event()
        self.arrived = asyncio.Condition()

    def messages(self) -> list[tuple[str, dict[str, Any]]]:
        return [(f, e) for f, e in self.events if e["requestContext"].get("eventType") == "MESSAGE"]

    def authorizations(self) -> list[dict[str, Any]]:
        return [e for f, e in self.events if f == "authorizer"]

    async def invoke(self, request: web.Request) -> web.Response:
        body = await request.read()
        try:
            verify(
                "POST", str(request.url), request.headers, body, keys={INTERNAL_ID: INTERNAL_SECRET}, service="lambda"
            )
        except SignatureError as exc:
            return web.json_response({"message": exc.message}, status=403)
        event = json.loads(body)
        async with self.arrived:
            self.events.append((request.match_info["name"], event))
            self.arrived.notify_all()
        if request.match_info["name"] == "authorizer":
            return authorize(event)
        if self.hold and event["requestContext"].get("eventType") == "MESSAGE":
            await self.release.wait()
        if self.replying and event["requestContext"].get("eventType") == "MESSAGE":
            return web.json_response({"statusCode": 200, "body": json.dumps({"type": "returned"})})
        return web.json_response({"statusCode": 200})

    async def wait_messages(self, n: int) -> bool:
        async with self.arrived:
            try:
                await asyncio.wait_for(self.arrived.wait_for(lambda: len(self.messages()) >= n), PATIENCE_S)
            except TimeoutError:
                return False
        return True

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/2015-03-31/functions/{name}/invocations", self.invoke)
        return app


def authorize(event: dict[str, Any]) -> web.Response:
    """The authorizer contract, for a bearer header or a ?token=."""
    authorization = event["headers"].get("Authorization", "")
    credential = authorization.removeprefix("Bearer ") or event["queryStringParameters"].get("token", "")
    principal = KEYS.get(credential)
    if principal is None:
        return web.json_response(
            {"errorMessage": "Unauthorized", "errorType": "Exception"}, headers={"X-Amz-Function-Error": "Unhandled"}
        )
    statement = {"Action": "execute-api:Invoke", "Effect": "Allow", "Resource": event["methodArn"]}
    return web.json_response(
        {
            "principalId": principal.principal,
            "policyDocument": {"Version": "2012-10-17", "Statement": [statement]},
            "context": principal.context(),
        }
    )


@dataclass
class Gateway:
    client: TestClient[Any, Any]
    functions: Functions
    tmp: Path
    main: dict[str, Any] = field(default_factory=dict)

    async def connect(
        self, path: str = "/local", key: str | None = "good", headers: dict[str, str] | None = None
    ) -> aiohttp.ClientWebSocketResponse:
        auth = {"Authorization": f"Bearer {key}"} if key else {}
        return await self.client.ws_connect(path, headers={**auth, **(headers or {})})

    async def outcome(
        self, path: str = "/local", key: str | None = "good", headers: dict[str, str] | None = None
    ) -> Any:
        """ "open", or the status of the refused handshake."""
        try:
            ws = await self.connect(path, key, headers)
        except aiohttp.WSServerHandshakeError as exc:
            return exc.status
        await ws.close()
        return "open"

    async def first_outcome(self, ws: aiohttp.ClientWebSocketResponse, messages: int = 1) -> Any:
        """Whichever comes first: ``messages`` invocations reach the function ("forwarded"), or the client
        gets a frame (an error's code) or a close (its code); None if neither happens."""
        reached = asyncio.ensure_future(self.functions.wait_messages(messages))
        frame = asyncio.ensure_future(ws.receive(timeout=PATIENCE_S))
        done, _ = await asyncio.wait({reached, frame}, return_when=asyncio.FIRST_COMPLETED)
        if reached in done and reached.result():
            frame.cancel()
            return "forwarded"
        reached.cancel()
        try:
            msg = await frame
        except TimeoutError:
            return None
        if msg.type == aiohttp.WSMsgType.TEXT:
            return json.loads(msg.data).get("code")
        if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING):
            return ("closed", ws.close_code)
        return None


def search(query: str = "lava", request_id: str = "r") -> str:
    return json.dumps({"action": "search", "request_id": request_id, "query": query})


async def _message_event(g: Gateway) -> dict[str, Any]:
    ws = await g.connect()
    await ws.send_str(search())
    assert await g.functions.wait_messages(1)
    return g.functions.messages()[-1][1]


async def _function_for_search(g: Gateway) -> str:
    ws = await g.connect()
    await ws.send_str(search())
    assert await g.functions.wait_messages(1)
    return g.functions.messages()[-1][0]


async def _returned(g: Gateway) -> Any:
    """A search whose function returns a body: the frame the client gets (None: the body was dropped)."""
    g.functions.replying = True
    ws = await g.connect()
    await ws.send_str(search())
    try:
        msg = await ws.receive(timeout=PATIENCE_S)
    except TimeoutError:
        return None
    return json.loads(msg.data).get("type") if msg.type == aiohttp.WSMsgType.TEXT else msg.type.name


async def _stage(g: Gateway) -> bool:
    try:
        await g.connect("/local")
    except aiohttp.WSServerHandshakeError:
        return False
    return True


async def _sized(g: Gateway, size: int) -> Any:
    ws = await g.connect()
    await ws.send_str(search("x" * size))
    return await g.first_outcome(ws)


async def _two_held(g: Gateway, *, two_connections: bool) -> Any:
    """Two searches while the function holds the first: does the second reach it?"""
    g.functions.hold = True
    first = await g.connect()
    second = await g.connect() if two_connections else first
    await first.send_str(search(request_id="a"))
    assert await g.functions.wait_messages(1)
    await second.send_str(search(request_id="b"))
    outcome = await g.first_outcome(second, messages=2)
    g.functions.release.set()
    return outcome


async def _idle(g: Gateway) -> Any:
    ws = await g.connect()
    try:
        msg = await ws.receive(timeout=PATIENCE_S)
    except TimeoutError:
        return "open"
    return (msg.type.name, ws.close_code)


async def _integration_timeout(g: Gateway) -> Any:
    g.functions.hold = True
    ws = await g.connect()
    await ws.send_str(search())
    assert await g.functions.wait_messages(1)
    try:
        msg = await ws.receive(timeout=PATIENCE_S)
    except TimeoutError:
        return None
    finally:
        g.functions.release.set()
    if msg.type != aiohttp.WSMsgType.TEXT:
        return msg.type.name
    data = json.loads(msg.data)
    return data.get("code") or data.get("message")  # API Gateway's own messages have no code


async def _second_message(g: Gateway) -> Any:
    """A search, then (once it reached the function) another: is the second forwarded, or what comes back?"""
    ws = await g.connect()
    await ws.send_str(search(request_id="a"))
    assert await g.functions.wait_messages(1)
    await ws.send_str(search(request_id="b"))
    if await g.functions.wait_messages(2):
        return "forwarded"
    msg = await ws.receive(timeout=PATIENCE_S)
    return json.loads(msg.data).get("message") if msg.type == aiohttp.WSMsgType.TEXT else msg.type.name


async def _second_connect(g: Gateway) -> Any:
    await g.outcome()
    return await g.outcome()


async def _two_management_calls(g: Gateway) -> Any:
    from gateway.keys import MANAGEMENT_APP
    from shared.sigv4 import SigningKey, sign

    async with TestClient(TestServer(g.client.app[MANAGEMENT_APP])) as internal:
        statuses = []
        for _ in range(2):
            url = str(internal.make_url("/local/@connections/bm8tc3VjaC1jb25uZWN0aW9u"))
            headers = sign(
                "GET",
                url,
                {},
                b"",
                key=SigningKey(INTERNAL_ID, INTERNAL_SECRET),
                service="execute-api",
                region="us-east-1",
            )
            async with internal.session.get(url, headers=headers) as resp:
                statuses.append(resp.status)
        return statuses


async def _forwarded(g: Gateway) -> int:
    resp = await g.client.get("/v1/models")
    return resp.status


async def _authorizer_calls(g: Gateway, keys: list[str]) -> int:
    for key in keys:
        await (await g.connect(key=key)).close()
    return len(g.functions.authorizations())


async def _authorizer_arn(g: Gateway) -> str:
    await (await g.connect()).close()
    return str(g.functions.authorizations()[0]["methodArn"])


async def _health_as(g: Gateway, host: str) -> int:
    resp = await g.client.get("/health", headers={"Host": host})
    return resp.status


async def _identity(g: Gateway) -> Any:
    """Without a credential: refused (401), or let in as whom (what its messages' events carry)."""
    status = await g.outcome(key=None)
    if status != "open":
        return status
    ws = await g.connect(key=None)
    await ws.send_str(search())
    assert await g.functions.wait_messages(1)
    return g.functions.messages()[-1][1]["requestContext"]["authorizer"]


async def _put(g: Gateway, *, secret: str = "base-secret", size: int = 100) -> tuple[int, list[str]]:
    """A signed upload PUT of ``size`` bytes: the status, and the files under the test's folder after it."""
    import time

    from shared.object_store import sign_upload

    key = "uploads/" + "a" * 32 + "/notes.md"
    expires = int(time.time()) + 600
    signature = sign_upload(secret, "PUT", key, expires, "text/markdown")
    resp = await g.client.put(
        f"/local/{key}?expires={expires}&signature={signature}",
        data=b"x" * size,
        headers={"Content-Type": "text/markdown"},
    )
    files = sorted(str(p.relative_to(g.tmp)) for p in g.tmp.rglob("*.md"))
    return resp.status, files


@dataclass(frozen=True)
class Effect:
    value: str  # the non-default value ({functions}: the stand-in's base URL; {tmp}: the test's folder)
    observe: Callable[[Gateway], Awaitable[Any]]
    base: dict[str, str] = field(default_factory=dict)


async def _main_arg(g: Gateway, name: str) -> Any:
    return g.main[name]


def _routes_with_search_to_ingestion() -> str:
    from gateway.settings import DEFAULT_ROUTES

    return json.dumps({**DEFAULT_ROUTES, "search": "ingestion"})


GATEWAY: dict[str, Effect] = {
    "GATEWAY_HOST": Effect("0.0.0.0", lambda g: _main_arg(g, "host")),
    "GATEWAY_PORT": Effect("18000", lambda g: _main_arg(g, "port")),
    "GATEWAY_MANAGEMENT_HOST": Effect("0.0.0.0", lambda g: _main_arg(g, "management_host")),
    "GATEWAY_MANAGEMENT_PORT": Effect("18003", lambda g: _main_arg(g, "management_port")),
    "GATEWAY_REGION": Effect("eu-west-1", _authorizer_arn),
    # A ?token= is not looked at when only the header is an identity source: 401 without invoking.
    "GATEWAY_AUTHORIZER_IDENTITY_SOURCES": Effect(
        "route.request.header.Authorization", lambda g: g.outcome("/local?token=good", key=None)
    ),
    "GATEWAY_AUTHORIZER_TTL_S": Effect("0", lambda g: _authorizer_calls(g, ["good", "good"])),
    "GATEWAY_AUTHORIZER_CACHE_SIZE": Effect("1", lambda g: _authorizer_calls(g, ["good", "other", "good"])),
    "GATEWAY_ALLOWED_HOSTS": Effect("gw.example", lambda g: _health_as(g, "gw.example")),
    "GATEWAY_ALLOWED_ORIGINS": Effect(
        "http://app.example", lambda g: g.outcome(headers={"Origin": "http://app.example"})
    ),
    # /v1 (and /ui) go to the api function at this URL: the stand-in answers 404, nothing at the base's 502.
    "GATEWAY_API_URL": Effect("{functions}", _forwarded, base={"GATEWAY_API_URL": "http://127.0.0.1:9"}),
    "RAG_AUTH": Effect("none", _identity),
    # Another internal key than the one the Invoke API knows: the authorizer cannot be invoked (500).
    "LOCALRAG_INTERNAL_ACCESS_KEY_ID": Effect("LRINTSOMEOTHERKEY01", lambda g: g.outcome()),
    "LOCALRAG_INTERNAL_SECRET_ACCESS_KEY": Effect("a-secret-the-invoke-api-does-not-know", lambda g: g.outcome()),
    "GATEWAY_LOG_LEVEL": Effect("DEBUG", lambda g: _main_arg(g, "log_level")),
    "GATEWAY_STAGE": Effect("dev", _stage),
    "GATEWAY_API_ID": Effect("abc123", lambda g: _field(g, "apiId")),
    "GATEWAY_DOMAIN_NAME": Effect("example.test", lambda g: _field(g, "domainName")),
    "GATEWAY_FUNCTIONS": Effect(
        json.dumps(
            {
                "ingestion": "{functions}/2015-03-31/functions/ingestion/invocations",
                "chat": "{functions}/2015-03-31/functions/renamed/invocations",
                "authorizer": "{functions}/2015-03-31/functions/authorizer/invocations",
            }
        ),
        _function_for_search,
    ),
    "GATEWAY_ROUTES": Effect(_routes_with_search_to_ingestion(), _function_for_search),
    # search no longer two-way: the body its function returns is dropped, as API Gateway drops it.
    "GATEWAY_TWO_WAY_ROUTES": Effect('["history"]', _returned),
    # The second waits for the first's slot: nothing happens until the test releases the first.
    "GATEWAY_FUNCTION_CONCURRENCY": Effect('{"chat": 1}', lambda g: _two_held(g, two_connections=True)),
    "GATEWAY_MAX_MESSAGE_BYTES": Effect("1000", lambda g: _sized(g, 2000)),
    "GATEWAY_HARD_MAX_MESSAGE_BYTES": Effect("3000", lambda g: _sized(g, 4000)),
    "GATEWAY_IDLE_TIMEOUT_S": Effect("0.2", _idle),
    "GATEWAY_INTEGRATION_TIMEOUT_S": Effect("0.2", _integration_timeout),
    "GATEWAY_MAX_FRAME_BYTES": Effect("1000", lambda g: _sized(g, 2000)),
    "GATEWAY_MAX_CONNECTION_S": Effect("0.2", _idle),
    "GATEWAY_THROTTLING_RATE_LIMIT": Effect("0.001", _second_message, base={"GATEWAY_THROTTLING_BURST_LIMIT": "1"}),
    "GATEWAY_THROTTLING_BURST_LIMIT": Effect("1", _second_message, base={"GATEWAY_THROTTLING_RATE_LIMIT": "0.001"}),
    "GATEWAY_CONNECT_RATE_LIMIT": Effect("0.001", _second_connect),
    "GATEWAY_MANAGEMENT_RATE_LIMIT": Effect("0.001", _two_management_calls),
    "GATEWAY_MAX_INFLIGHT_PER_CONNECTION": Effect("1", lambda g: _two_held(g, two_connections=False)),
    "RAG_DOCUMENTS_URI": Effect("{tmp}/elsewhere", lambda g: _put(g)),
    "RAG_MAX_UPLOAD_BYTES": Effect("50", lambda g: _put(g)),
    "RAG_UPLOAD_SECRET": Effect("other-secret", lambda g: _put(g, secret="other-secret")),
}


async def _field(g: Gateway, name: str) -> Any:
    return (await _message_event(g))["requestContext"][name]


def test_the_table_covers_every_documented_variable() -> None:
    documented = {v.env for v in variables(settings_class("gateway.settings:Settings"))}
    assert not documented - set(GATEWAY), f"no observable effect checked for {sorted(documented - set(GATEWAY))}"
    assert not set(GATEWAY) - documented, f"{sorted(set(GATEWAY) - documented)} are not documented settings"


def _main(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """What ``python -m gateway`` serves with, with serving stubbed out."""
    import gateway.__main__ as entry

    seen: dict[str, Any] = {}
    monkeypatch.setattr(entry, "configure_logging", lambda level="INFO": seen.update(log_level=level))

    def run_app(app: Any, host: str, port: int, *, internal: Any, **kw: Any) -> None:
        seen.update(host=host, port=port, management_host=internal.host, management_port=internal.port)

    monkeypatch.setattr(entry, "run_app", run_app)
    entry.main()
    return seen


async def _observe(effect: Effect, env: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp: Path) -> Any:
    from gateway.app import create_app
    from gateway.settings import Settings

    functions = Functions()
    async with TestServer(functions.app()) as stand_in:
        url = str(stand_in.make_url("")).rstrip("/")
        with monkeypatch.context() as m:
            for k, v in env.items():
                m.setenv(k, v.replace("{functions}", url).replace("{tmp}", str(tmp)))
            settings, main = Settings(), _main(m)
        async with TestClient(TestServer(create_app(settings))) as client:
            return await effect.observe(Gateway(client, functions, tmp, main))


@pytest.mark.parametrize("var", sorted(GATEWAY))
def test_every_variable_changes_the_gateway(var: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.startswith(("GATEWAY_", "RAG_", "LOCALRAG_")):
            monkeypatch.delenv(name)
    effect = GATEWAY[var]
    base = {
        "GATEWAY_FUNCTIONS": json.dumps(
            {
                "ingestion": "{functions}/2015-03-31/functions/ingestion/invocations",
                "chat": "{functions}/2015-03-31/functions/chat/invocations",
                "authorizer": "{functions}/2015-03-31/functions/authorizer/invocations",
            }
        ),
        "LOCALRAG_INTERNAL_ACCESS_KEY_ID": INTERNAL_ID,
        "LOCALRAG_INTERNAL_SECRET_ACCESS_KEY": INTERNAL_SECRET,
        "RAG_DOCUMENTS_URI": "{tmp}/documents",
        "RAG_UPLOAD_SECRET": "base-secret",
        **effect.base,
    }
    default = asyncio.run(_observe(effect, base, monkeypatch, tmp_path / "a"))
    changed = asyncio.run(_observe(effect, {**base, var: effect.value}, monkeypatch, tmp_path / "b"))
    assert changed != default, f"{var}={effect.value} changed nothing: {default!r}"
