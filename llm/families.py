"""Bedrock model ids this service answers to, and each text family's InvokeModel body.

**Model ids.** Code written for Bedrock names a model by its id (``amazon.nova-micro-v1:0``), a cross-region
inference profile (``us.anthropic.claude-3-5-haiku-20241022-v1:0``) or an ARN
(``arn:aws:bedrock:us-east-1::foundation-model/meta.llama3-8b-instruct-v1:0``,
``arn:aws:bedrock:us-east-1:123456789012:inference-profile/eu.amazon.nova-lite-v1:0``). :class:`ModelMap`
reduces each form to the base id and looks it up in LLM_MODEL_IDS; every id found there is served by the
one local model. An id not found is the error Bedrock gives for it (400 ValidationException "The provided
model identifier is invalid."), with a hint naming LLM_MODEL_IDS.

**Families.** InvokeModel's body is the model provider's own format; the family follows from the id's
provider prefix (``anthropic.``, ``amazon.nova``, ``meta.``, ``mistral.``, ``amazon.titan-text``), or is
named in LLM_MODEL_IDS as ``id=family``; ids of no known provider (``local-llm``) take whichever family's
body they are sent (:func:`detect_family`). Each family parses its request into a :class:`TextRequest`
(chat messages for the local model's chat template plus sampling settings) and renders the answer as
that family's response body or stream chunks (:class:`Renderer`). The prompt-string families (Llama,
Mistral, Titan) have their chat template tokens (``<|begin_of_text|>``, ``[INST]``, ``User:``/``Bot:``)
turned back into chat turns, so the local model's own template is applied instead.

Formats (Bedrock user guide, "Inference request parameters and response fields for foundation models"):
Anthropic Claude Messages API, Amazon Nova (messages-v1), Meta Llama, Mistral AI text completion, Amazon
Titan Text.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from shared.aws_http import ValidationError as AwsValidationError

Family = Literal["anthropic", "nova", "llama", "mistral", "titan"]
FAMILIES: tuple[Family, ...] = get_args(Family)
StopReason = Literal["end_turn", "max_tokens", "stop_sequence"]

# The text models of the common families on Bedrock (on-demand base ids; the `us.`/`eu.`/`apac.`/`global.`
# inference profiles and ARNs of each are accepted too).
DEFAULT_MODEL_IDS: tuple[str, ...] = (
    # Anthropic Claude (Messages API)
    "anthropic.claude-3-haiku-20240307-v1:0",
    "anthropic.claude-3-sonnet-20240229-v1:0",
    "anthropic.claude-3-opus-20240229-v1:0",
    "anthropic.claude-3-5-haiku-20241022-v1:0",
    "anthropic.claude-3-5-sonnet-20240620-v1:0",
    "anthropic.claude-3-5-sonnet-20241022-v2:0",
    "anthropic.claude-3-7-sonnet-20250219-v1:0",
    "anthropic.claude-sonnet-4-20250514-v1:0",
    "anthropic.claude-opus-4-20250514-v1:0",
    "anthropic.claude-opus-4-1-20250805-v1:0",
    "anthropic.claude-sonnet-4-5-20250929-v1:0",
    "anthropic.claude-haiku-4-5-20251001-v1:0",
    "anthropic.claude-opus-4-5-20251101-v1:0",
    # Amazon Nova
    "amazon.nova-micro-v1:0",
    "amazon.nova-lite-v1:0",
    "amazon.nova-pro-v1:0",
    "amazon.nova-premier-v1:0",
    "amazon.nova-2-lite-v1:0",
    # Meta Llama 3.x
    "meta.llama3-8b-instruct-v1:0",
    "meta.llama3-70b-instruct-v1:0",
    "meta.llama3-1-8b-instruct-v1:0",
    "meta.llama3-1-70b-instruct-v1:0",
    "meta.llama3-1-405b-instruct-v1:0",
    "meta.llama3-2-1b-instruct-v1:0",
    "meta.llama3-2-3b-instruct-v1:0",
    "meta.llama3-2-11b-instruct-v1:0",
    "meta.llama3-2-90b-instruct-v1:0",
    "meta.llama3-3-70b-instruct-v1:0",
    # Mistral AI (text completion)
    "mistral.mistral-7b-instruct-v0:2",
    "mistral.mixtral-8x7b-instruct-v0:1",
    "mistral.mistral-small-2402-v1:0",
    "mistral.mistral-large-2402-v1:0",
    # Amazon Titan Text
    "amazon.titan-text-express-v1",
    "amazon.titan-text-lite-v1",
    "amazon.titan-text-premier-v1:0",
)

# Cross-region inference profile prefixes (geographic and global).
PROFILE_PREFIXES = ("us", "eu", "apac", "global", "us-gov", "jp", "au", "ca")
_PROFILE_RE = re.compile(r"^(?:" + "|".join(re.escape(p) for p in PROFILE_PREFIXES) + r")\.(?=[a-z0-9-]+\.)")
_ARN_RE = re.compile(
    r"^arn:aws(?:-[a-z-]+)?:bedrock:[a-z0-9-]*:\d*:(?:foundation-model|inference-profile|"
    r"system-defined-inference-profile)/(?P<id>.+)$"
)
_PROVIDER_FAMILY: tuple[tuple[str, Family], ...] = (
    ("anthropic.", "anthropic"),
    ("amazon.nova-", "nova"),
    ("meta.", "llama"),
    ("mistral.", "mistral"),
    ("amazon.titan-text-", "titan"),
    ("amazon.titan-tg1-", "titan"),
)


def base_model_id(model_id: str) -> str:
    """The base model id of a Bedrock model id, inference profile id, or foundation-model/profile ARN."""
    m = _ARN_RE.match(model_id)
    if m:
        model_id = m.group("id")
    return _PROFILE_RE.sub("", model_id, count=1)


def provider_family(model_id: str) -> Family | None:
    """The family a base id's provider prefix implies (None: no known provider)."""
    return next((fam for prefix, fam in _PROVIDER_FAMILY if model_id.startswith(prefix)), None)


