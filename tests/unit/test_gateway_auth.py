"""The gateway's side of identity and "no back door", in process.

A gateway (``create_app``: its public application and its internal @connections application, each on an
ephemeral port) in front of a stand-in for the Lambda Invoke API that checks every call's SigV4 signature
(service ``lambda``, the internal key) and speaks the authorizer contract: it reads the credential from
``Authorization: Bearer``, the ``token`` query parameter or a ``localrag.bearer.*`` subprotocol, and
answers Allow (with a tenant context), an explicit Deny, ``Unauthorized`` or a failure, by credential.
The chat and ingestion stand-ins record their events and answer two-way routes with a reply body.
(A real authorizer process is tested by the stack tests.)
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from yarl import URL

from gateway.app import create_app
from gateway.connections import Connection, QueueSocket
from gateway.keys import AUTHORIZER, CONNECTIONS, MANAGEMENT_APP
from gateway.settings import DEFAULT_ROUTES, Settings
from shared.connections import Connections
from shared.events import RequestAuthorizerEvent, build_event
from shared.identity import Principal
from shared.protocol import Token
from shared.serving import MANAGEMENT_LISTEN_FD_ENV, InternalListener, listening_socket, serve_internal
from shared.settings import AuthSettings, InternalAuthSettings
from shared.sigv4 import SignatureError, SigningKey, sign, verify

INTERNAL = SigningKey("LRINTTESTKEY0000001", "internal-secret-for-the-unit-tests")
INTERNAL_KEYS = {INTERNAL.access_key_id: INTERNAL.secret_access_key}
REGION = "us-east-1"
ALPHA = Principal("alpha", "key:a1", "api_key")
BETA = Principal("beta", "key:b1", "api_key")
BEARER = "localrag.bearer."


def allow(principal: Principal, arn: str) -> dict[str, Any]:
    return {
        "principalId": principal.principal,
        "policyDocument": {
            "Version": "2012-10-17",
            "Statement": [{"Action": "execute-api:Invoke", "Effect": "Allow", "Resource": arn}],
        },
        "context": principal.context(),
    }


def deny(arn: str) -> dict[str, Any]:
    policy = allow(BETA, arn)
    policy["policyDocument"]["Statement"][0]["Effect"] = "Deny"
    return policy


def credential_of(event: dict[str, Any]) -> str | None:
    """The contract's order: Authorization: Bearer, ?token=, a localrag.bearer.* subprotocol."""
    headers = {k.lower(): v for k, v in event["headers"].items()}
    authorization = headers.get("authorization", "")
    if authorization.lower().startswith("bearer "):
        return authorization[7:].strip()
    if event["queryStringParameters"].get("token"):
        return str(event["queryStringParameters"]["token"])
    for proto in headers.get("sec-websocket-protocol", "").split(","):
        if proto.strip().startswith(BEARER):
            return proto.strip()[len(BEARER) :]
    return None


