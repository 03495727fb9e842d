"""An OpenAI-compatible HTTP API (the stand-in for an API Gateway HTTP API) over the same lambdas.

Routes (all JSON; described by ``GET /openapi.json``, built in ``gateway/openapi.py``):

- ``GET /v1/models``, ``GET /v1/models/{id}``: one model, ``localrag``.
- ``POST /v1/chat/completions``: OpenAI chat completions, streamed (SSE) or not, with the answer's
  citations; stateless (the request carries the whole history).
- ``POST /v1/documents`` (a presigned PUT for a file), ``GET /v1/documents``, ``DELETE /v1/documents/{id}``.
- ``POST /v1/kb/sync`` (index the uploaded files, as a background job), ``GET /v1/kb/status`` (the jobs).

There is one code path: every request is turned into a protocol request (``shared/protocol.py``) and
sent to the route's lambda exactly as a WebSocket message would be — the same API Gateway MESSAGE event
(``gateway.app._event``), the same Lambda Invoke call (``gateway.app.invoke``) — from a pseudo-connection
registered in the gateway's ConnectionTable. The lambda replies through ``@connections`` as usual; the
pseudo-connection puts the replies on a queue, and this module turns them into the HTTP response. So
retrieval, the threshold, the prompt and the streaming are exactly the WebSocket chat's. The
pseudo-connection is removed when the request is done, or as soon as its HTTP client leaves, so that the
lambda's next post gets 410 GoneException and it stops generating.

Pending uploads (``POST /v1/documents`` not yet synced) and sync jobs are remembered by this gateway
process only, in memory: they are lost when it restarts (the uploaded files stay in ``uploads/``; local
folders clean them after 24 h, on S3 a lifecycle rule does).
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
from datetime import UTC, datetime
from typing import Any, Literal

from aiohttp import web

from gateway.app import CONNECTIONS, SETTINGS, InvokeFailed, _event, invoke
from gateway.connections import Connection, QueueSocket, new_connection_id
from gateway.openapi import openapi_document
from gateway.settings import Settings
from shared.protocol import ErrorCode, encode, error

log = logging.getLogger(__name__)

MODEL_ID = "localrag"
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
    ErrorCode.UNKNOWN_CONVERSATION: 404,
    ErrorCode.INDEX_MISMATCH: 503,
    ErrorCode.UPSTREAM_UNAVAILABLE: 502,
    ErrorCode.UPSTREAM_TIMEOUT: 504,
    ErrorCode.UNSUPPORTED_TYPE: 415,
    ErrorCode.CORRUPT_DOCUMENT: 422,
    ErrorCode.NO_TEXT_LAYER: 422,
    ErrorCode.OBJECT_NOT_FOUND: 404,
    ErrorCode.THROTTLED: 429,
    ErrorCode.FUNCTION_ERROR: 502,
    ErrorCode.INTERNAL_ERROR: 500,
}


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# ---------------------------------------------------------------------- errors (OpenAI's shape)


def _error_type(status: int) -> str:
    if status == 429:
        return "rate_limit_error"
    if status >= 500:
        return "server_error"
    return "invalid_request_error"


class ApiError(Exception):
    """An error answered in OpenAI's shape: {"error": {"message", "type", "code", "param"}}."""

    def __init__(self, status: int, message: str, code: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param

    @classmethod
    def from_protocol(cls, reply: dict[str, Any]) -> ApiError:
        try:
            code = ErrorCode(str(reply.get("code")))
        except ValueError:
            code = ErrorCode.INTERNAL_ERROR
        return cls(STATUS_FOR_CODE.get(code, 500), str(reply.get("message") or code.value), code.value)

    def body(self) -> dict[str, Any]:
        return {
            "error": {"message": self.message, "type": _error_type(self.status), "code": self.code, "param": self.param}
        }

    def response(self) -> web.Response:
        return web.json_response(self.body(), status=self.status)


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
    error: dict[str, str] | None = None
    job_id: str | None = None  # the sync job working on it

    def info(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "title": "",
            "name": self.name,
            "size": self.size,
            "status": self.status,
            "chunks": 0,
            "uploaded_at": self.created_at,
            "indexed_at": None,
            "error": self.error,
        }


@dataclass
class SyncJob:
    id: str
    documents: list[PendingUpload]
    status: Literal["queued", "running", "done", "failed"] = "queued"
    succeeded: int = 0
    failed: int = 0
    errors: list[dict[str, str | None]] = field(default_factory=list)
    created_at: str = field(default_factory=_now_iso)
    started_at: str | None = None
    finished_at: str | None = None

    def info(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "kb.sync_job",
            "status": self.status,
            "total": len(self.documents),
            "succeeded": self.succeeded,
            "failed": self.failed,
            "errors": list(self.errors),
            "created_at": self.created_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
        }


@dataclass
class HttpApiState:
    created: int = field(default_factory=lambda: int(time.time()))
    pending: dict[str, PendingUpload] = field(default_factory=dict)
    jobs: OrderedDict[str, SyncJob] = field(default_factory=OrderedDict)
    # Strong references to background work (sync jobs, invocations that outlive their request).
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)

    def spawn(self, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task


HTTP_API: web.AppKey[HttpApiState] = web.AppKey("http_api", HttpApiState)


# ---------------------------------------------------------------------- one protocol request


class Exchange:
    """One protocol request sent from a pseudo-connection; `next()` gives the lambda's replies in order.

    Use as ``async with Exchange(...) as ex``: entering registers the pseudo-connection and starts the
    invocation, leaving removes the connection (later posts to it get 410 Gone). The invocation itself is
    not cancelled when the request ends early: like a WebSocket's in-flight invocation it runs on and
    stops at its next post.
    """

    def __init__(self, app: web.Application, body: dict[str, Any], *, source_ip: str, user_agent: str) -> None:
        self.app = app
        self.request_id = uuid.uuid4().hex
        self.body = {**body, "request_id": self.request_id}
        self.socket = QueueSocket()
        self.conn = Connection(id=new_connection_id(), ws=self.socket, source_ip=source_ip, user_agent=user_agent)
        self.client_left = False

    async def __aenter__(self) -> Exchange:
        app = self.app
        app[CONNECTIONS].add(self.conn)
        action = str(self.body.get("action"))
        route_key = action if action in app[SETTINGS].routes else "$default"
        data = json.dumps(self.body).encode("utf-8")
        app[HTTP_API].spawn(self._invoke(route_key, data))
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.app[CONNECTIONS].remove(self.conn.id)
        self.socket.shut()

    async def _invoke(self, route_key: str, data: bytes) -> None:
        queue = self.socket.queue
        try:
            result = await invoke(self.app, route_key, _event(self.app, self.conn, route_key, "MESSAGE", body=data))
            # A two-way route: the integration's response body is a reply too.
            if result is not None and result.get("body") and not self.socket.closed:
                reply = result["body"]
                queue.put_nowait(reply.encode("utf-8") if isinstance(reply, str) else json.dumps(reply).encode())
        except InvokeFailed as exc:
            queue.put_nowait(encode(error(exc.code, exc.message, self.request_id)))
        except Exception:
            log.exception("HTTP API invocation of %s failed", route_key)
            queue.put_nowait(encode(error(ErrorCode.INTERNAL_ERROR, "internal error", self.request_id)))
        finally:
            queue.put_nowait(None)  # every reply has been posted by the time the invocation returns

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


def _exchange(request: web.Request, body: dict[str, Any]) -> Exchange:
    return Exchange(
        request.app, body, source_ip=request.remote or "127.0.0.1", user_agent=request.headers.get("User-Agent", "")
    )


# ---------------------------------------------------------------------- request bodies


async def _read_json(request: web.Request, *, required: bool = True) -> dict[str, Any]:
    limit = request.app[SETTINGS].http_max_body_bytes
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
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "the request body is not valid JSON", ErrorCode.MALFORMED_JSON.value) from None
    if not isinstance(data, dict):
        raise ApiError(400, "the request body must be a JSON object", ErrorCode.MALFORMED_JSON.value)
    return data


