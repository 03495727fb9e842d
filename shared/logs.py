"""Process-wide logging: one JSON object per line on stdout, from every process (configure_logging, once, in
each service's main()).

A line has ``timestamp`` (UTC, ISO 8601, ms), ``level``, ``service``, ``logger``, ``message``, then the log
context of the work it belongs to (``bind``: the correlation fields, ``correlation_id``, ``connection_id``,
``request_id``, ``aws_request_id``, ...), then any ``extra=`` fields. The context lives in a ContextVar, so
concurrent invocations on threads or requests on an event loop each log their own.

House rule: no stack trace and no exception text in a log line. A record with ``exc_info`` (``log.exception``,
``exc_info=True``, aiohttp's or asyncio's own error lines, an uncaught exception) gets ``error_type`` (the
exception's class) and ``error_where`` (file:line in function of the innermost frame of this project, else of
the innermost frame) instead: an operator finds the failing place, and nothing a key, token or client's text
may be in reaches the log.

Stdlib only: every process uses it (the gateway and the authorizer have no aws-lambda-powertools).
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextvars import ContextVar, Token
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType, TracebackType
from typing import Any

from aiohttp import web

# What ties the lines of one request together, across processes (see README "Observability").
CORRELATION_FIELDS = ("correlation_id", "connection_id", "request_id", "aws_request_id")
# The header the lambdas put on their Bedrock calls (shared/bedrock.py); the stand-ins log it.
CORRELATION_HEADER = "X-Localrag-Correlation-Id"

_CONTEXT: ContextVar[Mapping[str, Any]] = ContextVar("log_context", default=MappingProxyType({}))
_ROOT = Path(__file__).resolve().parent.parent
# LogRecord attributes (and what Formatter adds): not "extra" fields.
_RECORD_ATTRS = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}


def log_context() -> dict[str, Any]:
    """The fields every line logged here and now carries."""
    return dict(_CONTEXT.get())


def bind(**fields: Any) -> Token[Mapping[str, Any]]:
    """Add ``fields`` (None values are left out) to the log context of the current context; ``unbind`` undoes."""
    merged = {**_CONTEXT.get(), **{k: v for k, v in fields.items() if v is not None}}
    return _CONTEXT.set(MappingProxyType(merged))


def unbind(token: Token[Mapping[str, Any]]) -> None:
    _CONTEXT.reset(token)


def replace_context(fields: Mapping[str, Any]) -> None:
    """Set the log context to exactly ``fields`` (Powertools' clear_state / remove_keys)."""
    _CONTEXT.set(MappingProxyType({k: v for k, v in fields.items() if v is not None}))


@contextlib.contextmanager
def bound(**fields: Any) -> Iterator[None]:
    token = bind(**fields)
    try:
        yield
    finally:
        unbind(token)


# The current invocation's metrics (shared/observability.py sets it to Powertools' EMF metrics): shared code
# records into it without depending on Powertools; outside an instrumented invocation nothing is recorded.
MetricSink = Callable[[str, float, str], None]
_METRICS: ContextVar[MetricSink | None] = ContextVar("metric_sink", default=None)


def set_metric_sink(sink: MetricSink | None) -> Token[MetricSink | None]:
    return _METRICS.set(sink)


def reset_metric_sink(token: Token[MetricSink | None]) -> None:
    _METRICS.reset(token)


def record_metric(name: str, value: float, unit: str = "Count") -> bool:
    """Add a value to the current invocation's metrics (name, CloudWatch unit); False when none is open."""
    sink = _METRICS.get()
    if sink is None:
        return False
    sink(name, value, unit)
    return True


def correlation_id() -> str | None:
    value = _CONTEXT.get().get("correlation_id")
    return value if isinstance(value, str) else None


def error_where(tb: TracebackType | None) -> str | None:
    """``path:line in function`` of the innermost frame in this project's code (else the innermost frame)."""
    last: tuple[str, int, str] | None = None
    ours: tuple[str, int, str] | None = None
    while tb is not None:
        code = tb.tb_frame.f_code
        entry = (code.co_filename, tb.tb_lineno, code.co_name)
        last = entry
        path = Path(code.co_filename)
        if path.is_relative_to(_ROOT) and ".venv" not in path.parts and "site-packages" not in path.parts:
            ours = entry
        tb = tb.tb_next
    found = ours or last
    if found is None:
        return None
    filename, line, function = found
    path = Path(filename)
    shown = str(path.relative_to(_ROOT)) if path.is_relative_to(_ROOT) else "/".join(path.parts[-2:])
    return f"{shown}:{line} in {function}"


class JsonFormatter(logging.Formatter):
    """One JSON object per record: see the module docstring. Never a traceback or exception text."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(self.to_dict(record), default=str, ensure_ascii=False, separators=(",", ":"))

    def to_dict(self, record: logging.LogRecord) -> dict[str, Any]:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string must not lose the line
            message = str(record.msg)
        out: dict[str, Any] = {
            "timestamp": datetime.fromtimestamp(record.created, tz=UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "service": self.service,
            "logger": record.name,
            "message": message,
        }
        out.update(_CONTEXT.get())
        for key, value in record.__dict__.items():
            if (key not in _RECORD_ATTRS and not key.startswith("_")) or key == "_aws":
                out[key] = value
        exc = record.exc_info
        if isinstance(exc, tuple) and exc[0] is not None:
            out["error_type"] = exc[0].__name__
            out["error_where"] = error_where(exc[2])
        # record.exc_text / stack_info are never written.
        return out


@web.middleware
async def correlation_middleware(request: web.Request, handler: Callable[[web.Request], Any]) -> web.StreamResponse:
    """The Bedrock stand-ins' request log: the caller's ``X-Localrag-Correlation-Id`` (shared/bedrock.py) in the
    log context while the request is served, and one line per request (method, path, status, milliseconds).
    Outermost, so that the status of an error answer (aws_error_middleware) is the one logged."""
    value = request.headers.get(CORRELATION_HEADER)
    return await logged_request(request, handler, _requests, correlation_id=value[:128] if value else None)


async def logged_request(
    request: web.Request, handler: Callable[[web.Request], Any], logger: logging.Logger, **context: Any
) -> web.StreamResponse:
    """Serve ``request`` with ``context`` bound to every line logged meanwhile, then log one line for it: method,
    path (never the query string: a ``?token=`` credential stays out of the log), status and milliseconds
    (``/health`` is not logged)."""
    token = bind(**context)
    started = time.perf_counter()
    status = 500
    try:
        response: web.StreamResponse = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        if request.path != "/health":
            logger.info(
                "%s %s -> %d in %.1f ms",
                request.method,
                request.path[:256],
                status,
                (time.perf_counter() - started) * 1000,
                extra={"http_status": status},
            )
        unbind(token)


_requests = logging.getLogger("requests")


def service_name() -> str:
    """The service a process runs: the package of ``python -m <package>`` (gateway, llm, embedding, ...)."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    name = getattr(spec, "name", None)
    return name.split(".")[0] if isinstance(name, str) and name else "localrag"


class StdoutHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A StreamHandler on whatever sys.stdout is when a record is written (not when the handler was made)."""

    def __init__(self) -> None:
        super().__init__(sys.stdout)

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stdout

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


def logging_configured() -> bool:
    """Whether the root logger already writes these JSON lines (configure_logging ran)."""
    return any(isinstance(h.formatter, JsonFormatter) for h in logging.getLogger().handlers)


def configure_logging(level: str = "INFO", service: str | None = None) -> None:
    """JSON lines on stdout for every logger of the process; uncaught exceptions and warnings too."""
    handler = StdoutHandler()
    handler.setFormatter(JsonFormatter(service or service_name()))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    logging.captureWarnings(True)
    # aiohttp's access log is noisy at INFO under token streaming.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    sys.excepthook = _log_uncaught
    threading.excepthook = _log_uncaught_in_thread


_uncaught = logging.getLogger("uncaught")


def _log_uncaught(exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
    _uncaught.critical("uncaught %s", exc_type.__name__, exc_info=(exc_type, exc, tb))


def _log_uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:
        return
    name = args.thread.name if args.thread is not None else "?"
    _uncaught.critical(
        "uncaught %s in thread %s",
        args.exc_type.__name__,
        name,
        exc_info=(args.exc_type, args.exc_value, args.exc_traceback),  # type: ignore[arg-type]
    )


def emf_line(namespace: str, metrics: Mapping[str, tuple[float, str]], dimensions: Mapping[str, str]) -> dict[str, Any]:
    """A CloudWatch embedded-metric-format object: ``metrics`` {name: (value, unit)} under ``dimensions``. For
    the processes without aws-lambda-powertools (the local Lambda runtime); the lambdas use Powertools."""
    return {
        "_aws": {
            "Timestamp": int(time.time() * 1000),
            "CloudWatchMetrics": [
                {
                    "Namespace": namespace,
                    "Dimensions": [list(dimensions)],
                    "Metrics": [{"Name": name, "Unit": unit} for name, (_, unit) in metrics.items()],
                }
            ],
        },
        **dimensions,
        **{name: value for name, (value, _) in metrics.items()},
    }