@dataclass(frozen=True)
class ServedModel:
    """A requested model id as this service serves it."""

    requested: str  # as the client sent it
    model_id: str  # the base id
    family: Family | None  # None: any family's body (detected from the body)


class UnknownModel(AwsValidationError):
    """An id not in the model map: what Bedrock answers for an id it does not know (400 ValidationException)."""


def parse_model_ids(entries: Iterable[str]) -> dict[str, Family | None]:
    """LLM_MODEL_IDS entries (``id`` or ``id=family``) as {base id: family}; raises ValueError on a bad one."""
    out: dict[str, Family | None] = {}
    for raw in entries:
        entry = raw.strip()
        if not entry:
            continue
        model_id, sep, fam = entry.partition("=")
        model_id, fam = model_id.strip(), fam.strip()
        if not model_id:
            raise ValueError(f"empty model id in {entry!r}")
        if sep and fam not in FAMILIES:
            raise ValueError(f"unknown family {fam!r} for {model_id!r}; families: {', '.join(FAMILIES)}")
        base = base_model_id(model_id)
        out[base] = fam if sep else provider_family(base)  # type: ignore[assignment]
    return out


class ModelMap:
    """The ids this service answers to: LLM_MODEL_IDS plus LLM_MODEL_ID, each in every accepted form."""

    def __init__(self, model_ids: Iterable[str], local_id: str) -> None:
        self.models = parse_model_ids(model_ids)
        self.local_id = local_id
        self.models.setdefault(base_model_id(local_id), provider_family(base_model_id(local_id)))

    def __contains__(self, model_id: str) -> bool:
        return base_model_id(model_id) in self.models

    def resolve(self, requested: str) -> ServedModel:
        base = base_model_id(requested)
        if base not in self.models:
            raise UnknownModel(
                "The provided model identifier is invalid. This endpoint serves the ids in LLM_MODEL_IDS "
                f"({len(self.models)} ids, e.g. {self.local_id!r}, 'amazon.nova-micro-v1:0', their us./eu./apac./"
                "global. inference profiles and ARNs); to serve another id, add it to LLM_MODEL_IDS "
                "(`id` or `id=family`, family one of " + ", ".join(FAMILIES) + ")."
            )
        return ServedModel(requested, base, self.models[base])


