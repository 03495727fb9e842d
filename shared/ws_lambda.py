"""The edge of both lambdas: parse an API Gateway WebSocket event, route it, reply or report.

Everything a client can get wrong ends here as an ``error`` message with a stable code; anything
unexpected is logged with context and reported as ``internal_error`` without its text.

Identity: every event must carry the authorizer's context in ``requestContext.authorizer`` (API Gateway
puts it there after the ``$connect`` authorizer allowed the connection; the local gateway does the same).
A route gets the caller's ``Principal`` from it -- never from the message. An event without it is refused
and nothing is done: ``$connect`` answers 403, a message gets an ``error`` with code ``unauthorized``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

from pydantic import BaseModel, ValidationError

from shared.connections import ConnectionGone, Connections, encoded
from shared.errors import RagError
from shared.events import WebSocketEvent
from shared.identity import MissingIdentity, Principal
from shared.logs import bound, error_where
from shared.protocol import (
    ACTIONS,
    CLIENT_REQUEST,
    ClientRequest,
    ErrorCode,
    FunctionName,
    actions_of,
    describe_validation_error,
    error,
    request_id_of,
    two_way_routes,
)

log = logging.getLogger(__name__)

Emit = Callable[[BaseModel], None]
# route(request, emit, principal): the principal is the caller the authorizer established.
RouteHandler = Callable[[Any, Emit, Principal], None]
UNAUTHORIZED_MESSAGE = "the request carries no identity: connect with a valid API key or token"

_EVENT: ContextVar[WebSocketEvent] = ContextVar("websocket_event")


def current_event() -> WebSocketEvent:
    """The event of the invocation a route is handling (e.g. the domain name and stage the client reached,
    as Powertools' ``app.current_event``). Only defined inside a route."""
    return _EVENT.get()


def correlation_fields(event: Any) -> dict[str, str | None]:
    """The log context of an API Gateway event (shared/logs.py): its ``requestId`` as the correlation id (fresh per
    message; the gateway logged it), the connection id, the route and, for a message, the client's request_id.
    Empty for other events (S3, Kinesis)."""
    ctx = event.get("requestContext") if isinstance(event, dict) else None
    if not isinstance(ctx, dict) or not isinstance(ctx.get("requestId"), str):
        return {}
    fields = {
        "correlation_id": ctx["requestId"],
        "connection_id": ctx.get("connectionId"),
        "route": ctx.get("routeKey"),
    }
    out: dict[str, str | None] = {k: v if isinstance(v, str) else None for k, v in fields.items()}
    if ctx.get("eventType") == "MESSAGE":
        body = event.get("body")
        if isinstance(body, str) and not event.get("isBase64Encoded"):
            out["request_id"] = request_id_of(body.encode("utf-8"))
    return out


def principal_of(event: dict[str, Any]) -> Principal:
    """The caller, from the event's ``requestContext.authorizer``; MissingIdentity without a valid one."""
    context = event.get("requestContext")
    authorizer = context.get("authorizer") if isinstance(context, dict) else None
    return Principal.from_authorizer(authorizer if isinstance(authorizer, dict) else None)


def parse_request(event: WebSocketEvent) -> ClientRequest:
    """The client's message as a typed request, or a RagError saying what is wrong with it."""
    raw = event.body_bytes()
    if not raw.strip():
        raise RagError("the message is empty", ErrorCode.EMPTY_MESSAGE)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise RagError("the message is not valid UTF-8", ErrorCode.INVALID_UTF8) from None
    try:
        data = json.loads(text)
    except ValueError:
        raise RagError("the message is not valid JSON", ErrorCode.MALFORMED_JSON) from None
    except RecursionError:  # Python's json recurses once per level of nesting
        raise RagError("the message's JSON is nested too deeply to read", ErrorCode.MALFORMED_JSON) from None
    if not isinstance(data, dict):
        raise RagError("the message must be a JSON object", ErrorCode.MALFORMED_JSON)
    action = data.get("action")
    if action not in ACTIONS:
        shown = action if isinstance(action, str) and len(action) <= 64 else None
        raise RagError(
            f"unknown action {shown!r}; expected one of: {', '.join(ACTIONS)}"
            if shown is not None
            else f"missing or invalid 'action'; expected one of: {', '.join(ACTIONS)}",
            ErrorCode.UNKNOWN_ACTION,
        )
    try:
        return CLIENT_REQUEST.validate_python(data)
    except ValidationError as exc:
        raise RagError(
            f"invalid {action} request: {describe_validation_error(exc.errors())}", ErrorCode.INVALID_REQUEST
        ) from None


class WebSocketLambda:
    """handler(event, context) for a set of actions; $connect/$disconnect are accepted as is.

    With ``function``, ``routes`` must cover exactly the actions the protocol's registry gives that
    function (``shared.protocol.ACTION_REGISTRY``): a handler that misses one, or serves one routed
    elsewhere, is refused when it is built rather than answering unknown_action at run time.

    On a two-way route (``shared.protocol.two_way_routes``; API Gateway's route with a route response) the
    reply is returned as the response's ``body``, which API Gateway sends to the client once the function
    returns: no @connections call. Were a route there to send two replies, all but the last would be posted
    as they come (each post completes before the function returns, so the order holds)."""

    def __init__(
        self, connections: Connections, routes: dict[str, RouteHandler], *, function: FunctionName | None = None
    ) -> None:
        if function is not None:
            expected = set(actions_of(function))
            if set(routes) != expected:
                missing, extra = sorted(expected - set(routes)), sorted(set(routes) - expected)
                raise ValueError(
                    f"the {function} function's routes do not match the action registry: "
                    f"missing {missing}, not its own {extra}"
                )
        self.connections = connections
        self.routes = routes
        self.two_way = two_way_routes() & set(routes)

    def __call__(self, event_dict: dict[str, Any], context: Any) -> dict[str, Any]:
        try:
            event = WebSocketEvent.model_validate(event_dict)
        except ValidationError:
            log.error("not an API Gateway WebSocket event: keys %s", sorted(event_dict)[:10])
            return {"statusCode": 400, "body": "Bad event"}
        ctx = event.request_context
        # Every line of this invocation (and the Bedrock calls it makes: shared/bedrock.py) carries API
        # Gateway's requestId as the correlation id, the connection and the client's request_id.
        request_id = request_id_of(event.body_bytes()) if ctx.event_type == "MESSAGE" else None
        with bound(**{**correlation_fields(event_dict), "request_id": request_id}):
            return self._handle(event, event_dict, request_id)

    def _handle(self, event: WebSocketEvent, event_dict: dict[str, Any], request_id: str | None) -> dict[str, Any]:
        ctx = event.request_context
        try:
            principal: Principal | None = principal_of(event_dict)
        except MissingIdentity as exc:
            log.warning("%s %s refused: %s", ctx.route_key, ctx.connection_id, exc)
            principal = None
        if ctx.event_type != "MESSAGE":
            log.info("%s %s", ctx.route_key, ctx.connection_id)
            return {"statusCode": 200 if principal is not None else 403}

        held: list[bytes] = []  # a two-way route's reply, returned as the response body

        def emit(message: BaseModel) -> None:
            if ctx.route_key not in self.two_way:
                self.connections.post(event, message)
                return
            data = encoded(message)
            if held:
                self.connections.post_data(event, held.pop())
            held.append(data)

        def answer(status: int) -> dict[str, Any]:
            return {"statusCode": status, "body": held[0].decode("utf-8")} if held else {"statusCode": status}

        if principal is None:
            self._report(emit, error(ErrorCode.UNAUTHORIZED, UNAUTHORIZED_MESSAGE, request_id), ctx.connection_id)
            return answer(403)
        token = _EVENT.set(event)
        try:
            request = parse_request(event)
            route = self.routes.get(request.action)
            if route is None:
                raise RagError(f"action {request.action!r} is not served by this function", ErrorCode.UNKNOWN_ACTION)
            route(request, emit, principal)
        except ConnectionGone:
            log.info("connection %s gone; dropping its reply", ctx.connection_id)
            return {"statusCode": 410}
        except RagError as exc:
            self._report(emit, error(exc.code, exc.message, request_id), ctx.connection_id)
        except Exception as exc:
            log.error(
                "route %s failed: %s at %s",
                ctx.route_key,
                type(exc).__name__,
                error_where(exc.__traceback__),
                extra={"error_type": type(exc).__name__},
            )
            self._report(
                emit,
                error(ErrorCode.INTERNAL_ERROR, "internal error; see the service log", request_id),
                ctx.connection_id,
            )
        finally:
            _EVENT.reset(token)
        return answer(200)

    @staticmethod
    def _report(emit: Emit, message: BaseModel, connection_id: str) -> None:
        try:
            emit(message)
        except ConnectionGone:
            log.info("connection %s gone before its error could be sent", connection_id)
        except Exception as exc:
            log.error(
                "could not send an error to connection %s: %s at %s",
                connection_id,
                type(exc).__name__,
                error_where(exc.__traceback__),
                extra={"error_type": type(exc).__name__},
            )


def refusing_lambda(connections: Connections, function: FunctionName, reason: RagError) -> WebSocketLambda:
    """A lambda that answers every action of ``function`` with `reason`: what a function serves when it
    must not touch its data (e.g. the index was built with another embedding model), instead of failing
    every call."""

    def refuse(_request: Any, _emit: Emit, _principal: Principal) -> None:
        raise reason

    return WebSocketLambda(connections, dict.fromkeys(actions_of(function), refuse), function=function)


def index_mismatch_error() -> RagError:
    return RagError(
        "the index was built with another embedding model; an operator must rebuild it (python -m ingestion.reindex)",
        ErrorCode.INDEX_MISMATCH,
    )
