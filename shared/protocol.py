"""The client <-> gateway wire protocol, defined once.

Every message is a JSON object. Client requests carry an ``action`` (API Gateway's route selection
expression is ``$request.body.action``) and an optional ``request_id`` that every reply echoes.
Server messages carry a ``type``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, field_validator

# API Gateway's WebSocket frame limit.
MAX_MESSAGE_BYTES = 128 * 1024

# Paged replies (list_documents, history): a page holds at most ``limit`` items, and fewer when their JSON
# would not fit one message (shared/paging.py builds pages by serialized size, so any page fits).
DEFAULT_DOCUMENTS_LIMIT = 100
MAX_DOCUMENTS_LIMIT = 1000
DEFAULT_HISTORY_LIMIT = 50
MAX_HISTORY_LIMIT = 200


class ErrorCode(StrEnum):
    """Stable error codes. Clients branch on these; the message text may change."""

    MALFORMED_JSON = "malformed_json"
    UNKNOWN_ACTION = "unknown_action"
    INVALID_REQUEST = "invalid_request"
    EMPTY_MESSAGE = "empty_message"
    MESSAGE_TOO_LARGE = "message_too_large"
    INVALID_UTF8 = "invalid_utf8"
    EMPTY_DOCUMENT = "empty_document"
    DOCUMENT_TOO_LARGE = "document_too_large"
    DOCUMENT_NOT_FOUND = "document_not_found"
    UNKNOWN_CONVERSATION = "unknown_conversation"
    # Another chat of this conversation is being answered; retry when its stream has ended.
    CONVERSATION_BUSY = "conversation_busy"
    # Another request was writing the document for longer than RAG_DOCUMENT_LEASE_WAIT_S; nothing of this
    # one was written: retry (S3 and Kinesis records are retried by Lambda).
    DOCUMENT_BUSY = "document_busy"
    INDEX_MISMATCH = "index_mismatch"
    UPSTREAM_UNAVAILABLE = "upstream_unavailable"
    UPSTREAM_TIMEOUT = "upstream_timeout"
    UNSUPPORTED_TYPE = "unsupported_type"
    CORRUPT_DOCUMENT = "corrupt_document"
    NO_TEXT_LAYER = "no_text_layer"
    # A file over a parser limit (nesting depth, elements, parse time): final, never retried.
    DOCUMENT_TOO_COMPLEX = "document_too_complex"
    OBJECT_NOT_FOUND = "object_not_found"
    THROTTLED = "throttled"
    FUNCTION_ERROR = "function_error"
    INTERNAL_ERROR = "internal_error"
    UNAUTHORIZED = "unauthorized"
    REPLY_TOO_LARGE = "reply_too_large"


class _Msg(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False)


RequestId = Annotated[str | None, Field(default=None, max_length=128, description="Echoed in every reply.")]


# ---------------------------------------------------------------- client -> server


# Formats whose text may be sent in a message (shared/formats.py: the formats marked inline).
TextFormat = Literal["text", "markdown"]


# Document ids and file names are limited in UTF-8 bytes too (a file system's name limit is in bytes):
# checked as a message arrives, so a store never refuses one half way.
MAX_ID_CHARS = 256
MAX_ID_BYTES = 512
MAX_FILENAME_BYTES = 1024  # as sent to upload_url; the stored name is cut to 200 bytes (keeping its extension)


def _utf8_within(v: str, limit: int, what: str) -> str:
    size = len(v.encode("utf-8", "surrogatepass"))
    if size > limit:
        raise ValueError(f"{what} is {size} bytes in UTF-8; the limit is {limit}")
    return v


def check_doc_id(v: str) -> str:
    """A document id's characters and UTF-8 length (the length in characters is the field's)."""
    if any(c in v for c in "\x00\n\r#/\\") or v != v.strip():
        raise ValueError("document id must not contain '#', '/', '\\', control characters or padding")
    return _utf8_within(v, MAX_ID_BYTES, "the document id")


class Document(_Msg):
    id: str = Field(
        min_length=1,
        max_length=MAX_ID_CHARS,
        description=f"Stable document id; re-ingesting replaces it. At most {MAX_ID_CHARS} characters and "
        f"{MAX_ID_BYTES} bytes of UTF-8.",
    )
    title: str = Field(
        default="",
        max_length=1024,
        description="The title. With format 'markdown' the text's own title (front matter 'title:', else the "
        "first '#' heading) comes first and this is the fallback.",
    )
    text: str = Field(description="The document's text (non-empty).")
    format: TextFormat | None = Field(
        default=None,
        description="What the text is, as for an uploaded file of that format: 'markdown' is split by headings "
        "(chunks get a 'heading'), front matter 'title:'/'date:' read; 'text' is taken as is. Either is recorded "
        "as the chunks' metadata 'format'. Omitted: plain text, nothing recorded.",
    )
    date: str | None = Field(default=None, max_length=64, description="Optional date, e.g. 2025-01-31.")
    source: str | None = Field(default=None, max_length=1024, description="Where it came from (path, URL).")
    metadata: dict[str, str | int | float | bool | None] = Field(default_factory=dict)

    @field_validator("id")
    @classmethod
    def _id_chars(cls, v: str) -> str:
        return check_doc_id(v)


class IngestRequest(_Msg):
    action: Literal["ingest"]
    request_id: RequestId
    document: Document


# Documents per ingest_batch message (the message itself stays within MAX_MESSAGE_BYTES).
MAX_BATCH_DOCUMENTS = 100


class IngestBatchRequest(_Msg):
    """Several small documents in one message, ingested together: one embedding pass and one index
    commit for all of them (faster than one ``ingest`` each). Each document succeeds or fails on its own."""

    action: Literal["ingest_batch"]
    request_id: RequestId
    documents: list[Document] = Field(min_length=1, max_length=MAX_BATCH_DOCUMENTS)


class DeleteDocumentRequest(_Msg):
    action: Literal["delete_document"]
    request_id: RequestId
    doc_id: str = Field(min_length=1, max_length=MAX_ID_CHARS)

    @field_validator("doc_id")
    @classmethod
    def _id_bytes(cls, v: str) -> str:
        return _utf8_within(v, MAX_ID_BYTES, "the document id")


# How passages are retrieved: vectors (cosine), LanceDB's native full-text index (BM25), or both fused.
SearchMode = Literal["vector", "fts", "hybrid"]


class UploadUrlRequest(_Msg):
    """Ask for a presigned PUT URL to upload a file too large for a WebSocket message."""

    action: Literal["upload_url"]
    request_id: RequestId
    filename: str = Field(
        min_length=1,
        max_length=512,
        description=f"File name; its extension picks the parser. At most {MAX_FILENAME_BYTES} bytes of UTF-8; "
        "a name over 200 bytes is stored cut to 200 (keeping its extension).",
    )
    content_type: str = Field(default="application/octet-stream", max_length=256)

    size: int = Field(ge=1, description="Size in bytes (checked against the document size limit).")

    @field_validator("filename")
    @classmethod
    def _filename_bytes(cls, v: str) -> str:
        return _utf8_within(v, MAX_FILENAME_BYTES, "the file name")


class IngestObjectRequest(_Msg):
    """Ingest a file already uploaded to the documents bucket (after upload_url)."""

    action: Literal["ingest_object"]
    request_id: RequestId
    key: str = Field(min_length=1, max_length=1024, description="The object key upload_url returned.")
    doc_id: str | None = Field(default=None, max_length=MAX_ID_CHARS, description="Defaults to the file name.")

    title: str | None = Field(default=None, max_length=1024)

    @field_validator("doc_id")
    @classmethod
    def _id_bytes(cls, v: str | None) -> str | None:
        return None if v is None else _utf8_within(v, MAX_ID_BYTES, "the document id")


class ListDocumentsRequest(_Msg):
    """One page of the tenant's documents, by id. Without ``limit``: the first page of
    DEFAULT_DOCUMENTS_LIMIT; follow the reply's ``next`` (as ``after``) until it is null."""

    action: Literal["list_documents"]
    request_id: RequestId
    limit: int | None = Field(
        default=None,
        ge=1,
        le=MAX_DOCUMENTS_LIMIT,
        description=f"Documents per page at most (default {DEFAULT_DOCUMENTS_LIMIT}); fewer when their JSON "
        "would not fit one 128 KB message.",
    )
    after: str | None = Field(
        default=None,
        min_length=1,
        max_length=1024,
        description="The cursor: the previous page's `next` (the id of its last document); omit for the first page.",
    )


