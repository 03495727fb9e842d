"""Answer HTTP errors the way AWS services do, so boto3 raises the same exception classes locally.

botocore's rest-json parser takes the error code from the ``x-amzn-ErrorType`` header (or ``__type``
in the body) and the message from ``message``; ``client.exceptions.ValidationException`` etc. then match.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

log = logging.getLogger(__name__)


class AwsError(Exception):
    """An error with an AWS error code, rendered as an AWS-style JSON error response."""

    status = 400
    code = "ValidationException"

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status


class ValidationError(AwsError):
    status = 400
    code = "ValidationException"


class ResourceNotFound(AwsError):
    status = 404
    code = "ResourceNotFoundException"


class Throttling(AwsError):
    status = 429
    code = "ThrottlingException"


class ModelTimeout(AwsError):
    status = 408
    code = "ModelTimeoutException"


class ServiceUnavailable(AwsError):
    status = 503
    code = "ServiceUnavailableException"


def aws_error_response(status: int, code: str, message: str) -> web.Response:
    return web.json_response(
        {"message": message, "__type": code},
        status=status,
        headers={"x-amzn-ErrorType": f"{code}:http://internal.amazon.com/coral/com.amazon.bedrock/"},
    )


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def aws_error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Shape every failure as an AWS JSON error; never leak exception text for unexpected ones."""
    try:
        return await handler(request)
    except AwsError as exc:
        return aws_error_response(exc.status, exc.code, exc.message)
    except web.HTTPNotFound:
        return aws_error_response(404, "UnknownOperationException", f"No route for {request.path}")
    except web.HTTPMethodNotAllowed:
        return aws_error_response(405, "UnknownOperationException", f"Method {request.method} not allowed")
    except web.HTTPRequestEntityTooLarge:
        return aws_error_response(413, "ValidationException", "Request body too large")
    except web.HTTPException:
        raise
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return aws_error_response(500, "InternalServerException", "Internal server error")
