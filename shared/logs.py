"""Process-wide logging setup, called once from each service's main()."""

from __future__ import annotations

import logging


def configure_logging(level: str = "INFO") -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # aiohttp's access log is noisy at INFO under token streaming.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