# -- request bodies -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TextRequest:
    """A family request as the local model takes it. None: the service's LLM_* default."""

    messages: list[dict[str, str]]
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    stop: tuple[str, ...] = ()


class _Strict(BaseModel):
    # Bedrock rejects keys a model does not take ("extraneous key [x] is not permitted").
    model_config = ConfigDict(extra="forbid")


def _no_bool(v: Any) -> Any:
    if isinstance(v, bool):
        raise ValueError("expected a number, found a boolean")
    return v


class _Sampling(_Strict):
    @field_validator("temperature", "top_p", mode="before", check_fields=False)
    @classmethod
    def _numbers(cls, v: Any) -> Any:
        return _no_bool(v)


# Anthropic Claude, Messages API -------------------------------------------------------------------------------


class AnthropicTextBlock(_Strict):
    type: Literal["text"]
    text: str
    cache_control: dict[str, Any] | None = None

    @model_validator(mode="before")
    @classmethod
    def _text_only(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("type") != "text":
            raise ValueError(f"only text content blocks are supported (got type {str(data.get('type'))[:40]!r})")
        return data


class AnthropicMessage(_Strict):
    role: Literal["user", "assistant"]
    content: str | list[AnthropicTextBlock] = Field(min_length=1)

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "\n".join(b.text for b in self.content)


class AnthropicRequest(_Sampling):
    """Body of an Anthropic Claude InvokeModel request (Bedrock's Messages API)."""

    # As on Bedrock, a key the API does not take is refused; so are tools/thinking, which this model lacks.
    anthropic_version: Literal["bedrock-2023-05-31"]
    max_tokens: int = Field(ge=1, strict=True)
    messages: list[AnthropicMessage] = Field(min_length=1)
    system: str | list[AnthropicTextBlock] | None = None
    temperature: float | None = Field(default=None, ge=0.0, le=1.0)
    top_p: float | None = Field(default=None, ge=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=0, strict=True)
    # Anthropic allows 8191; every generated piece is checked against each, so this service takes 64.
    stop_sequences: list[str] = Field(default_factory=list, max_length=64)
    anthropic_beta: list[str] | None = None
    metadata: dict[str, Any] | None = None

    @field_validator("messages")
    @classmethod
    def _starts_with_user(cls, v: list[AnthropicMessage]) -> list[AnthropicMessage]:
        if v and v[0].role != "user":
            raise ValueError("the first message must use the user role")
        return v

    def text_request(self) -> TextRequest:
        msgs: list[dict[str, str]] = []
        if self.system:
            system = self.system if isinstance(self.system, str) else "\n".join(b.text for b in self.system)
            msgs.append({"role": "system", "content": system})
        msgs.extend({"role": m.role, "content": m.text()} for m in self.messages)
        return TextRequest(msgs, self.max_tokens, self.temperature, self.top_p, self.top_k, tuple(self.stop_sequences))


# Amazon Nova (messages-v1) ----------------------------------------------------------------------------------


class NovaBlock(BaseModel):
    model_config = ConfigDict(extra="ignore")
    text: str

    @model_validator(mode="before")
    @classmethod
    def _text_only(cls, data: Any) -> Any:
        if isinstance(data, dict) and "text" not in data and "cachePoint" not in data:
            kinds = ", ".join(sorted(str(k) for k in data))[:80] or "an empty block"
            raise ValueError(f"only text content blocks are supported (got {kinds})")
        if isinstance(data, dict) and "cachePoint" in data:
            return {"text": ""}
        return data


class NovaMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["user", "assistant"]
    content: list[NovaBlock] = Field(min_length=1)

    def text(self) -> str:
        return "\n".join(b.text for b in self.content if b.text)


class NovaInferenceConfig(_Sampling):
    # Nova's InvokeModel takes both spellings (max_new_tokens / maxTokens, top_p / topP, top_k / topK).
    max_new_tokens: int | None = Field(default=None, ge=1, strict=True)
    maxTokens: int | None = Field(default=None, ge=1, strict=True)
    temperature: float | None = Field(default=None, ge=0.0, le=1.0)
    top_p: float | None = Field(default=None, ge=0.0, le=1.0)
    topP: float | None = Field(default=None, ge=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=0, strict=True)
    topK: int | None = Field(default=None, ge=0, strict=True)
    stopSequences: list[str] = Field(default_factory=list, max_length=4)


class NovaRequest(BaseModel):
    """Body of an Amazon Nova InvokeModel request (schemaVersion messages-v1); tool and guardrail keys are
    accepted and ignored, as on Converse."""

    model_config = ConfigDict(extra="ignore")

    schemaVersion: Literal["messages-v1"] | None = None
    messages: list[NovaMessage] = Field(min_length=1)
    system: list[NovaBlock] = Field(default_factory=list)
    inferenceConfig: NovaInferenceConfig = Field(default_factory=NovaInferenceConfig)

    @field_validator("messages")
    @classmethod
    def _starts_with_user(cls, v: list[NovaMessage]) -> list[NovaMessage]:
        if v and v[0].role != "user":
            raise ValueError("a conversation must start with a user message")
        return v

    def text_request(self) -> TextRequest:
        msgs: list[dict[str, str]] = []
        system = "\n".join(b.text for b in self.system if b.text)
        if system:
            msgs.append({"role": "system", "content": system})
        msgs.extend({"role": m.role, "content": m.text()} for m in self.messages)
        c = self.inferenceConfig
        return TextRequest(
            msgs,
            c.maxTokens or c.max_new_tokens,
            c.temperature,
            c.topP if c.topP is not None else c.top_p,
            c.topK if c.topK is not None else c.top_k,
            tuple(c.stopSequences),
        )


# Meta Llama -------------------------------------------------------------------------------------------------


_LLAMA3_TURN = re.compile(r"<\|start_header_id\|>\s*(\w+)\s*<\|end_header_id\|>(.*?)(?=<\|start_header_id\|>|$)", re.S)
_LLAMA3_TOKENS = re.compile(r"<\|(?:begin_of_text|end_of_text|eot_id|eom_id|finetune_right_pad_id)\|>")


def llama_prompt_messages(prompt: str) -> list[dict[str, str]]:
    """A Llama prompt as chat turns: Llama 3's header tokens become turns; a Llama 2 ``[INST]`` prompt is
    read as Mistral's; plain text is one user turn."""
    if "<|start_header_id|>" in prompt:
        msgs = []
        for role, body in _LLAMA3_TURN.findall(prompt):
            text = _LLAMA3_TOKENS.sub("", body).strip()
            role = {"ipython": "user", "tool": "user"}.get(role, role)
            if role in ("system", "user", "assistant") and text:
                msgs.append({"role": role, "content": text})
        return _with_user_turn(msgs, prompt)
    text = _LLAMA3_TOKENS.sub("", prompt)
    if "[INST]" in text:
        return inst_prompt_messages(text)
    return _with_user_turn([], text)


_INST_TURN = re.compile(r"\[INST\](.*?)\[/INST\]([^\[]*)", re.S)
_SYS_BLOCK = re.compile(r"<<SYS>>(.*?)<</SYS>>", re.S)


def inst_prompt_messages(prompt: str) -> list[dict[str, str]]:
    """A Mistral (or Llama 2) ``<s>[INST] ... [/INST] answer</s>`` prompt as chat turns."""
    text = prompt.replace("<s>", "").replace("</s>", "")
    msgs: list[dict[str, str]] = []
    turns = _INST_TURN.findall(text)
    for user, answer in turns:
        system = _SYS_BLOCK.search(user)
        if system and not msgs:
            msgs.append({"role": "system", "content": system.group(1).strip()})
        user = _SYS_BLOCK.sub("", user).strip()
        if user:
            msgs.append({"role": "user", "content": user})
        if answer.strip():
            msgs.append({"role": "assistant", "content": answer.strip()})
    if not turns:
        return _with_user_turn([], text)
    return _with_user_turn(msgs, prompt)


def _with_user_turn(msgs: list[dict[str, str]], prompt: str) -> list[dict[str, str]]:
    """At least one user turn: the conversation as parsed, or the whole prompt as one user turn."""
    if any(m["role"] == "user" for m in msgs):
        return msgs
    text = prompt.strip()
    if not text:
        raise AwsValidationError("Malformed input request: #/prompt: the prompt has no text")
    return [*[m for m in msgs if m["role"] == "system"], {"role": "user", "content": text}]


class LlamaRequest(_Sampling):
    """Body of a Meta Llama InvokeModel request."""

    prompt: str = Field(min_length=1)
    temperature: float | None = Field(default=None, ge=0.0, le=1.0)
    top_p: float | None = Field(default=None, ge=0.0, le=1.0)
    max_gen_len: int | None = Field(default=None, ge=1, strict=True)
    images: list[str] | None = None

    @field_validator("images")
    @classmethod
    def _no_images(cls, v: list[str] | None) -> list[str] | None:
        if v:
            raise ValueError("image input is not supported by this model")
        return v

    def text_request(self) -> TextRequest:
        return TextRequest(llama_prompt_messages(self.prompt), self.max_gen_len, self.temperature, self.top_p)


# Mistral AI text completion --------------------------------------------------------------------------------


class MistralRequest(_Sampling):
    """Body of a Mistral AI text completion InvokeModel request."""

    prompt: str = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1, strict=True)
    stop: list[str] = Field(default_factory=list, max_length=10)
    temperature: float | None = Field(default=None, ge=0.0, le=1.0)
    top_p: float | None = Field(default=None, ge=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=0, le=200, strict=True)

    def text_request(self) -> TextRequest:
        return TextRequest(
            inst_prompt_messages(self.prompt),
            self.max_tokens,
            self.temperature,
            self.top_p,
            self.top_k,
            tuple(self.stop),
        )


