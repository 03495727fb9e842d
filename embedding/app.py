"""HTTP front of the embedding service: Amazon Bedrock Runtime ``InvokeModel`` for embedding models.

``POST /model/{modelId}/invoke`` answers every model id of the model map (``EMBEDDING_MODEL_MAP``: by default
the Bedrock ids of Amazon Titan Embeddings G1/V2 and Cohere Embed v3/v4) and the service's own id
(``EMBEDDING_MODEL_ID``), each in its family's body (see ``embedding.families``), all with the one local model.
A foundation-model ARN, a system inference profile id (``us.cohere.embed-v4:0``) or its ARN are accepted too.

Text beyond the model's max_seq_length tokens is not read by Titan bodies (the end is cut, as
``inputTextTokenCount`` still counts the whole text); Cohere's ``truncate`` defaults to NONE, as on Bedrock: a
text longer than the model's token limit is then a ValidationException. ``input_type`` is checked but does not
change the vector (MiniLM is a symmetric model).

Errors follow AWS: 400 ValidationException (an unknown model id too, as Bedrock answers it), 429
ThrottlingException.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import orjson
from aiohttp import web

from embedding.families import (
    MALFORMED,
    BodyError,
    Family,
    TextsRequest,
    cohere_payload,
    parse_body,
    resolve_model_id,
    titan_payload,
    unknown_model_message,
)
from embedding.model import EmbeddingModel, MicroBatcher, QueueFull, Vectors, load_model
from embedding.settings import Settings
from shared.aws_http import Throttling, ValidationError, aws_error_middleware
from shared.logs import correlation_middleware
from shared.timing import timed_ms

log = logging.getLogger(__name__)

SETTINGS_KEY = web.AppKey("settings", Settings)
MODEL_KEY = web.AppKey("model", EmbeddingModel)
BATCHER_KEY = web.AppKey("batcher", MicroBatcher)
SERVED_KEY = web.AppKey("served", dict[str, Family])


def served_models(settings: Settings) -> dict[str, Family]:
    """Model id -> body family: the configured map, and the service's own id (either body, told apart)."""
    return {**settings.model_map, settings.model_id: "auto"}


def _check_text(text: str, where: str, max_chars: int) -> None:
    if not text.strip():
        raise ValidationError(f"{MALFORMED}: {where} must not be empty")
    if len(text) > max_chars:
        raise ValidationError(f"{MALFORMED}: {where} is {len(text)} characters long; the limit is {max_chars}")