class ChatMessage(_Msg):
    role: Literal["user", "assistant"]
    content: str = Field(max_length=64_000)


class ChatRequest(_Msg):
    action: Literal["chat"]
    request_id: RequestId
    question: str = Field(min_length=1, max_length=16_000)
    conversation_id: str | None = Field(
        default=None, max_length=128, description="Continue this conversation; omit to start one."
    )
    top_k: int | None = Field(default=None, ge=1, le=50)
    max_distance: float | None = Field(default=None, ge=0.0, le=2.0)
    search_mode: SearchMode | None = None
    messages: list[ChatMessage] | None = Field(
        default=None,
        max_length=200,
        description="Stateless chat: the earlier turns, sent by the client (the OpenAI-style HTTP API). "
        "Nothing is stored and conversation_id must be omitted.",
    )


class SearchRequest(_Msg):
    action: Literal["search"]
    request_id: RequestId
    query: str = Field(min_length=1, max_length=16_000)
    top_k: int | None = Field(default=None, ge=1, le=100)
    max_distance: float | None = Field(default=None, ge=0.0, le=2.0)
    search_mode: SearchMode | None = None


class HistoryRequest(_Msg):
    """One page of a conversation's messages, oldest first. Without ``limit``: the first page of
    DEFAULT_HISTORY_LIMIT; follow the reply's ``next`` (as ``after``) until it is null."""

    action: Literal["history"]
    request_id: RequestId
    conversation_id: str = Field(min_length=1, max_length=128)
    limit: int | None = Field(
        default=None,
        ge=1,
        le=MAX_HISTORY_LIMIT,
        description=f"Messages per page at most (default {DEFAULT_HISTORY_LIMIT}); fewer when their JSON would "
        "not fit one 128 KB message.",
    )
    after: str | None = Field(
        default=None,
        min_length=1,
        max_length=128,
        description="The cursor: the previous page's `next` (the id of its last message); omit for the first page.",
    )


