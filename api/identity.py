"""Who is calling: the authorizer function's own logic (authorizer/service.py), run in this process.

The same credentials as the WebSocket's ``$connect`` (``Authorization: Bearer <API key or token>``, or
the ``token`` query parameter), the same key store and token verifier, the same principal and tenant. The
refusals keep the gateway's /v1 codes: 401 ``missing_credentials`` / ``invalid_credentials``, 403
``access_denied``, 500 ``authorizer_error`` (the issuer's keys cannot be fetched). ``RAG_AUTH=none``:
every caller is ``shared.identity.anonymous()``.
"""

from __future__ import annotations

import logging

from aiohttp import web

from authorizer.errors import AuthorizerUnavailable, Refused
from authorizer.service import Authorizer, find_credential, fingerprint
from shared.identity import Principal, anonymous

log = logging.getLogger(__name__)

MISSING = (
    "this API needs a credential: an API key or token as 'Authorization: Bearer ...' "
    "(or the web chat URL `make up` printed)"
)
INVALID = "the credential is not valid (unknown, revoked, expired or malformed)"
DENIED = "the credential is not allowed to use this API"
FAILED = "the authorizer failed; see the service's log"


class Unidentified(Exception):
    """The request may not go on: ``status`` (401, 403 or 500), a stable ``code`` and a safe message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


class Identity:
    def __init__(self, authorizer: Authorizer) -> None:
        self.authorizer = authorizer
        if authorizer.identity_off:
            log.warning(
                "RAG_AUTH=none: identity is OFF. Anyone who can reach this API reads and writes every document "
                "as the 'anonymous' principal of the 'default' tenant; use it only for throwaway data"
            )

    def principal(self, headers: list[tuple[str, str]], query: dict[str, str], where: str) -> Principal:
        """The caller (blocking: a key lookup in the documents store, or a JWKS fetch); Unidentified if refused."""
        if self.authorizer.identity_off:
            return anonymous()
        multi: dict[str, list[str]] = {}
        for name, value in headers:
            # HTTP only: the WebSocket subprotocol is not a credential here.
            if name.lower() != "sec-websocket-protocol":
                multi.setdefault(name.lower(), []).append(value)
        credential: str | None = None
        try:
            credential = find_credential(None, multi, query)
            return self.authorizer.authenticate(credential)
        except Refused as refused:
            who = fingerprint(credential) if credential is not None else "-"
            log.info("refused %s credential=%s: %s (%d)", where, who, refused.reason, refused.status)
            if refused.reason == "missing_credential":
                raise Unidentified(401, "missing_credentials", MISSING) from None
            if refused.status == 403:
                raise Unidentified(403, "access_denied", DENIED) from None
            raise Unidentified(401, "invalid_credentials", INVALID) from None
        except AuthorizerUnavailable as exc:
            log.error("authorizer unavailable for %s: %s", where, type(exc).__name__)
            raise Unidentified(500, "authorizer_error", FAILED) from None

    def of(self, request: web.Request) -> tuple[list[tuple[str, str]], dict[str, str], str]:
        """What principal() needs from a request (read on the event loop, checked in a thread)."""
        return list(request.headers.items()), dict(request.query), f"{request.method} {request.path[:64]}"