def _invalid(message: str, param: str | None = None) -> ApiError:
    return ApiError(400, message, ErrorCode.INVALID_REQUEST.value, param)


# ---------------------------------------------------------------------- models


def _model(state: HttpApiState) -> dict[str, Any]:
    return {"id": MODEL_ID, "object": "model", "created": state.created, "owned_by": "localrag"}


def _model_not_found(model: str) -> ApiError:
    shown = model if len(model) <= 128 else model[:128] + "…"
    message = f"The model '{shown}' does not exist; the only model is '{MODEL_ID}'"
    return ApiError(404, message, "model_not_found", "model")


async def list_models(request: web.Request) -> web.Response:
    return web.json_response({"object": "list", "data": [_model(request.app[HTTP_API])]})


async def get_model(request: web.Request) -> web.Response:
    model = request.match_info["id"]
    if model != MODEL_ID:
        raise _model_not_found(model)
    return web.json_response(_model(request.app[HTTP_API]))


# ---------------------------------------------------------------------- chat completions

_EXTENSIONS = ("top_k", "max_distance", "search_mode")


def _text_of(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise _invalid(f"{where}.content: only text content parts are supported", "messages")
            parts.append(part["text"])
        return "\n".join(parts)
    raise _invalid(f"{where}.content: expected a string or a list of text parts", "messages")


def chat_request(body: dict[str, Any]) -> tuple[dict[str, Any], bool, bool]:
    """(protocol chat request, stream?, include usage in the stream?) from an OpenAI request body.

    The last message is the question and must be the user's; earlier user and assistant messages are the
    history (``ChatRequest.messages``). System and developer messages are ignored: the RAG prompt (the
    retrieved passages and how to cite them) is the system prompt. Sampling parameters (temperature,
    max_tokens, ...) are ignored too: the chat function's settings apply.
    """
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _invalid("model: a model id is required", "model")
    if model != MODEL_ID:
        raise _model_not_found(model)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _invalid("messages: a non-empty list of messages is required", "messages")
    turns: list[dict[str, str]] = []
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise _invalid(f"{where}: expected an object with a role", "messages")
        role = m["role"]
        if role in ("system", "developer"):
            continue
        if role not in ("user", "assistant"):
            raise _invalid(f"{where}.role: {role[:32]!r} is not supported (user, assistant, system)", "messages")
        content = m.get("content")
        turns.append({"role": role, "content": "" if content is None else _text_of(content, where)})
    if not turns or turns[-1]["role"] != "user":
        raise _invalid("messages: the last message must be the user's question", "messages")
    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise _invalid("stream: expected a boolean", "stream")
    n = body.get("n")
    if n is not None and n != 1:
        raise _invalid("n: only one choice is supported", "n")
    options = body.get("stream_options")
    include_usage = isinstance(options, dict) and options.get("include_usage") is True
    proto: dict[str, Any] = {"action": "chat", "question": turns[-1]["content"], "messages": turns[:-1]}
    for key in _EXTENSIONS:  # validated by the chat function, as for the WebSocket
        if body.get(key) is not None:
            proto[key] = body[key]
    return proto, stream, include_usage


def _finish_reason(stop_reason: str) -> str:
    if stop_reason == "max_tokens":
        return "length"
    if stop_reason in ("content_filtered", "guardrail_intervened"):
        return "content_filter"
    return "stop"


def _citations(sources: list[dict[str, Any]]) -> list[dict[str, Any]]:
    keys = ("n", "doc_id", "title", "page", "heading", "excerpt", "distance")
    return [{k: s.get(k) for k in keys} for s in sources]


def _usage(end: dict[str, Any]) -> dict[str, int]:
    u = end.get("usage") or {}
    prompt, completion = int(u.get("input_tokens", 0)), int(u.get("output_tokens", 0))
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _unexpected_end() -> ApiError:
    return ApiError(502, "the answer ended before it was complete", ErrorCode.FUNCTION_ERROR.value)


async def chat_completions(request: web.Request) -> web.StreamResponse:
    proto, stream, include_usage = chat_request(await _read_json(request))
    completion_id = f"chatcmpl-{uuid.uuid4().hex}"
    created = int(time.time())
    async with _exchange(request, proto) as ex:
        watcher = asyncio.create_task(ex.watch(request))
        try:
            first = await ex.next()
            if first is None:
                raise _unexpected_end()
            if first.get("type") == "error":
                raise ApiError.from_protocol(first)
            if stream:
                return await _stream(request, ex, completion_id, created, include_usage)
            parts: list[str] = []
            while (msg := await ex.next()) is not None:
                kind = msg.get("type")
                if kind == "token":
                    parts.append(str(msg.get("text", "")))
                elif kind == "error":
                    raise ApiError.from_protocol(msg)
                elif kind == "stream_end":
                    return web.json_response(
                        {
                            "id": completion_id,
                            "object": "chat.completion",
                            "created": created,
                            "model": MODEL_ID,
                            "choices": [
                                {
                                    "index": 0,
                                    "message": {"role": "assistant", "content": str(msg.get("answer", ""))},
                                    "finish_reason": _finish_reason(str(msg.get("stop_reason", ""))),
                                    "logprobs": None,
                                }
                            ],
                            "usage": _usage(msg),
                            "citations": _citations(msg.get("sources") or []),
                        }
                    )
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

    def chunk(choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        return {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": MODEL_ID,
            "choices": choices,
            **extra,
        }

    async def send(data: dict[str, Any] | str) -> None:
        text = data if isinstance(data, str) else json.dumps(data)
        await resp.write(f"data: {text}\n\n".encode())

    try:
        await send(chunk([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]))
        while (msg := await ex.next()) is not None:
            kind = msg.get("type")
            if kind == "token":
                await send(chunk([{"index": 0, "delta": {"content": str(msg.get("text", ""))}, "finish_reason": None}]))
            elif kind == "error":
                await send(ApiError.from_protocol(msg).body())
                break
            elif kind == "stream_end":
                ex.close()  # the answer is complete: the pseudo-connection is done before the client is
                reason = _finish_reason(str(msg.get("stop_reason", "")))
                await send(chunk([{"index": 0, "delta": {}, "finish_reason": reason}]))
                # One chunk-shaped event with no choices carries the citations (and the usage when
                # stream_options.include_usage asks for it, as OpenAI sends usage in a choice-less chunk).
                extra: dict[str, Any] = {"citations": _citations(msg.get("sources") or [])}
                if include_usage:
                    extra["usage"] = _usage(msg)
                await send(chunk([], **extra))
                await send("[DONE]")
                break
        else:
            if not ex.client_left:
                await send(_unexpected_end().body())
        if not ex.client_left:
            await resp.write_eof()
    except ConnectionResetError:
        log.info("HTTP client left mid-stream; closing pseudo-connection %s", ex.conn.id)
        ex.client_left = True
        ex.close()
    return resp


# ---------------------------------------------------------------------- documents


async def create_document(request: web.Request) -> web.Response:
    body = await _read_json(request)
    # Validated by the ingestion function (upload_url): filename, content_type?, size.
    async with _exchange(request, {**body, "action": "upload_url"}) as ex:
        ticket = await ex.reply()
    key = str(ticket["key"])
    doc_id = key.rsplit("/", 1)[-1]  # the file name as the ingestion function made it safe: a valid id
    state = request.app[HTTP_API]
    state.pending[doc_id] = PendingUpload(
        id=doc_id,
        key=key,
        name=str(body.get("filename")),
        size=int(body.get("size") or 0),
        content_type=str(ticket.get("headers", {}).get("Content-Type", "application/octet-stream")),
    )
    return web.json_response(
        {
            "id": doc_id,
            "object": "document.upload",
            "key": key,
            "upload_url": ticket["url"],
            "method": "PUT",
            "headers": ticket.get("headers", {}),
            "expires_in": ticket.get("expires_in"),
        },
        status=201,
    )


async def list_documents(request: web.Request) -> web.Response:
    async with _exchange(request, {"action": "list_documents"}) as ex:
        reply = await ex.reply()
    by_id: dict[str, dict[str, Any]] = {d["id"]: {**d, "error": None} for d in reply.get("documents", [])}
    for p in request.app[HTTP_API].pending.values():
        indexed = by_id.get(p.id)
        # A newer upload of an indexed document shows as uploaded (or failed) until it is synced.
        by_id[p.id] = {**indexed, "status": p.status, "error": p.error} if indexed else p.info()
    return web.json_response({"object": "list", "data": list(by_id.values())})


async def delete_document(request: web.Request) -> web.Response:
    doc_id = request.match_info["id"]
    pending = request.app[HTTP_API].pending.pop(doc_id, None)
    chunks = 0
    async with _exchange(request, {"action": "delete_document", "doc_id": doc_id}) as ex:
        try:
            chunks = int((await ex.reply()).get("chunks_deleted", 0))
        except ApiError as exc:
            if not (pending is not None and exc.code == ErrorCode.DOCUMENT_NOT_FOUND.value):
                raise
    return web.json_response({"id": doc_id, "object": "document.deleted", "deleted": True, "chunks_deleted": chunks})


# ---------------------------------------------------------------------- knowledge-base sync


def _claimable(p: PendingUpload) -> bool:
    if p.job_id is not None:
        return False
    return p.status == "uploaded" or (p.error is not None and p.error.get("code") in _RETRYABLE)


async def kb_sync(request: web.Request) -> web.Response:
    await _read_json(request, required=False)  # no options yet; a body, if any, must still be JSON
    state = request.app[HTTP_API]
    job = SyncJob(id=f"sync-{uuid.uuid4().hex[:16]}", documents=[p for p in state.pending.values() if _claimable(p)])
    for p in job.documents:
        p.job_id = job.id
    state.jobs[job.id] = job
    while len(state.jobs) > _KEEP_JOBS:
        state.jobs.popitem(last=False)
    state.spawn(_run_sync(request.app, job, request.remote or "127.0.0.1"))
    return web.json_response({"job_id": job.id, **job.info()}, status=202)


async def _run_sync(app: web.Application, job: SyncJob, source_ip: str) -> None:
    """ingest_object for each claimed upload, one at a time, through the same lambda as the WebSocket."""
    state = app[HTTP_API]
    job.status = "running"
    job.started_at = _now_iso()
    try:
        for p in job.documents:
            body = {"action": "ingest_object", "key": p.key, "doc_id": p.id}
            try:
                async with Exchange(app, body, source_ip=source_ip, user_agent="localrag-kb-sync") as ex:
                    await ex.reply()
            except ApiError as exc:
                job.failed += 1
                job.errors.append({"document": p.id, "code": exc.code, "message": exc.message})
                p.status, p.error = "failed", {"code": exc.code, "message": exc.message}
            else:
                job.succeeded += 1
                if state.pending.get(p.id) is p:
                    del state.pending[p.id]
            finally:
                p.job_id = None
        job.status = "failed" if job.failed else "done"
    except Exception:
        log.exception("sync job %s failed", job.id)
        job.status = "failed"
        job.errors.append({"document": None, "code": ErrorCode.INTERNAL_ERROR.value, "message": "internal error"})
    finally:
        for p in job.documents:
            p.job_id = None
        job.finished_at = _now_iso()


async def kb_status(request: web.Request) -> web.Response:
    jobs = [j.info() for j in reversed(request.app[HTTP_API].jobs.values())]
    return web.json_response({"object": "list", "data": jobs})


# ---------------------------------------------------------------------- OpenAPI, errors, wiring


async def openapi_json(request: web.Request) -> web.Response:
    return web.json_response(openapi_document())


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def _openai_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Errors under /v1 in OpenAI's shape (including aiohttp's own 404 and 405)."""
    if not request.path.startswith(API_PREFIX + "/") and request.path != API_PREFIX:
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


def add_http_api(app: web.Application, settings: Settings) -> None:
    """Add the OpenAI-compatible HTTP API under /v1 and its description at /openapi.json."""
    app[HTTP_API] = HttpApiState()

    async def stop_jobs(app: web.Application) -> None:
        tasks = list(app[HTTP_API].tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    app.on_shutdown.append(stop_jobs)
    app.middlewares.append(_openai_errors)
    p = API_PREFIX
    app.router.add_get(f"{p}/models", list_models)
    app.router.add_get(f"{p}/models/{{id}}", get_model)
    app.router.add_post(f"{p}/chat/completions", chat_completions)
    app.router.add_post(f"{p}/documents", create_document)
    app.router.add_get(f"{p}/documents", list_documents)
    app.router.add_delete(f"{p}/documents/{{id}}", delete_document)
    app.router.add_post(f"{p}/kb/sync", kb_sync)
    app.router.add_get(f"{p}/kb/status", kb_status)
    app.router.add_get("/openapi.json", openapi_json)
