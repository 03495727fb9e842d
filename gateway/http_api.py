"""An OpenAI-compatible HTTP API (the stand-in for an API Gateway HTTP API) over the same lambdas.

A sub-application under ``/v1`` (``create_http_api``), with its own state and error middleware (every
error, aiohttp's own 404 and 405 included, in OpenAI's shape). Bodies are ``gateway/http_models.py``'s
models; ``GET /openapi.json`` (``gateway/openapi.py``) describes them.

- ``GET /v1/models``, ``GET /v1/models/{id}``: one model, ``localrag``.
- ``POST /v1/chat/completions``: OpenAI chat completions, streamed (SSE) or not, with the answer's
  citations; stateless (the request carries the whole history).
- ``POST /v1/documents`` (a presigned PUT for a file), ``GET /v1/documents``, ``DELETE /v1/documents/{id}``.
- ``POST /v1/kb/sync`` (index the uploaded files, as a background job), ``GET /v1/kb/status`` (the jobs).

Identity (``v1_guard``): every route that reads or writes data needs the same credential as the
WebSocket (``Authorization: Bearer <API key or token>``), checked through the same REQUEST authorizer and
cache (``gateway/authorization.py``; 401/403 in OpenAI's shape with stable codes). ``GET /v1/models``
and ``GET /v1/models/{id}`` stay open: they name the one model and touch no data (SDKs probe them), as
``GET /openapi.json`` describes the API and nothing else. A browser Origin must be allowed
(``gateway/security.py``), CORS preflights are answered only for allowed origins, and bodies are
accepted only as ``application/json`` (415 otherwise: a cross-site form post gets no preflight).

There is one code path: every request is turned into a protocol request (``shared/protocol.py``) and
sent to the route's lambda exactly as a WebSocket message would be, by the same Lambda integration
(``gateway/integration.py``), from a pseudo-connection registered in the gateway's ConnectionTable. The
lambda replies through ``@connections`` as usual; the pseudo-connection puts the replies on a queue, and
this module turns them into the HTTP response. So retrieval, the threshold, the prompt and the streaming
are exactly the WebSocket chat's. The pseudo-connection is removed when the request is done, or as soon
as its HTTP client leaves, so that the lambda's next post gets 410 GoneException and it stops generating.

Pending uploads (``POST /v1/documents`` not yet synced) and sync jobs are remembered by this gateway
process only, in memory, per tenant (a tenant's workspace, like its documents): they are lost when it
restarts (the uploaded files stay in ``uploads/``; local folders clean them after 24 h, on S3 a
lifecycle rule does). Every pseudo-connection carries its request's authorizer context, so the lambdas
scope each request to the caller's tenant.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from aiohttp import web
from aiohttp.typedefs import Middleware
from pydantic import BaseModel, ValidationError

from gateway.authorization import Authorizer, AuthorizerContext, Call, Refused
from gateway.connections import Connection, ConnectionTable, QueueSocket, new_connection_id
from gateway.http_models import (
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
    SyncError,
    SyncJob,
    SyncJobAccepted,
    SyncJobList,
    UploadError,
    UploadRequest,
    UploadTicket,
)
from gateway.integration import LambdaIntegration
from gateway.security import OriginPolicy, cors_hook, preflight_headers
from gateway.settings import Settings
from shared.identity import Principal
from shared.openai_models import AssistantMessage, ChunkChoice, Delta, Error, FinishReason, Usage, sse
from shared.openai_models import Choice as CompletionChoice
from shared.protocol import ErrorCode
from shared.timing import iso_utc

log = logging.getLogger(__name__)

API_PREFIX = "/v1"
# Bodies a little over the limit are read (and dropped) before the 413 so the client gets to read it;
# beyond this the connection is simply closed after the response.
_DRAIN_LIMIT = 8 * 1024 * 1024
_KEEP_JOBS = 100
# Sync jobs retry a failed upload only when its failure may have been transient.
_RETRYABLE = {
    ErrorCode.THROTTLED,
    ErrorCode.UPSTREAM_UNAVAILABLE,
    ErrorCode.UPSTREAM_TIMEOUT,
    ErrorCode.FUNCTION_ERROR,
    ErrorCode.INTERNAL_ERROR,
    ErrorCode.DOCUMENT_BUSY,
}

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


def _now_iso() -> str:
    return iso_utc(z=True)


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

    def body(self) -> Error:
        return Error.of(self.status, self.message, self.code, self.param)

    def response(self) -> web.Response:
        resp = _json(self.body(), self.status)
        resp.headers.update(self.headers)
        return resp

    @classmethod
    def refused(cls, exc: Refused) -> ApiError:
        """The authorizer's refusal; a 401 names the scheme it wants (WWW-Authenticate: Bearer)."""
        headers = {"WWW-Authenticate": 'Bearer realm="localrag"'} if exc.status == 401 else None
        return cls(exc.status, exc.message, exc.code, headers=headers)


