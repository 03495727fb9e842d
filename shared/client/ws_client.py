"""An asyncio client for the gateway's WebSocket protocol (see ``shared.protocol``).

    async with RagClient("ws://127.0.0.1:8000/local") as client:
        await client.ingest(Document(id="notes", title="Notes", text="..."))
        async for message in client.chat("What do my notes say?"):
            ...  # StreamStart, then Token..., then StreamEnd

One connection carries any number of concurrent requests. Every request gets a unique request id;
a reader task routes each reply to the queue of the request it echoes, because the server answers
requests concurrently and their replies interleave. Error replies raise :class:`RagClientError`.

Credentials: the client sends ``Authorization: Bearer <API key>`` on the WebSocket upgrade (and on HTTP
requests to the gateway itself, never to S3). :func:`find_api_key` is how the CLI finds the key: an
explicit one, else ``$RAG_API_KEY``, else the local key file (``$RAG_API_KEY_FILE``, default
``data/local-api-key`` under the current folder, which ``make up`` writes with mode 0600); a key file
that group or others may read is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import mimetypes
import os
import random
import re
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Final, TypeVar
from urllib.parse import urlsplit

import aiohttp
from pydantic import BaseModel, ValidationError

from shared.api_keys import DEFAULT_KEY_FILE, read_key_file
from shared.client.frames import send_text
from shared.formats import find_format
from shared.protocol import (
    MAX_DOCUMENTS_LIMIT,
    MAX_HISTORY_LIMIT,
    MAX_MESSAGE_BYTES,
    SERVER_MESSAGE,
    AnyClientRequest,
    ChatRequest,
    ChunkSample,
    DeleteDocumentRequest,
    Document,
    DocumentDeleted,
    DocumentInfo,
    DocumentList,
    ErrorCode,
    ErrorMessage,
    History,
    HistoryMessage,
    HistoryRequest,
    IngestBatchRequest,
    IngestBatchResult,
    IngestObjectRequest,
    IngestRequest,
    IngestResult,
    ListDocumentsRequest,
    SampleChunksRequest,
    SearchMode,
    SearchRequest,
    SearchResult,
    ServerMessage,
    StreamEnd,
    StreamStart,
    Token,
    UploadUrl,
    UploadUrlRequest,
    describe_validation_error,
    request_id_of,
)

log = logging.getLogger(__name__)
# What API Gateway sends a client when its integration timeout passes (gateway/integration.py ``timed_out``).
_ENDPOINT_TIMED_OUT = "Endpoint request timed out"

DEFAULT_URL: Final = "ws://127.0.0.1:8000/local"
DEFAULT_TIMEOUT: Final = 120.0  # seconds to wait for each reply (the gateway's own integration cap is 300 s)
DEFAULT_CONNECT_TIMEOUT: Final = 10.0
# Replies can be much larger than requests (a search with top_k=100, a long history).
MAX_REPLY_BYTES: Final = 64 * 1024 * 1024

ChatEvent = StreamStart | Token | StreamEnd
_Request = AnyClientRequest
# How long a presigned PUT may take (a large file on a slow link), and the S3-style error in its body.
UPLOAD_TIMEOUT: Final = 600.0
_S3_ERROR = re.compile(r"<Code>([^<]*)</Code>(?:.*?<Message>([^<]*)</Message>)?", re.S)
_Reply = TypeVar("_Reply", bound=BaseModel)


def find_api_key(
    explicit: str | None = None, env: Mapping[str, str] | None = None, cwd: Path | None = None
) -> str | None:
    """The API key to send: ``explicit`` (--api-key), else $RAG_API_KEY, else the key file ($RAG_API_KEY_FILE,
    default data/local-api-key under ``cwd``), else None. With RAG_AUTH=none no file is looked for.

    Raises KeyFileError for a key file that exists but cannot be used (readable by group/others, empty),
    or for a $RAG_API_KEY_FILE that names no file."""
    env = os.environ if env is None else env
    if explicit:
        return explicit.strip()
    if env.get("RAG_API_KEY", "").strip():
        return env["RAG_API_KEY"].strip()
    if env.get("RAG_AUTH", "").strip().lower() == "none":
        return None
    named = env.get("RAG_API_KEY_FILE", "").strip()
    path = Path(named or DEFAULT_KEY_FILE)
    if not path.is_absolute():
        path = (cwd or Path.cwd()) / path
    if not named and not path.exists():
        return None
    return read_key_file(path)


def _origin(url: str) -> tuple[str, str]:
    """(scheme as http/https, host:port) of a ws/wss/http/https URL, for same-origin checks."""
    parts = urlsplit(url)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme.lower(), parts.scheme.lower())
    port = parts.port or {"http": 80, "https": 443}.get(scheme)
    return scheme, f"{(parts.hostname or '').lower()}:{port}"


def content_type_for(filename: str) -> str:
    """The Content-Type to upload a file with: its format's (shared.formats), else a guess by its name
    (the server refuses an unsupported type)."""
    fmt = find_format(filename)
    if fmt is not None:
        return fmt.content_type
    return mimetypes.guess_type(filename)[0] or "application/octet-stream"


class RagClientError(Exception):
    """An ``error`` reply from the server, or a failure on the client's side of the wire.

    ``code`` is an :class:`~shared.protocol.ErrorCode` value for server errors (and for a request the
    client refuses to send because the server would refuse it), or one of the client-side codes below.
    """

    CONNECTION_FAILED: Final = "connection_failed"  # could not open the WebSocket
    CONNECTION_CLOSED: Final = "connection_closed"  # it closed while a reply was awaited
    TIMEOUT: Final = "timeout"  # no reply within the timeout
    INVALID_REPLY: Final = "invalid_reply"  # the server sent something outside the protocol
    INVALID_URL: Final = "invalid_url"  # not a ws:// or wss:// URL
    UPLOAD_FAILED: Final = "upload_failed"  # the PUT to an upload URL was refused or failed
    UNAUTHORIZED: Final = "unauthorized"  # the gateway refused the handshake: no or an invalid credential (401)
    FORBIDDEN: Final = "forbidden"  # the gateway refused the handshake: the credential is not allowed (403)

    def __init__(self, code: str, message: str, *, reply: ErrorMessage | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = str(code)
        self.message = message
        self.reply = reply  # the server's error message, when there was one

    @classmethod
    def from_reply(cls, reply: ErrorMessage) -> RagClientError:
        return cls(reply.code.value, reply.message, reply=reply)


_QueueItem = ServerMessage | RagClientError


class _Backoff:
    """Exponential backoff with jitter, for at most ``budget`` seconds in all."""

    def __init__(self, budget: float) -> None:
        self.deadline = time.monotonic() + budget
        self.attempt = 0

    def allowed(self) -> bool:
        return time.monotonic() < self.deadline

    async def wait(self) -> None:
        delay = min(0.05 * 2**self.attempt, 1.0) * random.uniform(0.5, 1.0)
        self.attempt += 1
        await asyncio.sleep(max(0.0, min(delay, self.deadline - time.monotonic())))


def _reason(exc: BaseException) -> str:
    if isinstance(exc, aiohttp.ClientConnectorError):
        return str(exc.os_error) or type(exc.os_error).__name__
    return str(exc) or type(exc).__name__


class RagClient:
    """A WebSocket client for the RAG gateway. Use as ``async with RagClient(url) as client:``.

    ``timeout`` bounds the wait for each reply (for a chat: for each streamed message), and
    ``connect_timeout`` the WebSocket handshake. A ``throttled`` reply (too many requests in flight
    on the connection) is retried with backoff until ``timeout`` has passed, unless
    ``retry_throttled`` is false: the server did not
    run the request. If the connection drops, the next request reconnects. ``api_key`` is sent as
    ``Authorization: Bearer`` (see :func:`find_api_key`); it is never logged or put in an error.
    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        retry_throttled: bool = True,
        api_key: str | None = None,
    ) -> None:
        self.url = url
        self._api_key = api_key
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.max_message_bytes = max_message_bytes
        self.retry_throttled = retry_throttled
        self._session: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task[None] | None = None
        self._pending: dict[str, asyncio.Queue[_QueueItem]] = {}
        self._send_lock = asyncio.Lock()
        self._connect_lock = asyncio.Lock()
        self._entered = False

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> RagClient:
        self._entered = True
        try:
            await self._connect()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    def auth_headers(self) -> dict[str, str]:
        """The headers that carry the credential (empty without one), for requests to the gateway."""
        return {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}

    @property
    def connected(self) -> bool:
        return self._ws is not None and not self._ws.closed and self._reader is not None and not self._reader.done()

    async def _connect(self) -> None:
        await self._drop_connection()
        scheme = self.url.partition("://")[0].lower() if "://" in self.url else ""
        if scheme not in ("ws", "wss"):
            raise RagClientError(
                RagClientError.INVALID_URL, f"{self.url!r} is not a WebSocket URL (expected ws://host:port/stage)"
            )
        if self._session is None:
            self._session = aiohttp.ClientSession()
        try:
            ws = await asyncio.wait_for(
                self._session.ws_connect(
                    self.url,
                    headers=self.auth_headers(),
                    max_msg_size=MAX_REPLY_BYTES,
                    autoping=True,
                    timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=5.0),
                ),
                self.connect_timeout,
            )
        except TimeoutError:
            raise RagClientError(
                RagClientError.CONNECTION_FAILED,
                f"cannot connect to {self.url}: no answer within {self.connect_timeout:g}s: is `make up` running?",
            ) from None
        except aiohttp.WSServerHandshakeError as exc:
            if exc.status in (401, 403):
                raise RagClientError(*self._refusal(exc.status)) from None
            hint = " (is the stage in the URL right?)" if exc.status == 404 else ""
            raise RagClientError(
                RagClientError.CONNECTION_FAILED,
                f"cannot connect to {self.url}: the server refused the WebSocket with HTTP {exc.status}{hint}",
            ) from None
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            raise RagClientError(
                RagClientError.CONNECTION_FAILED,
                f"cannot connect to {self.url}: is `make up` running? ({_reason(exc)})",
            ) from None
        self._ws = ws
        self._reader = asyncio.create_task(self._read(ws), name="rag-client-reader")

    def _refusal(self, status: int) -> tuple[str, str]:
        if status == 403:
            return RagClientError.FORBIDDEN, (
                f"the gateway at {self.url} refused the API key (HTTP 403): it has been revoked or is not allowed"
            )
        if self._api_key:
            what = "refused the API key (HTTP 401): it is unknown or malformed"
        else:
            what = "needs an API key (HTTP 401): pass --api-key, set RAG_API_KEY, or run `make up` (data/local-api-key)"
        return RagClientError.UNAUTHORIZED, f"the gateway at {self.url} {what}"

    async def _ensure_connected(self) -> None:
        if not self._entered:
            raise RuntimeError("use the client as `async with RagClient(url) as client:`")
        if self.connected:
            return
        async with self._connect_lock:
            if not self.connected:
                log.info("reconnecting to %s", self.url)
                await self._connect()

    async def _drop_connection(self) -> None:
        reader, ws = self._reader, self._ws
        self._reader = self._ws = None
        if reader is not None and not reader.done():
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
        if ws is not None and not ws.closed:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(), 5.0)

    async def close(self) -> None:
        """Close the connection; requests still waiting fail with ``connection_closed``."""
        self._entered = False
        try:
            await self._drop_connection()
        finally:
            self._fail_pending("the client was closed")
            if self._session is not None:
                session, self._session = self._session, None
                await session.close()

    # ------------------------------------------------------------------ the reader

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        reason = "the gateway closed the connection"
        try:
            async for msg in ws:
                if msg.type == aiohttp.WSMsgType.TEXT:
                    self._dispatch(msg.data)
                elif msg.type == aiohttp.WSMsgType.BINARY:
                    try:
                        self._dispatch(msg.data.decode("utf-8"))
                    except UnicodeDecodeError:
                        log.warning("dropped a binary message that is not UTF-8")
                elif msg.type == aiohttp.WSMsgType.ERROR:
                    reason = f"the connection failed: {_reason(ws.exception() or Exception('unknown error'))}"
                    break
            if ws.close_code is not None:
                reason += f" (close code {ws.close_code})"
        finally:
            self._fail_pending(reason)

    def _dispatch(self, text: str) -> None:
        item: _QueueItem
        if _ENDPOINT_TIMED_OUT in text and text.lstrip().startswith('{"message"'):
            # API Gateway stopped waiting for the function (29 s); the function runs on and its replies
            # still come, so nothing is wrong for the request: only the two-way reply, which it never uses.
            log.info("API Gateway's integration timeout passed; the function's replies keep coming")
            return
        try:
            item = SERVER_MESSAGE.validate_json(text)
            request_id = item.request_id
        except ValidationError as exc:
            request_id = request_id_of(text.encode("utf-8"))
            item = RagClientError(
                RagClientError.INVALID_REPLY,
                f"the server sent a message outside the protocol: {describe_validation_error(exc.errors())}",
            )
        queue = self._pending.get(request_id) if request_id is not None else None
        if queue is None and request_id is None and len(self._pending) == 1:
            # An error the server could not attribute to a request (e.g. a frame it could not parse):
            # with one request in flight, it can only be that one's.
            queue = next(iter(self._pending.values()))
        if queue is None:
            log.warning("dropped a reply for request %r, which is not waiting (timed out?)", request_id)
            return
        queue.put_nowait(item)

    def _fail_pending(self, reason: str) -> None:
        for queue in self._pending.values():
            queue.put_nowait(RagClientError(RagClientError.CONNECTION_CLOSED, reason))

    # ------------------------------------------------------------------ one exchange

    @contextlib.asynccontextmanager
    async def _exchange(self, make: Callable[[str], _Request]) -> AsyncIterator[Callable[[], Awaitable[ServerMessage]]]:
        """Send a request with a fresh request id; yield a function that awaits its next reply."""
        request_id = uuid.uuid4().hex
        try:
            request = make(request_id)
        except ValidationError as exc:
            raise RagClientError(ErrorCode.INVALID_REQUEST.value, describe_validation_error(exc.errors())) from None
        text = request.model_dump_json(exclude_none=True)
        size = len(text.encode("utf-8"))
        if size > self.max_message_bytes:
            raise RagClientError(
                ErrorCode.MESSAGE_TOO_LARGE.value,
                f"the {request.action} message would be {size} bytes; "
                f"a WebSocket message may be at most {self.max_message_bytes} bytes",
            )
        await self._ensure_connected()
        queue: asyncio.Queue[_QueueItem] = asyncio.Queue()
        self._pending[request_id] = queue

        async def next_reply() -> ServerMessage:
            try:
                item = await asyncio.wait_for(queue.get(), self.timeout)
            except TimeoutError:
                raise RagClientError(
                    RagClientError.TIMEOUT, f"no reply to the {request.action} request within {self.timeout:g}s"
                ) from None
            if isinstance(item, RagClientError):
                raise item
            return item

        try:
            await self._send(text)
            yield next_reply
        finally:
            self._pending.pop(request_id, None)

    async def _send(self, text: str) -> None:
        ws = self._ws
        if ws is None or ws.closed:
            raise RagClientError(RagClientError.CONNECTION_CLOSED, "the connection is closed")
        try:
            async with self._send_lock:
                await send_text(ws, text)  # in frames of at most 32 KB, as API Gateway requires
        except (aiohttp.ClientError, OSError, RuntimeError) as exc:
            raise RagClientError(RagClientError.CONNECTION_CLOSED, f"could not send: {_reason(exc)}") from None

    def _throttle_backoff(self) -> _Backoff:
        return _Backoff(self.timeout if self.retry_throttled else 0.0)

    async def _call(self, make: Callable[[str], _Request], expect: type[_Reply]) -> _Reply:
        backoff = self._throttle_backoff()
        while True:
            async with self._exchange(make) as next_reply:
                reply = await next_reply()
            if isinstance(reply, ErrorMessage):
                if reply.code == ErrorCode.THROTTLED and backoff.allowed():
                    await backoff.wait()
                    continue
                raise RagClientError.from_reply(reply)
            if not isinstance(reply, expect):
                raise RagClientError(
                    RagClientError.INVALID_REPLY, f"expected a {expect.__name__} reply, got {reply.type!r}"
                )
            return reply

    # ------------------------------------------------------------------ the API

    async def ingest(self, document: Document) -> IngestResult:
        """Chunk, embed and store a document (re-ingesting an id replaces it)."""
        return await self._call(
            lambda rid: IngestRequest(action="ingest", request_id=rid, document=document), IngestResult
        )

    async def ingest_batch(self, documents: Sequence[Document]) -> IngestBatchResult:
        """Several small documents in one message (at most MAX_BATCH_DOCUMENTS, within the message size
        limit), ingested together; the reply says, per document, what happened to it."""
        return await self._call(
            lambda rid: IngestBatchRequest(action="ingest_batch", request_id=rid, documents=list(documents)),
            IngestBatchResult,
        )

    async def upload_url(self, filename: str, size: int, content_type: str | None = None) -> UploadUrl:
        """A presigned PUT URL for a file too large for a WebSocket message (or not plain text)."""
        ctype = content_type or content_type_for(filename)
        return await self._call(
            lambda rid: UploadUrlRequest(
                action="upload_url", request_id=rid, filename=filename, content_type=ctype, size=size
            ),
            UploadUrl,
        )

    async def put_upload(self, ticket: UploadUrl, data: bytes) -> None:
        """PUT the file's bytes to the URL upload_url returned (S3, MinIO or the local gateway)."""
        if self._session is None:
            raise RuntimeError("use the client as `async with RagClient(url) as client:`")
        try:
            headers = dict(ticket.headers)
            if _origin(ticket.url) == _origin(self.url):
                # The local gateway standing in for S3: it may ask who is uploading. Never sent elsewhere
                # (a presigned S3 URL must carry no other credential, and the key is not S3's business).
                headers.update(self.auth_headers())
            async with self._session.request(
                ticket.method,
                ticket.url,
                data=data,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=UPLOAD_TIMEOUT, connect=self.connect_timeout),
            ) as resp:
                body = await resp.read()
                if resp.status >= 300:
                    m = _S3_ERROR.search(body[:4096].decode("utf-8", "replace"))
                    detail = f"{m.group(1)}: {m.group(2) or ''}".rstrip(": ") if m else resp.reason or ""
                    raise RagClientError(
                        RagClientError.UPLOAD_FAILED, f"the upload was refused: HTTP {resp.status} {detail}".rstrip()
                    )
        except TimeoutError:
            raise RagClientError(
                RagClientError.UPLOAD_FAILED, f"the upload did not finish within {UPLOAD_TIMEOUT:g}s"
            ) from None
        except aiohttp.ClientError as exc:
            raise RagClientError(
                RagClientError.UPLOAD_FAILED, f"the upload URL could not be reached: {_reason(exc)}"
            ) from None

    async def ingest_object(self, key: str, *, doc_id: str | None = None, title: str | None = None) -> IngestResult:
        """Parse, chunk, embed and store a file uploaded with upload_url + put_upload."""
        return await self._call(
            lambda rid: IngestObjectRequest(
                action="ingest_object", request_id=rid, key=key, doc_id=doc_id, title=title
            ),
            IngestResult,
        )

    async def upload_file(
        self,
        path: str | Path,
        *,
        doc_id: str | None = None,
        title: str | None = None,
        data: bytes | None = None,
        content_type: str | None = None,
    ) -> IngestResult:
        """upload_url -> PUT -> ingest_object for one file (.txt, .md, .pdf, .html ...; the server parses it).
        ``doc_id`` defaults to the file name on the server."""
        path = Path(path)
        if data is None:
            data = await asyncio.to_thread(path.read_bytes)
        ticket = await self.upload_url(path.name, max(len(data), 1), content_type)
        await self.put_upload(ticket, data)
        return await self.ingest_object(ticket.key, doc_id=doc_id, title=title)

    async def delete_document(self, doc_id: str) -> DocumentDeleted:
        return await self._call(
            lambda rid: DeleteDocumentRequest(action="delete_document", request_id=rid, doc_id=doc_id),
            DocumentDeleted,
        )

    async def search(
        self,
        query: str,
        *,
        top_k: int | None = None,
        max_distance: float | None = None,
        search_mode: SearchMode | None = None,
    ) -> SearchResult:
        return await self._call(
            lambda rid: SearchRequest(
                action="search",
                request_id=rid,
                query=query,
                top_k=top_k,
                max_distance=max_distance,
                search_mode=search_mode,
            ),
            SearchResult,
        )

    async def sample_chunks(self, count: int, *, seed: int | None = None) -> ChunkSample:
        """Up to ``count`` (at most 100) of the tenant's chunks drawn at random, with their text."""
        return await self._call(
            lambda rid: SampleChunksRequest(action="sample_chunks", request_id=rid, count=count, seed=seed),
            ChunkSample,
        )

    async def list_documents_page(self, *, limit: int | None = None, after: str | None = None) -> DocumentList:
        """One page of the documents, in id order (``after``: the previous page's ``next``)."""
        return await self._call(
            lambda rid: ListDocumentsRequest(action="list_documents", request_id=rid, limit=limit, after=after),
            DocumentList,
        )

    async def list_documents_pages(self, *, limit: int | None = MAX_DOCUMENTS_LIMIT) -> AsyncIterator[DocumentList]:
        """Every page of the documents, following ``next`` until the last."""
        after: str | None = None
        while True:
            page = await self.list_documents_page(limit=limit, after=after)
            yield page
            after = _next_cursor(page.next, after)
            if after is None:
                return

    async def list_documents(self) -> list[DocumentInfo]:
        """Every document (all the pages)."""
        return [d async for page in self.list_documents_pages() for d in page.documents]

    async def history_page(
        self, conversation_id: str, *, limit: int | None = None, after: str | None = None
    ) -> History:
        """One page of a conversation's messages, oldest first (``after``: the previous page's ``next``)."""
        return await self._call(
            lambda rid: HistoryRequest(
                action="history", request_id=rid, conversation_id=conversation_id, limit=limit, after=after
            ),
            History,
        )

    async def history_pages(
        self, conversation_id: str, *, limit: int | None = MAX_HISTORY_LIMIT
    ) -> AsyncIterator[History]:
        """Every page of a conversation, following ``next`` until the last."""
        after: str | None = None
        while True:
            page = await self.history_page(conversation_id, limit=limit, after=after)
            yield page
            after = _next_cursor(page.next, after)
            if after is None:
                return

    async def history(self, conversation_id: str) -> History:
        """The whole conversation (all the pages) as one History."""
        messages: list[HistoryMessage] = []
        async for page in self.history_pages(conversation_id):
            messages.extend(page.messages)
        return History(request_id=None, conversation_id=conversation_id, messages=messages)

    async def chat(
        self,
        question: str,
        conversation_id: str | None = None,
        *,
        top_k: int | None = None,
        max_distance: float | None = None,
    ) -> AsyncGenerator[ChatEvent, None]:
        """Ask a question; yield stream_start, the tokens as they arrive, then stream_end."""

        def make(rid: str) -> ChatRequest:
            return ChatRequest(
                action="chat",
                request_id=rid,
                question=question,
                conversation_id=conversation_id,
                top_k=top_k,
                max_distance=max_distance,
            )

        backoff = self._throttle_backoff()
        while True:
            throttled = False
            async with self._exchange(make) as next_reply:
                while True:
                    reply = await next_reply()
                    if isinstance(reply, ErrorMessage):
                        if reply.code == ErrorCode.THROTTLED and backoff.allowed():
                            throttled = True  # refused before it started: safe to send again
                            break
                        raise RagClientError.from_reply(reply)
                    if not isinstance(reply, StreamStart | Token | StreamEnd):
                        raise RagClientError(
                            RagClientError.INVALID_REPLY, f"unexpected {reply.type!r} reply to a chat request"
                        )
                    yield reply
                    if isinstance(reply, StreamEnd):
                        return
            if throttled:
                await backoff.wait()


def _next_cursor(next_cursor: str | None, after: str | None) -> str | None:
    """The cursor of the page after one asked for with ``after``; a server that repeats it would loop."""
    if next_cursor is not None and next_cursor == after:
        raise RagClientError(RagClientError.INVALID_REPLY, "the server returned the same page cursor again")
    return next_cursor
