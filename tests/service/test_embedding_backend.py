"""EMBEDDING_BACKEND: the transformer on ONNX Runtime (the default) gives torch's vectors, is exported once
into EMBEDDING_ONNX_DIR and reused, survives a damaged cache file, and falls back to torch when its vectors
do not match. The real all-MiniLM-L6-v2, in process and as the service's real process."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import pytest

import embedding.model as model_module
import embedding.onnx_backend as onnx_backend
from embedding.model import EmbeddingModel, default_model_path
from tests.support.procs import TIMEOUT_FACTOR, Service, start_service, stop_service

TEXTS = [
    "Vitamin D deficiency is associated with an increased risk of fractures.",
    "ok",
    "The retrieval threshold trades recall for precision. " * 40,  # past the model's 256 tokens
    "Ünïcödé, numbers 3.14159 and punctuation?!",
]


@pytest.fixture(scope="module")
def st_model() -> Any:
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(default_model_path(), device="cpu")


@pytest.fixture(scope="module")
def torch_model(st_model: Any) -> EmbeddingModel:
    return EmbeddingModel(st_model, name="minilm", backend="torch")


def test_onnx_gives_torchs_vectors_and_exports_once(tmp_path: Path, st_model: Any, torch_model: EmbeddingModel) -> None:
    model = EmbeddingModel(st_model, name="minilm", backend="onnx", onnx_dir=tmp_path)
    assert model.backend == "onnx"
    (export,) = tmp_path.glob("*.onnx")
    assert not list(tmp_path.glob("*.tmp"))  # written to a temporary file, then renamed into place
    for batch in ([TEXTS[0]], TEXTS, TEXTS[::-1], [TEXTS[1]] * 5):
        ours, theirs = model.encode(batch), torch_model.encode(batch)
        assert ours.shape == theirs.shape == (len(batch), 384)
        assert float(np.abs(ours - theirs).max()) < 1e-5
        raw = model.encode(batch, normalize=False)  # Titan's normalize=false: the same raw vectors
        assert float(np.abs(raw - torch_model.encode(batch, normalize=False)).max()) < 1e-4
    assert model.encode([]).shape == (0, 384)

    mtime = export.stat().st_mtime_ns
    again = EmbeddingModel(st_model, name="minilm", backend="onnx", onnx_dir=tmp_path)
    assert again.backend == "onnx"
    assert export.stat().st_mtime_ns == mtime  # the cached export, not a new one
    assert list(tmp_path.glob("*.onnx")) == [export]


def test_the_export_is_named_by_the_weights_not_their_path(tmp_path: Path, st_model: Any) -> None:
    import torch
    from sentence_transformers import SentenceTransformer

    link = tmp_path / "elsewhere"
    link.symlink_to(Path(default_model_path()), target_is_directory=True)
    moved = SentenceTransformer(str(link), device="cpu")
    names = onnx_backend._input_names(st_model)
    assert onnx_backend.model_key(moved, names) == onnx_backend.model_key(st_model, names)
    changed = SentenceTransformer(str(link), device="cpu")
    with torch.no_grad():
        next(changed[0].auto_model.parameters()).add_(1e-3)
    assert onnx_backend.model_key(changed, names) != onnx_backend.model_key(st_model, names)


def test_a_damaged_cache_file_is_exported_again(tmp_path: Path, st_model: Any, torch_model: EmbeddingModel) -> None:
    EmbeddingModel(st_model, name="minilm", backend="onnx", onnx_dir=tmp_path)
    (export,) = tmp_path.glob("*.onnx")
    export.write_bytes(b"not an onnx model")
    model = EmbeddingModel(st_model, name="minilm", backend="onnx", onnx_dir=tmp_path)
    assert model.backend == "onnx"
    assert export.stat().st_size > 1_000_000
    assert float(np.abs(model.encode(TEXTS) - torch_model.encode(TEXTS)).max()) < 1e-5


def test_vectors_that_do_not_match_fall_back_to_torch(
    tmp_path: Path, st_model: Any, torch_model: EmbeddingModel, monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    # No tolerance at all: float32 through two runtimes is never bit-identical, so the check refuses ONNX.
    monkeypatch.setattr(onnx_backend, "MAX_ABS_ERROR", 0.0)
    model = EmbeddingModel(st_model, name="minilm", backend="onnx", onnx_dir=tmp_path)
    assert model.backend == "torch"
    assert "serving with torch" in caplog.text
    assert np.array_equal(model.encode(TEXTS), torch_model.encode(TEXTS))


def test_big_batches_go_to_torch(tmp_path: Path, st_model: Any, torch_model: EmbeddingModel) -> None:
    model = EmbeddingModel(st_model, name="minilm", backend="onnx", onnx_dir=tmp_path, onnx_max_tokens=64)
    model.encode([TEXTS[0]])  # ~20 tokens: ONNX
    big = [TEXTS[2], TEXTS[0]]  # 2 x 256 padded tokens: over 64, torch
    assert np.array_equal(model.encode(big), torch_model.encode(big))
    assert model.batches_by_backend == {"onnx": 1, "torch": 1}
    never = EmbeddingModel(st_model, name="minilm", backend="onnx", onnx_dir=tmp_path, onnx_max_tokens=0)
    never.encode([TEXTS[1]])
    assert never.batches_by_backend == {"onnx": 0, "torch": 1}


def test_an_unknown_backend_is_refused(st_model: Any) -> None:
    with pytest.raises(ValueError, match="unknown embedding backend"):
        EmbeddingModel(st_model, name="minilm", backend="tensorflow")


def test_load_model_keeps_one_model_per_backend(tmp_path: Path) -> None:
    saved = dict(model_module._models)
    try:
        model_module._models.clear()
        onnx = model_module.load_model(None, "cpu", "onnx", tmp_path)
        torch = model_module.load_model(None, "cpu", "torch")
        assert (onnx.backend, torch.backend) == ("onnx", "torch")
        assert model_module.load_model(None, "cpu", "onnx", tmp_path) is onnx
    finally:
        model_module._models.clear()
        model_module._models.update(saved)


def _health(svc: Service) -> dict[str, Any]:
    with urllib.request.urlopen(f"{svc.url}/health", timeout=5 * TIMEOUT_FACTOR) as resp:
        result: dict[str, Any] = json.loads(resp.read())
        return result


def _embed(svc: Service, texts: list[str]) -> np.ndarray:
    client = boto3.client(
        "bedrock-runtime",
        endpoint_url=svc.url,
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
    )
    body = json.dumps({"texts": texts, "input_type": "search_document", "truncate": "END"})
    resp = client.invoke_model(modelId="sentence-transformers/all-MiniLM-L6-v2", body=body)
    return np.asarray(json.loads(resp["body"].read())["embeddings"], dtype=np.float32)


@pytest.fixture(scope="module")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Service, Service, Path]]:
    cache = tmp_path_factory.mktemp("onnx-cache")
    logs = tmp_path_factory.mktemp("embedding-backend-logs")
    onnx = start_service(
        "embedding-onnx",
        "embedding",
        env={"EMBEDDING_ONNX_DIR": str(cache), "EMBEDDING_ONNX_MAX_TOKENS": "300"},
        log_dir=logs,
    )
    try:
        torch = start_service("embedding-torch", "embedding", env={"EMBEDDING_BACKEND": "torch"}, log_dir=logs)
    except Exception:
        stop_service(onnx)
        raise
    yield onnx, torch, cache
    stop_service(onnx)
    stop_service(torch)


def test_the_service_settings_choose_the_backend(services: tuple[Service, Service, Path]) -> None:
    onnx, torch, cache = services
    assert _health(onnx)["backend"] == "onnx"  # the default
    assert _health(torch)["backend"] == "torch"
    assert len(list(cache.glob("*.onnx"))) == 1  # EMBEDDING_ONNX_DIR holds the export
    a, b = _embed(onnx, TEXTS), _embed(torch, TEXTS)
    assert a.shape == b.shape == (len(TEXTS), 384)
    assert float(np.abs(a - b).max()) < 1e-5
    assert _health(onnx)["batches_by_backend"]["torch"] == 1  # 4 x 256 padded tokens: over 300
    one = _embed(onnx, TEXTS[:1])
    assert float(np.abs(one - b[:1]).max()) < 1e-5
    assert _health(onnx)["batches_by_backend"] == {"onnx": 1, "torch": 1}
    assert _health(torch)["batches_by_backend"] == {"onnx": 0, "torch": 1}
    assert "backend onnx" in onnx.log()
    assert "Traceback" not in onnx.log() + torch.log()