@dataclass
class Lambdas:
    """The Invoke API: signed calls only; the authorizer by credential; chat and ingestion record events."""

    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    unsigned: int = 0
    # credential -> "alpha" | "beta" | "deny" | "fail" | "garbage" | "no-tenant"; anything else: Unauthorized
    keys: dict[str, str] = field(
        default_factory=lambda: {
            "key-alpha": "alpha",
            "key-beta": "beta",
            "key-deny": "deny",
            "key-fail": "fail",
            "key-garbage": "garbage",
            "key-no-tenant": "no-tenant",
        }
    )
    replies: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = field(default_factory=dict)

    def of(self, function: str) -> list[dict[str, Any]]:
        return [e for f, e in self.events if f == function]

    def authorizations(self) -> list[dict[str, Any]]:
        return self.of("authorizer")

    async def invoke(self, request: web.Request) -> web.Response:
        body = await request.read()
        try:
            verify("POST", str(request.url), request.headers, body, keys=INTERNAL_KEYS, service="lambda")
        except SignatureError as exc:
            self.unsigned += 1
            return web.json_response({"message": exc.message}, status=403, headers={"x-amzn-ErrorType": exc.code})
        name = request.match_info["name"]
        event = json.loads(body)
        self.events.append((name, event))
        if name == "authorizer":
            return self.authorize(event)
        if event["requestContext"].get("eventType") == "MESSAGE":
            action = json.loads(event["body"]).get("action")
            reply = self.replies.get(str(action))
            if reply is not None:
                message = {"request_id": json.loads(event["body"]).get("request_id"), **reply(event)}
                return web.json_response({"statusCode": 200, "body": json.dumps(message)})
        return web.json_response({"statusCode": 200})

    def authorize(self, event: dict[str, Any]) -> web.Response:
        RequestAuthorizerEvent.model_validate(event)  # the event has API Gateway's shape
        arn = event["methodArn"]
        kind = self.keys.get(credential_of(event) or "")
        if kind == "alpha":
            return web.json_response(allow(ALPHA, arn))
        if kind == "beta":
            return web.json_response(allow(BETA, arn))
        if kind == "deny":
            return web.json_response(deny(arn))
        if kind == "garbage":
            return web.json_response({"hello": "world"})
        if kind == "no-tenant":
            return web.json_response({**allow(ALPHA, arn), "context": {}})
        error = (
            {"errorMessage": "boom key-fail", "errorType": "RuntimeError"}
            if kind == "fail"
            else {"errorMessage": "Unauthorized", "errorType": "Exception"}
        )
        return web.json_response(error, headers={"X-Amz-Function-Error": "Unhandled"})

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/2015-03-31/functions/{name}/invocations", self.invoke)
        return app


@dataclass
class Harness:
    client: TestClient[Any, Any]
    internal: TestClient[Any, Any]
    lambdas: Lambdas
    app: web.Application

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.client.port}"

    async def ws(self, path: str = "/local", **kw: Any) -> aiohttp.ClientWebSocketResponse:
        return await self.client.ws_connect(path, **kw)

    async def refused(self, path: str = "/local", **kw: Any) -> int:
        """The status of a handshake that must fail."""
        with pytest.raises(aiohttp.WSServerHandshakeError) as err:
            await self.client.ws_connect(path, **kw)
        return err.value.status

    async def v1(self, method: str, path: str, key: str | None = None, **kw: Any) -> tuple[int, Any, Any]:
        headers = dict(kw.pop("headers", {}))
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        async with self.client.request(method, path, headers=headers, **kw) as resp:
            text = await resp.text()
            return resp.status, (json.loads(text) if text else None), resp.headers


@asynccontextmanager
async def harness(**settings: Any) -> AsyncIterator[Harness]:
    lambdas = Lambdas()
    async with TestServer(lambdas.app()) as stand_in:
        base = str(stand_in.make_url("")).rstrip("/")
        functions = {n: f"{base}/2015-03-31/functions/{n}/invocations" for n in ("chat", "ingestion", "authorizer")}
        settings.setdefault(
            "internal",
            InternalAuthSettings(access_key_id=INTERNAL.access_key_id, secret_access_key=INTERNAL.secret_access_key),
        )
        settings.setdefault("auth", AuthSettings(auth=["api_key"]))
        # $connect/$disconnect routed to a function (by default neither has one), to see what it receives.
        settings.setdefault("routes", {**DEFAULT_ROUTES, "$connect": "chat", "$disconnect": "chat"})
        app = create_app(Settings(functions=functions, region=REGION, **settings))
        async with TestClient(TestServer(app)) as client, TestClient(TestServer(app[MANAGEMENT_APP])) as internal:
            yield Harness(client, internal, lambdas, app)


def run(scenario: Coroutine[Any, Any, None]) -> None:
    asyncio.run(scenario)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def _closed(h: Harness, ws: aiohttp.ClientWebSocketResponse) -> None:
    """Close and wait until the gateway has invoked $disconnect."""
    await ws.close()
    for _ in range(200):
        if any(e["requestContext"].get("eventType") == "DISCONNECT" for e in h.lambdas.of("chat")):
            return
        await asyncio.sleep(0.01)


