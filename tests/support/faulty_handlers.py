"""Lambda handlers that fail on purpose, to show the gateway turns failures into client errors."""

from __future__ import annotations

import time
from typing import Any


def crash(event: dict[str, Any], context: Any) -> dict[str, Any]:
    if event.get("requestContext", {}).get("eventType") != "MESSAGE":
        return {"statusCode": 200}
    raise RuntimeError("secret internal detail: database password is hunter2")


def slow(event: dict[str, Any], context: Any) -> dict[str, Any]:
    if event.get("requestContext", {}).get("eventType") != "MESSAGE":
        return {"statusCode": 200}
    time.sleep(30)
    return {"statusCode": 200}
