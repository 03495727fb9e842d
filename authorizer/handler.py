"""Lambda entry point: API Gateway's REQUEST authorizer (the WebSocket ``$connect`` route and the /v1 HTTP API).

The event is parsed into a typed model; the credential is found and checked (authorizer/service.py); the
answer is what API Gateway expects from a Lambda authorizer:

- Allow: the IAM policy response, ``principalId`` the principal and ``context`` = ``Principal.context()``
  (API Gateway puts both into ``requestContext.authorizer`` of every later event of the connection);
- 401: ``raise Unauthorized()`` (its message is exactly "Unauthorized", which API Gateway maps to 401);
- 403: the same policy with ``Effect: Deny`` (its context carries only the stable ``reason``).

Which refusal is which is documented in authorizer/errors.py. Log lines name the refusal reason and the
credential's fingerprint (an API key's id, or a short hash prefix), never the credential.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from authorizer.errors import Refused
from authorizer.service import Authorizer, build_authorizer, find_credential, fingerprint, policy
from authorizer.settings import Settings
from shared.identity import anonymous

log = logging.getLogger(__name__)


class Unauthorized(Exception):
    """Raised for a 401: API Gateway matches the error message "Unauthorized" exactly."""

    def __init__(self) -> None:
        super().__init__("Unauthorized")


# -- the event -------------------------------------------------------------------------------------------------


class _Aws(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="allow")


class AuthorizerIdentity(_Aws):
    source_ip: str = Field(default="", alias="sourceIp")


class AuthorizerRequestContext(_Aws):
    route_key: str = Field(alias="routeKey")
    event_type: str | None = Field(default=None, alias="eventType")
    connection_id: str | None = Field(default=None, alias="connectionId")
    api_id: str | None = Field(default=None, alias="apiId")
    stage: str | None = None
    domain_name: str | None = Field(default=None, alias="domainName")
    request_id: str | None = Field(default=None, alias="requestId")
    identity: AuthorizerIdentity = Field(default_factory=AuthorizerIdentity)


class AuthorizerEvent(_Aws):
    """API Gateway's REQUEST authorizer event (WebSocket $connect; /v1 routes with the same shape)."""

    type: str
    method_arn: str = Field(alias="methodArn", min_length=1, max_length=2048)
    headers: dict[str, str] | None = None
    multi_value_headers: dict[str, list[str]] | None = Field(default=None, alias="multiValueHeaders")
    query_string_parameters: dict[str, str] | None = Field(default=None, alias="queryStringParameters")
    stage_variables: dict[str, str] | None = Field(default=None, alias="stageVariables")
    request_context: AuthorizerRequestContext = Field(alias="requestContext")


# -- the function ----------------------------------------------------------------------------------------------

_state: dict[str, Authorizer] = {}
_lock = threading.Lock()


def _authorizer() -> Authorizer:
    """Built once per sandbox (cold start): settings, key store, JWKS cache."""
    with _lock:
        if "authorizer" not in _state:
            _state["authorizer"] = build_authorizer(Settings())
        return _state["authorizer"]


def warm() -> None:
    _authorizer()


def authorize(event: dict[str, Any], authorizer: Authorizer) -> dict[str, Any]:
    """The answer to one authorizer event (raises Unauthorized for a 401)."""
    try:
        request = AuthorizerEvent.model_validate(event)
    except ValidationError:
        log.warning("refused: not an API Gateway REQUEST authorizer event")
        raise Unauthorized() from None
    if request.type != "REQUEST":
        log.warning("refused: authorizer event of type %r", request.type[:32])
        raise Unauthorized()
    ctx = request.request_context
    where = f"route={ctx.route_key[:64]!r} ip={ctx.identity.source_ip[:64]}"
    if authorizer.identity_off:
        principal = anonymous()
        log.warning("allowed %s as %s: identity is off (RAG_AUTH=none)", where, principal.principal)
        return policy(principal.principal, "Allow", request.method_arn, principal.context())
    credential: str | None = None
    try:
        credential = find_credential(request.headers, request.multi_value_headers, request.query_string_parameters)
        principal = authorizer.authenticate(credential)
    except Refused as refused:
        who = fingerprint(credential) if credential is not None else "-"
        log.info("refused %s credential=%s: %s (%d)", where, who, refused.reason, refused.status)
        if refused.status == 403:
            return policy(who, "Deny", request.method_arn, {"reason": refused.reason})
        raise Unauthorized() from None
    log.info("allowed %s as %s (tenant %s)", where, principal.principal, principal.tenant)
    return policy(principal.principal, "Allow", request.method_arn, principal.context())


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return authorize(event, _authorizer())