# Amazon Titan Text ------------------------------------------------------------------------------------------


class TitanConfig(_Sampling):
    temperature: float | None = Field(default=None, ge=0.0, le=1.0)
    topP: float | None = Field(default=None, ge=0.0, le=1.0)
    maxTokenCount: int | None = Field(default=None, ge=0, strict=True)
    stopSequences: list[str] = Field(default_factory=list)

    @field_validator("topP", mode="before")
    @classmethod
    def _top_p_number(cls, v: Any) -> Any:
        return _no_bool(v)


_TITAN_TURN = re.compile(r"^(User|Bot|Assistant|System):\s*", re.M)


def titan_prompt_messages(prompt: str) -> list[dict[str, str]]:
    """A Titan ``User: ...\\nBot:`` prompt as chat turns (plain text: one user turn)."""
    parts = _TITAN_TURN.split(prompt)
    if len(parts) < 3:
        return _with_user_turn([], prompt)
    msgs: list[dict[str, str]] = []
    lead = parts[0].strip()
    roles = {"User": "user", "Bot": "assistant", "Assistant": "assistant", "System": "system"}
    for label, body in zip(parts[1::2], parts[2::2], strict=True):
        text = body.strip()
        if text:
            msgs.append({"role": roles[label], "content": text})
    if lead:
        first_user = next((m for m in msgs if m["role"] == "user"), None)
        if first_user is None:
            msgs.insert(0, {"role": "user", "content": lead})
        else:
            first_user["content"] = f"{lead}\n\n{first_user['content']}"
    return _with_user_turn(msgs, prompt)


