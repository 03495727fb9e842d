"""The authorizer's logic, without I/O of its own: find the credential in a request, check it, answer a policy.

Credentials are read, in this order, from (the first one present is the one checked):

1. the ``Authorization: Bearer <credential>`` header (CLI, scripts, the OpenAI client);
2. the ``token`` query parameter;
3. a ``Sec-WebSocket-Protocol`` value ``localrag.bearer.<credential>`` (browsers cannot set headers on a
   WebSocket; they offer this subprotocol next to ``localrag.v1``, which the gateway echoes back).

An API key (``lrk_...``) is told from a JWT by its shape. Principals: ``key:{key id}`` or ``jwt:{sub}``.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Mapping
from typing import Any, Literal

from authorizer.errors import Refused
from authorizer.settings import Settings
from authorizer.tokens import JwksCache, TokenVerifier
from shared.api_keys import KeyRefused, KeyStore, key_id_of, looks_like_key
from shared.identity import Principal

log = logging.getLogger(__name__)

SUBPROTOCOL_PREFIX = "localrag.bearer."
MAX_CREDENTIAL_CHARS = 16 * 1024

Effect = Literal["Allow", "Deny"]


def _lower_keys(headers: Mapping[str, Any] | None) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for name, value in (headers or {}).items():
        values = value if isinstance(value, list) else [value]
        out.setdefault(name.lower(), []).extend(str(v) for v in values if v is not None)
    return out


def find_credential(
    headers: Mapping[str, str] | None,
    multi_value_headers: Mapping[str, list[str]] | None,
    query: Mapping[str, str] | None,
) -> str:
    """The request's credential (see the module docstring for where it is looked for); Refused if none."""
    # multiValueHeaders has every value of a repeated header; headers only the last one.
    all_headers = _lower_keys(multi_value_headers) or _lower_keys(headers)
    authorization = all_headers.get("authorization")
    if authorization:
        if len(authorization) > 1:
            raise Refused("malformed_credential", "more than one Authorization header")
        scheme, _, value = authorization[0].strip().partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise Refused("malformed_credential", "the Authorization header is not 'Bearer <credential>'")
        return _bounded(value.strip())
    token = (query or {}).get("token")
    if token is not None:
        return _bounded(token.strip())
    offered = [p.strip() for v in all_headers.get("sec-websocket-protocol", []) for p in v.split(",")]
    bearers = [p[len(SUBPROTOCOL_PREFIX) :] for p in offered if p.startswith(SUBPROTOCOL_PREFIX)]
    if len(bearers) > 1:
        raise Refused("malformed_credential", f"more than one {SUBPROTOCOL_PREFIX}* subprotocol")
    if bearers:
        return _bounded(bearers[0])
    raise Refused("missing_credential", "no credential: send Authorization: Bearer <API key or token>")


def _bounded(credential: str) -> str:
    if not credential:
        raise Refused("malformed_credential", "the credential is empty")
    if len(credential) > MAX_CREDENTIAL_CHARS:
        raise Refused("malformed_credential", "the credential is too long")
    return credential


def fingerprint(credential: str) -> str:
    """What may be logged about a credential: an API key's id, else a short hash prefix (never the value)."""
    key_id = key_id_of(credential)
    if key_id is not None:
        return f"key:{key_id}"
    return "sha256:" + hashlib.sha256(credential.encode("utf-8", "replace")).hexdigest()[:12]


def policy(principal_id: str, effect: Effect, resource: str, context: Mapping[str, str]) -> dict[str, Any]:
    """The IAM policy response API Gateway expects from a Lambda REQUEST authorizer."""
    return {
        "principalId": principal_id,
        "policyDocument": {
            "Version": "2012-10-17",
            "Statement": [{"Action": "execute-api:Invoke", "Effect": effect, "Resource": resource}],
        },
        "context": dict(context),
    }


class Authorizer:
    """Checks a credential with the methods enabled: API keys from ``keys``, JWTs with ``tokens``."""

    def __init__(
        self,
        *,
        methods: Iterable[str],
        keys: KeyStore | None = None,
        tokens: TokenVerifier | None = None,
    ) -> None:
        self.methods = frozenset(methods)
        self.keys = keys if "api_key" in self.methods else None
        self.tokens = tokens if "jwt" in self.methods else None

    @property
    def identity_off(self) -> bool:
        return self.methods == {"none"}

    def authenticate(self, credential: str) -> Principal:
        """The principal the credential proves; Refused otherwise (``.status`` 401 or 403)."""
        if looks_like_key(credential):
            if self.keys is None:
                raise Refused("method_disabled", "API keys are not accepted here")
            try:
                return self.keys.authenticate(credential).principal()
            except KeyRefused as exc:
                raise Refused(exc.reason, str(exc)) from None
        if credential.count(".") != 2:
            raise Refused("malformed_credential", "the credential is neither an API key nor a JWT")
        if self.tokens is None:
            raise Refused("method_disabled", "tokens are not accepted here")
        return self.tokens.verify(credential)


def build_authorizer(settings: Settings, key_store: KeyStore | None = None) -> Authorizer:
    """The Authorizer the settings describe (the key store opened on RAG_DOCUMENTS_URI unless given)."""
    methods = set(settings.methods)
    if methods == {"none"}:
        return Authorizer(methods=methods)
    keys = None
    if "api_key" in methods:
        keys = key_store or open_key_store(settings)
    tokens = None
    if "jwt" in methods and settings.jwt_issuer is not None:
        jwks = JwksCache(
            settings.jwks_url() or "",
            ttl_s=settings.jwks_cache_s,
            min_refresh_s=settings.jwks_min_refresh_s,
            timeout_s=settings.jwks_timeout_s,
        )
        tokens = TokenVerifier(
            jwks,
            issuer=settings.jwt_issuer,
            audience=settings.jwt_audience,
            audience_claims=settings.jwt_audience_claims,
            token_use=settings.jwt_token_use,
            leeway_s=settings.jwt_leeway_s,
            tenant_claim=settings.jwt_tenant_claim,
            default_tenant=settings.jwt_default_tenant,
        )
    elif "jwt" in methods:
        log.info("JWTs are refused: RAG_AUTH_JWT_ISSUER is not set")
    return Authorizer(methods=methods, keys=keys, tokens=tokens)


def open_key_store(settings: Settings) -> KeyStore:
    return KeyStore.open(
        settings.documents.documents_uri, s3_endpoint_url=settings.s3_endpoint_url, region=settings.aws_region
    )