# ---------------------------------------------------------------------- $connect


def test_connect_without_any_identity_source_is_401_and_invokes_nothing() -> None:
    async def scenario() -> None:
        async with harness() as h:
            assert await h.refused() == 401
            assert h.lambdas.events == []  # neither the authorizer nor $connect ran

    run(scenario())


@pytest.mark.parametrize(
    ("key", "status"),
    [("nobody", 401), ("key-deny", 403), ("key-fail", 500), ("key-garbage", 500), ("key-no-tenant", 500)],
)
def test_connect_refusals_invoke_only_the_authorizer(key: str, status: int) -> None:
    async def scenario() -> None:
        async with harness() as h:
            assert await h.refused(headers=bearer(key)) == status
            assert [f for f, _ in h.lambdas.events] == ["authorizer"]  # no other function ran
            assert h.lambdas.unsigned == 0

    run(scenario())


def test_connect_refusal_bodies_say_what_api_gateway_says_and_a_stable_code() -> None:
    async def scenario() -> None:
        async with harness() as h:
            for key, status, message, code in [
                (None, 401, "Unauthorized", "missing_credentials"),
                ("nobody", 401, "Unauthorized", "invalid_credentials"),
                ("key-deny", 403, "Forbidden", "access_denied"),
                ("key-fail", 500, "Internal server error", "authorizer_error"),
            ]:
                headers = {"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13"}
                headers["Sec-WebSocket-Key"] = "dGhlIHNhbXBsZSBub25jZQ=="
                if key:
                    headers.update(bearer(key))
                async with h.client.get("/local", headers=headers) as resp:
                    assert resp.status == status
                    assert await resp.json() == {"message": message, "code": code}

    run(scenario())


def test_authorizer_context_reaches_connect_messages_and_disconnect() -> None:
    async def scenario() -> None:
        async with harness() as h:
            ws = await h.ws(headers=bearer("key-alpha"))
            await ws.send_str(json.dumps({"action": "search", "request_id": "r", "query": "x"}))
            for _ in range(200):
                if any(e["requestContext"].get("eventType") == "MESSAGE" for e in h.lambdas.of("chat")):
                    break
                await asyncio.sleep(0.01)
            await _closed(h, ws)
            (auth,) = h.lambdas.authorizations()
            chat = h.lambdas.of("chat")
            assert [e["requestContext"]["eventType"] for e in chat] == ["CONNECT", "MESSAGE", "DISCONNECT"]
            expected = {"principalId": ALPHA.principal, **ALPHA.context()}
            for e in chat:
                assert e["requestContext"]["authorizer"] == expected
                assert Principal.from_authorizer(e["requestContext"]["authorizer"]) == ALPHA
            # The authorizer ran before $connect, for the same connection, with API Gateway's event.
            assert h.lambdas.events[0][0] == "authorizer"
            assert auth["type"] == "REQUEST"
            assert auth["methodArn"] == f"arn:aws:execute-api:{REGION}:000000000000:local/local/$connect"
            ctx = auth["requestContext"]
            assert ctx["routeKey"] == "$connect" and ctx["eventType"] == "CONNECT"
            assert ctx["connectionId"] == chat[0]["requestContext"]["connectionId"]
            assert auth["headers"]["Authorization"] == "Bearer key-alpha"
            assert auth["multiValueHeaders"]["Authorization"] == ["Bearer key-alpha"]
            assert "authorizer" not in ctx

    run(scenario())


def test_credential_in_the_query_string() -> None:
    async def scenario() -> None:
        async with harness() as h:
            ws = await h.ws("/local?token=key-beta")
            await ws.close()
            connect = h.lambdas.of("chat")[0]
            assert connect["requestContext"]["authorizer"]["tenant"] == "beta"
            assert h.lambdas.authorizations()[0]["queryStringParameters"] == {"token": "key-beta"}

    run(scenario())