class TitanRequest(_Strict):
    """Body of an Amazon Titan Text InvokeModel request."""

    inputText: str = Field(min_length=1)
    textGenerationConfig: TitanConfig = Field(default_factory=TitanConfig)

    def text_request(self) -> TextRequest:
        c = self.textGenerationConfig
        return TextRequest(
            titan_prompt_messages(self.inputText),
            c.maxTokenCount or None,
            c.temperature,
            c.topP,
            None,
            tuple(c.stopSequences),
        )


_REQUESTS: dict[Family, type[BaseModel]] = {
    "anthropic": AnthropicRequest,
    "nova": NovaRequest,
    "llama": LlamaRequest,
    "mistral": MistralRequest,
    "titan": TitanRequest,
}


def detect_family(body: Mapping[str, Any]) -> Family:
    """The family whose body this is, for ids of no known provider (``local-llm``)."""
    if "anthropic_version" in body:
        return "anthropic"
    if "inputText" in body:
        return "titan"
    if "messages" in body:
        return "nova"
    if "prompt" in body:
        return "llama" if "max_gen_len" in body else "mistral"
    raise AwsValidationError(
        "Malformed input request: #: the body is none of the text families' shapes this model takes "
        "(anthropic_version + messages, messages, prompt, inputText), please reformat your input and try again."
    )


