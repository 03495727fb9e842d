"""Why a credential is refused, and what API Gateway answers for it.

The rule (the same for API keys and tokens):

- **401 Unauthorized** (the function raises ``Exception("Unauthorized")``; API Gateway does not cache
  it): there is no credential, or it proves no identity here: malformed, an unknown key or a wrong secret,
  a disallowed algorithm, a bad signature, an unknown signing key, outside its validity time (expired,
  not yet valid), or issued by another issuer.
- **403 Forbidden** (an explicit ``Deny`` policy; cached like an Allow): the credential is genuine (the
  key's secret matches; the token is signed by the issuer's key, names our issuer and is within its
  validity time) but may not come in: a revoked key, a token for another audience (app client) or of
  another ``token_use``, a token without a (valid) tenant.

``reason`` is stable and safe to show or log; no message ever contains the credential.
"""

from __future__ import annotations

from typing import Literal

Reason = Literal[
    # 401
    "missing_credential",
    "malformed_credential",
    "unknown_key",
    "unsupported_algorithm",
    "invalid_signature",
    "unknown_kid",
    "token_expired",
    "token_not_yet_valid",
    "wrong_issuer",
    "method_disabled",
    # 403
    "revoked_key",
    "wrong_audience",
    "wrong_token_use",
    "missing_tenant",
    "invalid_tenant",
]

FORBIDDEN: frozenset[Reason] = frozenset(
    {"revoked_key", "wrong_audience", "wrong_token_use", "missing_tenant", "invalid_tenant"}
)


class Refused(Exception):
    """The credential is not accepted; ``status`` is what API Gateway answers (401 or 403)."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(message)
        self.reason: Reason = reason
        self.message = message

    @property
    def status(self) -> int:
        return 403 if self.reason in FORBIDDEN else 401


class AuthorizerUnavailable(Exception):
    """The authorizer cannot decide (the issuer's JWKS cannot be fetched): API Gateway answers 500."""
