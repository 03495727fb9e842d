"""Bedrock Runtime adapters: embeddings (InvokeModel) and chat (ConverseStream).

The same code talks to the local embedding/LLM services or to Amazon Bedrock; only the client's
endpoint URL and the model ids differ.
"""

from __future__ import annotations

import contextvars
import json
import logging
from collections.abc import Generator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal

import orjson
from botocore.exceptions import BotoCoreError, ClientError, ConnectTimeoutError, ReadTimeoutError

from shared.errors import RagError, Throttled, UpstreamTimeout, UpstreamUnavailable
from shared.logs import CORRELATION_HEADER, correlation_id, record_metric

log = logging.getLogger(__name__)

EmbeddingFormat = Literal["cohere", "titan"]


# Bedrock error codes (botocore's bedrock-runtime model) that mean "busy: try again shortly".
# ModelNotReadyException: the model is being loaded (Bedrock asks callers to retry).
THROTTLING_CODES = frozenset(
    {"ThrottlingException", "TooManyRequestsException", "ServiceQuotaExceededException", "ModelNotReadyException"}
)


def error_code(exc: ClientError) -> str:
    """The AWS error code, normalised: an exception inside a ConverseStream event stream arrives with its
    event name in lowerCamelCase (``throttlingException``), the HTTP error as ``ThrottlingException``."""
    code = str(exc.response.get("Error", {}).get("Code", ""))
    return code[:1].upper() + code[1:]


def _add_correlation_header(request: Any, **_: Any) -> None:
    """botocore ``before-sign``: the current correlation id (shared/logs.py) as ``X-Localrag-Correlation-Id``.

    A header of our own rather than ``X-Amzn-Trace-Id``, which is X-Ray's (Lambda sets it from _X_AMZN_TRACE_ID)
    and has a fixed format. Bedrock accepts and ignores it; the local stand-ins log it. Added before signing,
    so it is signed like the rest of the request."""
    value = correlation_id()
    if value and value.isascii() and value.isprintable() and len(value) <= 128:
        request.headers[CORRELATION_HEADER] = value


def _count_throttle(response: Any = None, operation: Any = None, **_: Any) -> None:
    """botocore ``needs-retry``: each throttled attempt (retried or not) counts as a ``BedrockThrottles``."""
    if not isinstance(response, tuple) or len(response) != 2 or not isinstance(response[1], dict):
        return
    code = str(response[1].get("Error", {}).get("Code", ""))
    if code in THROTTLING_CODES:
        name = getattr(operation, "name", "?")
        log.warning("bedrock %s throttled (%s); botocore retries within its budget", name, code)
        record_metric("BedrockThrottles", 1, "Count")


def observe(client: Any) -> Any:
    """Make a bedrock-runtime client carry the correlation id and count its throttled attempts (idempotent).
    A client that is not botocore's (one a test passes in) is left as it is."""
    events = getattr(getattr(client, "meta", None), "events", None)
    if events is None:
        return client
    events.register("before-sign.bedrock-runtime.*", _add_correlation_header, unique_id="localrag-correlation")
    events.register("needs-retry.bedrock-runtime.*", _count_throttle, unique_id="localrag-throttles")
    return client


# Bedrock's answer to a model id it does not know (400 ValidationException), and the stand-ins' too.
UNKNOWN_MODEL_ID = "The provided model identifier is invalid"


def upstream_error(service: str, exc: Exception) -> RagError:
    """Map a botocore failure to a client-safe typed error (details go to the log only).

    The same mapping holds for the local stand-ins and for Bedrock: both raise botocore's ClientError
    with the same error codes (tests/service/test_error_parity.py)."""
    if isinstance(exc, ReadTimeoutError | ConnectTimeoutError):
        return UpstreamTimeout(f"the {service} service did not answer in time")
    if isinstance(exc, ClientError):
        code = error_code(exc)
        if code in THROTTLING_CODES:
            return Throttled(f"the {service} service is busy; retry shortly")
        if code == "ModelTimeoutException":
            return UpstreamTimeout(f"the {service} model timed out")
        unknown_id = code == "ValidationException" and str(exc.response.get("Error", {}).get("Message", "")).startswith(
            UNKNOWN_MODEL_ID
        )
        if code in ("ResourceNotFoundException", "AccessDeniedException") or unknown_id:
            # A deployment problem (model id, model access, IAM), not the client's: say so, without details.
            return UpstreamUnavailable(f"the {service} model is not available to this service (see its log)")
    return UpstreamUnavailable(f"the {service} service is unavailable")