async def _read_json_object(request: web.Request) -> dict[str, Any]:
    data = await request.read()
    if not data.strip():
        raise ValidationError(f"{MALFORMED}: the request body is empty")
    try:
        body = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ValidationError(f"{MALFORMED}: the request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise ValidationError(f"{MALFORMED}: the request body must be a JSON object")
    return body


async def _embed(batcher: MicroBatcher, texts: list[str], normalize: bool) -> Vectors:
    try:
        return await batcher.embed(texts, normalize=normalize)
    except QueueFull:
        raise Throttling("Too many requests, please wait before trying again.") from None


def _response(payload: dict[str, Any], request_id: str, token_count: int, started: float) -> web.Response:
    return web.Response(
        # orjson: the 384 floats of a vector in a tenth of json.dumps's time (a query's reply is mostly them).
        body=orjson.dumps(payload),
        content_type="application/json",
        headers={
            "x-amzn-RequestId": request_id,
            "X-Amzn-Bedrock-Input-Token-Count": str(token_count),
            "X-Amzn-Bedrock-Invocation-Latency": str(round(timed_ms(started))),
        },
    )


# Texts up to this many characters in all are token-counted on the event loop: a query takes tens of
# microseconds to tokenize, less than the hop to a worker thread and back.
INLINE_TOKENIZE_CHARS = 4096


async def invoke_model(request: web.Request) -> web.Response:
    started = time.perf_counter()
    batcher = request.app[BATCHER_KEY]
    # Received: an idle batcher holds its next batch for this request while it is parsed (model.py).
    with batcher.arriving():
        texts, req, counts = await _prepare(request)
    vectors = await _embed(batcher, texts, req.normalize)
    titan = req.family.startswith("titan")
    payload = titan_payload(req, vectors, counts[0]) if titan else cohere_payload(req, vectors, str(uuid.uuid4()))
    return _response(payload, str(uuid.uuid4()), sum(counts), started)


async def _prepare(request: web.Request) -> tuple[list[str], TextsRequest, list[int]]:
    """The texts to encode (truncated as the body asks), the parsed body and each text's token count."""
    settings = request.app[SETTINGS_KEY]
    model = request.app[MODEL_KEY]
    served = request.app[SERVED_KEY]
    raw_id = request.match_info["modelId"]
    resolved = resolve_model_id(raw_id, served)
    if resolved is None:
        raise ValidationError(unknown_model_message(served))
    _, family = resolved
    body = await _read_json_object(request)
    try:
        req = parse_body(family, body, model.dimension)
    except BodyError as exc:
        raise ValidationError(str(exc)) from None
    titan = req.family.startswith("titan")
    if not titan and len(req.texts) > settings.max_texts_per_request:
        raise ValidationError(
            f"{MALFORMED}: texts has {len(req.texts)} items; the limit is {settings.max_texts_per_request}"
        )
    for i, text in enumerate(req.texts):
        _check_text(text, "inputText" if titan else f"texts[{i}]", settings.max_input_chars)
    if sum(len(t) for t in req.texts) <= INLINE_TOKENIZE_CHARS:
        counts = model.count_tokens(req.texts)
    else:
        counts = await asyncio.to_thread(model.count_tokens, req.texts)
    limit = min(model.max_text_tokens, req.max_tokens or model.max_text_tokens)
    texts = req.texts
    over = [i for i, n in enumerate(counts) if n > limit]
    if over and req.truncate == "error":
        i = over[0]
        cut = "START or END" if req.family == "cohere-v3" else "LEFT or RIGHT"
        raise ValidationError(
            f"{MALFORMED}: texts[{i}] is {counts[i]} tokens long, over the limit of {limit}; "
            f"shorten it or set truncate to {cut}"
        )
    if over and req.truncate == "start":
        texts = await asyncio.to_thread(lambda: [model.truncate_start(t, req.max_tokens) for t in req.texts])
    elif over and limit < model.max_text_tokens:  # "end" below the model's own limit (Cohere v4 max_tokens)
        texts = await asyncio.to_thread(lambda: [model.truncate_end(t, limit) for t in req.texts])
    # Otherwise "end": the model itself keeps the first max_seq_length tokens.
    return texts, req, counts


async def health(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS_KEY]
    model = request.app[MODEL_KEY]
    batcher = request.app[BATCHER_KEY]
    return web.json_response(
        {
            "status": "ok",
            "model_id": settings.model_id,
            "served_models": request.app[SERVED_KEY],
            "dimension": model.dimension,
            "max_seq_length": model.max_seq_length,
            "backend": model.backend,
            "batches_by_backend": model.batches_by_backend,
            "pending_texts": batcher.pending,
            "batches_encoded": batcher.batches_encoded,
            "texts_encoded": batcher.texts_encoded,
            "batch_waits": batcher.batch_waits,
        }
    )


def create_app(settings: Settings | None = None, model: EmbeddingModel | None = None) -> web.Application:
    """The aiohttp application. ``model``: an already loaded model to use instead of loading one."""
    settings = settings or Settings()
    app = web.Application(
        middlewares=[correlation_middleware, aws_error_middleware], client_max_size=settings.max_body_bytes
    )
    app[SETTINGS_KEY] = settings
    app[SERVED_KEY] = served_models(settings)

    async def model_ctx(app: web.Application) -> AsyncIterator[None]:
        loaded = model
        if loaded is None:
            loaded = await asyncio.to_thread(
                load_model,
                settings.model_path,
                settings.device,
                settings.backend,
                settings.onnx_dir,
                settings.onnx_max_tokens,
            )
        app[MODEL_KEY] = loaded
        batcher = MicroBatcher(
            loaded,
            max_batch_size=settings.max_batch_size,
            batch_wait_s=settings.batch_wait_ms / 1000,
            max_queue=settings.max_queue,
        )
        await batcher.start()
        app[BATCHER_KEY] = batcher
        served: dict[str, Family] = app[SERVED_KEY]
        log.info("serving model ids %s", ", ".join(sorted(served)))
        yield
        await batcher.close()

    app.cleanup_ctx.append(model_ctx)
    app.router.add_get("/health", health)
    app.router.add_post("/model/{modelId:.+}/invoke", invoke_model)
    return app
