"""Lambda entry point: ``chat.handler.handler`` (the image CMD on AWS and in compose).

Also the ``$default`` route: whatever the gateway cannot route lands here and gets a typed error.
"""

from __future__ import annotations

import logging
from functools import cache
from typing import Any

from chat.service import ChatService
from chat.settings import Settings
from shared import wiring
from shared.bedrock import ChatModel
from shared.connections import Connections
from shared.protocol import ChatRequest, HistoryRequest, SearchRequest
from shared.vector_store import EmbeddingMismatch
from shared.ws_lambda import Emit, WebSocketLambda, index_mismatch_error, refusing_lambda

log = logging.getLogger(__name__)


def build_service(settings: Settings) -> ChatService:
    return ChatService(
        embedder=wiring.embedder(settings),
        store=wiring.vector_store(settings),
        llm=ChatModel(
            wiring.bedrock_client(settings, settings.llm_endpoint_url),
            settings.llm_model_id,
            max_tokens=settings.max_tokens,
            temperature=settings.temperature,
        ),
        top_k=settings.top_k,
        max_distance=settings.max_distance,
        excerpt_chars=settings.excerpt_chars,
        history_token_budget=settings.history_token_budget,
        token_flush_ms=settings.token_flush_ms,
    )


def build_lambda(settings: Settings, service: ChatService | None = None) -> WebSocketLambda:
    service = service or build_service(settings)

    def search(req: SearchRequest, emit: Emit) -> None:
        emit(service.search(req))

    def history(req: HistoryRequest, emit: Emit) -> None:
        emit(service.history(req))

    def chat(req: ChatRequest, emit: Emit) -> None:
        service.chat(req, emit)

    connections = Connections(endpoint_url=settings.connections_endpoint_url, region=settings.aws_region)
    return WebSocketLambda(connections, {"chat": chat, "search": search, "history": history})


@cache
def _lambda() -> WebSocketLambda:
    settings = Settings()
    service = build_service(settings)
    try:
        service.store.chunks()
    except EmbeddingMismatch as exc:
        log.error("refusing to serve: %s", exc)
        connections = Connections(endpoint_url=settings.connections_endpoint_url, region=settings.aws_region)
        return refusing_lambda(connections, ["chat", "search", "history"], index_mismatch_error())
    service.store.messages()
    return build_lambda(settings, service)


def warm() -> None:
    _lambda()


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return _lambda()(event, context)