def _describe(exc: ValidationError) -> str:
    """Bedrock's "Malformed input request" wording, naming each field (client input never echoed)."""
    parts = []
    for err in exc.errors(include_url=False, include_input=False)[:10]:
        loc = [str(x) for x in err["loc"]]
        if err["type"] == "missing":
            where = "/".join(["#", *loc[:-1]])
            parts.append(f"{where}: required key [{loc[-1]}] not found")
        elif err["type"] == "extra_forbidden":
            where = "/".join(["#", *loc[:-1]])
            parts.append(f"{where}: extraneous key [{loc[-1]}] is not permitted")
        else:
            msg = str(err["msg"]).removeprefix("Value error, ")
            parts.append(f"{'/'.join(['#', *loc])}: {msg}")
    more = exc.error_count() - len(parts)
    if more > 0:
        parts.append(f"... and {more} more")
    return "; ".join(parts)


def parse_request(family: Family | None, body: bytes) -> tuple[Family, TextRequest]:
    """Validate an InvokeModel body against the family's shape (detected when ``family`` is None)."""
    if not body.strip():
        raise AwsValidationError("Malformed input request: the request body is empty; expected a JSON object")
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise AwsValidationError("Malformed input request: the request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise AwsValidationError("Malformed input request: #: expected type: JSONObject")
    fam = family or detect_family(data)
    try:
        req = _REQUESTS[fam].model_validate(data)
    except ValidationError as exc:
        raise AwsValidationError(
            f"Malformed input request: {_describe(exc)}, please reformat your input and try again."
        ) from None
    text_request: TextRequest = req.text_request()  # type: ignore[attr-defined]
    return fam, text_request


# -- response bodies and stream chunks -----------------------------------------------------------------------------


@dataclass
class Outcome:
    """What the generation produced, for the response body / final chunks."""

    text: str
    stop_reason: StopReason | None
    input_tokens: int
    output_tokens: int
    stop_sequence: str | None = None
    latency_ms: int = 0
    first_byte_ms: int = 0


def invocation_metrics(o: Outcome) -> dict[str, int]:
    """The ``amazon-bedrock-invocationMetrics`` Bedrock adds to a stream's last chunk."""
    return {
        "inputTokenCount": o.input_tokens,
        "outputTokenCount": o.output_tokens,
        "invocationLatency": o.latency_ms,
        "firstByteLatency": o.first_byte_ms,
    }


def anthropic_model_name(model_id: str) -> str:
    """``anthropic.claude-3-haiku-20240307-v1:0`` -> ``claude-3-haiku-20240307`` (the body's ``model``)."""
    name = model_id.removeprefix("anthropic.")
    return re.sub(r"-v\d+(:\d+)?$", "", name)


_PROMPT_STOP = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length", None: "stop"}
_TITAN_STOP = {"end_turn": "FINISH", "stop_sequence": "STOP_CRITERIA_MET", "max_tokens": "LENGTH", None: "FINISH"}


@dataclass
class Renderer:
    """One family's response body and stream chunks for one request."""

    family: Family
    model_id: str
    message_id: str = field(default_factory=lambda: f"msg_bdrk_{uuid.uuid4().hex[:24]}")
    _pieces: int = 0
    _first: bool = True

    def body(self, o: Outcome) -> dict[str, Any]:
        """The InvokeModel response body."""
        if self.family == "anthropic":
            return {
                **self._anthropic_message([{"type": "text", "text": o.text}], o.stop_reason, o.stop_sequence),
                "usage": {"input_tokens": o.input_tokens, "output_tokens": o.output_tokens},
            }
        if self.family == "nova":
            return {
                "output": {"message": {"role": "assistant", "content": [{"text": o.text}]}},
                "stopReason": o.stop_reason or "end_turn",
                "usage": {
                    "inputTokens": o.input_tokens,
                    "outputTokens": o.output_tokens,
                    "totalTokens": o.input_tokens + o.output_tokens,
                    "cacheReadInputTokenCount": 0,
                    "cacheWriteInputTokenCount": 0,
                },
            }
        if self.family == "llama":
            return {
                "generation": o.text,
                "prompt_token_count": o.input_tokens,
                "generation_token_count": o.output_tokens,
                "stop_reason": _PROMPT_STOP[o.stop_reason],
            }
        if self.family == "mistral":
            return {"outputs": [{"text": o.text, "stop_reason": _PROMPT_STOP[o.stop_reason]}]}
        return {
            "inputTextTokenCount": o.input_tokens,
            "results": [
                {"tokenCount": o.output_tokens, "outputText": o.text, "completionReason": _TITAN_STOP[o.stop_reason]}
            ],
        }

    def _anthropic_message(
        self, content: list[dict[str, Any]], stop_reason: str | None, stop_sequence: str | None
    ) -> dict[str, Any]:
        return {
            "id": self.message_id,
            "type": "message",
            "role": "assistant",
            "model": anthropic_model_name(self.model_id),
            "content": content,
            "stop_reason": stop_reason,
            "stop_sequence": stop_sequence,
        }

    def start(self, input_tokens: int) -> list[dict[str, Any]]:
        """Chunks sent before the first text."""
        if self.family == "anthropic":
            message = self._anthropic_message([], None, None)
            message["usage"] = {"input_tokens": input_tokens, "output_tokens": 0}
            return [
                {"type": "message_start", "message": message},
                {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
            ]
        if self.family == "nova":
            return [{"messageStart": {"role": "assistant"}}]
        return []

    def delta(self, piece: str, input_tokens: int) -> dict[str, Any]:
        """The chunk carrying one piece of text."""
        self._pieces += 1
        first, self._first = self._first, False
        if self.family == "anthropic":
            return {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": piece}}
        if self.family == "nova":
            return {"contentBlockDelta": {"delta": {"text": piece}, "contentBlockIndex": 0}}
        if self.family == "llama":
            return {
                "generation": piece,
                "prompt_token_count": input_tokens if first else None,
                "generation_token_count": self._pieces,
                "stop_reason": None,
            }
        if self.family == "mistral":
            return {"outputs": [{"text": piece, "stop_reason": None}]}
        chunk: dict[str, Any] = {
            "outputText": piece,
            "index": 0,
            "totalOutputTextTokenCount": self._pieces,
            "completionReason": None,
        }
        if first:
            chunk["inputTextTokenCount"] = input_tokens
        return chunk

    def end(self, o: Outcome) -> list[dict[str, Any]]:
        """Chunks sent after the last text; the last carries ``amazon-bedrock-invocationMetrics``."""
        metrics = {"amazon-bedrock-invocationMetrics": invocation_metrics(o)}
        if self.family == "anthropic":
            return [
                {"type": "content_block_stop", "index": 0},
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": o.stop_reason, "stop_sequence": o.stop_sequence},
                    "usage": {"output_tokens": o.output_tokens},
                },
                {"type": "message_stop", **metrics},
            ]
        if self.family == "nova":
            return [
                {"contentBlockStop": {"contentBlockIndex": 0}},
                {"messageStop": {"stopReason": o.stop_reason or "end_turn"}},
                {
                    "metadata": {
                        "usage": {"inputTokens": o.input_tokens, "outputTokens": o.output_tokens},
                        "metrics": {},
                        "trace": {},
                    },
                    **metrics,
                },
            ]
        if self.family == "llama":
            return [
                {
                    "generation": "",
                    "prompt_token_count": o.input_tokens if self._first else None,
                    "generation_token_count": o.output_tokens,
                    "stop_reason": _PROMPT_STOP[o.stop_reason],
                    **metrics,
                }
            ]
        if self.family == "mistral":
            return [{"outputs": [{"text": "", "stop_reason": _PROMPT_STOP[o.stop_reason]}], **metrics}]
        chunk: dict[str, Any] = {
            "outputText": "",
            "index": 0,
            "totalOutputTextTokenCount": o.output_tokens,
            "completionReason": _TITAN_STOP[o.stop_reason],
            **metrics,
        }
        if self._first:
            chunk["inputTextTokenCount"] = o.input_tokens
        return [chunk]