def test_subprotocol_credential_is_answered_with_localrag_v1_only(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        async with harness() as h:
            ws = await h.ws(protocols=("localrag.v1", f"{BEARER}key-alpha"))
            assert ws.protocol == "localrag.v1"
            await ws.close()
            assert h.lambdas.of("chat")[0]["requestContext"]["authorizer"]["tenant"] == "alpha"
            # Offered without localrag.v1: authorized, but no subprotocol is chosen (the credential never is).
            async with h.client.get(
                "/local",
                headers={
                    "Connection": "Upgrade",
                    "Upgrade": "websocket",
                    "Sec-WebSocket-Version": "13",
                    "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
                    "Sec-WebSocket-Protocol": f"{BEARER}key-alpha",
                },
            ) as resp:
                assert resp.status == 101
                assert "Sec-WebSocket-Protocol" not in resp.headers

    with caplog.at_level(logging.DEBUG):
        run(scenario())
    assert "key-alpha" not in caplog.text


def test_answers_are_cached_by_identity_source_for_the_ttl() -> None:
    async def scenario() -> None:
        now = [1000.0]
        async with harness(authorizer_ttl_s=300) as h:
            h.app[AUTHORIZER].clock = lambda: now[0]
            for _ in range(3):
                await (await h.ws(headers=bearer("key-alpha"))).close()
            assert len(h.lambdas.authorizations()) == 1
            # An explicit Deny is cached too: the second refusal does not invoke.
            assert await h.refused(headers=bearer("key-deny")) == 403
            assert await h.refused(headers=bearer("key-deny")) == 403
            assert len(h.lambdas.authorizations()) == 2
            # Unauthorized and failures are not cached.
            assert await h.refused(headers=bearer("nobody")) == 401
            assert await h.refused(headers=bearer("nobody")) == 401
            assert len(h.lambdas.authorizations()) == 4
            # The same key in another identity source is another cache entry.
            await (await h.ws("/local?token=key-alpha")).close()
            assert len(h.lambdas.authorizations()) == 5
            # A revoked key still passes within the TTL (as on AWS), and not after it.
            del h.lambdas.keys["key-alpha"]
            await (await h.ws(headers=bearer("key-alpha"))).close()
            assert len(h.lambdas.authorizations()) == 5
            now[0] += 301
            assert await h.refused(headers=bearer("key-alpha")) == 401
            assert len(h.lambdas.authorizations()) == 6

    run(scenario())


def test_ttl_zero_invokes_every_time_and_the_cache_is_bounded() -> None:
    async def scenario() -> None:
        async with harness(authorizer_ttl_s=0) as h:
            for _ in range(2):
                await (await h.ws(headers=bearer("key-alpha"))).close()
            assert len(h.lambdas.authorizations()) == 2
        async with harness(authorizer_cache_size=1) as h:
            for key in ("key-alpha", "key-beta", "key-alpha"):
                await (await h.ws(headers=bearer(key))).close()
            assert len(h.lambdas.authorizations()) == 3  # key-beta pushed key-alpha out

    run(scenario())


def test_concurrent_connects_with_one_key_share_one_invocation() -> None:
    async def scenario() -> None:
        async with harness() as h:
            sockets = await asyncio.gather(*(h.ws(headers=bearer("key-alpha")) for _ in range(5)))
            for ws in sockets:
                await ws.close()
            assert len(h.lambdas.authorizations()) == 1

    run(scenario())


def test_rag_auth_none_skips_the_authorizer_and_warns(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        async with harness(auth=AuthSettings(auth=["none"])) as h:
            ws = await h.ws()
            await _closed(h, ws)
            assert h.lambdas.authorizations() == []
            for e in h.lambdas.of("chat"):
                assert e["requestContext"]["authorizer"] == {
                    "principalId": "anonymous",
                    "tenant": "default",
                    "principal": "anonymous",
                    "auth": "none",
                }
            # Every other check stays.
            assert await h.refused(headers={"Origin": "http://evil.example"}) == 403

    with caplog.at_level(logging.WARNING):
        run(scenario())
    assert any("RAG_AUTH=none" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)


# ---------------------------------------------------------------------- Origin and Host


def test_websocket_origin_must_be_the_gateways_own_or_allowed() -> None:
    async def scenario() -> None:
        async with harness(allowed_origins=["https://app.example"]) as h:
            key = bearer("key-alpha")
            others = (
                "http://evil.example",
                "null",
                "http://localhost:8001",
                f"http://127.0.0.1.evil.example:{h.client.port}",
                "file://",
            )
            for origin in others:
                assert await h.refused(headers={**key, "Origin": origin}) == 403, origin
            assert h.lambdas.events == []  # refused before the authorizer
            # Its own: same origin as the Host it was reached by, or one of its names on GATEWAY_PORT.
            for allowed in (f"http://{h.host}", "http://localhost:8000", "https://app.example", None):
                headers = {**key, **({"Origin": allowed} if allowed else {})}
                await (await h.ws(headers=headers)).close()

    run(scenario())


def test_host_must_name_the_gateway() -> None:
    async def scenario() -> None:
        async with harness(allowed_hosts=["gw.example"], domain_name="rag.example.com") as h:
            for host in ("evil.example", f"evil.example:{h.client.port}", "127.0.0.1.evil.example"):
                async with h.client.get("/health", headers={"Host": host}) as resp:
                    assert resp.status == 421, host
                status, body, _ = await h.v1("GET", "/v1/models", headers={"Host": host})
                assert status == 421 and body["error"]["code"] == "host_not_allowed"
                assert await h.refused(headers={**bearer("key-alpha"), "Host": host}) == 421
            for host in ("gw.example", "rag.example.com", "localhost:8000", "[::1]:1234", h.host):
                async with h.client.get("/health", headers={"Host": host}) as resp:
                    assert resp.status == 200, host
            assert h.lambdas.events == []

    run(scenario())


# ---------------------------------------------------------------------- @connections and /health


def _event(connection_id: str) -> Any:
    return build_event(
        route_key="chat",
        event_type="MESSAGE",
        connection_id=connection_id,
        connected_at=0,
        domain_name="x",
        stage="local",
    )


@pytest.mark.parametrize("connection_id", ["AbC/dEf+gHi=", "plainId0123456=="])
def test_connections_api_is_internal_and_signed_only(connection_id: str) -> None:
    """boto3 signs with the internal key: delivered; the public listener has no @connections at all;
    unsigned, wrongly keyed or tampered requests are refused with AWS's codes."""

    async def scenario() -> None:
        async with harness() as h:
            sock = QueueSocket()
            h.app[CONNECTIONS].add(Connection(id=connection_id, ws=sock, source_ip="127.0.0.1", user_agent="t"))
            internal_url = f"http://127.0.0.1:{h.internal.port}/local"
            loop = asyncio.get_running_loop()
            message = Token(request_id="r", index=0, text="hi")
            signed = Connections(endpoint_url=internal_url, region=REGION, signing_key=INTERNAL)
            await loop.run_in_executor(None, signed.post, _event(connection_id), message)
            assert json.loads(sock.queue.get_nowait() or b"") == message.model_dump(mode="json")

            path = f"/local/@connections/{quote(connection_id, safe='')}"
            for method in ("POST", "GET", "DELETE"):
                async with h.client.request(method, path, data=b'{"type":"x"}') as resp:  # the public listener
                    assert resp.status == 404, method
                async with h.internal.request(method, path, data=b'{"type":"x"}') as resp:  # unsigned
                    assert resp.status == 403
                    assert resp.headers["x-amzn-ErrorType"].startswith("MissingAuthenticationToken")
            wrong = Connections(
                endpoint_url=internal_url, region=REGION, signing_key=SigningKey("LRINTOTHERKEY000001", "x" * 32)
            )
            with pytest.raises(Exception, match=r"UnrecognizedClient|security token"):
                await loop.run_in_executor(None, wrong.post, _event(connection_id), message)
            # Signed by hand (as botocore does), sent exactly as signed.
            url = f"{internal_url}/@connections/{quote(connection_id, safe='')}"

            async def send(method: str, body: bytes, headers: dict[str, str]) -> tuple[int, str]:
                async with h.internal.session.request(method, URL(url, encoded=True), data=body, headers=headers) as r:
                    return r.status, r.headers.get("x-amzn-ErrorType", "")

            def signed_for(method: str, body: bytes, service: str = "execute-api") -> dict[str, str]:
                return sign(method, url, {}, body, key=INTERNAL, service=service, region=REGION)

            # A body changed on the way; a signature for another service (the Invoke API's).
            status, code = await send("POST", b'{"a":2}', signed_for("POST", b'{"a":1}'))
            assert status == 403 and code.startswith("InvalidSignatureException")
            status, code = await send("POST", b'{"a":1}', signed_for("POST", b'{"a":1}', service="lambda"))
            assert status == 403 and code.startswith("InvalidSignatureException")
            assert sock.queue.empty()
            assert (await send("GET", b"", signed_for("GET", b"")))[0] == 200
            assert (await send("DELETE", b"", signed_for("DELETE", b"")))[0] == 204
            assert sock.closed

    run(scenario())


def test_health_tells_counts_never_ids() -> None:
    async def scenario() -> None:
        async with harness() as h:
            ws = await h.ws(headers=bearer("key-alpha"))
            (conn,) = h.app[CONNECTIONS].all()
            async with h.client.get("/health") as resp:
                text = await resp.text()
                body = json.loads(text)
            assert body["connections"] == 1 and body["in_flight"] == 0
            assert body["authorizer_invocations"] == 1
            assert conn.id not in text and "connection_ids" not in body
            await ws.close()

    run(scenario())


def test_unsigned_gateway_invocations_are_refused_by_the_invoke_api() -> None:
    """The stand-in refuses unsigned calls; a gateway without the internal key cannot get in (500)."""

    async def scenario() -> None:
        async with harness(internal=InternalAuthSettings()) as h:
            assert await h.refused(headers=bearer("key-alpha")) == 500
            assert h.lambdas.unsigned == 1 and h.lambdas.events == []

    run(scenario())


def test_internal_listener_on_an_inherited_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    """serve_internal serves the management app on LOCALRAG_MANAGEMENT_LISTEN_FD, with the main app."""

    async def scenario() -> None:
        sock = listening_socket("127.0.0.1", 0)
        port = sock.getsockname()[1]
        monkeypatch.setenv(MANAGEMENT_LISTEN_FD_ENV, str(sock.fileno()))
        internal = web.Application()

        async def hello(request: web.Request) -> web.Response:
            return web.Response(text="internal")

        internal.router.add_get("/hello", hello)
        main = web.Application()
        serve_internal(main, InternalListener(internal, "127.0.0.1", 1), name="test")  # port 1: not used
        runner = web.AppRunner(main)
        await runner.setup()
        try:
            async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{port}/hello") as resp:
                assert await resp.text() == "internal"
        finally:
            await runner.cleanup()
        with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=2):
            pass

    run(scenario())


def test_settings_refuse_what_they_cannot_mean() -> None:
    for bad in (
        {"allowed_origins": "*"},
        {"allowed_origins": "http://x.example/path"},
        {"allowed_hosts": "bad host"},
        {"authorizer_identity_sources": "route.request.body.key"},
        {"authorizer_ttl_s": 3601},
    ):
        with pytest.raises(ValueError):
            Settings(**bad)
    s = Settings(allowed_origins="https://A.example, http://b.example:81", allowed_hosts="gw.example:9000")
    assert s.allowed_origins == ["https://a.example", "http://b.example:81"]
    assert ("gw.example", 9000) in s.host_names()
