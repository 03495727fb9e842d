"""Run the gateway: ``python -m gateway``."""

from __future__ import annotations

from aiohttp import web

from gateway.app import create_app
from gateway.settings import Settings
from shared.logs import configure_logging


def main() -> None:
    settings = Settings()
    configure_logging(settings.log_level)
    web.run_app(create_app(settings), host=settings.host, port=settings.port, print=None)


if __name__ == "__main__":
    main()
