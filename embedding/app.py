"""HTTP front of the embedding service: Amazon Bedrock Runtime ``InvokeModel`` for embedding models.

``POST /model/{modelId}/invoke`` takes either body shape of the Bedrock embedding models:

* Amazon Titan Text Embeddings V2: ``{"inputText": str, "dimensions"?: int, "normalize"?: bool,
  "embeddingTypes"?: ["float"]}`` -> ``{"embedding": [...], "inputTextTokenCount": int}``
  (plus ``"embeddingsByType": {"float": [...]}`` when ``embeddingTypes`` is given). Text beyond the model's
  max_seq_length tokens is not read (the end is cut); ``inputTextTokenCount`` counts the whole text.
* Cohere Embed: ``{"texts": [str, ...], "input_type": ..., "truncate"?: "NONE"|"START"|"END",
  "embedding_types"?: ["float"]}`` -> ``{"id", "embeddings": [[...], ...], "texts", "response_type":
  "embeddings_floats"}`` (``"embeddings_by_type"`` with ``{"float": [[...]]}`` when ``embedding_types`` is
  given, as Cohere does). ``truncate`` defaults to NONE, as on Bedrock: a text longer than the model's token
  limit is then a ValidationException. ``input_type`` is checked but does not change the vector (MiniLM is a
  symmetric model).

Errors follow AWS: 400 ValidationException, 404 ResourceNotFoundException, 429 ThrottlingException.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any, Literal

import pydantic
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from embedding.model import EmbeddingModel, MicroBatcher, QueueFull, Vectors, load_model
from embedding.settings import Settings
from shared.aws_http import ResourceNotFound, Throttling, ValidationError, aws_error_middleware
from shared.logs import correlation_middleware
from shared.timing import timed_ms

log = logging.getLogger(__name__)

SETTINGS_KEY = web.AppKey("settings", Settings)
MODEL_KEY = web.AppKey("model", EmbeddingModel)
BATCHER_KEY = web.AppKey("batcher", MicroBatcher)

MALFORMED = "Malformed input request"


class TitanEmbedRequest(BaseModel):
    """Amazon Titan Text Embeddings V2 request body."""

    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=False)

    input_text: str = Field(alias="inputText")
    dimensions: int | None = None
    normalize: bool = True
    embedding_types: list[Literal["float"]] | None = Field(default=None, alias="embeddingTypes", min_length=1)


class CohereEmbedRequest(BaseModel):
    """Cohere Embed (v3) request body."""

    model_config = ConfigDict(extra="forbid", strict=True)

    texts: list[str] = Field(min_length=1)
    input_type: Literal["search_document", "search_query", "classification", "clustering"]
    truncate: Literal["NONE", "START", "END"] = "NONE"
    embedding_types: list[Literal["float"]] | None = Field(default=None, min_length=1)


def _describe(exc: pydantic.ValidationError) -> str:
    """A short, user-facing description of what is wrong with the body (never echoes the input)."""
    parts = []
    for err in exc.errors(include_url=False, include_input=False, include_context=False):
        loc = ""
        for item in err["loc"]:
            loc += f"[{item}]" if isinstance(item, int) else (f".{item}" if loc else str(item))
        msg = "extraneous key is not permitted" if err["type"] == "extra_forbidden" else err["msg"]
        parts.append(f"{loc}: {msg}" if loc else msg)
    more = f" (and {len(parts) - 3} more)" if len(parts) > 3 else ""
    return f"{MALFORMED}: {'; '.join(parts[:3])}{more}"


def _check_text(text: str, where: str, max_chars: int) -> None:
    if not text.strip():
        raise ValidationError(f"{MALFORMED}: {where} must not be empty")
    if len(text) > max_chars:
        raise ValidationError(f"{MALFORMED}: {where} is {len(text)} characters long; the limit is {max_chars}")


def _resolve_model_id(raw: str, settings: Settings) -> None:
    model_id = raw
    if raw.startswith("arn:") and "foundation-model/" in raw:
        model_id = raw.split("foundation-model/", 1)[1]
    if model_id != settings.model_id:
        raise ResourceNotFound(
            f"The requested model {raw!r} is not served here; this service serves {settings.model_id!r}"
        )


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
        body=json.dumps(payload, separators=(",", ":")).encode(),
        content_type="application/json",
        headers={
            "x-amzn-RequestId": request_id,
            "X-Amzn-Bedrock-Input-Token-Count": str(token_count),
            "X-Amzn-Bedrock-Invocation-Latency": str(round(timed_ms(started))),
        },
    )


async def _titan(request: web.Request, body: dict[str, Any], request_id: str, started: float) -> web.Response:
    settings = request.app[SETTINGS_KEY]
    model = request.app[MODEL_KEY]
    try:
        req = TitanEmbedRequest.model_validate(body)
    except pydantic.ValidationError as exc:
        raise ValidationError(_describe(exc)) from None
    _check_text(req.input_text, "inputText", settings.max_input_chars)
    if req.dimensions is not None and req.dimensions != model.dimension:
        raise ValidationError(
            f"{MALFORMED}: dimensions {req.dimensions} is not supported by this model; "
            f"the only supported value is {model.dimension}"
        )
    (token_count,) = await asyncio.to_thread(model.count_tokens, [req.input_text])
    vectors = await _embed(request.app[BATCHER_KEY], [req.input_text], req.normalize)
    embedding = vectors[0].tolist()
    payload: dict[str, Any] = {"embedding": embedding, "inputTextTokenCount": token_count}
    if req.embedding_types is not None:
        payload["embeddingsByType"] = {"float": embedding}
    return _response(payload, request_id, token_count, started)


async def _cohere(request: web.Request, body: dict[str, Any], request_id: str, started: float) -> web.Response:
    settings = request.app[SETTINGS_KEY]
    model = request.app[MODEL_KEY]
    try:
        req = CohereEmbedRequest.model_validate(body)
    except pydantic.ValidationError as exc:
        raise ValidationError(_describe(exc)) from None
    if len(req.texts) > settings.max_texts_per_request:
        raise ValidationError(
            f"{MALFORMED}: texts has {len(req.texts)} items; the limit is {settings.max_texts_per_request}"
        )
    for i, text in enumerate(req.texts):
        _check_text(text, f"texts[{i}]", settings.max_input_chars)
    counts = await asyncio.to_thread(model.count_tokens, req.texts)
    texts = req.texts
    if req.truncate == "NONE":
        for i, n in enumerate(counts):
            if n > model.max_text_tokens:
                raise ValidationError(
                    f"{MALFORMED}: texts[{i}] is {n} tokens long, over this model's limit of "
                    f"{model.max_text_tokens}; shorten it or set truncate to END or START"
                )
    elif req.truncate == "START" and any(n > model.max_text_tokens for n in counts):
        texts = await asyncio.to_thread(lambda: [model.truncate_start(t) for t in req.texts])
    # END: the model itself keeps the first max_seq_length tokens.
    vectors = await _embed(request.app[BATCHER_KEY], texts, True)
    rows = vectors.tolist()
    payload: dict[str, Any] = {"id": str(uuid.uuid4())}
    if req.embedding_types is None:
        payload.update(embeddings=rows, response_type="embeddings_floats")
    else:
        payload.update(embeddings={"float": rows}, response_type="embeddings_by_type")
    payload["texts"] = req.texts
    return _response(payload, request_id, sum(counts), started)


async def invoke_model(request: web.Request) -> web.Response:
    started = time.perf_counter()
    request_id = str(uuid.uuid4())
    _resolve_model_id(request.match_info["modelId"], request.app[SETTINGS_KEY])
    body = await _read_json_object(request)
    titan, cohere = "inputText" in body, "texts" in body
    if titan and cohere:
        raise ValidationError(
            f"{MALFORMED}: the body has both inputText (Amazon Titan) and texts (Cohere Embed); send one"
        )
    if titan:
        return await _titan(request, body, request_id, started)
    if cohere:
        return await _cohere(request, body, request_id, started)
    raise ValidationError(
        f"{MALFORMED}: the body needs inputText (Amazon Titan Text Embeddings) or texts (Cohere Embed)"
    )


async def health(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS_KEY]
    model = request.app[MODEL_KEY]
    batcher = request.app[BATCHER_KEY]
    return web.json_response(
        {
            "status": "ok",
            "model_id": settings.model_id,
            "dimension": model.dimension,
            "max_seq_length": model.max_seq_length,
            "pending_texts": batcher.pending,
            "batches_encoded": batcher.batches_encoded,
            "texts_encoded": batcher.texts_encoded,
        }
    )


def create_app(settings: Settings | None = None, model: EmbeddingModel | None = None) -> web.Application:
    """The aiohttp application. ``model``: an already loaded model to use instead of loading one."""
    settings = settings or Settings()
    app = web.Application(
        middlewares=[correlation_middleware, aws_error_middleware], client_max_size=settings.max_body_bytes
    )
    app[SETTINGS_KEY] = settings

    async def model_ctx(app: web.Application) -> AsyncIterator[None]:
        loaded = model
        if loaded is None:
            loaded = await asyncio.to_thread(load_model, settings.model_path, settings.device)
        app[MODEL_KEY] = loaded
        batcher = MicroBatcher(
            loaded,
            max_batch_size=settings.max_batch_size,
            batch_wait_s=settings.batch_wait_ms / 1000,
            max_queue=settings.max_queue,
        )
        await batcher.start()
        app[BATCHER_KEY] = batcher
        log.info("serving model id %s", settings.model_id)
        yield
        await batcher.close()

    app.cleanup_ctx.append(model_ctx)
    app.router.add_get("/health", health)
    app.router.add_post("/model/{modelId:.+}/invoke", invoke_model)
    return app
