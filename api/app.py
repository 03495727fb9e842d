"""The OpenAI-compatible HTTP API and the web chat: one aiohttp application, an HTTP function.

Locally ``python -m api`` serves it (the gateway forwards ``/v1``, ``/openapi.json`` and ``/ui`` to it,
as API Gateway proxies); on AWS the same process runs behind AWS Lambda Web Adapter with response
streaming (template.yaml: a Function URL with ``InvokeMode: RESPONSE_STREAM``), so SSE goes out as it is
written. There are no WebSocket connections involved: the chat and ingestion logic run here as
libraries (``chat.service.ChatService``, ``ingestion.service.IngestionService``, built from their own
settings as the functions build them), and the caller is identified by the authorizer's own logic
(``api/identity.py``).

- ``GET /v1/models``, ``GET /v1/models/{id}``: one model, ``localrag`` (no credential: they touch no data).
- ``POST /v1/chat/completions``: OpenAI chat completions, streamed (SSE) or not, with the answer's
  citations; stateless (the request carries the whole history). The answer is generated in a worker
  thread whose ``emit`` feeds the response; when the HTTP client leaves, the next ``emit`` raises
  ``ConnectionGone`` and the generation stops (the LLM stream is closed), as a WebSocket's 410 does.
- ``POST /v1/documents`` (a presigned PUT for a file), ``GET /v1/documents``, ``DELETE /v1/documents/{id}``.
- ``POST /v1/kb/sync`` (index the uploaded files, as a background job), ``GET /v1/kb/status`` (the jobs).
- ``GET /openapi.json`` (``api/openapi.py``), ``/ui/`` (the web chat, ``api/web.py``), ``GET /health``.

Every error is in OpenAI's shape (aiohttp's own 404 and 405 included). Pending uploads and sync jobs
live in the documents store (``shared/sync_jobs.py``), per tenant, not in this process: every api
process (every Lambda execution environment) answers the same, and a restart loses nothing. A sync job
runs in the ingestion function, invoked asynchronously (``api/jobs.py``; in this process when
API_SYNC_FUNCTION is unset).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from api.identity import CredentialCache, Identity, Unidentified
from api.jobs import LambdaSync, job_view
from api.models import (
    MODEL_ID,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Citation,
    Document,
    DocumentDeleted,
    DocumentList,
    DocumentListQuery,
    Model,
    ModelList,
    SyncJobAccepted,
    SyncJobList,
    UploadError,
    UploadRequest,
    UploadTicket,
)
from api.openapi import API_PREFIX, openapi_json
from api.request_log import echo_request_id, request_log
from api.security import OriginPolicy, cors_hook, preflight_headers
from api.settings import Settings
from api.web import add_web_routes
from chat.service import ChatService
from ingestion.service import IngestionService
from shared.connections import ConnectionGone
from shared.errors import RagError
from shared.identity import Principal
from shared.logs import correlation_id
from shared.openai_models import AssistantMessage, ChunkChoice, Delta, Error, FinishReason, Usage, sse
from shared.openai_models import Choice as CompletionChoice
from shared.protocol import (
    ChatRequest,
    DeleteDocumentRequest,
    ErrorCode,
    ListDocumentsRequest,
    UploadUrlRequest,
    describe_validation_error,
)
from shared.sync_jobs import Failure, SyncJobs, UploadRecord
from shared.timing import iso_utc

log = logging.getLogger(__name__)

# Bodies a little over the limit are read (and dropped) before the 413 so the client gets to read it;
# beyond this the connection is simply closed after the response.
_DRAIN_LIMIT = 8 * 1024 * 1024
# How often a request checks whether its HTTP client is still there.
_WATCH_S = 0.1

# Protocol error code -> HTTP status.
STATUS_FOR_CODE: dict[ErrorCode, int] = {
    ErrorCode.MALFORMED_JSON: 400,
    ErrorCode.UNKNOWN_ACTION: 404,
    ErrorCode.INVALID_REQUEST: 400,
    ErrorCode.EMPTY_MESSAGE: 400,
    ErrorCode.MESSAGE_TOO_LARGE: 413,
    ErrorCode.INVALID_UTF8: 400,
    ErrorCode.EMPTY_DOCUMENT: 400,
    ErrorCode.DOCUMENT_TOO_LARGE: 413,
    ErrorCode.DOCUMENT_NOT_FOUND: 404,
    ErrorCode.DOCUMENT_BUSY: 409,
    ErrorCode.UNKNOWN_CONVERSATION: 404,
    ErrorCode.INDEX_MISMATCH: 503,
    ErrorCode.UPSTREAM_UNAVAILABLE: 502,
    ErrorCode.UPSTREAM_TIMEOUT: 504,
    ErrorCode.UNSUPPORTED_TYPE: 415,
    ErrorCode.CORRUPT_DOCUMENT: 422,
    ErrorCode.NO_TEXT_LAYER: 422,
    ErrorCode.DOCUMENT_TOO_COMPLEX: 422,
    ErrorCode.OBJECT_NOT_FOUND: 404,
    ErrorCode.THROTTLED: 429,
    ErrorCode.FUNCTION_ERROR: 502,
    ErrorCode.INTERNAL_ERROR: 500,
    ErrorCode.REPLY_TOO_LARGE: 500,
}

M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")


def _now_iso() -> str:
    return iso_utc(z=True)


def _pending(upload: UploadRecord, error: UploadError | None) -> Document:
    """An upload not synced yet, as the document list shows it."""
    return Document(
        id=upload.id,
        title="",
        name=upload.name,
        size=upload.size,
        status=upload.status,
        chunks=0,
        uploaded_at=upload.created_at,
        indexed_at=None,
        error=error,
    )


def _json(body: BaseModel, status: int = 200) -> web.Response:
    return web.json_response(body.model_dump(mode="json"), status=status)


# ---------------------------------------------------------------------- errors (OpenAI's shape)


class ApiError(Exception):
    """An error answered in OpenAI's shape: {"error": {"message", "type", "code", "param"}}."""

    def __init__(
        self, status: int, message: str, code: str, param: str | None = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.headers = headers or {}

    @classmethod
    def from_protocol(cls, reply: dict[str, Any]) -> ApiError:
        try:
            code = ErrorCode(str(reply.get("code")))
        except ValueError:
            code = ErrorCode.INTERNAL_ERROR
        return cls(STATUS_FOR_CODE.get(code, 500), str(reply.get("message") or code.value), code.value)

    @classmethod
    def of(cls, exc: RagError) -> ApiError:
        return cls.from_protocol({"code": exc.code.value, "message": exc.message})

    def body(self) -> Error:
        return Error.of(self.status, self.message, self.code, self.param)

    def response(self) -> web.Response:
        resp = _json(self.body(), self.status)
        resp.headers.update(self.headers)
        return resp


def _invalid(message: str, param: str | None = None) -> ApiError:
    return ApiError(400, message, ErrorCode.INVALID_REQUEST.value, param)


def _internal() -> ApiError:
    return ApiError(500, "internal error; see the service log", ErrorCode.INTERNAL_ERROR.value)


def _unexpected_end() -> ApiError:
    return ApiError(502, "the answer ended before it was complete", ErrorCode.FUNCTION_ERROR.value)


def _model_not_found(model: str) -> ApiError:
    shown = model if len(model) <= 128 else model[:128] + "…"
    message = f"The model '{shown}' does not exist; the only model is '{MODEL_ID}'"
    return ApiError(404, message, "model_not_found", "model")


def _parse(model: type[M], data: dict[str, Any]) -> M:
    """Validate a request body; the first problem becomes a 400 naming the field (OpenAI's `param`)."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors(include_url=False, include_input=False)[0]
        loc = first["loc"]
        where = ".".join(str(x) for x in loc) or "body"
        message = f"{where}: {str(first['msg']).removeprefix('Value error, ')}"
        if exc.error_count() > 1:
            message += f" (and {exc.error_count() - 1} more)"
        raise _invalid(message, str(loc[0]) if loc else None) from None


def _protocol(model: type[M], data: dict[str, Any]) -> M:
    """A protocol request (shared/protocol.py), checked exactly as the functions check it."""
    try:
        return model.model_validate({**data, "request_id": uuid.uuid4().hex})
    except ValidationError as exc:
        action = data.get("action", "")
        raise _invalid(f"invalid {action} request: {describe_validation_error(exc.errors())}") from None


# ---------------------------------------------------------------------- state


@dataclass
class Backends:
    """The logic the routes run: built from the settings at the cold start (``api.__main__``), or given."""

    chat: ChatService
    ingestion: IngestionService
    identity: Identity
    # Set when the index must not be touched (built with another embedding model): every data route
    # answers it, as the functions' refusing lambdas do.
    refusal: RagError | None = None


@dataclass
class Stats:
    """Counts for /health: answers being generated, and answers stopped because their client left."""

    chats_in_flight: int = 0
    chats_cancelled: int = 0


# The caller of a /v1 request (set by v1_guard; absent on the open routes).
CALLER = web.RequestKey("caller", Principal)


class HttpApi:
    """The application's state: the backends and a worker pool (uploads and sync jobs are in the store)."""

    def __init__(self, settings: Settings, backends: Backends | None = None) -> None:
        self.settings = settings
        self._backends = backends  # set at startup when built then
        self.created = int(time.time())
        self._jobs: SyncJobs | None = None
        self._sync: LambdaSync | None = None
        self.credentials = CredentialCache(settings.credential_cache_s, settings.credential_cache_size)
        self.stats = Stats()
        self.pool = ThreadPoolExecutor(settings.max_concurrent_requests, thread_name_prefix="api")
        # Strong references to background work (sync jobs).
        self.tasks: set[asyncio.Task[Any]] = set()

    @property
    def backends(self) -> Backends:
        if self._backends is None:
            raise ApiError(503, "the service is starting; retry shortly", ErrorCode.UPSTREAM_UNAVAILABLE.value)
        return self._backends

    @property
    def sync(self) -> LambdaSync | None:
        """Where sync jobs run: the ingestion function (API_SYNC_FUNCTION, asynchronous invokes); None: here."""
        if self._sync is None and self.settings.sync_function:
            self._sync = LambdaSync(
                self.settings.sync_function,
                endpoint_url=self.settings.lambda_endpoint_url,
                region=self.backends.ingestion.settings.aws_region,
            )
        return self._sync

    @property
    def jobs(self) -> SyncJobs:
        """Pending uploads and sync jobs, in the documents store the ingestion logic uses."""
        if self._jobs is None:
            self._jobs = SyncJobs(self.backends.ingestion.objects, stale_after_s=self.settings.sync_stale_after_s)
        return self._jobs

    def spawn(self, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    async def run(self, fn: Callable[[], T]) -> T:
        """``fn()`` in the worker pool; a RagError becomes its ApiError, anything else a logged 500."""
        if self.backends.refusal is not None:
            raise ApiError.of(self.backends.refusal)
        try:
            # In a copy of this request's context: the worker's log lines carry its correlation id.
            return await asyncio.get_running_loop().run_in_executor(self.pool, contextvars.copy_context().run, fn)
        except RagError as exc:
            raise ApiError.of(exc) from None
        except Exception as exc:
            log.error("request failed: %s", type(exc).__name__, exc_info=exc)
            raise _internal() from None

    async def stop(self, app: web.Application) -> None:
        """On shutdown: cancel the background work and wait for it, then the worker pool."""
        tasks = list(self.tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self.pool.shutdown(wait=False, cancel_futures=True)


API: web.AppKey[HttpApi] = web.AppKey("http_api", HttpApi)


# ---------------------------------------------------------------------- one answer, generated in a thread


class Answer:
    """A chat answer generated in the worker pool; ``next()`` gives its messages (protocol dicts) in order.

    ``leave()`` (the HTTP client went away) makes the generation's next ``emit`` raise ConnectionGone,
    which stops it: ChatService closes the LLM stream, as when a WebSocket post gets 410."""

    def __init__(self, api: HttpApi, req: ChatRequest, caller: Principal) -> None:
        self.api = api
        self.req = req
        self.caller = caller
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self.gone = threading.Event()
        self.client_left = False
        self.future: asyncio.Future[None] | None = None

    def start(self) -> Answer:
        self.api.stats.chats_in_flight += 1
        run = contextvars.copy_context().run  # the request's correlation id in the generation's log lines
        self.future = self.loop.run_in_executor(self.api.pool, run, self._generate)
        self.future.add_done_callback(lambda _: self._finished())
        return self

    def _finished(self) -> None:
        self.api.stats.chats_in_flight -= 1

    def _put(self, item: dict[str, Any] | None) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, item)

    def _emit(self, message: BaseModel) -> None:
        if self.gone.is_set():
            raise ConnectionGone("http client left")
        self._put(message.model_dump(mode="json"))

    def _generate(self) -> None:
        try:
            if self.api.backends.refusal is not None:
                raise self.api.backends.refusal
            self.api.backends.chat.chat(self.req, self._emit, self.caller)
        except ConnectionGone:
            self.api.stats.chats_cancelled += 1
            log.info("HTTP client left; the answer was stopped")
        except RagError as exc:
            self._put({"type": "error", "code": exc.code.value, "message": exc.message})
        except Exception as exc:
            log.error("chat failed: %s", type(exc).__name__, exc_info=exc)
            self._put({"type": "error", "code": ErrorCode.INTERNAL_ERROR.value, "message": _internal().message})
        finally:
            self._put(None)

    async def next(self) -> dict[str, Any] | None:
        """The next message, or None when there will be none."""
        return await self.queue.get()

    def leave(self) -> None:
        self.client_left = True
        self.gone.set()

    async def watch(self, request: web.Request) -> None:
        """Stop the answer as soon as the HTTP client goes away."""
        while not self.gone.is_set():
            transport = request.transport
            if transport is None or transport.is_closing():
                log.info("HTTP client left; stopping the answer")
                self.leave()
                return
            await asyncio.sleep(_WATCH_S)


# ---------------------------------------------------------------------- request bodies


async def _read_json(request: web.Request, *, required: bool = True) -> dict[str, Any]:
    limit = request.app[API].settings.http_max_body_bytes
    too_large = ApiError(413, f"the request body is larger than {limit} bytes", "request_too_large")
    length = request.content_length
    if length is not None and length > limit:
        if length <= _DRAIN_LIMIT:  # let the client finish sending, so that it reads the 413
            while await request.content.read(1 << 16):
                pass
        raise too_large
    buf = bytearray()
    async for block in request.content.iter_chunked(1 << 16):
        buf += block
        if len(buf) > limit:
            raise too_large
    if not bytes(buf).strip():
        if not required:
            return {}
        raise ApiError(400, "the request body is empty; expected a JSON object", ErrorCode.INVALID_REQUEST.value)
    try:
        data = json.loads(buf)
    except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: nested too deeply to read
        raise ApiError(400, "the request body is not valid JSON", ErrorCode.MALFORMED_JSON.value) from None
    if not isinstance(data, dict):
        raise ApiError(400, "the request body must be a JSON object", ErrorCode.MALFORMED_JSON.value)
    return data


# ---------------------------------------------------------------------- models


def _model(api: HttpApi) -> Model:
    return Model(id=MODEL_ID, created=api.created, owned_by="localrag")


async def list_models(request: web.Request) -> web.Response:
    return _json(ModelList(data=[_model(request.app[API])]))


async def get_model(request: web.Request) -> web.Response:
    model = request.match_info["id"]
    if model != MODEL_ID:
        raise _model_not_found(model)
    return _json(_model(request.app[API]))


# ---------------------------------------------------------------------- chat completions


def chat_request(body: dict[str, Any]) -> tuple[ChatRequest, ChatCompletionRequest]:
    """(protocol chat request, the validated OpenAI request) from an OpenAI request body.

    The last message is the question and must be the user's; earlier user and assistant messages are the
    history (``ChatRequest.messages``). System and developer messages are ignored: the RAG prompt (the
    retrieved passages and how to cite them) is the system prompt. Sampling parameters (temperature,
    max_tokens, ...) are ignored too: the chat settings apply.
    """
    model = body.get("model")
    if isinstance(model, str) and model and model != MODEL_ID:  # before the rest, as OpenAI does
        raise _model_not_found(model)
    req = _parse(ChatCompletionRequest, body)
    turns = [{"role": m.role, "content": m.text()} for m in req.messages if m.role in ("user", "assistant")]
    if not turns or turns[-1]["role"] != "user":
        raise _invalid("messages: the last message must be the user's question", "messages")
    proto: dict[str, Any] = {"action": "chat", "question": turns[-1]["content"], "messages": turns[:-1]}
    # Retrieval extensions, checked again with the protocol's own field definitions.
    proto.update(req.model_dump(include={"top_k", "max_distance", "search_mode"}, exclude_none=True))
    return _protocol(ChatRequest, proto), req


def _finish_reason(stop_reason: str) -> FinishReason:
    if stop_reason == "max_tokens":
        return "length"
    if stop_reason in ("content_filtered", "guardrail_intervened"):
        return "content_filter"
    return "stop"


def _citations(end: dict[str, Any]) -> list[Citation]:
    return [Citation.model_validate(s) for s in end.get("sources") or []]


def _usage(end: dict[str, Any]) -> Usage:
    u = end.get("usage") or {}
    return Usage.of(int(u.get("input_tokens", 0)), int(u.get("output_tokens", 0)))


async def chat_completions(request: web.Request) -> web.StreamResponse:
    proto, req = chat_request(await _read_json(request))
    completion_id = f"chatcmpl-{uuid.uuid4().hex}"
    created = int(time.time())
    answer = Answer(request.app[API], proto, request[CALLER]).start()
    watcher = asyncio.create_task(answer.watch(request))
    try:
        first = await answer.next()
        if first is None:
            raise _unexpected_end()
        if first.get("type") == "error":
            raise ApiError.from_protocol(first)
        if req.stream:
            return await _stream(request, answer, completion_id, created, req.include_usage)
        parts: list[str] = []
        while (msg := await answer.next()) is not None:
            kind = msg.get("type")
            if kind == "token":
                parts.append(str(msg.get("text", "")))
            elif kind == "error":
                raise ApiError.from_protocol(msg)
            elif kind == "stream_end":
                completion = ChatCompletion(
                    id=completion_id,
                    created=created,
                    model=MODEL_ID,
                    choices=[
                        CompletionChoice(
                            message=AssistantMessage(content=str(msg.get("answer", ""))),
                            finish_reason=_finish_reason(str(msg.get("stop_reason", ""))),
                        )
                    ],
                    usage=_usage(msg),
                    citations=_citations(msg),
                )
                return _json(completion)
        raise _unexpected_end()
    finally:
        watcher.cancel()
        if not answer.future or not answer.future.done():
            answer.leave()  # whatever ended this request early (an error, a cancellation) ends the answer


async def _stream(
    request: web.Request, answer: Answer, completion_id: str, created: int, include_usage: bool
) -> web.StreamResponse:
    """Server-sent events: role chunk, one chunk per token, the finish chunk, the citations chunk, [DONE]."""
    resp = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )
    await resp.prepare(request)

    def chunk(delta: Delta | None = None, finish: FinishReason | None = None, **extra: Any) -> ChatCompletionChunk:
        choices = [] if delta is None else [ChunkChoice(delta=delta, finish_reason=finish)]
        return ChatCompletionChunk(id=completion_id, created=created, model=MODEL_ID, choices=choices, **extra)

    try:
        await resp.write(sse(chunk(Delta(role="assistant", content=""))))
        while (msg := await answer.next()) is not None:
            kind = msg.get("type")
            if kind == "token":
                await resp.write(sse(chunk(Delta(content=str(msg.get("text", ""))))))
            elif kind == "error":
                await resp.write(sse(ApiError.from_protocol(msg).body()))
                break
            elif kind == "stream_end":
                await resp.write(sse(chunk(Delta(), _finish_reason(str(msg.get("stop_reason", ""))))))
                # One chunk-shaped event with no choices carries the citations (and the usage when
                # stream_options.include_usage asks for it, as OpenAI sends usage in a choice-less chunk).
                usage = _usage(msg) if include_usage else None
                await resp.write(sse(chunk(citations=_citations(msg), usage=usage)))
                await resp.write(sse("[DONE]"))
                break
        else:
            if not answer.client_left:
                await resp.write(sse(_unexpected_end().body()))
        if not answer.client_left:
            await resp.write_eof()
    except ConnectionResetError:
        log.info("HTTP client left mid-stream; stopping the answer")
        answer.leave()
    return resp


# ---------------------------------------------------------------------- documents


async def create_document(request: web.Request) -> web.Response:
    upload = _parse(UploadRequest, await _read_json(request))
    req = _protocol(UploadUrlRequest, {**upload.model_dump(exclude_unset=True), "action": "upload_url"})
    api = request.app[API]
    tenant = request[CALLER].tenant
    ingestion = api.backends.ingestion
    ticket = await api.run(
        partial(
            ingestion.upload_url,
            req.filename,
            req.content_type,
            req.size,
            tenant=tenant,
            gateway_url=api.settings.uploads_url,
        )
    )
    doc_id = ticket.key.rsplit("/", 1)[-1]  # the file name as the ingestion logic made it safe: a valid id
    headers = {str(k): str(v) for k, v in ticket.headers.items()}
    pending = UploadRecord(
        id=doc_id,
        key=ticket.key,
        name=upload.filename,
        size=upload.size,
        content_type=headers.get("Content-Type", "application/octet-stream"),
        created_at=_now_iso(),
    )
    await api.run(partial(api.jobs.add_upload, tenant, pending))
    out = UploadTicket(
        id=doc_id, key=ticket.key, upload_url=ticket.url, headers=headers, expires_in=int(ticket.expires_in)
    )
    return _json(out, 201)


async def list_documents(request: web.Request) -> web.Response:
    """One page of the documents (``?limit=&after=``), the indexed ones and the pending uploads merged in
    id order: the ingestion logic's page, with the pending uploads whose ids fall in its range
    (an upload not synced yet shows as uploaded, or failed, even when an older version is indexed)."""
    query = _parse(DocumentListQuery, dict(request.query))
    api = request.app[API]
    body: dict[str, Any] = {"action": "list_documents", "limit": query.limit}
    if query.after is not None:
        body["after"] = query.after
    req = _protocol(ListDocumentsRequest, body)
    tenant = request[CALLER].tenant
    page_in, upper = await api.run(
        partial(api.backends.ingestion.document_page, tenant=tenant, after=req.after, limit=query.limit)
    )
    uploads = await api.run(partial(api.jobs.uploads, tenant))
    by_id: dict[str, Document] = {}
    for d in page_in:
        doc = Document.model_validate(d.model_dump(mode="json"))
        by_id[doc.id] = doc
    for p in uploads:  # the page covers ids in (after, upper]
        if (query.after is not None and p.id <= query.after) or (upper is not None and p.id > upper):
            continue
        indexed = by_id.get(p.id)
        error = UploadError(code=p.error.code, message=p.error.message) if p.error else None
        by_id[p.id] = indexed.model_copy(update={"status": p.status, "error": error}) if indexed else _pending(p, error)
    page = sorted(by_id.values(), key=lambda d: d.id)
    has_more = upper is not None or len(page) > query.limit
    page = page[: query.limit]
    last = page[-1].id if page else None
    return _json(
        DocumentList(
            data=page,
            first_id=page[0].id if page else None,
            last_id=last,
            has_more=has_more,
            next=last if has_more else None,
        )
    )


async def delete_document(request: web.Request) -> web.Response:
    api = request.app[API]
    doc_id = request.match_info["id"]
    req = _protocol(DeleteDocumentRequest, {"action": "delete_document", "doc_id": doc_id})
    tenant = request[CALLER].tenant
    pending = await api.run(partial(api.jobs.drop_upload, tenant, req.doc_id))
    chunks = 0
    try:
        chunks = await api.run(partial(api.backends.ingestion.delete, req.doc_id, tenant=tenant))
    except ApiError as exc:
        if not (pending and exc.code == ErrorCode.DOCUMENT_NOT_FOUND.value):
            raise
    return _json(DocumentDeleted(id=doc_id, chunks_deleted=chunks))


# ---------------------------------------------------------------------- knowledge-base sync


async def kb_sync(request: web.Request) -> web.Response:
    """A job of every upload a sync may take (claimed in the store: a concurrent sync, in any process, takes
    none of them), run by the ingestion function (an asynchronous invoke) or, without one, in this process."""
    await _read_json(request, required=False)  # no options yet; a body, if any, must still be JSON
    api = request.app[API]
    tenant = request[CALLER].tenant
    job = await api.run(partial(api.jobs.create_job, tenant, correlation_id=correlation_id()))
    launcher = api.sync
    if launcher is None:
        ingestion = api.backends.ingestion

        def ingest(key: str, doc_id: str) -> object:
            return ingestion.ingest_object(key, doc_id, tenant=tenant)

        api.spawn(api.run(partial(api.jobs.run, tenant, job.id, ingest)))
    else:
        try:
            await api.run(partial(launcher.launch, tenant, job.id))
        except ApiError as exc:
            await api.run(partial(api.jobs.fail_job, tenant, job.id, Failure(code=exc.code, message=exc.message)))
            raise
    view = job_view(job)
    return _json(SyncJobAccepted(job_id=job.id, **view.model_dump()), 202)


async def kb_status(request: web.Request) -> web.Response:
    api = request.app[API]
    jobs = await api.run(partial(api.jobs.jobs, request[CALLER].tenant))
    return _json(SyncJobList(data=[job_view(j) for j in jobs]))


# ---------------------------------------------------------------------- the application

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _is_v1(request: web.Request) -> bool:
    return request.path == API_PREFIX or request.path.startswith(API_PREFIX + "/")


def error_middleware(policy: OriginPolicy) -> Callable[..., Awaitable[web.StreamResponse]]:
    """The Host check (421) on every route; under /v1 every error in OpenAI's shape (aiohttp's own 404
    and 405 included)."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not policy.host_allowed(request.headers.get("Host")):
            message = "this API does not answer to that Host (API_ALLOWED_HOSTS)"
            if _is_v1(request):
                return ApiError(421, message, "host_not_allowed").response()
            return web.json_response({"message": message, "code": "host_not_allowed"}, status=421)
        if not _is_v1(request):
            return await handler(request)
        try:
            return await handler(request)
        except ApiError as exc:
            return exc.response()
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            code = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}.get(exc.status, "http_error")
            return ApiError(exc.status, exc.reason, code).response()

    return middleware


def v1_guard(policy: OriginPolicy) -> Callable[..., Awaitable[web.StreamResponse]]:
    """The /v1 checks before any handler, in order: the browser Origin (403), a CORS preflight (answered
    here), the body's media type (415), the caller's identity (401/403/500; not on OPEN routes)."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not _is_v1(request):
            return await handler(request)
        origin = request.headers.get("Origin")
        if origin is not None and not policy.origin_allowed(origin, request.headers.get("Host")):
            raise ApiError(403, "this Origin may not use the API (API_ALLOWED_ORIGINS)", "origin_not_allowed")
        if request.method == "OPTIONS" and origin is not None and "Access-Control-Request-Method" in request.headers:
            return web.Response(status=204, headers=preflight_headers(origin))
        # Any body must be JSON (an empty one, e.g. `curl -X POST`, has nothing to parse): a form post or
        # text/plain, which a page may send cross-site without a preflight, is refused before anything runs.
        has_body = request.body_exists and request.content_length != 0
        if request.method in ("POST", "PUT", "PATCH") and has_body and request.content_type != "application/json":
            raise ApiError(415, "send the request body as Content-Type: application/json", "unsupported_media_type")
        if request.match_info.handler not in OPEN:
            api = request.app[API]
            identity = api.backends.identity
            headers, query, where = identity.of(request)
            try:
                request[CALLER] = await asyncio.get_running_loop().run_in_executor(
                    api.pool,
                    contextvars.copy_context().run,
                    identity.principal,
                    headers,
                    query,
                    where,
                    api.credentials,
                )
            except Unidentified as exc:
                extra = {"WWW-Authenticate": 'Bearer realm="localrag"'} if exc.status == 401 else None
                raise ApiError(exc.status, exc.message, exc.code, headers=extra) from None
        return await handler(request)

    return middleware


async def health(request: web.Request) -> web.Response:
    api = request.app[API]
    stats = api.stats
    return web.json_response(
        {
            "status": "ok",
            "chats_in_flight": stats.chats_in_flight,
            "chats_cancelled": stats.chats_cancelled,
            "credential_cache_hits": api.credentials.hits,
        }
    )


# Routes without identity: they name the one model and read no data.
OPEN: frozenset[Handler] = frozenset({list_models, get_model})

# (method, path under /v1, handler): also what api/openapi.py documents.
ROUTES: tuple[tuple[str, str, Handler], ...] = (
    ("GET", "/models", list_models),
    ("GET", "/models/{id}", get_model),
    ("POST", "/chat/completions", chat_completions),
    ("POST", "/documents", create_document),
    ("GET", "/documents", list_documents),
    ("DELETE", "/documents/{id}", delete_document),
    ("POST", "/kb/sync", kb_sync),
    ("GET", "/kb/status", kb_status),
)


def create_app(settings: Settings, backends: Backends | Callable[[], Backends]) -> web.Application:
    """The application. ``backends``: the logic, or a function that builds it at startup (the cold start;
    blocking, so run in a thread)."""
    policy = OriginPolicy(settings)
    app = web.Application(
        client_max_size=settings.http_max_body_bytes,
        middlewares=[request_log, error_middleware(policy), v1_guard(policy)],
    )

    api = HttpApi(settings, backends if isinstance(backends, Backends) else None)
    app[API] = api

    async def start(app: web.Application) -> AsyncIterator[None]:
        if not isinstance(backends, Backends):
            api._backends = await asyncio.to_thread(backends)
        await asyncio.to_thread(lambda: api.sync)  # the Lambda client, made at the cold start (when configured)
        yield
        await api.stop(app)

    app.cleanup_ctx.append(start)
    app.on_response_prepare.append(cors_hook(policy))
    app.on_response_prepare.append(echo_request_id)
    for method, path, handler in ROUTES:
        app.router.add_route(method, API_PREFIX + path, handler)
    app.router.add_get("/openapi.json", openapi_json)
    app.router.add_get("/health", health)
    add_web_routes(app, settings.stage, gateways=settings.web_chat_gateways, websocket_url=settings.websocket_url)
    return app
