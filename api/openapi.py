"""The OpenAPI 3.1 description of the HTTP API (``api/app.py``), served at ``GET /openapi.json``.

Generated: the schemas are the JSON schemas of the very models the handlers parse and build
(``api/models.py``, ``shared/openai_models.py``), so the document cannot drift from the wire;
this module only lists the operations. ``tests/stack/test_http_api.py`` checks that its paths are
exactly the API's routes and validates real responses against its schemas.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Any

from aiohttp import web
from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from api.models import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    DocumentDeleted,
    DocumentList,
    DocumentListQuery,
    Error,
    Model,
    ModelList,
    SyncJobAccepted,
    SyncJobList,
    UploadRequest,
    UploadTicket,
)

API_PREFIX = "/v1"
JSON = "application/json"
REF_TEMPLATE = "#/components/schemas/{model}"

STREAM_DESCRIPTION = """\
With `"stream": true`: server-sent events, each a line `data: {json}` and a blank line:

1. a `chat.completion.chunk` whose delta is `{"role": "assistant", "content": ""}`;
2. one `chat.completion.chunk` per generated piece of text (`delta.content`);
3. a `chat.completion.chunk` with an empty delta and `finish_reason` (`stop`, or `length` when the answer
   hit the token limit);
4. **the citations**: one `chat.completion.chunk` with `"choices": []` and a top-level `citations` array
   (plus `usage` when `stream_options.include_usage` is true) - chunk-shaped, so OpenAI clients read it as
   an ordinary chunk without choices;
5. `data: [DONE]`.

An error after the stream started is sent as `data: {"error": {...}}` (the Error schema) and ends it.
Each event's JSON is a `ChatCompletionChunk`."""

ERROR_REASONS = {
    400: "Invalid request: malformed JSON, missing or wrong-typed fields",
    401: "No credential (missing_credentials), or not a valid one (invalid_credentials)",
    403: "The credential may not use this API (access_denied), or the browser Origin is not allowed "
    "(origin_not_allowed)",
    404: "Not found",
    413: "Request body (or declared file) too large",
    415: "Unsupported file type, or a body that is not application/json (unsupported_media_type)",
    429: "Throttled: too many requests in flight",
}
# The routes that take no credential (api/app.py's OPEN): they name the model and read no data.
OPEN_OPERATIONS = {"listModels", "getModel"}
BEARER = {"type": "http", "scheme": "bearer", "description": "An API key (lrk_...) or an OIDC token (JWT)."}


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    operation_id: str
    status: int
    response: type[BaseModel] | None  # None: any JSON object
    response_description: str
    summary: str | None = None
    description: str | None = None
    request: type[BaseModel] | None = None
    errors: tuple[int, ...] = ()
    query: type[BaseModel] | None = None  # the query string's parameters


OPERATIONS: tuple[Operation, ...] = (
    Operation("get", "/models", "listModels", 200, ModelList, "The models", summary="The one model, localrag"),
    Operation("get", "/models/{id}", "getModel", 200, Model, "The model", errors=(404,)),
    Operation(
        "post",
        "/chat/completions",
        "createChatCompletion",
        200,
        ChatCompletion,
        "The completion; " + STREAM_DESCRIPTION,
        summary="Answer the last user message from the indexed documents, with citations",
        request=ChatCompletionRequest,
        errors=(400, 404, 413, 429),
    ),
    Operation(
        "post",
        "/documents",
        "createDocumentUpload",
        201,
        UploadTicket,
        "The upload URL",
        summary="A presigned PUT URL for a file; then PUT it and POST /v1/kb/sync",
        description="The pending upload is remembered (in the documents store, for every api process) until "
        "it is synced.",
        request=UploadRequest,
        errors=(400, 413, 415),
    ),
    Operation(
        "get",
        "/documents",
        "listDocuments",
        200,
        DocumentList,
        "The documents",
        "Indexed documents and pending uploads",
        description="One page, in id order; while `has_more`, ask again with `after` set to `last_id`.",
        errors=(400,),
        query=DocumentListQuery,
    ),
    Operation("delete", "/documents/{id}", "deleteDocument", 200, DocumentDeleted, "Deleted", errors=(404,)),
    Operation(
        "post",
        "/kb/sync",
        "syncKnowledgeBase",
        202,
        SyncJobAccepted,
        "The job, queued",
        summary="Index every pending upload, as a background job",
        errors=(400,),
    ),
    Operation(
        "get",
        "/kb/status",
        "listSyncJobs",
        200,
        SyncJobList,
        "The jobs",
        summary="Sync jobs, newest first (the last 100, in this API process)",
    ),
)


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": REF_TEMPLATE.format(model=model.__name__)}


