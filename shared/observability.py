"""The lambdas' logs and metrics through aws-lambda-powertools (the ``lambdas`` extra).

``instrument(handler, service=..., namespace=...)`` wraps a Lambda handler with Powertools' Logger
(``inject_lambda_context``: the function's name, memory, ARN, request id and cold start on every line, and the
correlation id from ``requestContext.requestId``) and opens a Powertools EMF metrics set for the invocation,
flushed as one CloudWatch embedded-metric-format line when it ends.

One log format in every process: Powertools' Logger here writes with ``PowertoolsJsonFormatter``, which is
shared/logs.py's JsonFormatter, and its keys (``append_keys``, ``set_correlation_id``) go into shared/logs.py's
log context, a ContextVar: every logger of the process (``logging.getLogger(__name__)`` in chat/, ingestion/,
shared/) writes them, and two invocations running at once on the local runtime's threads keep theirs apart.

Metrics: shared code records with ``shared.logs.record_metric`` (no Powertools import); inside an instrumented
invocation that lands in the invocation's own ``EphemeralMetrics`` (Powertools' ``Metrics`` keeps one set per
process, which concurrent invocations on threads would mix up; on Lambda one sandbox runs one at a time).
"""

from __future__ import annotations

import contextvars
import functools
import logging
from collections.abc import Callable, Iterable
from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.logging.formatter import BasePowertoolsFormatter
from aws_lambda_powertools.metrics import EphemeralMetrics

from shared.lambda_runtime import correlation_of
from shared.logs import (
    JsonFormatter,
    StdoutHandler,
    configure_logging,
    log_context,
    logging_configured,
    replace_context,
    reset_metric_sink,
    set_metric_sink,
)
from shared.ws_lambda import correlation_fields

log = logging.getLogger(__name__)

Handler = Callable[[dict[str, Any], Any], Any]
# Keys Powertools' Logger adds that the JSON line already has (service) or that say nothing (sampling).
_IGNORED_KEYS = frozenset({"service", "sampling_rate"})


class PowertoolsJsonFormatter(BasePowertoolsFormatter, JsonFormatter):
    """Powertools' formatter interface over shared/logs.py's JSON lines and log context."""

    def __init__(self, service: str) -> None:
        JsonFormatter.__init__(self, service)

    def append_keys(self, **additional_keys: Any) -> None:
        # None removes a key (Powertools leaves None values out of a line): set_correlation_id(None) for an
        # event without requestContext must not keep a former invocation's id.
        keys = {k: v for k, v in additional_keys.items() if k not in _IGNORED_KEYS}
        merged = {**log_context(), **keys}
        replace_context({k: v for k, v in merged.items() if v is not None})

    def get_current_keys(self) -> dict[str, Any]:
        return log_context()

    def remove_keys(self, keys: Iterable[str]) -> None:
        drop = set(keys)
        replace_context({k: v for k, v in log_context().items() if k not in drop})

    def clear_state(self) -> None:
        replace_context({})

    def thread_safe_append_keys(self, **additional_keys: Any) -> None:
        self.append_keys(**additional_keys)

    def thread_safe_get_current_keys(self) -> dict[str, Any]:
        return log_context()

    def thread_safe_remove_keys(self, keys: Iterable[str]) -> None:
        self.remove_keys(keys)

    def thread_safe_clear_keys(self) -> None:
        self.clear_state()


def lambda_logger(service: str, level: str = "INFO") -> Logger:
    """Powertools' Logger for the function ``service``, writing shared/logs.py's JSON lines."""
    return Logger(
        service=service,
        level=level.upper(),
        logger_formatter=PowertoolsJsonFormatter(service),
        logger_handler=StdoutHandler(),
    )


def instrument(handler: Handler, *, service: str, namespace: str, level: str = "INFO") -> Handler:
    """``handler`` with Powertools' Logger context and the invocation's EMF metrics (see the module docstring).
    Sets up the JSON log lines first when nothing did (on AWS, where no local runtime ran configure_logging)."""
    if not logging_configured():
        configure_logging(level, service)
    logger = lambda_logger(service, level)
    metrics_log = logging.getLogger(f"{service}.metrics")

    @functools.wraps(handler)
    def observed(event: dict[str, Any], context: Any) -> Any:
        logger.set_correlation_id(correlation_of(event, context))
        logger.append_keys(**correlation_fields(event))  # the EMF line too carries the connection and request_id
        metrics = EphemeralMetrics(namespace=namespace, service=service)
        token = set_metric_sink(lambda name, value, unit: metrics.add_metric(name=name, unit=unit, value=value))
        try:
            return handler(event, context)
        finally:
            reset_metric_sink(token)
            flush(metrics, metrics_log)

    # The correlation id is set by `observed` (correlation_of: requestContext.requestId, else the invocation's
    # request id), rather than by a correlation_id_path that S3 and Kinesis events do not have.
    injected: Handler = logger.inject_lambda_context(observed)

    @functools.wraps(handler)
    def invocation(event: dict[str, Any], context: Any) -> Any:
        # In a copy of the caller's context: the keys bound for this invocation end with it.
        return contextvars.copy_context().run(injected, event, context)

    invocation.namespace = namespace  # type: ignore[attr-defined]  # what the metrics are published under
    return invocation


def flush(metrics: EphemeralMetrics, logger: logging.Logger) -> None:
    """Write the invocation's metrics as one log line that is a CloudWatch EMF document (``_aws`` and the values
    at the top level, with the line's correlation fields as properties), when it recorded any."""
    if not metrics.metric_set:
        return
    try:
        document = metrics.serialize_metric_set()
    except Exception as exc:  # a metric Powertools refuses must not fail the invocation
        log.warning("metrics not written: %s", type(exc).__name__)
        return
    logger.info("metrics", extra=document)
    metrics.clear_metrics()
