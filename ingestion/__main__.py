"""Run the ingestion handler in the local Lambda runtime: ``python -m ingestion``."""

from __future__ import annotations

from ingestion.handler import handler, warm
from ingestion.settings import Settings
from shared.lambda_runtime import run_local


def main() -> None:
    run_local(handler, warm, Settings())


if __name__ == "__main__":
    main()
