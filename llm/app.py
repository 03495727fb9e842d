"""HTTP front of the LLM service: Bedrock Runtime Converse / ConverseStream, plus OpenAI chat completions.

Routes:

* ``GET  /health``                          liveness plus generation counters
* ``POST /model/{modelId}/converse``        Bedrock Converse (JSON in, JSON out)
* ``POST /model/{modelId}/converse-stream`` Bedrock ConverseStream (``application/vnd.amazon.eventstream``)
* ``POST /model/{modelId}/invoke``          Bedrock InvokeModel, with the model family's own body
* ``POST /model/{modelId}/invoke-with-response-stream``  InvokeModelWithResponseStream (``chunk`` events)
* ``POST /v1/chat/completions``             OpenAI-compatible, ``stream`` true (SSE) or false
* ``GET  /v1/models``                       OpenAI-compatible model list

``{modelId}`` is any id of the model map (LLM_MODEL_IDS plus LLM_MODEL_ID: Bedrock ids of the common text
families, their cross-region inference profiles and ARNs; llm/families.py), all served by the one local
model. boto3's ``bedrock-runtime`` client works against it unchanged with ``endpoint_url`` pointing here.
Errors follow AWS conventions (``x-amzn-ErrorType``), so botocore raises the usual ``ClientError`` codes;
on the /v1 routes they follow OpenAI's ``{"error": {...}}`` shape instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable

from aiohttp import web

from llm.converse_models import (
    ConverseRequest,
    LlmChatCompletionRequest,
    openai_chat_messages,
    openai_stops,
    parse_body,
)
from llm.engine import Engine, Generation, GenerationFailed, GenerationParams, StopReason
from llm.eventstream import CONTENT_TYPE as EVENTSTREAM_CONTENT_TYPE
from llm.eventstream import encode_chunk, encode_event, encode_exception
from llm.families import ModelMap, Outcome, Renderer, ServedModel, TextRequest, parse_request
from llm.model_fetch import ensure_model
from llm.settings import Settings
from shared.aws_http import AwsError, ModelTimeout, ResourceNotFound, aws_error_middleware
from shared.logs import correlation_middleware, error_where
from shared.openai_models import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    Choice,
    ChunkChoice,
    Delta,
    Error,
    FinishReason,
    Model,
    ModelList,
    Usage,
    sse,
)

log = logging.getLogger(__name__)

SETTINGS = web.AppKey("settings", Settings)
ENGINE = web.AppKey("engine", Engine)
MODELS = web.AppKey("models", ModelMap)


class ModelError(AwsError):
    status = 424
    code = "ModelErrorException"


class ClientGone(Exception):
    """The HTTP client disconnected before the answer was complete."""


# Exceptions a ConverseStream / InvokeModelWithResponseStream response may carry in an exception frame
# (members of botocore's ConverseStreamOutput / ResponseStream shapes).
_STREAM_EXCEPTIONS = {
    "ValidationException": "validationException",
    "ThrottlingException": "throttlingException",
    "ServiceUnavailableException": "serviceUnavailableException",
    "InternalServerException": "internalServerException",
}


def create_app(settings: Settings, engine: Engine | None = None) -> web.Application:
    """The aiohttp application. Without ``engine``, the model is loaded once at startup (and freed at cleanup)."""
    app = web.Application(
        client_max_size=settings.max_body_bytes, middlewares=[correlation_middleware, aws_error_middleware]
    )
    app[SETTINGS] = settings
    app[MODELS] = ModelMap(settings.model_ids, settings.model_id)
    if engine is not None:
        app[ENGINE] = engine
    else:
        app.cleanup_ctx.append(_engine_ctx)
    app.router.add_get("/health", health)
    app.router.add_post("/model/{modelId}/converse", converse)
    app.router.add_post("/model/{modelId}/converse-stream", converse_stream)
    app.router.add_post("/model/{modelId}/invoke", invoke)
    app.router.add_post("/model/{modelId}/invoke-with-response-stream", invoke_stream)
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_get("/v1/models", list_models)
    return app


async def _engine_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    path = ensure_model(settings, allow_download=False)
    loop = asyncio.get_running_loop()
    load = functools.partial(
        Engine.load,
        path,
        model_id=settings.model_id,
        max_queue=settings.max_queue,
        n_ctx=settings.n_ctx,
        n_threads=settings.n_threads,
        repeat_last_n=settings.repeat_last_n,
        state_cache_bytes=settings.state_cache_bytes,
        stream_flush_ms=settings.stream_flush_ms,
    )
    engine = await loop.run_in_executor(None, load)
    app[ENGINE] = engine
    yield
    await loop.run_in_executor(None, engine.close)


# -- helpers ------------------------------------------------------------------------------------------


def _client_gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


def _model(request: web.Request) -> ServedModel:
    """The requested model of the model map, or 400 ValidationException (Bedrock's answer to an unknown id)."""
    return request.app[MODELS].resolve(request.match_info["modelId"])


def _converse_params(req: ConverseRequest, settings: Settings) -> GenerationParams:
    cfg, extra = req.inferenceConfig, req.additionalModelRequestFields
    return GenerationParams(
        messages=req.chat_messages(),
        max_tokens=cfg.maxTokens or settings.max_tokens,
        temperature=settings.temperature if cfg.temperature is None else cfg.temperature,
        top_p=cfg.topP,
        stop=tuple(cfg.stopSequences),
        top_k=settings.top_k if extra.top_k is None else extra.top_k,
        repeat_penalty=settings.repeat_penalty if extra.repeat_penalty is None else extra.repeat_penalty,
        frequency_penalty=settings.frequency_penalty if extra.frequency_penalty is None else extra.frequency_penalty,
        presence_penalty=settings.presence_penalty if extra.presence_penalty is None else extra.presence_penalty,
    )


def _text_params(req: TextRequest, settings: Settings) -> GenerationParams:
    """A family request's generation: unset sampling fields take the LLM_* defaults."""
    return GenerationParams(
        messages=req.messages,
        max_tokens=req.max_tokens or settings.max_tokens,
        temperature=settings.temperature if req.temperature is None else req.temperature,
        top_p=req.top_p,
        stop=req.stop,
        top_k=settings.top_k if req.top_k is None else req.top_k,
        repeat_penalty=settings.repeat_penalty,
        frequency_penalty=settings.frequency_penalty,
        presence_penalty=settings.presence_penalty,
    )


def _usage(gen: Generation, caches_prompt: bool = False) -> dict[str, int]:
    """Converse's usage. With a cachePoint in the request, as Bedrock reports prompt caching: inputTokens are
    the prompt tokens evaluated, cacheReadInputTokens those reused from an evaluated prefix (the LLM service's
    state cache; README "Prompt layout and prefix reuse"), totalTokens all of them plus the output."""
    if not caches_prompt:
        return {
            "inputTokens": gen.input_tokens,
            "outputTokens": gen.output_tokens,
            "totalTokens": gen.input_tokens + gen.output_tokens,
        }
    cached = min(gen.cached_tokens, gen.input_tokens)
    return {
        "inputTokens": gen.input_tokens - cached,
        "outputTokens": gen.output_tokens,
        "totalTokens": gen.input_tokens + gen.output_tokens,
        "cacheReadInputTokens": cached,
        "cacheWriteInputTokens": 0,
    }


def _request_id() -> str:
    return str(uuid.uuid4())


def _elapsed_ms(started: float) -> int:
    return int((time.monotonic() - started) * 1000)


async def _generate_text(request: web.Request, params: GenerationParams) -> tuple[str, Generation]:
    """Run one generation to completion and return its text (for the non-streaming routes)."""
    settings, engine = request.app[SETTINGS], request.app[ENGINE]
    parts: list[str] = []
    try:
        async with engine.generation(params) as gen, asyncio.timeout(settings.request_timeout_s):
            async for piece in gen:
                parts.append(piece)
                if _client_gone(request):
                    raise ClientGone
    except TimeoutError:
        raise ModelTimeout(
            f"Model generation did not finish within {settings.request_timeout_s:g}s (LLM_REQUEST_TIMEOUT_S)."
        ) from None
    except GenerationFailed as exc:
        raise ModelError(str(exc)) from None
    return "".join(parts), gen


# -- routes -------------------------------------------------------------------------------------------


async def health(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    return web.json_response({"status": "ok", "model_id": request.app[SETTINGS].model_id, **engine.health()})


async def converse(request: web.Request) -> web.StreamResponse:
    _model(request)
    req = parse_body(ConverseRequest, await request.read())
    started = time.monotonic()
    try:
        text, gen = await _generate_text(request, _converse_params(req, request.app[SETTINGS]))
    except ClientGone:
        log.info("converse: client disconnected, generation stopped")
        return web.Response(status=499)
    body = {
        "output": {"message": {"role": "assistant", "content": [{"text": text}]}},
        "stopReason": gen.stop_reason,
        "usage": _usage(gen, req.caches_prompt),
        "metrics": {"latencyMs": _elapsed_ms(started)},
    }
    return web.json_response(body, headers={"x-amzn-RequestId": _request_id()})


async def converse_stream(request: web.Request) -> web.StreamResponse:
    _model(request)
    req = parse_body(ConverseRequest, await request.read())
    started = time.monotonic()

    def start(gen: Generation) -> list[bytes]:
        return [encode_event("messageStart", {"role": "assistant"})]

    def piece(text: str, gen: Generation) -> bytes:  # each token goes out as soon as it is produced
        return encode_event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": text}})

    def end(gen: Generation, first_byte_ms: int) -> list[bytes]:
        return [
            encode_event("contentBlockStop", {"contentBlockIndex": 0}),
            encode_event("messageStop", {"stopReason": gen.stop_reason}),
            encode_event(
                "metadata", {"usage": _usage(gen, req.caches_prompt), "metrics": {"latencyMs": _elapsed_ms(started)}}
            ),
        ]

    return await _stream(
        request,
        _converse_params(req, request.app[SETTINGS]),
        headers={"Content-Type": EVENTSTREAM_CONTENT_TYPE, "x-amzn-RequestId": _request_id()},
        start=start,
        piece=piece,
        end=end,
        timeout_kind="modelStreamErrorException",
        what="converse-stream",
    )


def _outcome(text: str, gen: Generation, started: float, first_byte_ms: int) -> Outcome:
    return Outcome(
        text=text,
        stop_reason=gen.stop_reason,
        input_tokens=gen.input_tokens,
        output_tokens=gen.output_tokens,
        stop_sequence=gen.stop_sequence,
        latency_ms=_elapsed_ms(started),
        first_byte_ms=first_byte_ms,
    )


async def invoke(request: web.Request) -> web.StreamResponse:
    """InvokeModel: the body in the model family's format, the answer in that family's response body."""
    model = _model(request)
    family, req = parse_request(model.family, await request.read())
    started = time.monotonic()
    try:
        text, gen = await _generate_text(request, _text_params(req, request.app[SETTINGS]))
    except ClientGone:
        log.info("invoke: client disconnected, generation stopped")
        return web.Response(status=499)
    outcome = _outcome(text, gen, started, _elapsed_ms(started))
    body = Renderer(family, model.model_id).body(outcome)
    return web.Response(
        body=json.dumps(body, ensure_ascii=False).encode("utf-8"),
        content_type="application/json",  # as Bedrock sends it (no charset parameter)
        headers={
            "x-amzn-RequestId": _request_id(),
            "X-Amzn-Bedrock-Invocation-Latency": str(outcome.latency_ms),
            "X-Amzn-Bedrock-Input-Token-Count": str(outcome.input_tokens),
            "X-Amzn-Bedrock-Output-Token-Count": str(outcome.output_tokens),
        },
    )


async def invoke_stream(request: web.Request) -> web.StreamResponse:
    """InvokeModelWithResponseStream: the family's stream chunks, each a ``chunk`` event whose payload is
    ``{"bytes": base64(chunk JSON)}``; the last carries ``amazon-bedrock-invocationMetrics``."""
    model = _model(request)
    family, req = parse_request(model.family, await request.read())
    renderer = Renderer(family, model.model_id)
    started = time.monotonic()
    parts: list[str] = []

    def chunk(payload: dict[str, object]) -> bytes:
        return encode_chunk(json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8"))

    def start(gen: Generation) -> list[bytes]:
        return [chunk(c) for c in renderer.start(gen.input_tokens)]

    def piece(text: str, gen: Generation) -> bytes:
        parts.append(text)
        return chunk(renderer.delta(text, gen.input_tokens))

    def end(gen: Generation, first_byte_ms: int) -> list[bytes]:
        return [chunk(c) for c in renderer.end(_outcome("".join(parts), gen, started, first_byte_ms))]

    return await _stream(
        request,
        _text_params(req, request.app[SETTINGS]),
        headers={
            "Content-Type": EVENTSTREAM_CONTENT_TYPE,
            "X-Amzn-Bedrock-Content-Type": "application/json",
            "x-amzn-RequestId": _request_id(),
        },
        start=start,
        piece=piece,
        end=end,
        timeout_kind="modelTimeoutException",
        what="invoke-with-response-stream",
    )


async def _stream(
    request: web.Request,
    params: GenerationParams,
    *,
    headers: dict[str, str],
    start: Callable[[Generation], list[bytes]],
    piece: Callable[[str, Generation], bytes],
    end: Callable[[Generation, int], list[bytes]],
    timeout_kind: str,
    what: str,
) -> web.StreamResponse:
    """Run one generation as an event stream: ``start`` frames, one ``piece`` frame per text delta (sent as
    soon as it is produced), ``end`` frames. Errors before the response starts are AWS JSON errors; after,
    exception frames."""
    settings, engine = request.app[SETTINGS], request.app[ENGINE]
    started = time.monotonic()
    first_byte_ms: int | None = None
    resp: web.StreamResponse | None = None
    try:
        async with engine.generation(params) as gen, asyncio.timeout(settings.request_timeout_s):
            # Admission and prompt checks passed: from here on errors travel as exception frames.
            resp = web.StreamResponse(headers=headers)
            await resp.prepare(request)
            for frame in start(gen):
                await resp.write(frame)
            async for text in gen:
                if first_byte_ms is None:
                    first_byte_ms = _elapsed_ms(started)
                await resp.write(piece(text, gen))
            for frame in end(gen, _elapsed_ms(started) if first_byte_ms is None else first_byte_ms):
                await resp.write(frame)
            # The response ends now, not once the worker has kept the evaluated state (leaving the block
            # waits for it: tens of ms for a long context); a client reading to the end gets its answer's end.
            await resp.write_eof()
    except ConnectionResetError:
        log.info("%s: client disconnected, generation stopped", what)
        return resp or web.Response(status=499)
    except TimeoutError:
        msg = f"Model generation did not finish within {settings.request_timeout_s:g}s (LLM_REQUEST_TIMEOUT_S)."
        if resp is None:
            raise ModelTimeout(msg) from None
        await _write_quietly(resp, encode_exception(timeout_kind, msg))
    except GenerationFailed as exc:
        if resp is None:
            raise ModelError(str(exc)) from None
        await _write_quietly(resp, encode_exception("modelStreamErrorException", str(exc)))
    except AwsError as exc:
        if resp is None:
            raise
        kind = _STREAM_EXCEPTIONS.get(exc.code, "modelStreamErrorException")
        await _write_quietly(resp, encode_exception(kind, exc.message))
    except Exception as exc:
        if resp is None:
            raise
        log.error(
            "%s failed after the response started: %s at %s",
            what,
            type(exc).__name__,
            error_where(exc.__traceback__),
            extra={"error_type": type(exc).__name__},
        )
        await _write_quietly(resp, encode_exception("internalServerException", "Internal server error"))
    assert resp is not None
    with contextlib.suppress(ConnectionResetError):
        await resp.write_eof()
    return resp


async def _write_quietly(resp: web.StreamResponse, data: bytes) -> None:
    with contextlib.suppress(ConnectionResetError):
        await resp.write(data)


# -- OpenAI-compatible --------------------------------------------------------------------------------

_OPENAI_FINISH: dict[StopReason | None, FinishReason] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    None: "stop",
}


def _openai_error(status: int, message: str, code: str) -> web.Response:
    return web.json_response(Error.of(status, message, code).dump(), status=status)


def _openai_usage(gen: Generation) -> Usage:
    return Usage.of(gen.input_tokens, gen.output_tokens)


async def list_models(request: web.Request) -> web.Response:
    model_id = request.app[SETTINGS].model_id
    return web.json_response(ModelList(data=[Model(id=model_id, created=0, owned_by="local")]).dump())


async def chat_completions(request: web.Request) -> web.StreamResponse:
    try:
        return await _chat_completions(request)
    except AwsError as exc:
        code = "model_not_found" if isinstance(exc, ResourceNotFound) else exc.code
        return _openai_error(exc.status, exc.message, code)


async def _chat_completions(request: web.Request) -> web.StreamResponse:
    settings, engine = request.app[SETTINGS], request.app[ENGINE]
    req = parse_body(LlmChatCompletionRequest, await request.read())
    if req.model is not None and req.model not in request.app[MODELS]:
        raise ResourceNotFound(
            f"Model {req.model!r} not found: this endpoint serves {settings.model_id!r} and the Bedrock ids of "
            "LLM_MODEL_IDS."
        )
    params = GenerationParams(
        messages=openai_chat_messages(req),
        max_tokens=req.max_completion_tokens or req.max_tokens or settings.max_tokens,
        temperature=settings.temperature if req.temperature is None else req.temperature,
        top_p=req.top_p,
        stop=tuple(openai_stops(req)),
        top_k=settings.top_k,
        repeat_penalty=settings.repeat_penalty,
        frequency_penalty=settings.frequency_penalty if req.frequency_penalty is None else req.frequency_penalty,
        presence_penalty=settings.presence_penalty if req.presence_penalty is None else req.presence_penalty,
    )
    completion_id = f"chatcmpl-{uuid.uuid4().hex}"
    created = int(time.time())
    if not req.stream:
        try:
            text, gen = await _generate_text(request, params)
        except ClientGone:
            return web.Response(status=499)
        completion = ChatCompletion(
            id=completion_id,
            created=created,
            model=settings.model_id,
            choices=[Choice(message=AssistantMessage(content=text), finish_reason=_OPENAI_FINISH[gen.stop_reason])],
            usage=_openai_usage(gen),
        )
        return web.json_response(completion.dump())

    def chunk(delta: Delta | None, finish: FinishReason | None = None, usage: Usage | None = None) -> bytes:
        choices = [] if delta is None else [ChunkChoice(delta=delta, finish_reason=finish)]
        return sse(
            ChatCompletionChunk(
                id=completion_id, created=created, model=settings.model_id, choices=choices, usage=usage
            )
        )

    resp: web.StreamResponse | None = None
    try:
        async with engine.generation(params) as gen, asyncio.timeout(settings.request_timeout_s):
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
            await resp.prepare(request)
            await resp.write(chunk(Delta(role="assistant", content="")))
            async for piece in gen:
                await resp.write(chunk(Delta(content=piece)))
            await resp.write(chunk(Delta(), _OPENAI_FINISH[gen.stop_reason]))
            if req.include_usage:
                await resp.write(chunk(None, usage=_openai_usage(gen)))
            await resp.write(sse("[DONE]"))
            await resp.write_eof()  # before the worker keeps the evaluated state (as in _stream)
    except ConnectionResetError:
        log.info("chat/completions: client disconnected, generation stopped")
        return resp or web.Response(status=499)
    except (TimeoutError, GenerationFailed, AwsError) as exc:
        if isinstance(exc, TimeoutError):
            message, code = "Model generation timed out (LLM_REQUEST_TIMEOUT_S).", "timeout"
        elif isinstance(exc, AwsError):
            message, code = exc.message, exc.code
        else:
            message, code = str(exc), "model_error"
        if resp is None:
            status = 408 if isinstance(exc, TimeoutError) else exc.status if isinstance(exc, AwsError) else 500
            return _openai_error(status, message, code)
        await _write_quietly(resp, sse(Error.of(500, message, code)))
    except Exception as exc:
        if resp is None:
            raise
        log.error(
            "chat/completions stream failed after the response started: %s at %s",
            type(exc).__name__,
            error_where(exc.__traceback__),
            extra={"error_type": type(exc).__name__},
        )
        await _write_quietly(resp, sse(Error.of(500, "Internal server error", None)))
    assert resp is not None
    with contextlib.suppress(ConnectionResetError):
        await resp.write_eof()
    return resp