def _content(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": schema}}}


def _operation(op: Operation) -> dict[str, Any]:
    out: dict[str, Any] = {"operationId": op.operation_id}
    if op.summary:
        out["summary"] = op.summary
    if op.description:
        out["description"] = op.description
    if "{id}" in op.path:
        out["parameters"] = [{"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}]
    if op.query is not None:
        schema = op.query.model_json_schema()
        out["parameters"] = [
            {"name": name, "in": "query", "required": False, "schema": prop}
            for name, prop in schema["properties"].items()
        ]
    if op.request is not None:
        out["requestBody"] = {"required": True, "content": {JSON: {"schema": _ref(op.request)}}}
    ok = _content(_ref(op.response) if op.response else {"type": "object"}, op.response_description)
    if op.response is ChatCompletion:
        ok["content"]["text/event-stream"] = {"schema": {"type": "string", "description": STREAM_DESCRIPTION}}
    responses: dict[str, Any] = {str(op.status): ok}
    errors = op.errors if op.operation_id in OPEN_OPERATIONS else (*op.errors, 401, 403)
    if op.operation_id not in OPEN_OPERATIONS:
        out["security"] = [{"bearer": []}]
    if errors:
        for status in sorted(set(errors)):
            responses[str(status)] = _content(_ref(Error), ERROR_REASONS.get(status, "Error"))
        responses["default"] = {"$ref": "#/components/responses/Error"}
    out["responses"] = responses
    return out


def _schemas() -> dict[str, Any]:
    """Every model's JSON schema (request bodies as accepted, responses as sent), named by its class."""
    models: list[tuple[type[BaseModel], JsonSchemaMode]] = [
        (op.request, "validation") for op in OPERATIONS if op.request
    ]
    models += [(op.response, "serialization") for op in OPERATIONS if op.response]
    models += [(ChatCompletionChunk, "serialization"), (Error, "serialization")]
    _, top = models_json_schema(models, ref_template=REF_TEMPLATE)
    schemas: dict[str, Any] = top.get("$defs", {})
    missing = {m.__name__ for m, _ in models} - set(schemas)
    if missing:  # a name pydantic had to qualify (two models of one name): the $refs above would dangle
        raise RuntimeError(f"OpenAPI schema names clash: {sorted(missing)}")
    return schemas


@cache
def openapi_document() -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for op in OPERATIONS:
        paths.setdefault(API_PREFIX + op.path, {})[op.method] = _operation(op)
    paths["/openapi.json"] = {
        "get": {
            "operationId": "getOpenApi",
            "summary": "This document",
            "responses": {"200": _content({"type": "object"}, "OpenAPI 3.1")},
        }
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "localrag HTTP API",
            "version": "1.0.0",
            "description": "OpenAI-compatible chat completions over the RAG stack, plus document upload and "
            "knowledge-base sync, over the same chat and ingestion logic as the WebSocket API. "
            "Every operation but the model list needs a credential, `Authorization: Bearer <API key or token>`, "
            "checked by the same authorizer as the WebSocket's $connect; the caller's tenant scopes every "
            "read and write.",
        },
        "servers": [{"url": "/"}],
        "paths": paths,
        "components": {
            "schemas": _schemas(),
            "responses": {"Error": _content(_ref(Error), "An error, in OpenAI's shape")},
            "securitySchemes": {"bearer": BEARER},
        },
    }


async def openapi_json(request: web.Request) -> web.Response:
    return web.json_response(openapi_document())
