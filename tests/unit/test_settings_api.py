"""Every documented API_* variable changes what the HTTP API function does.

The application is built from the environment as ``python -m api`` builds it (``Settings()``), over the
real chat and ingestion logic (a LanceDB folder, a 4-dimension query embedder, an LLM that can be held)
with identity off, and served in this process; each row is a variable, a non-default value and what a
client observes; the observation must differ with and without the value. No process is started.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
from collections.abc import Awaitable, Callable, Generator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from api.app import API as API_STATE
from api.app import Backends, create_app
from api.identity import Identity
from api.settings import Settings
from authorizer.service import Authorizer
from chat.service import ChatService
from chat.settings import Settings as ChatSettings
from ingestion.handler import build_service as build_ingestion
from ingestion.settings import Settings as IngestionSettings
from shared.api_keys import KeyStore
from shared.bedrock import ChatEvent, StreamDone, TextDelta
from shared.object_store import ConditionalJson
from shared.settings_doc import settings_class, variables
from shared.sync_jobs import SYNC_PREFIX, SyncJobs
from shared.vector_store import VectorStore
from tests.support.timeouts import scaled

PATIENCE_S = scaled(1.0)


class QueryEmbedder:
    def embed_query(self, text: str) -> list[float]:
        return [1.0, 0.0, 0.0, 0.0]

    def embed_documents(self, texts: Sequence[str]) -> list[list[float]]:
        return [[1.0, 0.0, 0.0, 0.0] for _ in texts]


class HeldLLM:
    """Answers once ``release`` is set."""

    def __init__(self) -> None:
        self.release = threading.Event()

    def stream(self, system: str, messages: Sequence[dict[str, str]]) -> Generator[ChatEvent, None, None]:
        self.release.wait(scaled(30))
        yield TextDelta("ok")
        yield StreamDone("end_turn", 1, 1)


@dataclass
class Api:
    client: TestClient[Any, Any]
    llm: HeldLLM
    main: dict[str, Any] = field(default_factory=dict)


async def _main_arg(a: Api, name: str) -> Any:
    return a.main[name]


async def _config(a: Api, name: str) -> Any:
    async with a.client.get("/ui/config.json") as resp:
        return (await resp.json()).get(name)


async def _status(a: Api, method: str, path: str, **kw: Any) -> int:
    async with a.client.request(method, path, **kw) as resp:
        return resp.status


async def _upload_url(a: Api) -> tuple[int, str]:
    """Where the presigned PUT goes (unset: a local folder's uploads cannot be signed, a typed error)."""
    async with a.client.post("/v1/documents", json={"filename": "a.md", "size": 3}) as resp:
        body = await resp.json()
        if resp.status != 201:
            return resp.status, str(body["error"]["message"])
        return resp.status, str(body["upload_url"]).split("/uploads/")[0]


async def _second_request_waits(a: Api) -> bool:
    """An answer held in a worker; does another request wait for a worker?"""
    body = {"model": "localrag", "messages": [{"role": "user", "content": "q"}]}
    held = asyncio.ensure_future(a.client.post("/v1/chat/completions", json=body))
    await asyncio.sleep(PATIENCE_S / 2)  # the answer has taken its worker
    try:
        await asyncio.wait_for(_status(a, "GET", "/v1/kb/status"), PATIENCE_S)
        waited = False
    except TimeoutError:
        waited = True
    a.llm.release.set()
    (await held).release()
    return waited


async def _sync(a: Api) -> tuple[int, str]:
    """Where a sync job runs: here (202, done) or the ingestion function (unreachable here: 502)."""
    async with a.client.post("/v1/kb/sync") as resp:
        return resp.status, str((await resp.json()).get("status"))


async def _sync_endpoint(a: Api) -> str | None:
    """The Lambda endpoint sync jobs are started at (no call made)."""
    sync = a.client.app[API_STATE].sync
    return str(sync.client.meta.endpoint_url) if sync else None


async def _dead_worker_job(a: Api) -> str:
    """A running job whose worker stopped updating it 100 s ago: still running, or failed (stale)?"""
    objects = a.client.app[API_STATE].backends.ingestion.objects
    job = SyncJobs(objects).create_job("default")
    records, key = ConditionalJson(objects, lock_dir=SYNC_PREFIX), f"sync/default/jobs/{job.id}.json"
    got = records.get(key)
    assert got is not None
    assert records.put(key, {**got[0], "status": "running", "updated": got[0]["updated"] - 100}, if_match=got[1])
    async with a.client.get("/v1/kb/status") as resp:
        return str((await resp.json())["data"][0]["status"])


async def _revoked_key_passes(a: Api, keys_used: int = 1) -> list[int]:
    """Identity on (API keys in the documents store): use ``keys_used`` keys, revoke the first, use it again."""
    api = a.client.app[API_STATE]
    keys = KeyStore(api.backends.ingestion.objects)
    api.backends.identity = Identity(Authorizer(methods={"api_key"}, keys=keys))
    made = [keys.create("alpha", f"k{i}") for i in range(keys_used)]
    seen = []
    for _, key in made:
        seen.append(await _status(a, "GET", "/v1/kb/status", headers={"Authorization": f"Bearer {key}"}))
    keys.revoke(made[0][0].key_id)
    seen.append(await _status(a, "GET", "/v1/kb/status", headers={"Authorization": f"Bearer {made[0][1]}"}))
    return seen


@dataclass(frozen=True)
class Effect:
    value: str
    observe: Callable[[Api], Awaitable[Any]]
    base: dict[str, str] = field(default_factory=dict)  # set with and without the value


WSS = "wss://abc123.execute-api.us-east-1.amazonaws.com/local"
API: dict[str, Effect] = {
    "API_HOST": Effect("0.0.0.0", lambda a: _main_arg(a, "host")),
    "API_PORT": Effect("18004", lambda a: _main_arg(a, "port")),
    "API_LOG_LEVEL": Effect("DEBUG", lambda a: _main_arg(a, "log_level")),
    "API_STAGE": Effect("prod", lambda a: _config(a, "websocket_path")),
    "API_WEBSOCKET_URL": Effect(WSS, lambda a: _config(a, "websocket_url")),
    "API_WEB_CHAT_GATEWAYS": Effect("wss://other.example", lambda a: _config(a, "gateways")),
    "API_UPLOADS_URL": Effect("http://gw.example:8000/local", _upload_url),
    "API_ALLOWED_HOSTS": Effect(
        "api.example", lambda a: _status(a, "GET", "/v1/models", headers={"Host": "api.example"})
    ),
    "API_ALLOWED_ORIGINS": Effect(
        "https://app.example", lambda a: _status(a, "GET", "/v1/models", headers={"Origin": "https://app.example"})
    ),
    "API_HTTP_MAX_BODY_BYTES": Effect(
        "100",
        lambda a: _status(
            a,
            "POST",
            "/v1/chat/completions",
            data=json.dumps({"x": "y" * 500}),
            headers={"Content-Type": "application/json"},
        ),
    ),
    "API_MAX_CONCURRENT_REQUESTS": Effect("1", _second_request_waits),
    "API_SYNC_FUNCTION": Effect("ingestion", _sync, base={"API_LAMBDA_ENDPOINT_URL": "http://127.0.0.1:9"}),
    "API_LAMBDA_ENDPOINT_URL": Effect("http://127.0.0.1:9", _sync_endpoint, base={"API_SYNC_FUNCTION": "ingestion"}),
    "API_SYNC_STALE_AFTER_S": Effect("10", _dead_worker_job),
    # The default caches the first key's Allow (200 after its revocation); 0 checks again (403).
    "API_CREDENTIAL_CACHE_S": Effect("0", _revoked_key_passes),
    # Two keys: with room for one, the first key's Allow is pushed out and it is checked again (403).
    "API_CREDENTIAL_CACHE_SIZE": Effect("1", lambda a: _revoked_key_passes(a, keys_used=2)),
}


def test_the_table_covers_every_documented_variable() -> None:
    documented = {v.env for v in variables(settings_class("api.settings:Settings"))}
    assert not documented - set(API), f"no observable effect checked for {sorted(documented - set(API))}"
    assert not set(API) - documented, f"{sorted(set(API) - documented)} are not documented settings"


def _main(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """What ``python -m api`` serves with, with serving stubbed out (the logic is not built)."""
    import api.__main__ as entry

    seen: dict[str, Any] = {}
    monkeypatch.setattr(entry, "configure_logging", lambda level="INFO": seen.update(log_level=level))
    monkeypatch.setattr(entry, "run_app", lambda app, host, port, **kw: seen.update(host=host, port=port))
    entry.main()
    return seen


async def _observe(effect: Effect, env: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp: Path) -> Any:
    with monkeypatch.context() as m:
        for k, v in env.items():
            m.setenv(k, v)
        settings, main = Settings(), _main(m)
    llm = HeldLLM()
    if effect.observe is not _second_request_waits:
        llm.release.set()
    store = VectorStore(str(tmp / "lancedb"), dimension=4, model_id="test", full_text=False)
    backends = Backends(
        chat=ChatService(ChatSettings(intent_routing=False), embedder=QueryEmbedder(), store=store, llm=llm),
        ingestion=build_ingestion(
            IngestionSettings(documents_uri=str(tmp / "documents"), upload_secret="s"),
            embedder=QueryEmbedder(),
            store=store,
        ),
        identity=Identity(Authorizer(methods={"none"})),
    )
    async with TestClient(TestServer(create_app(settings, backends))) as client:
        return await effect.observe(Api(client, llm, main))


@pytest.mark.parametrize("var", sorted(API))
def test_every_variable_changes_the_api(var: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.startswith(("API_", "RAG_", "LOCALRAG_")):
            monkeypatch.delenv(name)
    effect = API[var]
    default = asyncio.run(_observe(effect, effect.base, monkeypatch, tmp_path / "a"))
    changed = asyncio.run(_observe(effect, {**effect.base, var: effect.value}, monkeypatch, tmp_path / "b"))
    assert changed != default, f"{var}={effect.value} changed nothing: {default!r}"
