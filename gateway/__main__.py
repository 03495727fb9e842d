"""Run the gateway: ``python -m gateway``."""

from __future__ import annotations

from gateway.app import create_app
from gateway.settings import Settings
from shared.logs import configure_logging
from shared.serving import run_app


def main() -> None:
    settings = Settings()
    configure_logging(settings.log_level)
    run_app(create_app(settings), settings.host, settings.port, name="gateway")


if __name__ == "__main__":
    main()
