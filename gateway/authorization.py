"""Who is calling: the REQUEST authorizer, invoked as API Gateway invokes it, and its cache.

For a WebSocket ``$connect`` (before any other function runs) and for every ``/v1`` request, the gateway
builds API Gateway's REQUEST authorizer event (``shared/events.py``) and invokes the ``authorizer``
function through the Lambda Invoke API (``gateway/integration.py``), as API Gateway does:

- none of the identity sources (``GATEWAY_AUTHORIZER_IDENTITY_SOURCES``) is in the request: 401, and the
  authorizer is not invoked;
- the function fails with ``Unauthorized``: 401; it stays throttled (429, retried with backoff for up to
  ``CONNECTION_THROTTLE_WAIT_S``): 429 ``throttled``; any other failure, or an answer that is not a policy
  with a valid identity context: 500;
- the answer's IAM policy does not allow ``execute-api:Invoke`` on the request's methodArn (an explicit
  Deny, or no Allow): 403;
- otherwise the request goes on, and every event of it carries ``requestContext.authorizer``
  (``{"principalId", **context}``), as on AWS.

Answers (Allow and Deny policies; never a 401 or a failure) are cached by methodArn and identity source
values for ``GATEWAY_AUTHORIZER_TTL_S``, in a bounded LRU: within the TTL a revoked key still passes,
as on AWS. API Gateway wants *every* listed identity source present; here any one is enough, since the
credential may come in any of them (browsers can only use ``Sec-WebSocket-Protocol``).

``RAG_AUTH=none`` switches all of this off: every caller is ``shared.identity.anonymous()``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from aiohttp import web
from pydantic import ValidationError

from gateway.integration import CONNECTION_THROTTLE_WAIT_S, InvokeFailed, LambdaIntegration
from gateway.settings import AUTHORIZER_FUNCTION, Settings, identity_source
from shared.events import AuthorizerResponse, PolicyDocument, build_authorizer_event, method_arn
from shared.identity import ANONYMOUS, MissingIdentity, Principal, anonymous
from shared.protocol import ErrorCode

log = logging.getLogger(__name__)

AuthorizerContext = dict[str, Any]
INVOKE_ACTION = "execute-api:Invoke"


class Refused(Exception):
    """The request may not go on: ``status`` (401, 403 or 500), a stable ``code`` and a safe message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def missing_credentials() -> Refused:
    return Refused(
        401,
        "missing_credentials",
        "this API needs a credential: an API key or token as 'Authorization: Bearer ...' "
        "(or the web chat URL `make up` printed)",
    )


def invalid_credentials() -> Refused:
    return Refused(401, "invalid_credentials", "the credential is not valid (unknown, revoked, expired or malformed)")


def access_denied() -> Refused:
    return Refused(403, "access_denied", "the credential is not allowed to use this API")


def authorizer_error() -> Refused:
    return Refused(500, "authorizer_error", "the authorizer failed; see the gateway's log")


# ---------------------------------------------------------------------- IAM policy evaluation


def _wildcard(pattern: str, *, ignore_case: bool = False) -> re.Pattern[str]:
    """IAM's wildcards: ``*`` any run of characters, ``?`` any one character."""
    body = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.compile(f"^{body}$", re.DOTALL | (re.IGNORECASE if ignore_case else 0))


def policy_effect(policy: PolicyDocument, arn: str) -> Literal["Allow", "Deny"]:
    """The policy's decision for ``execute-api:Invoke`` on ``arn``: an explicit Deny wins, then an Allow;
    nothing that applies is an (implicit) Deny."""
    allowed = False
    for statement in policy.statement:
        actions = [statement.action] if isinstance(statement.action, str) else statement.action
        resources = [statement.resource] if isinstance(statement.resource, str) else statement.resource
        if not any(_wildcard(a, ignore_case=True).match(INVOKE_ACTION) for a in actions):
            continue
        if not any(_wildcard(r).match(arn) for r in resources):
            continue
        if statement.effect == "Deny":
            return "Deny"
        allowed = True
    return "Allow" if allowed else "Deny"


# ---------------------------------------------------------------------- the authorizer and its cache


@dataclass
class AuthStats:
    authorizer_invocations: int = 0
    authorizer_cache_hits: int = 0


@dataclass(frozen=True)
class Call:
    """What the authorizer event needs besides the request: its route and, for $connect, the connection."""

    route_key: str  # "$connect" or "{METHOD} /v1/..."
    arn_route: str  # "$connect" or "{METHOD}/v1/..."
    connection_id: str | None = None
    connected_at_ms: int | None = None


