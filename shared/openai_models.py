"""The OpenAI wire models, defined once: chat completions (request, response, stream chunk), models, errors.

Used by the LLM service's ``/v1`` routes (a plain OpenAI-compatible model server) and by the gateway's
OpenAI-compatible HTTP API (which extends the request and the responses with retrieval fields and
citations, and generates its OpenAPI document from these models).

Requests ignore unknown fields (other OpenAI parameters are accepted and ignored). Responses are built
from these models and serialised with ``dump()`` (or ``sse()``); the few fields OpenAI leaves out when
they have no value (a chunk's ``usage``, a delta's ``role``) are left out when None.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    GetJsonSchemaHandler,
    SerializerFunctionWrapHandler,
    field_validator,
    model_serializer,
    model_validator,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema

FinishReason = Literal["stop", "length", "content_filter"]


class RequestBody(BaseModel):
    model_config = ConfigDict(extra="ignore")


class ResponseBody(BaseModel):
    """A response body. Every field is sent, and the schema says so (OpenAPI clients may rely on
    `required`), except those named in `_omit_if_none`: left out when None, as OpenAI leaves them out."""

    model_config = ConfigDict(json_schema_serialization_defaults_required=True)
    _omit_if_none: ClassVar[frozenset[str]] = frozenset()

    # No return annotation: the serialization schema stays the model's own.
    @model_serializer(mode="wrap")
    def _omit_nones(self, handler: SerializerFunctionWrapHandler):
        data = handler(self)
        if isinstance(data, dict):
            for name in self._omit_if_none:
                if data.get(name) is None:
                    data.pop(name, None)
        return data

    @classmethod
    def __get_pydantic_json_schema__(cls, core_schema: CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        schema = handler.resolve_ref_schema(handler(core_schema))
        if cls._omit_if_none and "required" in schema:
            schema["required"] = [name for name in schema["required"] if name not in cls._omit_if_none]
        return schema

    def dump(self) -> dict[str, Any]:
        """The JSON body."""
        data: dict[str, Any] = self.model_dump(mode="json")
        return data


# ---------------------------------------------------------------------- errors


def error_type(status: int) -> str:
    """OpenAI's error ``type`` for an HTTP status: the request's fault, throttling, or the server's (a
    timeout, 408, and a failed model, 424, are the server's too)."""
    if status == 429:
        return "rate_limit_error"
    if status >= 500 or status in (408, 424):
        return "server_error"
    return "invalid_request_error"


class ErrorDetail(ResponseBody):
    message: str
    type: str = Field(description="invalid_request_error (4xx), rate_limit_error (429), server_error (5xx)")
    code: str | None
    param: str | None = Field(default=None, description="The request field at fault, if one is.")


class Error(ResponseBody):
    """An error, in OpenAI's shape: ``{"error": {"message", "type", "code", "param"}}``."""

    error: ErrorDetail

    @classmethod
    def of(cls, status: int, message: str, code: str | None, param: str | None = None) -> Error:
        return cls(error=ErrorDetail(message=message, type=error_type(status), code=code, param=param))


# ---------------------------------------------------------------------- models


class Model(ResponseBody):
    id: str = Field(examples=["localrag"])
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelList(ResponseBody):
    object: Literal["list"] = "list"
    data: list[Model]


# ---------------------------------------------------------------------- chat completion request


class ContentPart(RequestBody):
    """A content part; only ``{"type": "text", "text": ...}`` is supported."""

    type: str
    text: str | None = None

    @model_validator(mode="after")
    def _text_only(self) -> ContentPart:
        if self.type != "text" or self.text is None:
            raise ValueError(f"only text content parts are supported (got type {self.type[:32]!r})")
        return self


class ChatMessage(RequestBody):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart] | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "\n".join(p.text or "" for p in self.content)


class StreamOptions(RequestBody):
    include_usage: bool = False


class ChatCompletionRequest(RequestBody):
    """Body of ``POST /v1/chat/completions``: the subset a text-only model can honour."""

    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int | None = Field(default=None, ge=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, ge=0.0, le=1.0)
    stop: str | list[str] | None = None

    @field_validator("stream", mode="before")
    @classmethod
    def _null_is_false(cls, v: Any) -> Any:
        return False if v is None else v

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage

    def stops(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)


# ---------------------------------------------------------------------- chat completion response


class Usage(ResponseBody):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int

    @classmethod
    def of(cls, prompt_tokens: int, completion_tokens: int) -> Usage:
        return cls(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=prompt_tokens + completion_tokens,
        )


class AssistantMessage(ResponseBody):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(ResponseBody):
    index: int = 0
    message: AssistantMessage
    finish_reason: FinishReason
    logprobs: None = None


class ChatCompletion(ResponseBody):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage


class Delta(ResponseBody):
    """What a chunk adds: ``{"role": "assistant", "content": ""}`` first, then ``{"content": ...}``, then ``{}``."""

    _omit_if_none = frozenset({"role", "content"})

    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(ResponseBody):
    index: int = 0
    delta: Delta
    finish_reason: FinishReason | None
    logprobs: None = None


class ChatCompletionChunk(ResponseBody):
    """One server-sent event of a streamed completion."""

    _omit_if_none = frozenset({"usage"})

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = Field(default=None, description="Only on the last, choice-less chunk, when asked for.")


def sse(data: BaseModel | str) -> bytes:
    """One server-sent event: ``data: {json}`` and a blank line (``data: [DONE]`` for that string)."""
    if isinstance(data, str):
        text = data
    else:
        text = json.dumps(data.model_dump(mode="json"), ensure_ascii=False, separators=(",", ":"))
    return f"data: {text}\n\n".encode()
