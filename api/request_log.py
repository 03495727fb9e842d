"""The HTTP API's request log and correlation id, as the functions log theirs (shared/logs.py JSON lines).

Every request gets a correlation id, in this order: the caller's ``X-Request-Id`` (a proxy's or a client's:
kept when it is a plain token of at most 128 characters), the X-Ray trace root of ``X-Amzn-Trace-Id``
(API Gateway and Function URLs send one), the ``requestId`` of the request context Lambda Web Adapter
forwards (``x-amzn-request-context``), else a new one. It is echoed in the response's ``X-Request-Id``, is
the ``correlation_id`` of every line logged while the request is served (the worker threads' too: the
chat and ingestion logic, and the Bedrock calls they make carry it to the stand-ins' logs), and is
written into a sync job so the ingestion function's lines about the job carry it as well. On AWS the
Lambda request id (``x-amzn-lambda-context``) is logged as ``aws_request_id``.

One line per request: method, path (never the query string: a ``?token=`` credential stays out of the
log), status and milliseconds. No header value but these ids is logged.
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from shared.logs import logged_request

REQUEST_ID_HEADER = "X-Request-Id"
TRACE_HEADER = "X-Amzn-Trace-Id"
REQUEST_CONTEXT_HEADER = "x-amzn-request-context"
LAMBDA_CONTEXT_HEADER = "x-amzn-lambda-context"
# What an id taken from a request may look like (anything else: a new id; never a header's text as is).
_SAFE_ID = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9._:=/+-]{0,127}\Z")
_TRACE_ROOT = re.compile(r"(?:^|;)\s*Root=([0-9a-fA-F-]{1,64})(?:;|$)")

REQUEST_ID = web.RequestKey("request_id", str)
log = logging.getLogger("requests")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _safe(value: Any) -> str | None:
    return value if isinstance(value, str) and _SAFE_ID.match(value) else None


def _context_field(request: web.Request, header: str, field: str) -> str | None:
    raw = request.headers.get(header)
    if not raw or len(raw) > 16384:
        return None
    try:
        data = json.loads(raw)
    except ValueError:
        return None
    return _safe(data.get(field)) if isinstance(data, dict) else None


def correlation_of(request: web.Request) -> str:
    """The request's correlation id (see the module docstring)."""
    given = _safe(request.headers.get(REQUEST_ID_HEADER))
    if given:
        return given
    trace = _TRACE_ROOT.search(request.headers.get(TRACE_HEADER, ""))
    if trace:
        return trace.group(1)
    return _context_field(request, REQUEST_CONTEXT_HEADER, "requestId") or str(uuid.uuid4())


@web.middleware
async def request_log(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Outermost: binds the correlation id (and Lambda's request id) for the request, logs one line at the end."""
    request[REQUEST_ID] = correlation = correlation_of(request)
    return await logged_request(
        request,
        handler,
        log,
        correlation_id=correlation,
        aws_request_id=_context_field(request, LAMBDA_CONTEXT_HEADER, "request_id"),
    )


async def echo_request_id(request: web.Request, response: web.StreamResponse) -> None:
    """An on_response_prepare handler: the correlation id in ``X-Request-Id`` (streamed answers too)."""
    correlation = request.get(REQUEST_ID)
    if correlation is not None:
        response.headers[REQUEST_ID_HEADER] = correlation
