"""A small local Lambda runtime: serves the Lambda Invoke API for one handler(event, context).

``POST /2015-03-31/functions/{name}/invocations`` is the path of AWS's Invoke API and of the Lambda
Runtime Interface Emulator, so the gateway, boto3's ``lambda`` client and the AWS base image all
speak to it the same way. Behaviour copied from Lambda:

- a handler exception answers 200 with ``X-Amz-Function-Error: Unhandled`` and
  ``{errorMessage, errorType, stackTrace}`` (the caller decides what to show; the gateway shows none);
- a run past the timeout answers ``Sandbox.Timedout`` the same way;
- more concurrent invocations than the reserved concurrency answer 429 TooManyRequestsException at once
  (Lambda does not queue a synchronous invocation; the caller retries: the gateway does, within a bound,
  for the calls a connection waits on); an invocation holds its slot until its handler returns, also
  past its timeout, as a sandbox stays busy;
- ``X-Amz-Invocation-Type: Event`` answers 202 at once and runs in the background;
- only SigV4-signed requests are served (service ``lambda``; boto3's lambda client and the gateway sign),
  with a key the runtime knows (``InternalAuthSettings``: the stack's internal key): an unsigned request,
  an unknown key or a bad signature answers 403 with AWS's error (MissingAuthenticationToken,
  UnrecognizedClientException, InvalidSignatureException) before the body is even parsed, so nothing a
  client of the stack has can invoke a function directly (a forged Kinesis record, say). With no key
  configured every invocation is refused. The runtime binds 127.0.0.1 by default (an internal address).
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import time
import traceback
import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from aiohttp import web

from shared.aws_http import aws_error_response
from shared.logs import bound, emf_line, error_where
from shared.sigv4 import SignatureError, verify

log = logging.getLogger(__name__)

Handler = Callable[[dict[str, Any], Any], Any]
MAX_PAYLOAD_BYTES = 6 * 1024 * 1024  # Lambda's synchronous payload limit
# The namespace of the metrics Lambda itself publishes (AWS/Lambda on AWS: Duration, Errors, Throttles), as the
# local runtime emits them (CloudWatch reserves AWS/* for AWS).
RUNTIME_METRICS_NAMESPACE = "localrag/Lambda"


class LambdaContext:
    """The attributes of AWS's Python LambdaContext that handlers commonly use."""

    def __init__(self, function_name: str, timeout_s: float, memory_mb: int, region: str) -> None:
        self.function_name = function_name
        self.function_version = "$LATEST"
        self.invoked_function_arn = f"arn:aws:lambda:{region}:000000000000:function:{function_name}"
        self.memory_limit_in_mb = memory_mb
        self.aws_request_id = str(uuid.uuid4())
        self.log_group_name = f"/aws/lambda/{function_name}"
        self.log_stream_name = time.strftime("%Y/%m/%d/[$LATEST]") + uuid.uuid4().hex
        self._deadline = time.monotonic() + timeout_s

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


def _function_error(error_type: str, message: str, stack: list[str] | None = None) -> web.Response:
    body = {"errorMessage": message, "errorType": error_type, "requestId": "", "stackTrace": stack or []}
    return web.json_response(body, headers={"X-Amz-Function-Error": "Unhandled", "X-Amz-Executed-Version": "$LATEST"})


RUNTIME_STATE: web.AppKey[dict[str, Any]] = web.AppKey("runtime_state", dict)