# Chunks per sample_chunks reply, and the characters of each chunk's text it carries (100 x 600 fits a message).
MAX_SAMPLE_CHUNKS = 100
SAMPLE_TEXT_CHARS = 600


class SampleChunksRequest(_Msg):
    """A uniform random sample of the tenant's chunks with their text: in-topic probes for threshold
    calibration (``localrag calibrate``). The same ``seed`` over the same chunks draws the same sample."""

    action: Literal["sample_chunks"]
    request_id: RequestId
    count: int = Field(default=50, ge=1, le=MAX_SAMPLE_CHUNKS, description="Chunks to draw (fewer if there are fewer).")
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1, description="Random seed; omit for a fresh sample.")


AnyClientRequest = (
    IngestRequest
    | IngestBatchRequest
    | DeleteDocumentRequest
    | ChatRequest
    | SearchRequest
    | HistoryRequest
    | UploadUrlRequest
    | IngestObjectRequest
    | ListDocumentsRequest
    | SampleChunksRequest
)
ClientRequest = Annotated[AnyClientRequest, Field(discriminator="action")]
CLIENT_REQUEST: TypeAdapter[ClientRequest] = TypeAdapter(ClientRequest)


# ---------------------------------------------------------------- the action registry

# The functions (Lambda handlers) behind the WebSocket API.
FunctionName = Literal["ingestion", "chat"]


@dataclass(frozen=True)
class ActionSpec:
    """One client action: its request model and the function that serves it. ``two_way``: the reply comes
    back as the route's response (API Gateway's two-way route: ``RouteResponseSelectionExpression: $default``
    and a ``$default`` RouteResponse in template.yaml), in the Invoke's own answer, instead of through a
    separate @connections POST; for actions whose single reply is all they send."""

    request: type[_Msg]
    function: FunctionName
    two_way: bool = False

    @property
    def name(self) -> str:
        (action,) = get_args(self.request.model_fields["action"].annotation)
        return str(action)


def _registry(*specs: ActionSpec) -> Mapping[str, ActionSpec]:
    registry = {spec.name: spec for spec in specs}
    if len(registry) != len(specs) or {s.request for s in specs} != set(get_args(AnyClientRequest)):
        raise RuntimeError("ACTION_REGISTRY must name every ClientRequest model once")
    return MappingProxyType(registry)


