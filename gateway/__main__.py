"""Run the gateway: ``python -m gateway`` (the public listener, and @connections on the internal one)."""

from __future__ import annotations

from gateway.app import create_app
from gateway.keys import MANAGEMENT_APP
from gateway.settings import Settings
from shared.logs import configure_logging
from shared.serving import InternalListener, run_app


def main() -> None:
    settings = Settings()
    configure_logging(settings.log_level)
    app = create_app(settings)
    internal = InternalListener(app[MANAGEMENT_APP], settings.management_host, settings.management_port)
    run_app(app, settings.host, settings.port, name="gateway", internal=internal)


if __name__ == "__main__":
    main()