def v1_refusal(request: web.Request, status: int, code: str, message: str) -> web.StreamResponse:
    """A refusal in OpenAI's error shape (for checks made outside this sub-application, e.g. the Host)."""
    return ApiError(status, message, code).response()


def _invalid(message: str, param: str | None = None) -> ApiError:
    return ApiError(400, message, ErrorCode.INVALID_REQUEST.value, param)


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


# ---------------------------------------------------------------------- state


@dataclass
class PendingUpload:
    id: str
    key: str
    name: str
    size: int
    content_type: str
    created_at: str = field(default_factory=_now_iso)
    status: Literal["uploaded", "failed"] = "uploaded"
    error: UploadError | None = None
    job_id: str | None = None  # the sync job working on it

    def info(self) -> Document:
        return Document(
            id=self.id,
            title="",
            name=self.name,
            size=self.size,
            status=self.status,
            chunks=0,
            uploaded_at=self.created_at,
            indexed_at=None,
            error=self.error,
        )


@dataclass
class SyncRun:
    """A knowledge-base sync job while (and after) it runs."""

    id: str
    documents: list[PendingUpload]
    status: Literal["queued", "running", "done", "failed"] = "queued"
    succeeded: int = 0
    failed: int = 0
    errors: list[SyncError] = field(default_factory=list)
    created_at: str = field(default_factory=_now_iso)
    started_at: str | None = None
    finished_at: str | None = None

    def info(self) -> SyncJob:
        return SyncJob(
            id=self.id,
            status=self.status,
            total=len(self.documents),
            succeeded=self.succeeded,
            failed=self.failed,
            errors=list(self.errors),
            created_at=self.created_at,
            started_at=self.started_at,
            finished_at=self.finished_at,
        )


@dataclass
class Workspace:
    """One tenant's pending uploads and sync jobs (documents are shared within a tenant, so are these)."""

    pending: dict[str, PendingUpload] = field(default_factory=dict)
    jobs: OrderedDict[str, SyncRun] = field(default_factory=OrderedDict)


# The authorizer context of a /v1 request (set by v1_guard; absent on the open routes).
CALLER = web.RequestKey("caller", dict)