class Authorizer:
    """Authorizes requests through the ``authorizer`` function (or lets everyone in with RAG_AUTH=none)."""

    def __init__(
        self, settings: Settings, integration: LambdaIntegration, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.settings = settings
        self.clock = clock  # monotonic seconds: when cached answers expire
        self.integration = integration
        self.identity_off = settings.auth.identity_off
        self.sources = [identity_source(e) for e in settings.authorizer_identity_sources]
        self.stats = AuthStats()
        self._cache: OrderedDict[str, tuple[float, AuthorizerResponse]] = OrderedDict()
        self._pending: dict[str, asyncio.Task[AuthorizerResponse]] = {}
        if self.identity_off:
            log.warning(
                "RAG_AUTH=none: identity is OFF. Anyone who can reach this gateway reads and writes every document "
                "as the 'anonymous' principal of the 'default' tenant; use it only for throwaway data"
            )

    @staticmethod
    def anonymous_context() -> AuthorizerContext:
        return {"principalId": ANONYMOUS, **anonymous().context()}

    def method_arn(self, route: str) -> str:
        s = self.settings
        return method_arn(s.region, s.api_id, s.stage, route)

    def identity_values(self, request: web.BaseRequest) -> list[str | None] | None:
        """The identity sources' values (None for an absent one); None when every one is absent."""
        values: list[str | None] = []
        for kind, name in self.sources:
            found = request.headers.getall(name, []) if kind == "header" else request.query.getall(name, [])
            joined = ", ".join(v for v in found if v.strip())
            values.append(joined or None)
        return values if any(v is not None for v in values) else None

    async def authorize(self, request: web.BaseRequest, call: Call) -> AuthorizerContext:
        """The authorizer context for this request; Refused when it may not go on."""
        if self.identity_off:
            return self.anonymous_context()
        values = self.identity_values(request)
        if values is None:
            raise missing_credentials()
        arn = self.method_arn(call.arn_route)
        key = hashlib.sha256(json.dumps([arn, values]).encode()).hexdigest()
        answer = self._cached(key)
        if answer is None:
            answer = await self._answer(key, request, call, arn)
        else:
            self.stats.authorizer_cache_hits += 1
        if policy_effect(answer.policy_document, arn) != "Allow":
            raise access_denied()
        context = answer.authorizer_context()
        try:
            Principal.from_authorizer(context)
        except MissingIdentity:
            log.error("the authorizer allowed a request without a valid tenant/principal/auth context")
            raise authorizer_error() from None
        return context

    def _cached(self, key: str) -> AuthorizerResponse | None:
        entry = self._cache.get(key)
        if entry is None:
            return None
        expires, answer = entry
        if self.clock() >= expires:
            del self._cache[key]
            return None
        self._cache.move_to_end(key)
        return answer

    def _remember(self, key: str, answer: AuthorizerResponse) -> None:
        ttl = self.settings.authorizer_ttl_s
        if ttl <= 0:
            return
        self._cache[key] = (self.clock() + ttl, answer)
        self._cache.move_to_end(key)
        while len(self._cache) > self.settings.authorizer_cache_size:
            self._cache.popitem(last=False)

    async def _answer(self, key: str, request: web.BaseRequest, call: Call, arn: str) -> AuthorizerResponse:
        """One invocation per key at a time: concurrent requests with the same credential share it. It runs as
        a task of its own, so that a caller who leaves does not cancel it for the others."""
        task = self._pending.get(key)
        if task is None:
            task = asyncio.ensure_future(self._invoke(request, call, arn))
            self._pending[key] = task

            def done(t: asyncio.Task[AuthorizerResponse]) -> None:
                if self._pending.get(key) is t:
                    del self._pending[key]
                if not t.cancelled() and t.exception() is None:
                    self._remember(key, t.result())

            task.add_done_callback(done)
        return await asyncio.shield(task)

    async def _invoke(self, request: web.BaseRequest, call: Call, arn: str) -> AuthorizerResponse:
        s = self.settings
        http = call.connection_id is None
        event = build_authorizer_event(
            method_arn=arn,
            route_key=call.route_key,
            domain_name=s.public_domain(),
            stage=s.stage,
            api_id=s.api_id,
            source_ip=request.remote or "127.0.0.1",
            headers=list(request.headers.items()),
            query=list(request.query.items()),
            connection_id=call.connection_id,
            connected_at=call.connected_at_ms,
            http_method=request.method if http else None,
            path=request.path if http else None,
        ).to_aws()
        self.stats.authorizer_invocations += 1
        try:
            result = await self.integration.call(AUTHORIZER_FUNCTION, event, throttle_wait_s=CONNECTION_THROTTLE_WAIT_S)
        except InvokeFailed as exc:
            log.error("authorizer unavailable: %s", exc.message)
            if exc.code == ErrorCode.THROTTLED:
                raise Refused(429, exc.code.value, "too many requests are being authorized; retry shortly") from None
            raise authorizer_error() from None
        if result.function_error:
            message, error_type = result.error()
            if message == "Unauthorized":
                raise invalid_credentials()
            # The message is the authorizer's own; only its type is logged (it never needs the credential).
            log.error("the authorizer failed (%s): see its log", error_type or result.function_error)
            raise authorizer_error()
        try:
            return AuthorizerResponse.model_validate_json(result.body)
        except ValidationError as exc:
            fields = sorted({".".join(str(x) for x in e["loc"]) for e in exc.errors(include_input=False)})
            log.error("the authorizer's answer is not a REQUEST authorizer response (fields: %s)", fields)
            raise authorizer_error() from None
