"""Run the embedding service: ``python -m embedding``."""

from __future__ import annotations

import logging
import os

# PyTorch's CPU threads are GNU OpenMP's, which by default spin for a while after every parallel region
# before they sleep. After a query's encode that spinning takes the cores from the processes the query goes
# on to (the chat function's LanceDB search, the gateway): PASSIVE lets them sleep at once. Measured with
# `make bench-retrieval`, two A/B pairs: 10.9 -> 10.0 ms added p50; the encode itself unchanged. Read by
# libgomp when torch loads it, so set before anything imports torch; an OMP_WAIT_POLICY already in the
# environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

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
