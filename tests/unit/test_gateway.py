"""The gateway's parts, in process (no lambdas): its module shape, the @connections API with AWS's own
client, and the chunks the HTTP API sends against its OpenAPI document (the /v1 application itself:
tests/unit/test_api.py)."""

from __future__ import annotations

import ast
import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from jsonschema import Draft202012Validator

from api.openapi import openapi_document
from gateway.app import create_app
from gateway.connections import Connection, QueueSocket
from gateway.keys import CONNECTIONS, MANAGEMENT_APP
from gateway.settings import Settings
from shared.connections import ConnectionGone, Connections
from shared.events import build_event
from shared.openai_models import ChatCompletionChunk, ChunkChoice, Delta, Usage, sse
from shared.protocol import Token
from shared.serving import listening_socket
from shared.settings import AuthSettings, InternalAuthSettings
from shared.sigv4 import SigningKey

GATEWAY = Path(__file__).resolve().parents[2] / "gateway"


def test_no_private_name_is_imported_across_gateway_modules() -> None:
    offenders = []
    for path in sorted(GATEWAY.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.module:
                offenders += [f"{path.name}: {node.module}.{a.name}" for a in node.names if a.name.startswith("_")]
    assert offenders == []


def test_app_module_only_composes() -> None:
    tree = ast.parse((GATEWAY / "app.py").read_text())
    defined = [n.name for n in tree.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)]
    assert defined == ["create_app"]


# ---------------------------------------------------------------------- a gateway in process


Scenario = Callable[[web.Application, str], Awaitable[None]]


INTERNAL = SigningKey("LRINTTESTKEY0000002", "another-secret-for-the-unit-tests")


def run_gateway(scenario: Scenario, *, internal: bool = False, **settings: Any) -> None:
    """Serve a gateway (with no lambdas behind it) on a free port and run `scenario(app, base_url)`; the
    base URL is its internal listener's (@connections) when ``internal``. Identity is off (RAG_AUTH=none):
    these tests are about the other parts (tests/unit/test_gateway_auth.py tests identity)."""

    async def main() -> None:
        public, management = listening_socket("127.0.0.1", 0), listening_socket("127.0.0.1", 0)
        port = public.getsockname()[1]
        app = create_app(
            Settings(
                port=port,
                auth=AuthSettings(auth=["none"]),
                internal=InternalAuthSettings(
                    access_key_id=INTERNAL.access_key_id, secret_access_key=INTERNAL.secret_access_key
                ),
                **settings,
            )
        )
        runners = [web.AppRunner(app), web.AppRunner(app[MANAGEMENT_APP])]
        for runner, sock in zip(runners, (public, management), strict=True):
            await runner.setup()
            await web.SockSite(runner, sock).start()
        try:
            served = management if internal else public
            await scenario(app, f"http://127.0.0.1:{served.getsockname()[1]}")
        finally:
            for runner in runners:
                await runner.cleanup()

    asyncio.run(main())


@pytest.mark.parametrize("connection_id", ["AbC/dEf+gHi=", "plainId0123456=="])
def test_post_to_connection_with_aws_client(connection_id: str) -> None:
    """Connection ids are base64 like AWS's, so they may hold '/' and '+': botocore percent-encodes them
    in the path, and the gateway finds the connection; once it is gone, GoneException -> ConnectionGone."""

    async def scenario(app: web.Application, base: str) -> None:
        socket = QueueSocket()
        app[CONNECTIONS].add(Connection(id=connection_id, ws=socket, source_ip="127.0.0.1", user_agent="test"))
        event = build_event(
            route_key="chat",
            event_type="MESSAGE",
            connection_id=connection_id,
            connected_at=0,
            domain_name=base.removeprefix("http://"),
            stage="local",
        )
        client = Connections(endpoint_url=f"{base}/local", region="us-east-1", signing_key=INTERNAL)
        loop = asyncio.get_running_loop()
        message = Token(request_id="r", index=0, text="hi")
        await loop.run_in_executor(None, client.post, event, message)
        assert json.loads(socket.queue.get_nowait() or b"") == message.model_dump(mode="json")
        socket.shut()
        with pytest.raises(ConnectionGone):
            await loop.run_in_executor(None, client.post, event, message)

    run_gateway(scenario, internal=True)


def _validator(schema: str) -> Draft202012Validator:
    return Draft202012Validator(
        {"$ref": f"#/components/schemas/{schema}", "components": openapi_document()["components"]}
    )


def test_chunks_as_sent_match_the_document() -> None:
    """sse() leaves out what OpenAI leaves out (delta fields, usage); the schema must not require them."""
    validator = _validator("ChatCompletionChunk")
    chunks = [
        ChatCompletionChunk(
            id="c",
            created=1,
            model="m",
            choices=[ChunkChoice(delta=Delta(role="assistant", content=""), finish_reason=None)],
        ),
        ChatCompletionChunk(
            id="c", created=1, model="m", choices=[ChunkChoice(delta=Delta(content="x"), finish_reason=None)]
        ),
        ChatCompletionChunk(id="c", created=1, model="m", choices=[ChunkChoice(delta=Delta(), finish_reason="stop")]),
        ChatCompletionChunk(id="c", created=1, model="m", choices=[], usage=Usage.of(3, 4)),
    ]
    sent = [json.loads(sse(c).decode().removeprefix("data: ")) for c in chunks]
    for body in sent:
        assert not list(validator.iter_errors(body)), body
    assert sent[1]["choices"][0]["delta"] == {"content": "x"} and "usage" not in sent[1]
    assert sent[2]["choices"][0]["delta"] == {} and sent[2]["choices"][0]["finish_reason"] == "stop"
    assert sent[3]["usage"] == {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}
    # The schema is not vacuous: a chunk without its id, or with an unknown finish reason, fails.
    assert list(validator.iter_errors({k: v for k, v in sent[0].items() if k != "id"}))
    bad = json.loads(json.dumps(sent[2]))
    bad["choices"][0]["finish_reason"] = "tired"
    assert list(validator.iter_errors(bad))
