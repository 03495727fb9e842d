"""Run the ingestion handler in the local Lambda runtime: ``python -m ingestion``."""

from __future__ import annotations

from ingestion.handler import handler, warm
from ingestion.settings import Settings
from shared.lambda_runtime import create_runtime_app, serve
from shared.logs import configure_logging


def main() -> None:
    settings = Settings()
    configure_logging(settings.log_level)
    app = create_runtime_app(
        handler,
        function_name=settings.function_name,
        timeout_s=settings.timeout_s,
        max_concurrency=settings.max_concurrency,
        region=settings.aws_region,
        on_startup=warm,
    )
    serve(app, settings.host, settings.port)


if __name__ == "__main__":
    main()
