"""The sentence-transformers model's transformer on ONNX Runtime (``EMBEDDING_BACKEND=onnx``).

The same weights, exported once from the loaded torch model (``torch.onnx.export``) into a cache folder and
run by ONNX Runtime; the tokenizer and the modules after the transformer (pooling, dense layers) are still the
sentence-transformers ones. PyTorch's eager mode pays a dispatch per operator, which for one short text is most
of the time: on this project's 2-core machine all-MiniLM-L6-v2 encodes a 10-word query ~2.5x faster this
way, a 60-token document ~1.8x. Large batches of long texts are the exception (32 x 256 tokens: torch's
MKL matrix products ~15% faster), so a batch whose padded size is over ``EMBEDDING_ONNX_MAX_TOKENS`` is
left to torch (``make bench-embedding``).

Nothing is trusted unchecked: after the export (or a cache hit) the ONNX encoder and the torch model encode
the same probe texts (one alone, a padded batch, one past the model's length limit), and any vector more than
``MAX_ABS_ERROR`` apart sends the service back to torch (``load_onnx`` returns None and logs why).

The cache file is named by a hash of what determines it (the weights, the model's config, the tokenizer's
inputs, the torch and ONNX Runtime versions and this module's export format), written to a temporary file and
renamed into place, so processes exporting at once each write a complete file and any of them wins.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

log = logging.getLogger(__name__)

Vectors = npt.NDArray[np.float32]

# Bumped when the export changes (inputs, opset, wrapper): old cache files are then simply not used.
EXPORT_FORMAT = 1
OPSET = 17
# float32 through two runtimes: measured 2e-7 apart on all-MiniLM-L6-v2; 1e-4 is far below what moves a
# cosine ranking and far above rounding.
MAX_ABS_ERROR = 1e-4
# EMBEDDING_ONNX_MAX_TOKENS' default: larger padded batches go to torch (make bench-embedding).
ONNX_MAX_TOKENS = 2048
PROBE_TEXTS = (
    "What threshold did the author settle on?",
    "ok",
    "Retrieval keeps the passages within a cosine-distance threshold and builds the system prompt from them. " * 3,
)


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "localrag" / "onnx"


def _versions() -> dict[str, str]:
    import onnxruntime
    import torch
    import transformers

    # transformers too: the exported graph is traced through its modelling code.
    return {
        "torch": str(torch.__version__),
        "onnxruntime": str(onnxruntime.__version__),
        "transformers": str(transformers.__version__),
    }


def model_key(st: Any, input_names: Sequence[str]) -> str:
    """A hash of everything the exported file depends on."""
    transformer = st[0].auto_model
    digest = hashlib.sha256()
    digest.update(json.dumps({"format": EXPORT_FORMAT, "opset": OPSET, "inputs": list(input_names)}).encode())
    digest.update(json.dumps(_versions(), sort_keys=True).encode())
    config = transformer.config.to_dict()
    config.pop("_name_or_path", None)  # where the weights were read from: not what they are
    digest.update(json.dumps(config, sort_keys=True, default=str).encode())
    for name, tensor in sorted(transformer.state_dict().items()):
        digest.update(name.encode())
        digest.update(memoryview(tensor.detach().cpu().contiguous().numpy().reshape(-1)).cast("B"))  # no copy
    return digest.hexdigest()[:32]


def _input_names(st: Any) -> list[str]:
    sample = st.tokenizer(["a b", "a"], padding=True, return_tensors="np")
    names = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in sample]
    if "input_ids" not in names or "attention_mask" not in names:
        raise ValueError("the tokenizer gives no input_ids/attention_mask")
    return names


def export(st: Any, input_names: Sequence[str], dest: Path) -> None:
    """Export the transformer of ``st`` to ``dest`` (batch and sequence dynamic), atomically."""
    import torch

    transformer = st[0].auto_model.eval()
    names = list(input_names)

    class _Forward(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = transformer

        def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
            out = self.inner(**dict(zip(names, tensors, strict=True)), return_dict=True)
            return out.last_hidden_state  # type: ignore[no-any-return]

    sample = st.tokenizer(["an export sample", "a longer export sample, padded to the other one"], padding=True)
    args = tuple(torch.tensor(sample[n], dtype=torch.int64) for n in names)
    axes: dict[str, dict[int, str]] = {n: {0: "batch", 1: "sequence"} for n in names}
    axes["last_hidden_state"] = {0: "batch", 1: "sequence"}
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=dest.name + ".", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    try:
        with torch.no_grad(), _quiet():
            torch.onnx.export(
                _Forward(),
                args,
                tmp,
                input_names=names,
                output_names=["last_hidden_state"],
                dynamic_axes=axes,
                opset_version=OPSET,
                dynamo=False,
            )
        os.replace(tmp, dest)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


@contextlib.contextmanager
def _quiet() -> Any:
    """The exporter warns about traced shape checks that are constant for an encoder; keep them out of logs."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


