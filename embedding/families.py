"""The Bedrock embedding model families this service speaks, and which model ids map to which family.

Each family has its own ``InvokeModel`` body, as documented in the Amazon Bedrock user guide
(model-parameters-titan-embed-text, model-parameters-embed-v3, model-parameters-embed-v4):

* ``titan-v1`` (Amazon Titan Embeddings G1 - Text): ``{"inputText"}`` -> ``{"embedding", "inputTextTokenCount"}``.
* ``titan-v2`` (Amazon Titan Text Embeddings V2): ``{"inputText", "dimensions"?, "normalize"?, "embeddingTypes"?:
  ["float" | "binary"]}`` -> ``{"embedding", "embeddingsByType", "inputTextTokenCount"}`` (``embeddingsByType``
  is always there, with ``float`` when no type is asked for; ``binary`` is one 0/1 per dimension).
* ``cohere-v3`` (Cohere Embed English/Multilingual v3): ``{"texts", "input_type", "truncate"?: NONE|START|END,
  "embedding_types"?}`` -> ``{"id", "embeddings", "texts", "response_type"}``: ``embeddings`` is a list of
  float rows (``embeddings_floats``) unless ``embedding_types`` is given, then ``{type: rows}``
  (``embeddings_by_type``).
* ``cohere-v4`` (Cohere Embed v4): ``{"input_type", "texts", "embedding_types"?, "output_dimension"?,
  "max_tokens"?, "truncate"?: NONE|LEFT|RIGHT}`` -> always ``embeddings_by_type`` (``float`` by default).
* ``auto``: the service's own model id (``EMBEDDING_MODEL_ID``): a Titan V2 body or a Cohere v3 body, told
  apart by ``inputText`` / ``texts`` (what the service answered before it knew Bedrock's ids).

Every family is served by the one local model (all-MiniLM-L6-v2 by default: 384 dimensions). A size the
model cannot produce (Titan V2's 256/512/1024, Cohere v4's 256..1536) is refused with a ValidationException
naming the size it can produce; when the size is omitted, the model's own size is returned.

Quantized types are computed from the float vector, not by the real models' calibrated quantizers:
``int8`` = round(127 * v / max|v|) per vector (cosine order is kept; values differ from Cohere's),
``uint8`` = int8 + 128, ``ubinary`` = the sign bits (v > 0) packed 8 per byte, most significant first,
``binary`` = ubinary - 128 as signed bytes (Cohere's convention); Titan's ``binary`` is one 0/1 per dimension.
"""

from __future__ import annotations

import re
from typing import Any, Literal

import numpy as np
import pydantic
from pydantic import BaseModel, ConfigDict, Field

from embedding.model import Vectors

Family = Literal["titan-v1", "titan-v2", "cohere-v3", "cohere-v4", "auto"]

# Bedrock embedding model ids served by the local model unless EMBEDDING_MODEL_MAP says otherwise.
DEFAULT_MODEL_MAP: dict[str, Family] = {
    "amazon.titan-embed-text-v1": "titan-v1",
    "amazon.titan-embed-g1-text-02": "titan-v1",
    "amazon.titan-embed-text-v2:0": "titan-v2",
    "cohere.embed-english-v3": "cohere-v3",
    "cohere.embed-multilingual-v3": "cohere-v3",
    "cohere.embed-v4:0": "cohere-v4",
}

MALFORMED = "Malformed input request"

# Cross-Region inference profiles prefix a model id with a geography (us.cohere.embed-v4:0).
_PROFILE_PREFIX = re.compile(r"^(?:us|eu|apac|us-gov|ca|jp|au|global)\.(?=[a-z0-9-]+\.)")
_ARN = re.compile(r"^arn:aws[a-z-]*:bedrock:[a-z0-9-]*:\d*:(foundation-model|inference-profile)/(.+)$")


class BodyError(ValueError):
    """The request body is invalid; the message is safe to show the caller (it never echoes input)."""


# What Bedrock's InvokeModel answers for a model id it does not know: 400 ValidationException with this
# message (not 404 ResourceNotFoundException), as the LLM stand-in answers too (llm/families.py).
UNKNOWN_MODEL = "The provided model identifier is invalid."


def unknown_model_message(served: dict[str, Family]) -> str:
    """Bedrock's message for an unknown id, and the ids served here (the id asked for is not echoed)."""
    return (
        f"{UNKNOWN_MODEL} This endpoint serves {', '.join(sorted(served))} (and their foundation-model ARNs "
        "and us./eu./apac./global. inference profiles); to serve another id, add it to EMBEDDING_MODEL_MAP."
    )


