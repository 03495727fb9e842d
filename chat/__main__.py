"""Run the chat handler in the local Lambda runtime: ``python -m chat``."""

from __future__ import annotations

from chat.handler import handler, warm
from chat.settings import Settings
from shared.lambda_runtime import run_local


def main() -> None:
    run_local(handler, warm, Settings())


if __name__ == "__main__":
    main()
