"""Request bodies the LLM service accepts: Bedrock Converse, and OpenAI chat completions (text only; the
OpenAI wire models themselves are ``shared/openai_models.py``)."""

from __future__ import annotations

from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from shared.aws_http import ValidationError as AwsValidationError
from shared.openai_models import ChatCompletionRequest

MAX_STOP_SEQUENCES = 16

M = TypeVar("M", bound=BaseModel)


class _Model(BaseModel):
    # Unknown fields (toolConfig, guardrailConfig, ...) are accepted and ignored.
    model_config = ConfigDict(extra="ignore")


class CachePointBlock(_Model):
    """Bedrock prompt caching's marker (botocore's CachePointBlock): the prompt up to here may be cached.
    Accepted and ignored: this service keeps evaluated prefixes by itself (LLM_STATE_CACHE_BYTES)."""

    type: Literal["default"]
    ttl: Literal["5m", "1h"] | None = None


def _text_or_cache_point(data: Any) -> Any:
    if isinstance(data, dict) and "text" not in data and "cachePoint" not in data:
        kinds = ", ".join(sorted(str(k) for k in data)) or "an empty block"
        raise ValueError(f"only text and cachePoint content blocks are supported (got {kinds})")
    return data


class ContentBlock(_Model):
    """A text block, or a cachePoint block (``text`` None)."""

    text: str | None = None
    cachePoint: CachePointBlock | None = None

    @model_validator(mode="before")
    @classmethod
    def _text_only(cls, data: Any) -> Any:
        return _text_or_cache_point(data)


class Message(_Model):
    role: Literal["user", "assistant"]
    content: list[ContentBlock] = Field(min_length=1)

    @field_validator("content")
    @classmethod
    def _some_text(cls, v: list[ContentBlock]) -> list[ContentBlock]:
        if v and all(b.text is None for b in v):
            raise ValueError("a message needs a text content block")
        return v

    def text(self) -> str:
        return "\n".join(block.text for block in self.content if block.text is not None)


class SystemBlock(ContentBlock):
    """A system text block, or a cachePoint block (``text`` None): the shape of a message's content block."""


class InferenceConfig(_Model):
    maxTokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    topP: float | None = Field(default=None, ge=0.0, le=1.0)
    stopSequences: list[str] = Field(default_factory=list, max_length=MAX_STOP_SEQUENCES)


def _no_bool(v: Any) -> Any:
    if isinstance(v, bool):  # JSON true is not a number (pydantic would read it as 1)
        raise ValueError("must be a number")
    return v


class SamplingFields(BaseModel):
    """Converse ``additionalModelRequestFields``: llama.cpp's sampling controls. Unset fields take the
    service's LLM_* defaults. As on Bedrock, a field this model does not take is a ValidationException."""

    model_config = ConfigDict(extra="forbid")

    top_k: int | None = Field(default=None, ge=0, le=1_000_000, strict=True)
    repeat_penalty: float | None = Field(default=None, gt=0.0, le=2.0)
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            unknown = [k for k in data if k not in cls.model_fields]
            if unknown:  # not echoed back (client input): counted, and the accepted keys listed
                raise ValueError(
                    f"{len(unknown)} key(s) this model does not take; it takes only {', '.join(cls.model_fields)}"
                )
        return data

    @field_validator("repeat_penalty", "frequency_penalty", "presence_penalty", mode="before")
    @classmethod
    def _numbers(cls, v: Any) -> Any:
        return _no_bool(v)


class ConverseRequest(_Model):
    """Body of POST /model/{modelId}/converse and /converse-stream."""

    messages: list[Message] = Field(min_length=1)
    system: list[SystemBlock] = Field(default_factory=list)
    inferenceConfig: InferenceConfig = Field(default_factory=InferenceConfig)
    additionalModelRequestFields: SamplingFields = Field(default_factory=SamplingFields)

    @field_validator("additionalModelRequestFields", mode="before")
    @classmethod
    def _null_is_empty(cls, v: Any) -> Any:
        return {} if v is None else v

    @property
    def caches_prompt(self) -> bool:
        """Whether the request marks a prompt-caching point (a cachePoint block in the system prompt or in a
        message): Bedrock then reports the prompt tokens read from its cache apart (usage.cacheReadInputTokens)."""
        blocks = [*self.system, *(b for m in self.messages for b in m.content)]
        return any(b.cachePoint is not None for b in blocks)

    @field_validator("messages")
    @classmethod
    def _starts_with_user(cls, v: list[Message]) -> list[Message]:
        if v and v[0].role != "user":
            raise ValueError("a conversation must start with a user message")
        return v

    def chat_messages(self) -> list[dict[str, str]]:
        """Messages for the model's chat template; the system prompt becomes a system message."""
        out: list[dict[str, str]] = []
        system = [b.text for b in self.system if b.text is not None]
        if system:
            out.append({"role": "system", "content": "\n".join(system)})
        out.extend({"role": m.role, "content": m.text()} for m in self.messages)
        return out


class LlmChatCompletionRequest(ChatCompletionRequest):
    """The OpenAI chat request as this service takes it: plus OpenAI's repetition penalties (-2..2), mapped
    to llama.cpp's frequency and presence penalties."""

    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)

    @field_validator("frequency_penalty", "presence_penalty", mode="before")
    @classmethod
    def _numbers(cls, v: Any) -> Any:
        return _no_bool(v)


def openai_stops(req: ChatCompletionRequest) -> list[str]:
    """The stop sequences of an OpenAI request, within the Converse limit."""
    stops = req.stops()
    if len(stops) > MAX_STOP_SEQUENCES:
        raise AwsValidationError(f"stop: at most {MAX_STOP_SEQUENCES} stop sequences are allowed")
    return stops


def openai_chat_messages(req: ChatCompletionRequest) -> list[dict[str, str]]:
    """Messages for the model's chat template; developer messages are system messages."""
    return [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in req.messages]


def describe(exc: ValidationError) -> str:
    """A short, client-safe description of what is wrong with a request body (no input echoed back)."""
    parts = []
    for err in exc.errors(include_url=False, include_input=False)[:10]:
        loc = ".".join(str(x) for x in err["loc"]) or "body"
        msg = str(err["msg"]).removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}")
    more = exc.error_count() - len(parts)
    if more > 0:
        parts.append(f"... and {more} more")
    return "; ".join(parts)


def parse_body(model: type[M], body: bytes) -> M:
    """Validate a JSON body, raising a 400 ValidationException with a readable message."""
    if not body.strip():
        raise AwsValidationError("Request body is empty; expected a JSON object")
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        if any(e["type"] == "json_invalid" for e in exc.errors()):
            raise AwsValidationError("Request body is not valid JSON") from None
        if any(e["type"] == "model_type" and not e["loc"] for e in exc.errors()):
            raise AwsValidationError("Request body must be a JSON object") from None
        raise AwsValidationError(f"Invalid request: {describe(exc)}") from None