def resolve_model_id(raw: str, served: dict[str, Family]) -> tuple[str, Family] | None:
    """(model id, family) for ``raw``: a served id, a foundation-model ARN of one, or a system inference
    profile (id or ARN) whose model is served. None when nothing served matches."""
    candidate = raw
    m = _ARN.match(raw)
    if m:
        candidate = m.group(2)
    if candidate in served:
        return candidate, served[candidate]
    base = _PROFILE_PREFIX.sub("", candidate, count=1)
    if base != candidate and base in served:
        return base, served[base]
    return None


def describe(exc: pydantic.ValidationError) -> str:
    """A short, user-facing description of what is wrong with the body (never echoes the input)."""
    parts = []
    for err in exc.errors(include_url=False, include_input=False, include_context=False):
        loc = ""
        for item in err["loc"]:
            loc += f"[{item}]" if isinstance(item, int) else (f".{item}" if loc else str(item))
        msg = "extraneous key is not permitted" if err["type"] == "extra_forbidden" else err["msg"]
        parts.append(f"{loc}: {msg}" if loc else msg)
    more = f" (and {len(parts) - 3} more)" if len(parts) > 3 else ""
    return f"{MALFORMED}: {'; '.join(parts[:3])}{more}"


def _parse(model: type[BaseModel], body: dict[str, Any]) -> Any:
    try:
        return model.model_validate(body)
    except pydantic.ValidationError as exc:
        raise BodyError(describe(exc)) from None


InputType = Literal["search_document", "search_query", "classification", "clustering"]
CohereType = Literal["float", "int8", "uint8", "binary", "ubinary"]


