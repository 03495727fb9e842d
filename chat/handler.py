"""Lambda entry point: ``chat.handler.handler`` (the image CMD on AWS and in compose).

Also the ``$default`` route: whatever the gateway cannot route lands here and gets a typed error.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import cache
from typing import Any

from chat.sampling import sample_chunks
from chat.service import ChatService
from chat.settings import Settings
from shared import wiring
from shared.bedrock import ChatModel
from shared.identity import Principal
from shared.observability import instrument
from shared.ports import ChatStore, QueryEmbedder
from shared.protocol import ChatRequest, HistoryRequest, SampleChunksRequest, SearchRequest
from shared.vector_store import EmbeddingMismatch
from shared.ws_lambda import Emit, WebSocketLambda, index_mismatch_error, refusing_lambda

log = logging.getLogger(__name__)


def build_service(
    settings: Settings, *, embedder: QueryEmbedder | None = None, store: ChatStore | None = None
) -> ChatService:
    """The chat service and its adapters, all from ``settings``. ``embedder`` / ``store`` replace the
    adapters the settings describe (tests run the embedding model in process)."""
    return ChatService(
        settings,
        embedder=embedder or wiring.embedder(settings),
        store=store or wiring.vector_store(settings),
        llm=ChatModel(
            wiring.bedrock_client(settings, settings.llm_endpoint_url),
            settings.llm_model_id,
            max_tokens=settings.max_tokens,
            temperature=settings.temperature,
            cache_point=settings.prompt_cache_point,
        ),
    )


def build_lambda(settings: Settings, service: ChatService | None = None) -> WebSocketLambda:
    service = service or build_service(settings)

    # Each for the caller the authorizer established: searches see the caller's tenant's documents only,
    # conversations are the caller's own.
    def search(req: SearchRequest, emit: Emit, caller: Principal) -> None:
        emit(service.search(req, tenant=caller.tenant))

    def history(req: HistoryRequest, emit: Emit, caller: Principal) -> None:
        emit(service.history(req, caller))

    def chat(req: ChatRequest, emit: Emit, caller: Principal) -> None:
        service.chat(req, emit, caller)

    def sample(req: SampleChunksRequest, emit: Emit, caller: Principal) -> None:
        emit(sample_chunks(service.store, req, tenant=caller.tenant))

    return WebSocketLambda(
        wiring.connections(settings),
        {"chat": chat, "search": search, "history": history, "sample_chunks": sample},
        function="chat",
    )


@cache
def _settings() -> Settings:
    return Settings()


@cache
def _lambda() -> WebSocketLambda:
    settings = _settings()
    store = wiring.vector_store(settings)
    try:
        store.chunks()
    except EmbeddingMismatch as exc:
        log.error("refusing to serve: %s", exc)
        return refusing_lambda(wiring.connections(settings), "chat", index_mismatch_error())
    store.messages()
    return build_lambda(settings, build_service(settings, store=store))


@cache
def _observed() -> Callable[[dict[str, Any], Any], Any]:
    """The handler with Powertools' Logger and metrics (shared/observability.py), made at the cold start."""
    settings = _settings()

    def run(event: dict[str, Any], context: Any) -> Any:
        return _lambda()(event, context)

    return instrument(
        run, service=settings.function_name, namespace=settings.metrics_namespace, level=settings.log_level
    )


def warm() -> None:
    _observed()
    _lambda()


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    result: dict[str, Any] = _observed()(event, context)
    return result
