"""Who is calling: the principal and tenant an authorizer established, as every function reads them.

The authorizer (``authorizer/``) answers API Gateway with ``{principalId, policyDocument, context}``;
API Gateway then puts ``principalId`` and the context's keys into ``requestContext.authorizer`` of every
later event of that connection (locally the gateway does the same). The functions take the tenant and
principal from there, never from a message body.

- ``tenant``: the workspace. Documents are shared within a tenant; every read and write is scoped to it.
- ``principal``: who, within the tenant (``key:{key id}`` for an API key, ``jwt:{sub}`` for an OIDC user,
  ``anonymous`` with ``RAG_AUTH=none``). Conversations belong to the principal who started them.
- ``auth``: how the caller proved it (``api_key`` | ``jwt`` | ``none``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

DEFAULT_TENANT = "default"
ANONYMOUS = "anonymous"
AuthMethod = Literal["api_key", "jwt", "none"]
AUTH_METHODS: tuple[AuthMethod, ...] = ("api_key", "jwt", "none")

# Tenant ids become object-key prefixes and SQL literals: keep them to a safe alphabet.
TENANT_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
MAX_PRINCIPAL_CHARS = 512


class MissingIdentity(Exception):
    """An event without a valid authorizer context: the function must refuse it (never guess a tenant)."""


def valid_tenant(tenant: str) -> bool:
    return TENANT_RE.fullmatch(tenant) is not None


@dataclass(frozen=True)
class Principal:
    tenant: str
    principal: str
    auth: AuthMethod

    def __post_init__(self) -> None:
        if not valid_tenant(self.tenant):
            raise ValueError("tenant ids are 1-63 characters of a-z, 0-9, '_' and '-', starting alphanumeric")
        if not self.principal or len(self.principal) > MAX_PRINCIPAL_CHARS:
            raise ValueError("a principal id is 1-512 characters")
        if self.auth not in AUTH_METHODS:
            raise ValueError(f"auth must be one of {AUTH_METHODS}")

    def context(self) -> dict[str, str]:
        """The authorizer response's ``context`` (string values, as API Gateway requires)."""
        return {"tenant": self.tenant, "principal": self.principal, "auth": self.auth}

    @classmethod
    def from_authorizer(cls, authorizer: Mapping[str, Any] | None) -> Principal:
        """The principal in an event's ``requestContext.authorizer``; MissingIdentity if absent or invalid."""
        if not authorizer:
            raise MissingIdentity("the event carries no authorizer context")
        try:
            return cls(
                tenant=str(authorizer["tenant"]),
                principal=str(authorizer["principal"]),
                auth=authorizer["auth"],
            )
        except (KeyError, TypeError, ValueError):
            raise MissingIdentity("the event's authorizer context is incomplete or invalid") from None


def anonymous() -> Principal:
    """The principal of every caller when identity is switched off (``RAG_AUTH=none``)."""
    return Principal(DEFAULT_TENANT, ANONYMOUS, "none")