class HttpApi:
    """The /v1 sub-application's state: the integration it sends through, each tenant's pending uploads
    and sync jobs."""

    def __init__(self, settings: Settings, integration: LambdaIntegration, connections: ConnectionTable) -> None:
        self.settings = settings
        self.integration = integration
        self.connections = connections
        self.created = int(time.time())
        self.workspaces: dict[str, Workspace] = {}
        # Strong references to background work (sync jobs, invocations that outlive their request).
        self.tasks: set[asyncio.Task[Any]] = set()

    def workspace(self, request: web.Request) -> Workspace:
        """The caller's tenant's workspace (the tenant comes from the authorizer, never from the request)."""
        tenant = Principal.from_authorizer(request[CALLER]).tenant
        return self.workspaces.setdefault(tenant, Workspace())

    def spawn(self, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    def exchange(
        self, body: dict[str, Any], *, source_ip: str, user_agent: str, authorizer: AuthorizerContext
    ) -> Exchange:
        return Exchange(self, body, source_ip=source_ip, user_agent=user_agent, authorizer=authorizer)

    def exchange_for(self, request: web.Request, body: dict[str, Any]) -> Exchange:
        return self.exchange(
            body,
            source_ip=request.remote or "127.0.0.1",
            user_agent=request.headers.get("User-Agent", ""),
            authorizer=request[CALLER],
        )

    async def stop(self, app: web.Application) -> None:
        """On shutdown: cancel the background work and wait for it."""
        tasks = list(self.tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


API: web.AppKey[HttpApi] = web.AppKey("http_api", HttpApi)


# ---------------------------------------------------------------------- one protocol request


class Exchange:
    """One protocol request sent from a pseudo-connection; `next()` gives the lambda's replies in order.

    Use as ``async with api.exchange(...) as ex``: entering registers the pseudo-connection and starts
    the invocation, leaving removes the connection (later posts to it get 410 Gone). The invocation
    itself is not cancelled when the request ends early: like a WebSocket's in-flight invocation it runs
    on and stops at its next post.
    """

    def __init__(
        self,
        api: HttpApi,
        body: dict[str, Any],
        *,
        source_ip: str,
        user_agent: str,
        authorizer: AuthorizerContext,
    ) -> None:
        self.api = api
        self.request_id = uuid.uuid4().hex
        self.data = json.dumps({**body, "request_id": self.request_id}).encode("utf-8")
        self.socket = QueueSocket()
        self.conn = Connection(
            id=new_connection_id(), ws=self.socket, source_ip=source_ip, user_agent=user_agent, authorizer=authorizer
        )
        self.client_left = False

    async def __aenter__(self) -> Exchange:
        self.api.connections.add(self.conn)
        self.api.spawn(self._invoke())
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.api.connections.remove(self.conn.id)
        self.socket.shut()

    async def _invoke(self) -> None:
        try:
            await self.api.integration.message(self.conn, self.data, request_id=self.request_id)
        finally:
            self.socket.finish()  # every reply has been posted by the time the invocation returns

    async def next(self) -> dict[str, Any] | None:
        """The next reply, or None when there will be none (the invocation ended, or the request is over)."""
        while True:
            item = await self.socket.queue.get()
            if item is None:
                return None
            try:
                msg = json.loads(item)
            except ValueError:
                log.warning("dropping a reply that is not JSON on %s", self.conn.id)
                continue
            if isinstance(msg, dict):
                return msg

    async def reply(self) -> dict[str, Any]:
        """The single reply of a request/response action; an `error` reply raises ApiError."""
        msg = await self.next()
        if msg is None:
            raise ApiError(502, "the function ended without a reply", ErrorCode.FUNCTION_ERROR.value)
        if msg.get("type") == "error":
            raise ApiError.from_protocol(msg)
        return msg

    async def watch(self, request: web.Request) -> None:
        """Close this exchange as soon as the HTTP client goes away (so the lambda's next post gets 410)."""
        while not self.socket.closed:
            transport = request.transport
            if transport is None or transport.is_closing():
                log.info("HTTP client left; closing pseudo-connection %s", self.conn.id)
                self.client_left = True
                self.close()
                return
            await asyncio.sleep(0.1)


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


def chat_request(body: dict[str, Any]) -> tuple[dict[str, Any], ChatCompletionRequest]:
    """(protocol chat request, the validated OpenAI request) from an OpenAI request body.

    The last message is the question and must be the user's; earlier user and assistant messages are the
    history (``ChatRequest.messages``). System and developer messages are ignored: the RAG prompt (the
    retrieved passages and how to cite them) is the system prompt. Sampling parameters (temperature,
    max_tokens, ...) are ignored too: the chat function's settings apply.
    """
    model = body.get("model")
    if isinstance(model, str) and model and model != MODEL_ID:  # before the rest, as OpenAI does
        raise _model_not_found(model)
    req = _parse(ChatCompletionRequest, body)
    turns = [{"role": m.role, "content": m.text()} for m in req.messages if m.role in ("user", "assistant")]
    if not turns or turns[-1]["role"] != "user":
        raise _invalid("messages: the last message must be the user's question", "messages")
    proto: dict[str, Any] = {"action": "chat", "question": turns[-1]["content"], "messages": turns[:-1]}
    # Retrieval extensions, with the chat function's own field definitions (it checks them again).
    proto.update(req.model_dump(include={"top_k", "max_distance", "search_mode"}, exclude_none=True))
    return proto, req


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
    async with request.app[API].exchange_for(request, proto) as ex:
        watcher = asyncio.create_task(ex.watch(request))
        try:
            first = await ex.next()
            if first is None:
                raise _unexpected_end()
            if first.get("type") == "error":
                raise ApiError.from_protocol(first)
            if req.stream:
                return await _stream(request, ex, completion_id, created, req.include_usage)
            parts: list[str] = []
            while (msg := await ex.next()) is not None:
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


async def _stream(
    request: web.Request, ex: Exchange, completion_id: str, created: int, include_usage: bool
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
        while (msg := await ex.next()) is not None:
            kind = msg.get("type")
            if kind == "token":
                await resp.write(sse(chunk(Delta(content=str(msg.get("text", ""))))))
            elif kind == "error":
                await resp.write(sse(ApiError.from_protocol(msg).body()))
                break
            elif kind == "stream_end":
                ex.close()  # the answer is complete: the pseudo-connection is done before the client is
                await resp.write(sse(chunk(Delta(), _finish_reason(str(msg.get("stop_reason", ""))))))
                # One chunk-shaped event with no choices carries the citations (and the usage when
                # stream_options.include_usage asks for it, as OpenAI sends usage in a choice-less chunk).
                usage = _usage(msg) if include_usage else None
                await resp.write(sse(chunk(citations=_citations(msg), usage=usage)))
                await resp.write(sse("[DONE]"))
                break
        else:
            if not ex.client_left:
                await resp.write(sse(_unexpected_end().body()))
        if not ex.client_left:
            await resp.write_eof()
    except ConnectionResetError:
        log.info("HTTP client left mid-stream; closing pseudo-connection %s", ex.conn.id)
        ex.client_left = True
        ex.close()
    return resp


# ---------------------------------------------------------------------- documents


async def create_document(request: web.Request) -> web.Response:
    upload = _parse(UploadRequest, await _read_json(request))
    api = request.app[API]
    body = {**upload.model_dump(exclude_unset=True), "action": "upload_url"}
    async with api.exchange_for(request, body) as ex:
        ticket = await ex.reply()
    key = str(ticket["key"])
    doc_id = key.rsplit("/", 1)[-1]  # the file name as the ingestion function made it safe: a valid id
    headers = {str(k): str(v) for k, v in (ticket.get("headers") or {}).items()}
    api.workspace(request).pending[doc_id] = PendingUpload(
        id=doc_id,
        key=key,
        name=upload.filename,
        size=upload.size,
        content_type=headers.get("Content-Type", "application/octet-stream"),
    )
    out = UploadTicket(
        id=doc_id, key=key, upload_url=str(ticket["url"]), headers=headers, expires_in=int(ticket["expires_in"])
    )
    return _json(out, 201)


async def list_documents(request: web.Request) -> web.Response:
    """One page of the documents (``?limit=&after=``), the indexed ones and this gateway's pending uploads
    merged in id order: the ingestion function's page, with the pending uploads whose ids fall in its
    range (an upload not synced yet shows as uploaded, or failed, even when an older version is indexed)."""
    query = _parse(DocumentListQuery, dict(request.query))
    api = request.app[API]
    body: dict[str, Any] = {"action": "list_documents", "limit": query.limit}
    if query.after is not None:
        body["after"] = query.after
    async with api.exchange_for(request, body) as ex:
        reply = await ex.reply()
    by_id: dict[str, Document] = {}
    for d in reply.get("documents", []):
        doc = Document.model_validate(d)
        by_id[doc.id] = doc
    upstream_next = reply.get("next")
    upper = str(upstream_next) if upstream_next else None  # the page covers ids in (after, upper]
    for p in api.workspace(request).pending.values():
        if (query.after is not None and p.id <= query.after) or (upper is not None and p.id > upper):
            continue
        indexed = by_id.get(p.id)
        by_id[p.id] = indexed.model_copy(update={"status": p.status, "error": p.error}) if indexed else p.info()
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
    pending = api.workspace(request).pending.pop(doc_id, None)
    chunks = 0
    async with api.exchange_for(request, {"action": "delete_document", "doc_id": doc_id}) as ex:
        try:
            chunks = int((await ex.reply()).get("chunks_deleted", 0))
        except ApiError as exc:
            if not (pending is not None and exc.code == ErrorCode.DOCUMENT_NOT_FOUND.value):
                raise
    return _json(DocumentDeleted(id=doc_id, chunks_deleted=chunks))


# ---------------------------------------------------------------------- knowledge-base sync


def _claimable(p: PendingUpload) -> bool:
    if p.job_id is not None:
        return False
    return p.status == "uploaded" or (p.error is not None and p.error.code in _RETRYABLE)


async def kb_sync(request: web.Request) -> web.Response:
    await _read_json(request, required=False)  # no options yet; a body, if any, must still be JSON
    api = request.app[API]
    space = api.workspace(request)
    job = SyncRun(id=f"sync-{uuid.uuid4().hex[:16]}", documents=[p for p in space.pending.values() if _claimable(p)])
    for p in job.documents:
        p.job_id = job.id
    space.jobs[job.id] = job
    while len(space.jobs) > _KEEP_JOBS:
        space.jobs.popitem(last=False)
    api.spawn(_run_sync(api, space, job, request.remote or "127.0.0.1", request[CALLER]))
    return _json(SyncJobAccepted(job_id=job.id, **job.info().model_dump()), 202)


async def _run_sync(
    api: HttpApi, space: Workspace, job: SyncRun, source_ip: str, authorizer: AuthorizerContext
) -> None:
    """ingest_object for each claimed upload, one at a time, through the same lambda as the WebSocket."""
    job.status = "running"
    job.started_at = _now_iso()
    try:
        for p in job.documents:
            body = {"action": "ingest_object", "key": p.key, "doc_id": p.id}
            try:
                async with api.exchange(
                    body, source_ip=source_ip, user_agent="localrag-kb-sync", authorizer=authorizer
                ) as ex:
                    await ex.reply()
            except ApiError as exc:
                job.failed += 1
                job.errors.append(SyncError(document=p.id, code=exc.code, message=exc.message))
                p.status, p.error = "failed", UploadError(code=exc.code, message=exc.message)
            else:
                job.succeeded += 1
                if space.pending.get(p.id) is p:
                    del space.pending[p.id]
            finally:
                p.job_id = None
        job.status = "failed" if job.failed else "done"
    except Exception:
        log.exception("sync job %s failed", job.id)
        job.status = "failed"
        job.errors.append(SyncError(document=None, code=ErrorCode.INTERNAL_ERROR.value, message="internal error"))
    finally:
        for p in job.documents:
            p.job_id = None
        job.finished_at = _now_iso()


async def kb_status(request: web.Request) -> web.Response:
    jobs = [j.info() for j in reversed(request.app[API].workspace(request).jobs.values())]
    return _json(SyncJobList(data=jobs))


# ---------------------------------------------------------------------- the sub-application

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def openai_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error in OpenAI's shape (including aiohttp's own 404 and 405)."""
    try:
        return await handler(request)
    except ApiError as exc:
        return exc.response()
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}.get(exc.status, "http_error")
        return ApiError(exc.status, exc.reason, code).response()


def v1_guard(policy: OriginPolicy, authorizer: Authorizer) -> Middleware:
    """The /v1 checks before any handler, in order: the browser Origin (403), a CORS preflight (answered
    here), the body's media type (415), the caller's identity (401/403/500; not on OPEN routes)."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        if origin is not None and not policy.origin_allowed(origin, request.headers.get("Host")):
            raise ApiError(403, "this Origin may not use the API (GATEWAY_ALLOWED_ORIGINS)", "origin_not_allowed")
        if request.method == "OPTIONS" and origin is not None and "Access-Control-Request-Method" in request.headers:
            return web.Response(status=204, headers=preflight_headers(origin))
        # Any body must be JSON (an empty one, e.g. `curl -X POST`, has nothing to parse): a form post or
        # text/plain, which a page may send cross-site without a preflight, is refused before anything runs.
        has_body = request.body_exists and request.content_length != 0
        if request.method in ("POST", "PUT", "PATCH") and has_body and request.content_type != "application/json":
            raise ApiError(415, "send the request body as Content-Type: application/json", "unsupported_media_type")
        if request.match_info.handler not in OPEN:
            resource = request.match_info.route.resource
            template = resource.canonical if resource is not None else request.path
            call = Call(f"{request.method} {template}", f"{request.method}{request.path}")
            try:
                request[CALLER] = await authorizer.authorize(request, call)
            except Refused as exc:
                raise ApiError.refused(exc) from None
        return await handler(request)

    return middleware


# Routes without identity: they name the one model and read no data.
OPEN: frozenset[Handler] = frozenset({list_models, get_model})

# (method, path under /v1, handler): also what gateway/openapi.py documents.
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


def create_http_api(
    settings: Settings,
    integration: LambdaIntegration,
    connections: ConnectionTable,
    authorizer: Authorizer,
    policy: OriginPolicy,
) -> web.Application:
    """The OpenAI-compatible HTTP API, to mount at API_PREFIX (``app.add_subapp``)."""
    app = web.Application(middlewares=[openai_errors, v1_guard(policy, authorizer)])
    api = HttpApi(settings, integration, connections)
    app[API] = api
    app.on_shutdown.append(api.stop)
    app.on_response_prepare.append(cors_hook(policy))
    for method, path, handler in ROUTES:
        app.router.add_route(method, path, handler)
    return app