def create_runtime_app(
    handler: Handler,
    *,
    function_name: str,
    timeout_s: float = 300.0,
    max_concurrency: int = 4,
    memory_mb: int = 1024,
    region: str = "us-east-1",
    on_startup: Callable[[], None] | None = None,
    keys: Mapping[str, str],
) -> web.Application:
    """An aiohttp app hosting `handler`. `on_startup` runs once (the cold start: load clients). `keys`:
    the SigV4 keys ({access key id: secret}) an invocation must be signed with (empty: none is served)."""
    if not keys:
        log.warning("%s: no internal key configured (LOCALRAG_INTERNAL_*): every invocation is refused", function_name)
    app = web.Application(client_max_size=MAX_PAYLOAD_BYTES)
    pool = ThreadPoolExecutor(max_workers=max_concurrency, thread_name_prefix=function_name)
    state: dict[str, Any] = {"busy": 0, "invocations": 0, "errors": 0, "timeouts": 0, "throttles": 0}
    app[RUNTIME_STATE] = state

    async def cold_start(_: web.Application) -> Any:
        if on_startup is not None:
            await asyncio.get_running_loop().run_in_executor(pool, contextvars.copy_context().run, on_startup)
        yield
        pool.shutdown(wait=False, cancel_futures=True)

    app.cleanup_ctx.append(cold_start)

    def release(_: asyncio.Future[Any]) -> None:
        # On the event loop, like every other change of the counters (a worker thread's "-= 1" could
        # interleave with the loop's "+= 1" and lose one, leaving a slot taken for good).
        state["busy"] -= 1

    async def invoke(request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        host = request.headers.get("Host", request.host)
        url = f"{request.scheme}://{host}{request.raw_path}"
        try:
            verify(request.method, url, request.headers, raw, keys=keys, service="lambda")
        except SignatureError as exc:
            log.warning("%s: invocation refused: %s", function_name, exc.code)
            return aws_error_response(403, exc.code, exc.message)
        try:
            event = json.loads(raw) if raw else {}
        except ValueError:
            return aws_error_response(400, "InvalidRequestContentException", "Could not parse request body into json")
        if state["busy"] >= max_concurrency:
            state["throttles"] += 1
            with bound(correlation_id=correlation_of(event, None)):
                log.warning(
                    "%s: throttled (%d of %d concurrent invocations busy)",
                    function_name,
                    state["busy"],
                    max_concurrency,
                    extra=emf_line(
                        RUNTIME_METRICS_NAMESPACE, {"Throttles": (1, "Count")}, {"function_name": function_name}
                    ),
                )
            return aws_error_response(429, "TooManyRequestsException", "Rate Exceeded.")
        invocation_type = request.headers.get("X-Amz-Invocation-Type", "RequestResponse")
        if invocation_type == "DryRun":
            return web.Response(status=204)
        state["busy"] += 1
        state["invocations"] += 1
        context = LambdaContext(function_name, timeout_s, memory_mb, region)
        loop = asyncio.get_running_loop()
        # A fresh copy of the loop's context per invocation: what the handler binds to the log context
        # (shared/logs.py) stays with this invocation, also when four run at once on the pool's threads.
        run = contextvars.copy_context().run
        future = loop.run_in_executor(pool, run, run_invocation, handler, event, context, function_name)
        future.add_done_callback(release)
        if invocation_type == "Event":
            future.add_done_callback(_count_async_failure(state))
            return web.Response(status=202)
        try:
            result = await asyncio.wait_for(asyncio.shield(future), timeout_s)
        except TimeoutError:
            state["timeouts"] += 1
            with bound(aws_request_id=context.aws_request_id, correlation_id=correlation_of(event, context)):
                log.error(
                    "%s: task timed out after %.2f seconds",
                    function_name,
                    timeout_s,
                    extra=emf_line(
                        RUNTIME_METRICS_NAMESPACE, {"Timeouts": (1, "Count")}, {"function_name": function_name}
                    ),
                )
            return _function_error("Sandbox.Timedout", f"Task timed out after {timeout_s:.2f} seconds")
        except Exception as exc:
            state["errors"] += 1
            # Lambda answers the error's message and stack to the caller (the gateway shows neither to a client,
            # nor logs them); the log line is run_invocation's, with the type and place only.
            return _function_error(type(exc).__name__, str(exc), traceback.format_tb(exc.__traceback__))
        return web.json_response(
            result, dumps=lambda o: json.dumps(o, default=str), headers={"X-Amz-Executed-Version": "$LATEST"}
        )

    async def health(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "function": function_name, **state})

    app.router.add_post("/2015-03-31/functions/{name}/invocations", invoke)
    app.router.add_get("/health", health)
    return app


def correlation_of(event: Any, context: LambdaContext | None) -> str | None:
    """The invocation's correlation id: API Gateway's ``requestContext.requestId`` when the event has one (a
    WebSocket or /v1 message: the id the gateway logged), else the invocation's own request id (S3, Kinesis)."""
    ctx = event.get("requestContext") if isinstance(event, dict) else None
    request_id = ctx.get("requestId") if isinstance(ctx, dict) else None
    if isinstance(request_id, str) and request_id:
        return request_id
    return context.aws_request_id if context is not None else None


