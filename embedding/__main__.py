"""Run the embedding service: ``python -m embedding``."""

from __future__ import annotations

import logging

from embedding.app import create_app
from embedding.settings import Settings
from shared.logs import configure_logging
from shared.serving import run_app

log = logging.getLogger("embedding")


def main() -> None:
    settings = Settings()
    configure_logging(settings.log_level)
    log.info("embedding service starting")
    run_app(create_app(settings), settings.host, settings.port, name="embedding")


if __name__ == "__main__":
    main()
