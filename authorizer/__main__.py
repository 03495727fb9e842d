"""Run the authorizer in the local Lambda runtime: ``python -m authorizer``."""

from __future__ import annotations

from authorizer.handler import handler, warm
from authorizer.settings import Settings
from shared.lambda_runtime import run_local


def main() -> None:
    run_local(handler, warm, Settings())


if __name__ == "__main__":
    main()