# Action -> request model -> function, defined once: the gateway's default routes, each handler's
# dispatch table and template.yaml's routes are derived from (or checked against) this.
ACTION_REGISTRY: Mapping[str, ActionSpec] = _registry(
    ActionSpec(IngestRequest, "ingestion"),
    ActionSpec(IngestBatchRequest, "ingestion"),
    ActionSpec(DeleteDocumentRequest, "ingestion"),
    ActionSpec(ChatRequest, "chat"),
    ActionSpec(SearchRequest, "chat", two_way=True),
    ActionSpec(HistoryRequest, "chat", two_way=True),
    ActionSpec(UploadUrlRequest, "ingestion"),
    ActionSpec(IngestObjectRequest, "ingestion"),
    ActionSpec(ListDocumentsRequest, "ingestion"),
    ActionSpec(SampleChunksRequest, "chat", two_way=True),
)
ACTIONS: tuple[str, ...] = tuple(ACTION_REGISTRY)
# The route keys that are not actions and have a function: messages no action matches ($default, which
# answers unknown_action).
CONNECTION_ROUTES: Mapping[str, FunctionName] = MappingProxyType({"$default": "chat"})
# Routes with no function: API Gateway answers them itself (a MOCK integration, {"statusCode": 200}).
# $connect exists to carry the REQUEST authorizer, and identity is all a connect needs, so no connect
# waits for a function's concurrency (e.g. behind chat's slots while answers generate). There is no
# $disconnect route: nothing is done when a connection closes (the gateway logs it).
MOCK_ROUTES: tuple[str, ...] = ("$connect",)


def actions_of(function: FunctionName) -> tuple[str, ...]:
    """The actions ``function`` serves, in registry order."""
    return tuple(name for name, spec in ACTION_REGISTRY.items() if spec.function == function)


def two_way_routes() -> frozenset[str]:
    """The route keys whose function answers in the route's response (``ActionSpec.two_way``)."""
    return frozenset(name for name, spec in ACTION_REGISTRY.items() if spec.two_way)


def route_table() -> dict[str, FunctionName]:
    """Every WebSocket route key that has a function -> that function (API Gateway's Lambda routes, the
    gateway's default routes); the MOCK_ROUTES have none."""
    return {**CONNECTION_ROUTES, **{name: spec.function for name, spec in ACTION_REGISTRY.items()}}


# ---------------------------------------------------------------- server -> client


class Source(BaseModel):
    """One retrieved passage that survived the distance threshold."""

    n: int = Field(description="Citation number as used in the prompt: [1], [2], ...")
    doc_id: str
    title: str
    chunk: int = Field(description="Chunk index within the document.")
    distance: float = Field(description="Cosine distance, 0 (same direction) to 2 (opposite).")
    excerpt: str
    date: str | None = None
    source: str | None = None
    page: int | None = Field(default=None, description="1-based page (PDFs).")
    heading: str | None = Field(default=None, description="Heading path, e.g. 'Setup > Install' (Markdown, HTML).")


# Which system prompt answered: built from retrieved passages, or the one for "nothing relevant found".
PromptKind = Literal["context", "no_context"]


class Usage(BaseModel):
    input_tokens: int = 0
    output_tokens: int = 0
    total_tokens: int = 0


class IngestResult(BaseModel):
    type: Literal["ingest_result"] = "ingest_result"
    request_id: str | None
    doc_id: str
    chunks: int
    replaced_chunks: int = Field(description="Chunks of an earlier version that this one replaced.")
    tokens: int
    timings_ms: dict[str, float]


class ErrorDetail(BaseModel):
    code: ErrorCode
    message: str


class IngestItem(BaseModel):
    """One document of an ingest_batch: what ingest_result says of it, or why it failed."""

    doc_id: str
    status: Literal["ingested", "failed"]
    chunks: int = 0
    replaced_chunks: int = 0
    tokens: int = 0
    error: ErrorDetail | None = None


class IngestBatchResult(BaseModel):
    type: Literal["ingest_batch_result"] = "ingest_batch_result"
    request_id: str | None
    results: list[IngestItem] = Field(description="One per document, in the order sent.")
    ingested: int
    failed: int
    timings_ms: dict[str, float]


class DocumentDeleted(BaseModel):
    type: Literal["document_deleted"] = "document_deleted"
    request_id: str | None
    doc_id: str
    chunks_deleted: int


class UploadUrl(BaseModel):
    type: Literal["upload_url"] = "upload_url"
    request_id: str | None
    key: str
    url: str
    method: Literal["PUT"] = "PUT"
    headers: dict[str, str] = Field(description="Send these headers with the PUT (Content-Type).")
    expires_in: int


