"""``python -m llm``: serve the GGUF model over the Bedrock Runtime Converse API (and OpenAI chat)."""

from __future__ import annotations

import logging
import sys

from pydantic import ValidationError

from llm.app import create_app
from llm.model_fetch import ModelFetchError, ensure_model
from llm.settings import Settings
from shared.logs import configure_logging
from shared.serving import run_app

log = logging.getLogger("llm")


def main() -> int:
    try:
        settings = Settings()
    except ValidationError as exc:
        print(f"error: invalid LLM_* settings: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level)
    try:
        model_path = ensure_model(settings)
    except ModelFetchError as exc:
        log.error("%s", exc)
        return 1
    settings = settings.model_copy(update={"model_path": model_path})
    log.info("serving %s as model id %r", model_path, settings.model_id)
    run_app(create_app(settings), settings.host, settings.port, name="llm", shutdown_timeout=5)
    return 0


if __name__ == "__main__":
    sys.exit(main())
