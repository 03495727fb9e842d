"""The bodies of the HTTP API (``api/app.py``): OpenAI's, plus the RAG extensions.

The OpenAI shapes come from ``shared/openai_models.py`` (one definition, shared with the LLM service);
this adds the retrieval parameters to the request and the citations to the answers, and the document
and knowledge-base bodies. The retrieval and upload fields reuse the protocol's field definitions
(``shared/protocol.py``), so the API accepts exactly what the functions do. ``api/openapi.py``
generates the OpenAPI document from these models.
"""

from __future__ import annotations

import copy
from typing import Any, Literal

from pydantic import ConfigDict, Field
from pydantic.fields import FieldInfo

from shared import openai_models as openai
from shared.openai_models import Error, Model, ModelList, ResponseBody
from shared.protocol import (
    DEFAULT_DOCUMENTS_LIMIT,
    MAX_DOCUMENTS_LIMIT,
    ChatRequest,
    DocumentInfo,
    ListDocumentsRequest,
    SearchMode,
    Source,
    UploadUrlRequest,
)

__all__ = [
    "ChatCompletion",
    "ChatCompletionChunk",
    "ChatCompletionRequest",
    "Citation",
    "Document",
    "DocumentDeleted",
    "DocumentList",
    "DocumentListQuery",
    "Error",
    "Model",
    "ModelList",
    "SyncError",
    "SyncJob",
    "SyncJobAccepted",
    "SyncJobList",
    "UploadError",
    "UploadRequest",
    "UploadTicket",
]

MODEL_ID = "localrag"


def _field(model: type[Any], name: str, description: str | None = None) -> Any:
    """A copy of another model's field definition (its constraints and description)."""
    info: FieldInfo = copy.copy(model.model_fields[name])
    if description is not None:
        info.description = description
    return info


# ---------------------------------------------------------------------- chat completions


class ChatCompletionRequest(openai.ChatCompletionRequest):
    """System and developer messages are ignored: the RAG prompt (the retrieved passages and how to cite
    them) is the system prompt. Sampling parameters (temperature, max_tokens, ...) are checked and
    ignored: the chat function's settings apply."""

    model: str = Field(min_length=1, examples=[MODEL_ID], description=f"The only model is {MODEL_ID!r}.")
    messages: list[openai.ChatMessage] = Field(
        min_length=1,
        description="The whole conversation (stateless: nothing is stored). The last message is the question "
        "and must be the user's; earlier user/assistant messages are the history.",
    )
    n: Literal[1] | None = Field(default=None, description="Only one choice is supported.")
    top_k: int | None = _field(ChatRequest, "top_k", "Extension: how many passages to retrieve.")
    max_distance: float | None = _field(
        ChatRequest, "max_distance", "Extension: cosine-distance threshold (default RAG_MAX_DISTANCE)."
    )
    search_mode: SearchMode | None = _field(ChatRequest, "search_mode", "Extension: retrieval mode.")


class Citation(ResponseBody):
    """A retrieved passage the answer may cite (the protocol's Source, without its internals)."""

    n: int = _field(Source, "n")
    doc_id: str = _field(Source, "doc_id")
    title: str = _field(Source, "title")
    page: int | None = _field(Source, "page")
    heading: str | None = _field(Source, "heading")
    excerpt: str = _field(Source, "excerpt")
    distance: float = _field(Source, "distance")


class ChatCompletion(openai.ChatCompletion):
    citations: list[Citation] = Field(description="The retrieved passages, numbered as cited in the answer.")


class ChatCompletionChunk(openai.ChatCompletionChunk):
    _omit_if_none = frozenset({"usage", "citations"})

    citations: list[Citation] | None = Field(
        default=None, description="Only on the citations chunk (the one with no choices)."
    )


# ---------------------------------------------------------------------- documents


class UploadRequest(openai.RequestBody):
    model_config = ConfigDict(extra="forbid")  # as the ingestion function's upload_url

    filename: str = _field(UploadUrlRequest, "filename", "Its extension picks the parser: .txt .md .pdf .html")
    content_type: str = _field(UploadUrlRequest, "content_type")
    size: int = _field(UploadUrlRequest, "size", "Bytes (checked against the limit).")


class UploadTicket(ResponseBody):
    id: str = Field(description="The document id it will have (its safe file name).")
    object: Literal["document.upload"] = "document.upload"
    key: str
    upload_url: str
    method: Literal["PUT"] = "PUT"
    headers: dict[str, str] = Field(description="Send these with the PUT (on S3 the Content-Type is signed).")
    expires_in: int


class UploadError(ResponseBody):
    code: str
    message: str


class Document(DocumentInfo, ResponseBody):
    """An indexed document (as the ingestion function lists it) or an upload not synced yet. status:
    uploaded = upload URL issued, not synced yet; failed = the last sync of it failed (see error), or it
    has no chunks."""

    error: UploadError | None = None


class DocumentListQuery(openai.RequestBody):
    """GET /v1/documents?limit=&after= (OpenAI's list pagination): the query string, as the ingestion
    function's list_documents takes it (other parameters are ignored)."""

    limit: int = Field(
        default=DEFAULT_DOCUMENTS_LIMIT,
        ge=1,
        le=MAX_DOCUMENTS_LIMIT,
        description=f"Documents per page at most (1-{MAX_DOCUMENTS_LIMIT}, default {DEFAULT_DOCUMENTS_LIMIT}).",
    )
    after: str | None = _field(ListDocumentsRequest, "after", "The cursor: the previous page's `last_id`.")


class DocumentList(ResponseBody):
    """One page of documents in id order, like OpenAI's list objects: while ``has_more``, ask again with
    ``after`` = ``last_id``."""

    object: Literal["list"] = "list"
    data: list[Document]
    first_id: str | None = None
    last_id: str | None = None
    has_more: bool = False
    next: str | None = Field(default=None, description="The `after` of the next page; null on the last page.")


class DocumentDeleted(ResponseBody):
    id: str
    object: Literal["document.deleted"] = "document.deleted"
    deleted: Literal[True] = True
    chunks_deleted: int


# ---------------------------------------------------------------------- knowledge-base sync


class SyncError(ResponseBody):
    document: str | None
    code: str
    message: str


class SyncJob(ResponseBody):
    id: str
    object: Literal["kb.sync_job"] = "kb.sync_job"
    status: Literal["queued", "running", "done", "failed"] = Field(
        description="done: every document was indexed; failed: some were not (see errors)."
    )
    total: int
    succeeded: int
    failed: int
    errors: list[SyncError]
    created_at: str
    started_at: str | None
    finished_at: str | None


class SyncJobAccepted(SyncJob):
    job_id: str


class SyncJobList(ResponseBody):
    object: Literal["list"] = "list"
    data: list[SyncJob]