class DocumentInfo(BaseModel):
    id: str
    title: str = ""
    name: str | None = Field(default=None, description="Original file name, for uploads.")
    size: int | None = Field(default=None, description="Bytes of the raw document or uploaded file.")
    status: Literal["uploaded", "indexed", "failed"]
    chunks: int = 0
    uploaded_at: str | None = None
    indexed_at: str | None = None


class DocumentList(BaseModel):
    type: Literal["document_list"] = "document_list"
    request_id: str | None
    documents: list[DocumentInfo] = Field(description="One page, in id order.")
    next: str | None = Field(default=None, description="Send it as `after` for the next page; null on the last page.")


class SearchResult(BaseModel):
    type: Literal["search_result"] = "search_result"
    request_id: str | None
    query: str
    max_distance: float
    results: list[Source]


class SampledChunk(BaseModel):
    doc_id: str
    title: str
    chunk: int = Field(description="Chunk index within the document.")
    text: str = Field(description=f"The chunk's text, its first {SAMPLE_TEXT_CHARS} characters at most.")


class ChunkSample(BaseModel):
    type: Literal["chunk_sample"] = "chunk_sample"
    request_id: str | None
    total: int = Field(description="The tenant's chunks, all of them (the population sampled).")
    chunks: list[SampledChunk]


class StreamStart(BaseModel):
    type: Literal["stream_start"] = "stream_start"
    request_id: str | None
    conversation_id: str
    sources: list[Source]


class Token(BaseModel):
    type: Literal["token"] = "token"
    request_id: str | None
    index: int
    text: str


class StreamEnd(BaseModel):
    type: Literal["stream_end"] = "stream_end"
    request_id: str | None
    conversation_id: str
    answer: str
    sources: list[Source]
    usage: Usage
    stop_reason: str
    prompt: PromptKind
    timings_ms: dict[str, float]


class HistoryMessage(BaseModel):
    id: str
    role: Literal["user", "assistant"]
    content: str
    created_at: str
    sources: list[Source] = Field(default_factory=list, description="RAG context of an assistant message.")
    max_distance: float | None = None
    prompt: PromptKind | None = None
    truncated: bool = Field(
        default=False,
        description="True when this message alone would not fit one reply: its sources, then its content, "
        "were cut to fit (the stored message is whole).",
    )


class History(BaseModel):
    type: Literal["history"] = "history"
    request_id: str | None
    conversation_id: str
    messages: list[HistoryMessage] = Field(description="One page, oldest first.")
    next: str | None = Field(default=None, description="Send it as `after` for the next page; null on the last page.")


class ErrorMessage(BaseModel):
    type: Literal["error"] = "error"
    request_id: str | None
    code: ErrorCode
    message: str


ServerMessage = Annotated[
    IngestResult
    | IngestBatchResult
    | DocumentDeleted
    | UploadUrl
    | DocumentList
    | SearchResult
    | ChunkSample
    | StreamStart
    | Token
    | StreamEnd
    | History
    | ErrorMessage,
    Field(discriminator="type"),
]
SERVER_MESSAGE: TypeAdapter[ServerMessage] = TypeAdapter(ServerMessage)


def _json_object(raw: bytes) -> dict[str, Any] | None:
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: nested too deeply to read
        return None
    return data if isinstance(data, dict) else None


def request_id_of(raw: bytes) -> str | None:
    """Best-effort request id from a body that may not validate, so errors can echo it."""
    data = _json_object(raw)
    rid = data.get("request_id") if data is not None else None
    return rid if isinstance(rid, str) and len(rid) <= 128 else None


def action_of(raw: bytes) -> str | None:
    """The value of $request.body.action, or None when the body has none (-> the $default route)."""
    data = _json_object(raw)
    action = data.get("action") if data is not None else None
    return action if isinstance(action, str) else None


def encode(message: BaseModel) -> bytes:
    return message.model_dump_json().encode("utf-8")


def error(code: ErrorCode, message: str, request_id: str | None = None) -> ErrorMessage:
    return ErrorMessage(request_id=request_id, code=code, message=message)


def describe_validation_error(errors: list[Any]) -> str:
    """A client-safe, one-line summary of pydantic errors (field paths and reasons, no input echo)."""
    parts = []
    for err in errors[:5]:
        loc = ".".join(str(p) for p in err.get("loc", ()) if p not in ("function-after",)) or "body"
        parts.append(f"{loc}: {err.get('msg', 'invalid')}")
    more = f" (+{len(errors) - 5} more)" if len(errors) > 5 else ""
    return "; ".join(parts) + more
