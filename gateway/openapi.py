"""The OpenAPI 3.1 description of the HTTP API (``gateway/http_api.py``), served at ``GET /openapi.json``.

Built in code (not a data file) so that it ships with the package wherever the gateway is installed;
``tests/test_http_api.py`` checks that its paths are exactly the gateway's routes and validates real
responses against its schemas.
"""

from __future__ import annotations

from functools import cache
from typing import Any

JSON = "application/json"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


def _obj(properties: dict[str, Any], required: list[str] | None = None, **extra: Any) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": required or list(properties), **extra}


def _list_of(item: str) -> dict[str, Any]:
    return _obj({"object": {"const": "list"}, "data": {"type": "array", "items": _ref(item)}})


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": schema}}}


def _errors(*statuses: int) -> dict[str, Any]:
    reasons = {
        400: "Invalid request: malformed JSON, missing or wrong-typed fields",
        404: "Not found",
        413: "Request body (or declared file) too large",
        415: "Unsupported file type",
        429: "Throttled: too many requests in flight",
    }
    out: dict[str, Any] = {str(s): _json(_ref("Error"), reasons.get(s, "Error")) for s in statuses}
    out["default"] = {"$ref": "#/components/responses/Error"}
    return out


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


@cache
def openapi_document() -> dict[str, Any]:
    schemas: dict[str, Any] = {
        "Error": _obj(
            {
                "error": _obj(
                    {
                        "message": {"type": "string"},
                        "type": {
                            "type": "string",
                            "description": "invalid_request_error (4xx), rate_limit_error (429), server_error (5xx)",
                        },
                        "code": _nullable({"type": "string"}),
                        "param": _nullable({"type": "string"}),
                    }
                )
            }
        ),
        "Model": _obj(
            {
                "id": {"type": "string", "examples": ["localrag"]},
                "object": {"const": "model"},
                "created": {"type": "integer"},
                "owned_by": {"type": "string"},
            }
        ),
        "ModelList": _list_of("Model"),
        "ChatMessage": _obj(
            {
                "role": {"enum": ["system", "developer", "user", "assistant"]},
                "content": {
                    "anyOf": [
                        {"type": "string"},
                        {
                            "type": "array",
                            "items": _obj({"type": {"const": "text"}, "text": {"type": "string"}}),
                        },
                        {"type": "null"},
                    ]
                },
            },
            ["role"],
            description="System and developer messages are ignored: the RAG prompt (retrieved passages and "
            "how to cite them) is the system prompt.",
        ),
        "ChatCompletionRequest": _obj(
            {
                "model": {"const": "localrag"},
                "messages": {
                    "type": "array",
                    "minItems": 1,
                    "items": _ref("ChatMessage"),
                    "description": "The whole conversation (stateless: nothing is stored). The last message "
                    "is the question and must be the user's; earlier user/assistant messages are the history.",
                },
                "stream": {"type": "boolean", "default": False},
                "stream_options": {"type": "object", "properties": {"include_usage": {"type": "boolean"}}},
                "n": {"const": 1},
                "top_k": {"type": "integer", "minimum": 1, "maximum": 50, "description": "Extension: passages."},
                "max_distance": {
                    "type": "number",
                    "minimum": 0,
                    "maximum": 2,
                    "description": "Extension: cosine-distance threshold (default RAG_MAX_DISTANCE).",
                },
                "search_mode": {"enum": ["vector", "fts", "hybrid"], "description": "Extension: retrieval mode."},
            },
            ["model", "messages"],
            additionalProperties=True,
            description="Other OpenAI parameters (temperature, max_tokens, ...) are accepted and ignored.",
        ),
        "Citation": _obj(
            {
                "n": {"type": "integer", "description": "Citation number, as in [1], [2] in the answer."},
                "doc_id": {"type": "string"},
                "title": {"type": "string"},
                "page": _nullable({"type": "integer"}),
                "heading": _nullable({"type": "string"}),
                "excerpt": {"type": "string"},
                "distance": {"type": "number"},
            }
        ),
        "Usage": _obj(
            {
                "prompt_tokens": {"type": "integer"},
                "completion_tokens": {"type": "integer"},
                "total_tokens": {"type": "integer"},
            }
        ),
        "FinishReason": {"enum": ["stop", "length", "content_filter"]},
        "ChatCompletion": _obj(
            {
                "id": {"type": "string"},
                "object": {"const": "chat.completion"},
                "created": {"type": "integer"},
                "model": {"type": "string"},
                "choices": {
                    "type": "array",
                    "items": _obj(
                        {
                            "index": {"type": "integer"},
                            "message": _obj({"role": {"const": "assistant"}, "content": {"type": "string"}}),
                            "finish_reason": _ref("FinishReason"),
                            "logprobs": {"type": "null"},
                        }
                    ),
                },
                "usage": _ref("Usage"),
                "citations": {"type": "array", "items": _ref("Citation")},
            }
        ),
        "ChatCompletionChunk": _obj(
            {
                "id": {"type": "string"},
                "object": {"const": "chat.completion.chunk"},
                "created": {"type": "integer"},
                "model": {"type": "string"},
                "choices": {
                    "type": "array",
                    "items": _obj(
                        {
                            "index": {"type": "integer"},
                            "delta": {
                                "type": "object",
                                "properties": {"role": {"const": "assistant"}, "content": {"type": "string"}},
                            },
                            "finish_reason": _nullable(_ref("FinishReason")),
                        }
                    ),
                },
                "citations": {
                    "type": "array",
                    "items": _ref("Citation"),
                    "description": "Only on the citations chunk (the one with no choices).",
                },
                "usage": _ref("Usage"),
            },
            ["id", "object", "created", "model", "choices"],
        ),
        "UploadRequest": _obj(
            {
                "filename": {"type": "string", "description": "Its extension picks the parser: .txt .md .pdf .html"},
                "content_type": {"type": "string", "default": "application/octet-stream"},
                "size": {"type": "integer", "minimum": 1, "description": "Bytes (checked against the limit)."},
            },
            ["filename", "size"],
        ),
        "UploadTicket": _obj(
            {
                "id": {"type": "string", "description": "The document id it will have (its safe file name)."},
                "object": {"const": "document.upload"},
                "key": {"type": "string"},
                "upload_url": {"type": "string"},
                "method": {"const": "PUT"},
                "headers": {
                    "type": "object",
                    "additionalProperties": {"type": "string"},
                    "description": "Send these with the PUT (on S3 the Content-Type is signed).",
                },
                "expires_in": {"type": "integer"},
            }
        ),
        "Document": _obj(
            {
                "id": {"type": "string"},
                "title": {"type": "string"},
                "name": _nullable({"type": "string"}),
                "size": _nullable({"type": "integer"}),
                "status": {
                    "enum": ["uploaded", "indexed", "failed"],
                    "description": "uploaded: upload URL issued, not synced yet; failed: the last sync of it "
                    "failed (see error), or it has no chunks.",
                },
                "chunks": {"type": "integer"},
                "uploaded_at": _nullable({"type": "string"}),
                "indexed_at": _nullable({"type": "string"}),
                "error": _nullable(_obj({"code": {"type": "string"}, "message": {"type": "string"}})),
            }
        ),
        "DocumentList": _list_of("Document"),
        "DocumentDeleted": _obj(
            {
                "id": {"type": "string"},
                "object": {"const": "document.deleted"},
                "deleted": {"const": True},
                "chunks_deleted": {"type": "integer"},
            }
        ),
        "SyncJob": _obj(
            {
                "id": {"type": "string"},
                "object": {"const": "kb.sync_job"},
                "status": {
                    "enum": ["queued", "running", "done", "failed"],
                    "description": "done: every document was indexed; failed: some were not (see errors).",
                },
                "total": {"type": "integer"},
                "succeeded": {"type": "integer"},
                "failed": {"type": "integer"},
                "errors": {
                    "type": "array",
                    "items": _obj(
                        {
                            "document": _nullable({"type": "string"}),
                            "code": {"type": "string"},
                            "message": {"type": "string"},
                        }
                    ),
                },
                "created_at": {"type": "string"},
                "started_at": _nullable({"type": "string"}),
                "finished_at": _nullable({"type": "string"}),
            }
        ),
        "SyncJobAccepted": {
            "allOf": [_ref("SyncJob"), _obj({"job_id": {"type": "string"}})],
        },
        "SyncJobList": _list_of("SyncJob"),
    }

    id_param = {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
    paths: dict[str, Any] = {
        "/v1/models": {
            "get": {
                "operationId": "listModels",
                "summary": "The one model, localrag",
                "responses": {"200": _json(_ref("ModelList"), "The models")},
            }
        },
        "/v1/models/{id}": {
            "get": {
                "operationId": "getModel",
                "parameters": [id_param],
                "responses": {"200": _json(_ref("Model"), "The model"), **_errors(404)},
            }
        },
        "/v1/chat/completions": {
            "post": {
                "operationId": "createChatCompletion",
                "summary": "Answer the last user message from the indexed documents, with citations",
                "requestBody": {"required": True, "content": {JSON: {"schema": _ref("ChatCompletionRequest")}}},
                "responses": {
                    "200": {
                        "description": "The completion; " + STREAM_DESCRIPTION,
                        "content": {
                            JSON: {"schema": _ref("ChatCompletion")},
                            "text/event-stream": {"schema": {"type": "string", "description": STREAM_DESCRIPTION}},
                        },
                    },
                    **_errors(400, 404, 413, 429),
                },
            }
        },
        "/v1/documents": {
            "post": {
                "operationId": "createDocumentUpload",
                "summary": "A presigned PUT URL for a file; then PUT it and POST /v1/kb/sync",
                "description": "The gateway remembers the pending upload (in this process only) until it is synced.",
                "requestBody": {"required": True, "content": {JSON: {"schema": _ref("UploadRequest")}}},
                "responses": {"201": _json(_ref("UploadTicket"), "The upload URL"), **_errors(400, 413, 415)},
            },
            "get": {
                "operationId": "listDocuments",
                "summary": "Indexed documents and pending uploads",
                "responses": {"200": _json(_ref("DocumentList"), "The documents")},
            },
        },
        "/v1/documents/{id}": {
            "delete": {
                "operationId": "deleteDocument",
                "parameters": [id_param],
                "responses": {"200": _json(_ref("DocumentDeleted"), "Deleted"), **_errors(404)},
            }
        },
        "/v1/kb/sync": {
            "post": {
                "operationId": "syncKnowledgeBase",
                "summary": "Index every pending upload, as a background job",
                "responses": {"202": _json(_ref("SyncJobAccepted"), "The job, queued"), **_errors(400)},
            }
        },
        "/v1/kb/status": {
            "get": {
                "operationId": "listSyncJobs",
                "summary": "Sync jobs, newest first (the last 100, in this gateway process)",
                "responses": {"200": _json(_ref("SyncJobList"), "The jobs")},
            }
        },
        "/openapi.json": {
            "get": {
                "operationId": "getOpenApi",
                "summary": "This document",
                "responses": {"200": _json({"type": "object"}, "OpenAPI 3.1")},
            }
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "localrag HTTP API",
            "version": "1.0.0",
            "description": "OpenAI-compatible chat completions over the RAG stack, plus document upload and "
            "knowledge-base sync. Served by the gateway next to the WebSocket API, through the same lambdas. "
            "No authentication: any API key is accepted (and ignored).",
        },
        "servers": [{"url": "/"}],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "responses": {"Error": _json(_ref("Error"), "An error, in OpenAI's shape")},
        },
    }
