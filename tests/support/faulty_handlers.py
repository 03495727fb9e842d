"""Lambda handlers that fail on purpose, to show the gateway turns failures into client errors."""

from __future__ import annotations

import json
import os
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


def slow_poster(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Outlives API Gateway's integration timeout: waits ``FAULTY_POST_AFTER_S`` seconds, posts a reply through
    @connections (RAG_CONNECTIONS_ENDPOINT_URL, signed with the internal key, as the real functions do), then
    returns a two-way reply that the gateway must drop (its client stopped waiting)."""
    ctx = event.get("requestContext", {})
    if ctx.get("eventType") != "MESSAGE":
        return {"statusCode": 200}
    from shared.connections import Connections
    from shared.settings import InternalAuthSettings

    time.sleep(float(os.environ.get("FAULTY_POST_AFTER_S", "3")))
    connections = Connections(
        endpoint_url=os.environ["RAG_CONNECTIONS_ENDPOINT_URL"],
        region="us-east-1",
        signing_key=InternalAuthSettings().signing_key(),
    )
    client = connections.client(connections.endpoint_url or "")
    client.post_to_connection(ConnectionId=ctx["connectionId"], Data=json.dumps({"type": "late_post"}).encode())
    return {"statusCode": 200, "body": json.dumps({"type": "return_value"})}
