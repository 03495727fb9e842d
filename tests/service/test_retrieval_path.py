"""The query's path to its vector: the embedding service's batcher never holds a lone request, still
coalesces concurrent ones, and the chat function's embedding client reuses its connection.

The batcher runs on the real all-MiniLM-L6-v2 in this process; a batch is held "running" by holding the
model's own encode lock, so what the batcher does while a batch runs is observed without timing anything.
Connections are counted in the kernel's socket table (/proc/net/tcp): every TCP connection the embedding
service accepted, open or closed (TIME_WAIT), is one row with the service's port and the client's port.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from chat.settings import Settings as ChatSettings
from embedding.model import EmbeddingModel, MicroBatcher, load_model
from shared import wiring
from tests.support.procs import Service, start_service, stop_service
from tests.support.timeouts import scaled

HOUR = 3600.0  # a batching window no test could outwait: reaching the end of a test proves it was not applied


@pytest.fixture(scope="module")
def model() -> EmbeddingModel:
    return load_model(None)


async def _until(condition: Callable[[], bool], what: str) -> None:
    """Yield to the event loop until ``condition`` holds (a scaled deadline, not a timing assertion)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + scaled(30)
    while not condition():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.001)


def _run(model: EmbeddingModel, batch_wait_s: float, body: Callable[[MicroBatcher], Awaitable[None]]) -> None:
    async def main() -> None:
        batcher = MicroBatcher(model, max_batch_size=64, batch_wait_s=batch_wait_s, max_queue=1024)
        await batcher.start()
        try:
            await asyncio.wait_for(body(batcher), scaled(120))
        finally:
            await batcher.close()

    asyncio.run(main())


def test_a_lone_request_is_encoded_at_once(model: EmbeddingModel) -> None:
    async def body(batcher: MicroBatcher) -> None:
        vectors = await batcher.embed(["What does vitamin D do for bones?"])
        assert vectors.shape == (1, model.dimension)
        assert np.allclose(vectors, model.encode(["What does vitamin D do for bones?"]), atol=1e-5)
        assert (batcher.batches_encoded, batcher.texts_encoded, batcher.batch_waits) == (1, 1, 0)
        # and again, once the batcher is idle again
        await batcher.embed(["A second, later question."])
        assert (batcher.batches_encoded, batcher.batch_waits) == (2, 0)

    _run(model, HOUR, body)


def test_requests_arriving_during_a_batch_form_the_next_batch(model: EmbeddingModel) -> None:
    texts = [f"Question {i} about topic {chr(ord('a') + i)}." for i in range(6)]

    async def body(batcher: MicroBatcher) -> None:
        model._lock.acquire()  # the first batch starts, and stays running until released
        try:
            first = asyncio.create_task(batcher.embed(texts[:1]))
            await _until(lambda: batcher.pending == 1 and not first.done() and batcher._inflight != [], "batch 1")
            rest = [asyncio.create_task(batcher.embed([t])) for t in texts[1:]]
            await _until(lambda: batcher.pending == len(texts), "the others to queue")
            assert batcher.batches_encoded == 0
        finally:
            model._lock.release()
        results = await asyncio.gather(first, *rest)
        # one batch of 1 (started at once), then one batch of the 5 that arrived while it ran
        assert (batcher.batches_encoded, batcher.texts_encoded, batcher.batch_waits) == (2, len(texts), 0)
        for text, vectors in zip(texts, results, strict=True):
            assert np.allclose(vectors, model.encode([text]), atol=1e-4), text

    _run(model, HOUR, body)


def test_an_idle_batcher_waits_for_requests_already_received(model: EmbeddingModel) -> None:
    async def body(batcher: MicroBatcher) -> None:
        with batcher.arriving():  # a second request is being read by the service
            first = asyncio.create_task(batcher.embed(["first"]))
            await _until(lambda: batcher.batch_waits == 1, "the batcher to hold its batch")
            for _ in range(10):
                await asyncio.sleep(0)
            assert not first.done() and batcher.batches_encoded == 0 and batcher._inflight == []
        second = await batcher.embed(["second"])  # queued as the block is left: joins the held batch
        await first
        assert (batcher.batches_encoded, batcher.texts_encoded) == (1, 2)
        assert np.allclose(second, model.encode(["second"]), atol=1e-4)

    _run(model, HOUR, body)


def test_the_wait_for_a_received_request_is_bounded(model: EmbeddingModel) -> None:
    async def body(batcher: MicroBatcher) -> None:
        with batcher.arriving():  # ... a request that never gets to embed (say, its body is invalid)
            await batcher.embed(["alone"])
        assert (batcher.batches_encoded, batcher.batch_waits) == (1, 1)

    _run(model, 0.01, body)


# ------------------------------------------------------------------------------------------- connections


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    svc = start_service(
        "embedding", "embedding", env={"EMBEDDING_LOG_LEVEL": "INFO"}, log_dir=tmp_path_factory.mktemp("logs")
    )
    yield svc
    stop_service(svc)


def _accepted(port: int) -> set[int]:
    """Client ports of the TCP connections to ``port`` in the socket table (any state but LISTEN)."""
    peers: set[int] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        path = Path(table)
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            remote_port = int(fields[2].rsplit(":", 1)[1], 16)
            if local_port == port and remote_port != 0:
                peers.add(remote_port)
    return peers


def _chat_embedder(service: Service) -> Any:
    """The chat function's embedding client, made as the chat function makes it (shared/wiring.py)."""
    return wiring.embedder(ChatSettings(embedding_endpoint_url=service.url))


def test_the_embedding_client_reuses_one_connection(service: Service) -> None:
    port = int(service.url.rsplit(":", 1)[1])
    before = _accepted(port)
    embedder = _chat_embedder(service)
    for i in range(20):
        assert len(embedder.embed_query(f"question number {i}")) == 384
    assert len(_accepted(port) - before) == 1  # 20 calls, one TCP connection
    # The count does see new connections: a second client opens its own.
    other = _chat_embedder(service)
    other.embed_query("from another client")
    assert len(_accepted(port) - before) == 2
