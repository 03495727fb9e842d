"""Run the HTTP API and the web chat: ``python -m api`` (locally, and on AWS behind Lambda Web Adapter).

Serves on the inherited socket (``LOCALRAG_LISTEN_FD``, shared/serving.py) or on API_HOST:API_PORT
(0: any free port), and prints ``api: listening on http://HOST:PORT`` once the logic is built (the cold
start: the chat and ingestion services, their LanceDB tables and clients, the authorizer's key store).
"""

from __future__ import annotations

import logging

from api.app import Backends, create_app
from api.identity import Identity
from api.settings import Settings
from authorizer.service import build_authorizer
from authorizer.settings import Settings as AuthorizerSettings
from chat.handler import build_service as build_chat
from chat.settings import Settings as ChatSettings
from ingestion.handler import build_service as build_ingestion
from ingestion.settings import Settings as IngestionSettings
from shared import wiring
from shared.logs import configure_logging
from shared.serving import run_app
from shared.vector_store import EmbeddingMismatch
from shared.ws_lambda import index_mismatch_error

log = logging.getLogger(__name__)


def build_backends() -> Backends:
    """The chat and ingestion logic and the authorizer, each from its own settings, as the functions build
    them; an index built with another embedding model makes every data route refuse (index_mismatch)."""
    chat_settings, ingestion_settings = ChatSettings(), IngestionSettings()
    store = wiring.vector_store(chat_settings)  # one store (and LanceDB connection) for both
    refusal = None
    try:
        store.chunks()
        store.messages()
    except EmbeddingMismatch as exc:
        log.error("refusing to serve: %s", exc)
        refusal = index_mismatch_error()
    return Backends(
        chat=build_chat(chat_settings, store=store),
        ingestion=build_ingestion(ingestion_settings, store=store),
        identity=Identity(build_authorizer(AuthorizerSettings())),
        refusal=refusal,
    )


def main() -> None:
    settings = Settings()
    configure_logging(settings.log_level)
    run_app(create_app(settings, build_backends), settings.host, settings.port, name="api")


if __name__ == "__main__":
    main()
