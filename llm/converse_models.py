"""Request bodies the LLM service accepts: Bedrock Converse and OpenAI chat completions (text only)."""

from __future__ import annotations

from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from shared.aws_http import ValidationError as AwsValidationError

MAX_STOP_SEQUENCES = 16

M = TypeVar("M", bound=BaseModel)


class _Model(BaseModel):
    # Unknown fields (toolConfig, guardrailConfig, additionalModelRequestFields, ...) are accepted and ignored.
    model_config = ConfigDict(extra="ignore")


class ContentBlock(_Model):
    text: str

    @model_validator(mode="before")
    @classmethod
    def _text_only(cls, data: Any) -> Any:
        if isinstance(data, dict) and "text" not in data and data:
            kinds = ", ".join(sorted(str(k) for k in data))
            raise ValueError(f"only text content blocks are supported (got {kinds})")
        return data


class Message(_Model):
    role: Literal["user", "assistant"]
    content: list[ContentBlock] = Field(min_length=1)

    def text(self) -> str:
        return "\n".join(block.text for block in self.content)


class SystemBlock(_Model):
    text: str


class InferenceConfig(_Model):
    maxTokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    topP: float | None = Field(default=None, ge=0.0, le=1.0)
    stopSequences: list[str] = Field(default_factory=list, max_length=MAX_STOP_SEQUENCES)


class ConverseRequest(_Model):
    """Body of POST /model/{modelId}/converse and /converse-stream."""

    messages: list[Message] = Field(min_length=1)
    system: list[SystemBlock] = Field(default_factory=list)
    inferenceConfig: InferenceConfig = Field(default_factory=InferenceConfig)

    @field_validator("messages")
    @classmethod
    def _starts_with_user(cls, v: list[Message]) -> list[Message]:
        if v and v[0].role != "user":
            raise ValueError("a conversation must start with a user message")
        return v

    def chat_messages(self) -> list[dict[str, str]]:
        """Messages for the model's chat template; the system prompt becomes a system message."""
        out: list[dict[str, str]] = []
        if self.system:
            out.append({"role": "system", "content": "\n".join(b.text for b in self.system)})
        out.extend({"role": m.role, "content": m.text()} for m in self.messages)
        return out


class OpenAIContentPart(_Model):
    type: str
    text: str | None = None

    @model_validator(mode="after")
    def _text_only(self) -> OpenAIContentPart:
        if self.type != "text" or self.text is None:
            raise ValueError(f"only text content parts are supported (got type {self.type!r})")
        return self


class OpenAIMessage(_Model):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[OpenAIContentPart]

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "\n".join(p.text or "" for p in self.content)


class StreamOptions(_Model):
    include_usage: bool = False


class ChatCompletionRequest(_Model):
    """Body of POST /v1/chat/completions (the subset a text-only local model can honour)."""

    model: str | None = None
    messages: list[OpenAIMessage] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, ge=0.0, le=1.0)
    stop: str | list[str] | None = None

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        stops = [self.stop] if isinstance(self.stop, str) else self.stop
        if len(stops) > MAX_STOP_SEQUENCES:
            raise AwsValidationError(f"stop: at most {MAX_STOP_SEQUENCES} stop sequences are allowed")
        return stops

    def chat_messages(self) -> list[dict[str, str]]:
        return [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in self.messages]


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
