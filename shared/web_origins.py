"""Host and Origin names, as the gateway and the api function check them (one definition for both).

``split_host`` parses a Host header value (``name[:port]``, a bracketed IPv6 address too);
``normalize_origin`` checks and normalizes a configured origin (``scheme://host[:port]``).
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")
_HOST = re.compile(r"^(?P<name>\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+)(?::(?P<port>\d{1,5}))?$")


def split_host(host: str) -> tuple[str, int | None] | None:
    """``name[:port]`` (a bracketed IPv6 address too) -> (lower-case name, port or None); None if malformed."""
    m = _HOST.match(host.strip())
    if m is None:
        return None
    port = int(m["port"]) if m["port"] else None
    if port is not None and not 0 < port < 65536:
        return None
    return m["name"].lower(), port


def normalize_origin(origin: str, schemes: tuple[str, ...] = ("http", "https")) -> str:
    """``scheme://host[:port]`` with the host lower-cased; ValueError if ``origin`` is not one of ``schemes``."""
    parts = urlsplit(origin)
    if parts.scheme not in schemes or not parts.netloc or parts.path not in ("", "/"):
        raise ValueError(f"{origin!r} is not an origin ({' or '.join(f'{s}://host[:port]' for s in schemes)})")
    return f"{parts.scheme}://{parts.netloc.lower()}"