class OnnxEncoder:
    """``encode`` with the transformer on ONNX Runtime; tokenizer and pooling from sentence-transformers."""

    def __init__(self, st: Any, path: Path, input_names: Sequence[str], threads: int) -> None:
        import onnxruntime as ort

        self._st = st
        self._names = list(input_names)
        self.path = path
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Like OMP_WAIT_POLICY=PASSIVE for torch: do not spin on the cores after an encode, the query goes on
        # to other processes (the chat function's search, the gateway) that need them.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3
        self._session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self._lock = threading.Lock()

    def encode(self, texts: Sequence[str], max_tokens: int | None = None) -> Vectors | None:
        """Raw (not normalised) sentence embeddings of ``texts``, as the torch model would give them; None
        when the padded batch (texts x longest) is over ``max_tokens``, where torch is the faster one."""
        import torch

        st = self._st
        tokens = st.tokenizer(
            list(texts),
            padding=True,
            truncation="longest_first",
            max_length=st.max_seq_length,
            return_tensors="np",
        )
        feed = {n: np.asarray(tokens[n], dtype=np.int64) for n in self._names}
        if max_tokens is not None and feed["input_ids"].size > max_tokens:
            return None
        with self._lock:
            (hidden,) = self._session.run(["last_hidden_state"], feed)
        features: dict[str, Any] = {
            "token_embeddings": torch.from_numpy(np.ascontiguousarray(hidden, dtype=np.float32)),
            "attention_mask": torch.from_numpy(feed["attention_mask"]),
        }
        with torch.inference_mode():
            for index in range(1, len(st)):
                features = st[index](features)
        return np.asarray(features["sentence_embedding"].numpy(), dtype=np.float32)


def check(encoder: OnnxEncoder, st: Any) -> float:
    """Largest absolute difference between the ONNX encoder's and the torch model's vectors on probe texts."""
    worst = 0.0
    for batch in ([PROBE_TEXTS[0]], list(PROBE_TEXTS)):
        ours = encoder.encode(batch)
        if ours is None:
            return float("inf")
        theirs = np.asarray(
            st.encode(batch, batch_size=len(batch), convert_to_numpy=True, normalize_embeddings=False),
            dtype=np.float32,
        )
        if ours.shape != theirs.shape:
            return float("inf")
        worst = max(worst, float(np.abs(ours - theirs).max()))
    return worst


def load_onnx(st: Any, cache_dir: Path | None, threads: int) -> OnnxEncoder | None:
    """An ONNX encoder for ``st``, exported or taken from the cache and checked against it; None (logged) if
    this model cannot be served that way."""
    from sentence_transformers.models import Transformer

    if not len(st) or not isinstance(st[0], Transformer):
        log.warning("embedding backend: the model's first module is not a transformer; serving with torch")
        return None
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        log.warning("embedding backend: onnxruntime is not installed; serving with torch")
        return None
    try:
        names = _input_names(st)
        folder = cache_dir or default_cache_dir()
        path = folder / f"{model_key(st, names)}.onnx"
        encoder: OnnxEncoder | None = None
        if path.exists():
            log.info("embedding backend: onnx, cached export %s", path)
            try:
                encoder = OnnxEncoder(st, path, names, threads)
            except Exception as exc:  # an unreadable cache file: export again over it
                log.warning("embedding backend: cached export unreadable (%s); exporting again", type(exc).__name__)
        if encoder is None:
            log.info("embedding backend: exporting the model to ONNX (once): %s", path)
            export(st, names, path)
            encoder = OnnxEncoder(st, path, names, threads)
        error = check(encoder, st)
    except Exception as exc:  # export or runtime refused this model: serve it with torch
        log.warning("embedding backend: ONNX export or load failed (%s); serving with torch", type(exc).__name__)
        return None
    if not error <= MAX_ABS_ERROR:
        log.warning("embedding backend: ONNX vectors differ from torch's by %.2g; serving with torch", error)
        return None
    log.info("embedding backend: onnx (checked against torch: max difference %.1g)", error)
    return encoder
