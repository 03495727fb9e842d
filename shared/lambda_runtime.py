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
from shared.sigv4 import SignatureError, verify

log = logging.getLogger(__name__)

Handler = Callable[[dict[str, Any], Any], Any]
MAX_PAYLOAD_BYTES = 6 * 1024 * 1024  # Lambda's synchronous payload limit


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
            await asyncio.get_running_loop().run_in_executor(pool, on_startup)
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
            return aws_error_response(429, "TooManyRequestsException", "Rate Exceeded.")
        invocation_type = request.headers.get("X-Amz-Invocation-Type", "RequestResponse")
        if invocation_type == "DryRun":
            return web.Response(status=204)
        state["busy"] += 1
        state["invocations"] += 1
        context = LambdaContext(function_name, timeout_s, memory_mb, region)
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(pool, handler, event, context)
        future.add_done_callback(release)
        if invocation_type == "Event":
            future.add_done_callback(_log_async_failure)
            return web.Response(status=202)
        try:
            result = await asyncio.wait_for(asyncio.shield(future), timeout_s)
        except TimeoutError:
            state["timeouts"] += 1
            log.error(
                "%s: task timed out after %.2f seconds (request %s)",
                function_name,
                timeout_s,
                context.aws_request_id,
            )
            return _function_error("Sandbox.Timedout", f"Task timed out after {timeout_s:.2f} seconds")
        except Exception as exc:
            state["errors"] += 1
            log.exception("%s: unhandled error (request %s)", function_name, context.aws_request_id)
            return _function_error(type(exc).__name__, str(exc), traceback.format_tb(exc.__traceback__))
        return web.json_response(
            result, dumps=lambda o: json.dumps(o, default=str), headers={"X-Amz-Executed-Version": "$LATEST"}
        )

    async def health(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "function": function_name, **state})

    app.router.add_post("/2015-03-31/functions/{name}/invocations", invoke)
    app.router.add_get("/health", health)
    return app


def _log_async_failure(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled() and fut.exception() is not None:
        log.error("asynchronous invocation failed", exc_info=fut.exception())


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

    configure_logging(settings.log_level)
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
    configure_logging()
    module_name, _, func_name = args.handler.rpartition(".")
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