def run_invocation(handler: Handler, event: dict[str, Any], context: LambdaContext, function_name: str) -> Any:
    """Run one invocation as Lambda logs it: START, END and REPORT lines (JSON, with the request id and the
    duration; REPORT is also an embedded-metric line: Duration, Errors), the log context bound meanwhile."""
    with bound(aws_request_id=context.aws_request_id, correlation_id=correlation_of(event, context)):
        log.info("START RequestId: %s Version: $LATEST", context.aws_request_id, extra={"phase": "START"})
        t0 = time.perf_counter()
        failed = 0
        try:
            return handler(event, context)
        except Exception as exc:
            failed = 1
            log.error(
                "%s: unhandled %s in the handler",
                function_name,
                type(exc).__name__,
                extra={"error_type": type(exc).__name__, "error_where": error_where(exc.__traceback__)},
            )
            raise
        finally:
            duration_ms = round((time.perf_counter() - t0) * 1000, 2)
            log.info("END RequestId: %s", context.aws_request_id, extra={"phase": "END"})
            log.info(
                "REPORT RequestId: %s Duration: %.2f ms Memory Size: %d MB",
                context.aws_request_id,
                duration_ms,
                context.memory_limit_in_mb,
                extra={
                    "phase": "REPORT",
                    **emf_line(
                        RUNTIME_METRICS_NAMESPACE,
                        {"Duration": (duration_ms, "Milliseconds"), "Errors": (failed, "Count")},
                        {"function_name": function_name},
                    ),
                },
            )


def _count_async_failure(state: dict[str, Any]) -> Callable[[asyncio.Future[Any]], None]:
    def done(fut: asyncio.Future[Any]) -> None:
        # The failure was logged by run_invocation (type and place); only counted here.
        if not fut.cancelled() and fut.exception() is not None:
            state["errors"] += 1

    return done


def serve(app: web.Application, host: str, port: int, *, name: str) -> None:
    """Serve until SIGINT/SIGTERM (on an inherited socket, or host:port with 0 = any free port: see
    shared/serving.py), then exit without waiting for handler threads still running: like Lambda
    killing a sandbox, a stuck invocation must not keep the runtime alive."""
    import os
    import sys

    from shared.serving import run_app

    run_app(app, host, port, name=name)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


class RuntimeSettings(Protocol):
    """What the local runtime needs from a lambda's settings (ingestion/settings.py, chat/settings.py)."""

    host: str
    port: int
    function_name: str
    timeout_s: float
    max_concurrency: int
    aws_region: str
    log_level: str


def run_local(handler: Handler, warm: Callable[[], None], settings: RuntimeSettings) -> None:
    """``python -m ingestion`` / ``python -m chat``: host the handler like Lambda, warm at start."""
    from shared.logs import configure_logging
    from shared.settings import InternalAuthSettings

    configure_logging(settings.log_level, settings.function_name)
    app = create_runtime_app(
        handler,
        function_name=settings.function_name,
        timeout_s=settings.timeout_s,
        max_concurrency=settings.max_concurrency,
        region=settings.aws_region,
        on_startup=warm,
        keys=InternalAuthSettings().verification_keys(),
    )
    serve(app, settings.host, settings.port, name=settings.function_name)


def main(argv: list[str] | None = None) -> None:
    """Host any handler, as the Runtime Interface Emulator does: ``python -m shared.lambda_runtime module.func``."""
    import argparse
    import importlib

    from shared.logs import configure_logging
    from shared.settings import InternalAuthSettings

    parser = argparse.ArgumentParser(prog="python -m shared.lambda_runtime")
    parser.add_argument("handler", help="module.function, as in a Lambda image's CMD")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080, help="0: any free port (printed)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds, as Lambda's Timeout")
    parser.add_argument("--max-concurrency", type=int, default=4)
    args = parser.parse_args(argv)
    module_name, _, func_name = args.handler.rpartition(".")
    configure_logging(service=func_name)
    handler = getattr(importlib.import_module(module_name), func_name)
    app = create_runtime_app(
        handler,
        function_name=func_name,
        timeout_s=args.timeout,
        max_concurrency=args.max_concurrency,
        keys=InternalAuthSettings().verification_keys(),
    )
    serve(app, args.host, args.port, name=func_name)


if __name__ == "__main__":
    main()