class TitanV1Request(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    input_text: str = Field(alias="inputText")


class TitanV2Request(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    input_text: str = Field(alias="inputText")
    dimensions: int | None = None
    normalize: bool = True
    embedding_types: list[Literal["float", "binary"]] | None = Field(default=None, alias="embeddingTypes", min_length=1)


class CohereV3Request(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    texts: list[str] | None = Field(default=None, min_length=1)
    images: list[str] | None = None
    input_type: InputType | Literal["image"]
    truncate: Literal["NONE", "START", "END"] = "NONE"
    embedding_types: list[CohereType] | None = Field(default=None, min_length=1)


class CohereV4Request(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    texts: list[str] | None = Field(default=None, min_length=1)
    images: list[str] | None = None
    inputs: list[dict[str, Any]] | None = None
    input_type: InputType
    embedding_types: list[CohereType] | None = Field(default=None, min_length=1)
    output_dimension: int | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    truncate: Literal["NONE", "LEFT", "RIGHT"] = "NONE"


def _no_images(req: CohereV3Request | CohereV4Request) -> list[str]:
    extra = getattr(req, "inputs", None)
    if req.images is not None or extra is not None:
        raise BodyError(
            f"{MALFORMED}: this local stand-in embeds text only; send texts (images and inputs are not supported)"
        )
    if req.texts is None:
        raise BodyError(f"{MALFORMED}: texts: Field required")
    return req.texts


def _check_dimension(asked: int | None, field: str, produced: int) -> None:
    if asked is not None and asked != produced:
        raise BodyError(
            f"{MALFORMED}: {field} {asked} cannot be produced here: the local embedding model returns "
            f"{produced} dimensions, so {field} must be {produced} or omitted (to serve other sizes, point "
            "EMBEDDING_MODEL_PATH at a model of that size)"
        )


# ------------------------------------------------------------------------------------------- parsed requests


class TextsRequest(BaseModel):
    """What the app needs from any family's body, after validation."""

    family: Family
    texts: list[str]
    normalize: bool = True
    # Where over-long text is cut: "error" (refuse), "start" (drop the beginning), "end" (drop the end).
    truncate: Literal["error", "start", "end"] = "end"
    max_tokens: int | None = None  # a lower token limit than the model's (Cohere v4 max_tokens)
    types: list[str] = Field(default_factory=list)  # embedding types asked for; empty = the family default
    by_type: bool = False  # Cohere: answer embeddings_by_type


def parse_body(family: Family, body: dict[str, Any], dimension: int) -> TextsRequest:
    """Validate ``body`` for ``family`` against a model of ``dimension``. Raises BodyError."""
    if family == "auto":
        titan, cohere = "inputText" in body, "texts" in body
        if titan and cohere:
            raise BodyError(
                f"{MALFORMED}: the body has both inputText (Amazon Titan) and texts (Cohere Embed); send one"
            )
        if not titan and not cohere:
            raise BodyError(
                f"{MALFORMED}: the body needs inputText (Amazon Titan Text Embeddings) or texts (Cohere Embed)"
            )
        return parse_body("titan-v2" if titan else "cohere-v3", body, dimension)
    if family == "titan-v1":
        v1: TitanV1Request = _parse(TitanV1Request, body)
        return TextsRequest(family=family, texts=[v1.input_text])
    if family == "titan-v2":
        v2: TitanV2Request = _parse(TitanV2Request, body)
        _check_dimension(v2.dimensions, "dimensions", dimension)
        return TextsRequest(
            family=family,
            texts=[v2.input_text],
            normalize=v2.normalize,
            types=list(dict.fromkeys(v2.embedding_types or [])),
        )
    if family == "cohere-v3":
        c3: CohereV3Request = _parse(CohereV3Request, body)
        texts = _no_images(c3)
        if c3.input_type == "image":
            raise BodyError(f"{MALFORMED}: input_type image needs images, which this local stand-in does not embed")
        cut3: dict[str, Literal["error", "start", "end"]] = {"NONE": "error", "START": "start", "END": "end"}
        types3 = list(dict.fromkeys(c3.embedding_types or []))
        return TextsRequest(family=family, texts=texts, truncate=cut3[c3.truncate], types=types3, by_type=bool(types3))
    c4: CohereV4Request = _parse(CohereV4Request, body)
    texts = _no_images(c4)
    _check_dimension(c4.output_dimension, "output_dimension", dimension)
    cut4: dict[str, Literal["error", "start", "end"]] = {"NONE": "error", "LEFT": "start", "RIGHT": "end"}
    return TextsRequest(
        family=family,
        texts=texts,
        truncate=cut4[c4.truncate],
        max_tokens=c4.max_tokens,
        types=list(dict.fromkeys(c4.embedding_types or ["float"])),
        by_type=True,
    )


# --------------------------------------------------------------------------------------------- quantization


def quantize(vectors: Vectors, kind: str) -> list[list[int]] | list[list[float]]:
    """``vectors`` (rows) as the embedding type ``kind`` (see the module docstring)."""
    if kind == "float":
        rows: list[list[float]] = vectors.tolist()
        return rows
    if kind in ("int8", "uint8"):
        peak = np.maximum(np.abs(vectors).max(axis=1, keepdims=True), 1e-12)
        q = np.clip(np.rint(vectors / peak * 127.0), -127, 127).astype(np.int16)
        if kind == "uint8":
            q = q + 128
        return [[int(x) for x in row] for row in q]
    if kind in ("binary", "ubinary"):
        packed = np.packbits(vectors > 0, axis=1).astype(np.int16)  # 8 dimensions per byte, MSB first
        if kind == "binary":
            packed = packed - 128
        return [[int(x) for x in row] for row in packed]
    if kind == "titan-binary":
        bits = (vectors > 0).astype(np.int16)
        return [[int(x) for x in row] for row in bits]
    raise ValueError(f"unknown embedding type {kind}")


# ------------------------------------------------------------------------------------------------ responses


def titan_payload(req: TextsRequest, vectors: Vectors, token_count: int) -> dict[str, Any]:
    embedding: list[float] = vectors[0].tolist()
    payload: dict[str, Any] = {"embedding": embedding, "inputTextTokenCount": token_count}
    if req.family == "titan-v2":
        by_type: dict[str, Any] = {}
        for kind in req.types or ["float"]:
            by_type[kind] = embedding if kind == "float" else quantize(vectors[:1], "titan-binary")[0]
        payload["embeddingsByType"] = by_type
    return payload


def cohere_payload(req: TextsRequest, vectors: Vectors, request_id: str) -> dict[str, Any]:
    payload: dict[str, Any] = {"id": request_id}
    if req.by_type:
        payload["embeddings"] = {kind: quantize(vectors, kind) for kind in req.types}
        payload["response_type"] = "embeddings_by_type"
    else:
        payload["embeddings"] = vectors.tolist()
        payload["response_type"] = "embeddings_floats"
    payload["texts"] = req.texts
    return payload