class Embedder:
    """Text -> vectors through bedrock-runtime InvokeModel.

    ``cohere`` sends batches (``{texts, input_type}``); ``titan`` embeds one text per call
    (``{inputText, dimensions, normalize}``), fanned out with bounded concurrency.
    """

    def __init__(
        self,
        client: Any,
        model_id: str,
        *,
        body_format: EmbeddingFormat = "cohere",
        batch_size: int = 64,
        dimensions: int | None = None,
        concurrency: int = 4,
    ) -> None:
        self.client = observe(client)
        self.model_id = model_id
        self.body_format = body_format
        self.batch_size = batch_size
        self.dimensions = dimensions
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="embed")

    def _invoke(self, body: dict[str, Any]) -> dict[str, Any]:
        try:
            resp = self.client.invoke_model(
                modelId=self.model_id,
                body=json.dumps(body),
                contentType="application/json",
                accept="application/json",
            )
            # orjson: parsing the reply's floats (384 a text for MiniLM) is most of a query embedding's client cost.
            result: dict[str, Any] = orjson.loads(resp["body"].read())
            return result
        except (ClientError, BotoCoreError) as exc:
            log.warning("embedding call failed: %s", _describe(exc))
            raise upstream_error("embedding", exc) from exc

    def _titan(self, text: str) -> list[float]:
        body: dict[str, Any] = {"inputText": text, "normalize": True}
        if self.dimensions:
            body["dimensions"] = self.dimensions
        vec: list[float] = self._invoke(body)["embedding"]
        return vec

    def _cohere(self, texts: Sequence[str], input_type: str) -> list[list[float]]:
        out = self._invoke({"texts": list(texts), "input_type": input_type})["embeddings"]
        # Cohere answers {"embeddings": [[...]]} ("embeddings_floats"), or {"embeddings": {"float": [[...]]}}
        # when embedding types are involved (Embed v4 always does).
        vecs: list[list[float]] = out["float"] if isinstance(out, dict) else out
        return vecs

    def embed_documents(self, texts: Sequence[str]) -> list[list[float]]:
        if not texts:
            return []
        # Each call on the pool runs in a copy of the caller's context: it carries the correlation id.
        context = contextvars.copy_context()
        if self.body_format == "titan":
            return list(self._pool.map(lambda t: context.copy().run(self._titan, t), texts))
        batches = [texts[i : i + self.batch_size] for i in range(0, len(texts), self.batch_size)]
        out: list[list[float]] = []
        for vecs in self._pool.map(lambda b: context.copy().run(self._cohere, b, "search_document"), batches):
            out.extend(vecs)
        return out

    def embed_query(self, text: str) -> list[float]:
        if self.body_format == "titan":
            return self._titan(text)
        return self._cohere([text], "search_query")[0]


@dataclass(frozen=True)
class TextDelta:
    text: str


@dataclass(frozen=True)
class StreamDone:
    stop_reason: str
    input_tokens: int
    output_tokens: int


ChatEvent = TextDelta | StreamDone


class ChatModel:
    """Streams an answer through bedrock-runtime ConverseStream."""

    def __init__(
        self,
        client: Any,
        model_id: str,
        *,
        max_tokens: int = 512,
        temperature: float = 0.2,
        cache_point: bool = False,
    ) -> None:
        """``cache_point``: mark the system prompt (the prompt's stable start) with a Converse cachePoint
        block, for Bedrock prompt caching (models that support it only)."""
        self.client = observe(client)
        self.model_id = model_id
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.cache_point = cache_point

    def stream(self, system: str, messages: Sequence[dict[str, str]]) -> Generator[ChatEvent, None, None]:
        """Yield TextDelta per token and one StreamDone. Closing the generator closes the HTTP stream,
        which stops generation on the server. StreamDone comes with the stream's last event (metadata), before
        the HTTP response has been read to its end, so that the caller can send the answer's end at once; the
        generator then reads the response to its end (the connection is kept for the next call)."""
        try:
            resp = self.client.converse_stream(
                modelId=self.model_id,
                system=[{"text": system}, *([{"cachePoint": {"type": "default"}}] if self.cache_point else [])],
                messages=[{"role": m["role"], "content": [{"text": m["content"]}]} for m in messages],
                inferenceConfig={"maxTokens": self.max_tokens, "temperature": self.temperature},
            )
        except (ClientError, BotoCoreError) as exc:
            log.warning("converse_stream failed: %s", _describe(exc))
            raise upstream_error("LLM", exc) from exc
        stream = resp["stream"]
        stop_reason = "end_turn"
        done: StreamDone | None = None
        try:
            for event in stream:
                if "contentBlockDelta" in event:
                    text = event["contentBlockDelta"]["delta"].get("text", "")
                    if text:
                        yield TextDelta(text)
                elif "messageStop" in event:
                    stop_reason = event["messageStop"].get("stopReason", stop_reason)
                elif "metadata" in event and done is None:  # Bedrock's last event
                    done = _done(stop_reason, event["metadata"].get("usage", {}))
                    yield done
        except (ClientError, BotoCoreError) as exc:
            if isinstance(exc, ClientError) and error_code(exc) in THROTTLING_CODES:
                record_metric("BedrockThrottles", 1, "Count")  # inside the stream: botocore does not retry it
            log.warning("converse_stream broke off: %s", _describe(exc))
            raise upstream_error("LLM", exc) from exc
        finally:
            stream.close()
        if done is None:  # a stream without metadata
            yield _done(stop_reason, {})


def _done(stop_reason: str, usage: dict[str, Any]) -> StreamDone:
    # The prompt's size: with prompt caching Bedrock counts the tokens read from (or written to) its cache
    # apart from inputTokens.
    prompt = sum(int(usage.get(k, 0)) for k in ("inputTokens", "cacheReadInputTokens", "cacheWriteInputTokens"))
    return StreamDone(stop_reason, prompt, int(usage.get("outputTokens", 0)))


def _describe(exc: Exception) -> str:
    """A botocore failure for the log: its type and AWS error code, never its message (house rule)."""
    if isinstance(exc, ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return f"{type(exc).__name__} {error_code(exc)} (HTTP {status})"
    return type(exc).__name__
