"""OIDC JWTs (Amazon Cognito user pools on AWS): RS256 only, verified against the issuer's JWKS with PyJWT.

What a token must be to pass, in the order it is checked (see authorizer/errors.py for 401 vs 403):

1. a JWS whose header names ``alg: RS256`` (``none``, HS256 and every other algorithm are refused before
   any key is looked up, so an HS256 token "signed" with the RSA public key as its HMAC secret never
   reaches a verifier) and a ``kid``;
2. signed by the issuer's key of that ``kid``, from the JWKS (cached; an unknown ``kid`` triggers one
   refetch, at most every ``min_refresh_s``: keys are rotated without a restart, and a flood of made-up
   kids cannot turn into a flood of fetches);
3. ``iss`` the configured issuer; ``exp``, ``iat`` present; ``exp``/``nbf``/``iat`` within the leeway;
4. an audience: ``aud`` (id tokens) or ``client_id`` (access tokens) among the configured app clients;
5. ``token_use``, when present, one of the accepted ones; ``sub`` present;
6. the tenant from the configured claim (or the default tenant, if one is set).

Signature checks are PyJWT's (``cryptography`` underneath): no hand-written crypto here.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from typing import Any

import jwt

from authorizer.errors import AuthorizerUnavailable, Refused
from shared.identity import MAX_PRINCIPAL_CHARS, TENANT_RE, Principal

log = logging.getLogger(__name__)

ALGORITHMS = ["RS256"]
MAX_JWKS_BYTES = 256 * 1024
MAX_TOKEN_CHARS = 16 * 1024

Fetch = Callable[[str, float], bytes]


def http_fetch(url: str, timeout_s: float) -> bytes:
    """GET ``url`` (the JWKS), at most MAX_JWKS_BYTES."""
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout_s) as response:  # https (or loopback http): settings check it
        data: bytes = response.read(MAX_JWKS_BYTES + 1)
    if len(data) > MAX_JWKS_BYTES:
        raise ValueError(f"the JWKS is larger than {MAX_JWKS_BYTES} bytes")
    return data


def parse_jwks(data: bytes) -> dict[str, jwt.PyJWK]:
    """kid -> key, for the RSA signing keys of a JWKS (keys for other uses or algorithms are skipped)."""
    doc = json.loads(data)
    keys = doc.get("keys") if isinstance(doc, dict) else None
    if not isinstance(keys, list):
        raise ValueError("not a JWKS: no 'keys' list")
    out: dict[str, jwt.PyJWK] = {}
    for item in keys:
        if not isinstance(item, dict) or not isinstance(item.get("kid"), str):
            continue
        if item.get("kty") != "RSA" or item.get("use", "sig") != "sig" or item.get("alg", "RS256") != "RS256":
            continue
        try:
            out[item["kid"]] = jwt.PyJWK(item, algorithm="RS256")
        except jwt.PyJWKError:
            log.warning("skipped an unusable key in the JWKS (kid %s)", item["kid"][:64])
    return out


class JwksCache:
    """The issuer's signing keys, fetched when first needed, again after ``ttl_s``, and on an unknown ``kid``
    at most every ``min_refresh_s``. Thread-safe (the runtime invokes the handler from several threads)."""

    def __init__(
        self,
        url: str,
        *,
        ttl_s: float = 3600.0,
        min_refresh_s: float = 30.0,
        timeout_s: float = 5.0,
        fetch: Fetch = http_fetch,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = url
        self.ttl_s = ttl_s
        self.min_refresh_s = min_refresh_s
        self.timeout_s = timeout_s
        self._fetch = fetch
        self._clock = clock
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at: float | None = None  # last successful fetch
        self._attempted_at: float | None = None  # last attempt, successful or not
        self._lock = threading.Lock()
        self.fetches = 0  # attempts, for tests and the health view

    def _refresh(self) -> None:
        self._attempted_at = self._clock()
        self.fetches += 1
        try:
            keys = parse_jwks(self._fetch(self.url, self.timeout_s))
        except (OSError, ValueError, urllib.error.URLError) as exc:
            log.warning("could not fetch the JWKS from %s: %s", self.url, type(exc).__name__)
            if self._fetched_at is None:
                raise AuthorizerUnavailable("the issuer's JWKS cannot be fetched") from None
            return  # keep the keys we have
        self._keys = keys
        self._fetched_at = self._attempted_at
        log.info("fetched the JWKS from %s: %d signing keys", self.url, len(keys))

    def _may_refetch(self, now: float) -> bool:
        return self._attempted_at is None or now - self._attempted_at >= self.min_refresh_s

    def get(self, kid: str) -> jwt.PyJWK | None:
        """The key of ``kid``, or None if the issuer does not publish it (after at most one refetch)."""
        with self._lock:
            now = self._clock()
            stale = self._fetched_at is None or now - self._fetched_at >= self.ttl_s
            if stale and self._may_refetch(now):
                self._refresh()
            if self._fetched_at is None:  # never fetched, and the last attempt failed moments ago
                raise AuthorizerUnavailable("the issuer's JWKS cannot be fetched")
            key = self._keys.get(kid)
            if key is None and not stale and self._may_refetch(now):
                self._refresh()  # rotation: a token signed with a key published since the last fetch
                key = self._keys.get(kid)
            return key


class TokenVerifier:
    """Checks a JWT and names its principal (``jwt:{sub}``) and tenant."""

    def __init__(
        self,
        jwks: JwksCache,
        *,
        issuer: str,
        audience: Sequence[str],
        audience_claims: Sequence[str] = ("aud", "client_id"),
        token_use: Sequence[str] = ("id", "access"),
        leeway_s: float = 60.0,
        tenant_claim: str = "custom:tenant",
        default_tenant: str | None = None,
    ) -> None:
        self.jwks = jwks
        self.issuer = issuer
        self.audience = frozenset(audience)
        self.audience_claims = tuple(audience_claims)
        self.token_use = frozenset(token_use)
        self.leeway_s = leeway_s
        self.tenant_claim = tenant_claim
        self.default_tenant = default_tenant

    def verify(self, token: str) -> Principal:
        if len(token) > MAX_TOKEN_CHARS:
            raise Refused("malformed_credential", "the token is too long")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise Refused("malformed_credential", "the credential is not a JWT") from None
        if header.get("alg") not in ALGORITHMS:
            raise Refused("unsupported_algorithm", "tokens must be signed with RS256")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise Refused("unknown_kid", "the token names no signing key (kid)")
        key = self.jwks.get(kid)
        if key is None:
            raise Refused("unknown_kid", "the token's signing key is not one of the issuer's")
        claims = self._decode(token, key)
        self._check_audience(claims)
        use = claims.get("token_use")
        if use is not None and use not in self.token_use:
            raise Refused("wrong_token_use", "this kind of token is not accepted")
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub or len(sub) > MAX_PRINCIPAL_CHARS - len("jwt:"):
            raise Refused("malformed_credential", "the token has no valid subject (sub)")
        return Principal(self._tenant(claims), f"jwt:{sub}", "jwt")

    def _decode(self, token: str, key: jwt.PyJWK) -> dict[str, Any]:
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key=key,
                algorithms=ALGORITHMS,
                issuer=self.issuer,
                leeway=self.leeway_s,
                options={"require": ["exp", "iat", "iss", "sub"], "verify_aud": False},
            )
        except jwt.ExpiredSignatureError:
            raise Refused("token_expired", "the token has expired") from None
        except jwt.ImmatureSignatureError:
            raise Refused("token_not_yet_valid", "the token is not valid yet") from None
        except jwt.InvalidIssuerError:
            raise Refused("wrong_issuer", "the token is not from the configured issuer") from None
        except jwt.InvalidAlgorithmError:
            raise Refused("unsupported_algorithm", "tokens must be signed with RS256") from None
        except jwt.InvalidSignatureError:
            raise Refused("invalid_signature", "the token's signature does not verify") from None
        except jwt.PyJWTError:  # DecodeError, MissingRequiredClaimError, InvalidIssuedAtError, ...
            raise Refused("malformed_credential", "the token is malformed or misses a required claim") from None
        return claims

    def _check_audience(self, claims: dict[str, Any]) -> None:
        for name in self.audience_claims:
            value = claims.get(name)
            values = value if isinstance(value, list) else [value]
            if any(isinstance(v, str) and v in self.audience for v in values):
                return
        raise Refused("wrong_audience", "the token is for another audience")

    def _tenant(self, claims: dict[str, Any]) -> str:
        tenant = claims.get(self.tenant_claim)
        if tenant is None:
            if self.default_tenant is None:
                raise Refused("missing_tenant", "the token names no tenant")
            return self.default_tenant
        if not isinstance(tenant, str) or not TENANT_RE.fullmatch(tenant):
            raise Refused("invalid_tenant", "the token's tenant is not a valid tenant id")
        return tenant
