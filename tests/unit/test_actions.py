"""The action registry (shared/protocol.py): every client action, its request model and its function,
defined once; the gateway's default routes and each handler's dispatch table follow it. (template.yaml's
routes are checked against it in test_template.py.)"""

from __future__ import annotations

from typing import Any, cast, get_args

import pytest

from shared.connections import Connections
from shared.errors import RagError
from shared.protocol import (
    ACTION_REGISTRY,
    ACTIONS,
    CLIENT_REQUEST,
    CONNECTION_ROUTES,
    AnyClientRequest,
    actions_of,
    route_table,
)
from shared.ws_lambda import Emit, RouteHandler, WebSocketLambda, refusing_lambda


def _connections() -> Connections:
    return Connections(endpoint_url="http://127.0.0.1:1", region="eu-west-1")


def test_the_registry_names_every_request_model_once() -> None:
    assert {spec.request for spec in ACTION_REGISTRY.values()} == set(get_args(AnyClientRequest))
    assert tuple(ACTION_REGISTRY) == ACTIONS
    for action, spec in ACTION_REGISTRY.items():
        request = CLIENT_REQUEST.validate_python({"action": action, **_minimal(action)})
        assert type(request) is spec.request
    assert set(actions_of("ingestion")) | set(actions_of("chat")) == set(ACTIONS)
    assert not set(actions_of("ingestion")) & set(actions_of("chat"))


def _minimal(action: str) -> dict[str, Any]:
    fields: dict[str, dict[str, Any]] = {
        "ingest": {"document": {"id": "d", "text": "t"}},
        "ingest_batch": {"documents": [{"id": "d", "text": "t"}]},
        "delete_document": {"doc_id": "d"},
        "chat": {"question": "q"},
        "search": {"query": "q"},
        "history": {"conversation_id": "c"},
        "upload_url": {"filename": "a.md", "size": 1},
        "ingest_object": {"key": "k"},
        "list_documents": {},
        "sample_chunks": {},
    }
    return fields[action]


def test_gateway_default_routes_come_from_the_registry() -> None:
    from gateway.settings import DEFAULT_ROUTES, Settings

    by_action = {action: spec.function for action, spec in ACTION_REGISTRY.items()}
    assert DEFAULT_ROUTES == route_table() == {**CONNECTION_ROUTES, **by_action}
    assert Settings().routes == DEFAULT_ROUTES


def test_a_handler_must_serve_exactly_its_registry_actions() -> None:
    def serve(_request: Any, _emit: Emit, _caller: Any) -> None:
        pass

    ingestion: dict[str, RouteHandler] = dict.fromkeys(actions_of("ingestion"), serve)
    WebSocketLambda(_connections(), ingestion, function="ingestion")
    missing = {k: v for k, v in ingestion.items() if k != "list_documents"}
    with pytest.raises(ValueError, match=r"missing \['list_documents'\]"):
        WebSocketLambda(_connections(), missing, function="ingestion")
    with pytest.raises(ValueError, match=r"not its own \['chat'\]"):
        WebSocketLambda(_connections(), {**ingestion, "chat": serve}, function="ingestion")


def test_a_refusing_lambda_covers_its_functions_actions() -> None:
    for function in ("ingestion", "chat"):
        lam = refusing_lambda(_connections(), function, RagError("no"))
        assert set(lam.routes) == set(actions_of(function))


def test_the_handlers_build_from_the_registry() -> None:
    """Each handler's real dispatch table passes the registry check (its build_lambda would raise)."""
    from chat.handler import build_lambda as chat_lambda
    from chat.service import ChatService
    from chat.settings import Settings as ChatSettings
    from ingestion.handler import build_lambda as ingestion_lambda
    from ingestion.service import IngestionService
    from ingestion.settings import Settings as IngestionSettings

    # The service is only called when a request arrives; building the dispatch table does not touch it.
    chat = chat_lambda(ChatSettings(), cast(ChatService, object()))
    ingestion = ingestion_lambda(IngestionSettings(), cast(IngestionService, object()))
    assert set(chat.routes) == set(actions_of("chat"))
    assert set(ingestion.routes) == set(actions_of("ingestion"))
