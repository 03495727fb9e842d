"""Run the embedding service: ``python -m embedding``."""

from __future__ import annotations

import logging

from aiohttp import web

from embedding.app import create_app
from embedding.settings import Settings
from shared.logs import configure_logging

log = logging.getLogger("embedding")


def main() -> None:
    settings = Settings()
    configure_logging(settings.log_level)
    log.info("embedding service starting on %s:%d", settings.host, settings.port)
    web.run_app(create_app(settings), host=settings.host, port=settings.port, print=None)


if __name__ == "__main__":
    main()
