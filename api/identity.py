"""Who is calling: the authorizer function's own logic (authorizer/service.py), run in this process.

The same credentials as the WebSocket's ``$connect`` (``Authorization: Bearer <API key or token>``, or
the ``token`` query parameter), the same key store and token verifier, the same principal and tenant. The
refusals keep the gateway's /v1 codes: 401 ``missing_credentials`` / ``invalid_credentials``, 403
``access_denied``, 500 ``authorizer_error`` (the issuer's keys cannot be fetched). ``RAG_AUTH=none``:
every caller is ``shared.identity.anonymous()``.

An API key is checked against the key store (a GET of ``auth/keys/{id}.json``: on S3 one request per API
request). ``CredentialCache`` keeps the answer for a key briefly (API_CREDENTIAL_CACHE_S, a bounded LRU
of API_CREDENTIAL_CACHE_SIZE), as API Gateway caches an authorizer's answer: a valid key's principal
(Allow) and a revoked key's refusal (Deny, 403) are reused within the TTL -- so a key revoked meanwhile
still passes for at most that long, on each execution environment -- while an unknown or malformed key
(401) and a failed check (500) are never cached. Tokens (JWTs) are not cached: they are verified here
with the cached JWKS, and may expire before a TTL would.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from aiohttp import web

from authorizer.errors import AuthorizerUnavailable, Refused
from authorizer.service import Authorizer, find_credential, fingerprint
from shared.api_keys import looks_like_key
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


class CredentialCache:
    """API keys' answers for ``ttl_s`` (0: none kept), at most ``size`` of them (least recently used go first).
    Thread-safe: the checks run in the worker pool."""

    def __init__(self, ttl_s: float, size: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s = ttl_s
        self.size = size
        self.clock = clock
        self.hits = 0
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, tuple[float, Principal | Unidentified]] = OrderedDict()

    @staticmethod
    def key(credential: str) -> str | None:
        """The cache key of an API key (a hash: the plaintext is not kept); None for what is not cached."""
        return hashlib.sha256(credential.encode()).hexdigest() if looks_like_key(credential) else None

    def get(self, key: str) -> Principal | Unidentified | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            if self.clock() >= entry[0]:
                del self._entries[key]
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return entry[1]

    def put(self, key: str, answer: Principal | Unidentified) -> None:
        if self.ttl_s <= 0:
            return
        with self._lock:
            self._entries[key] = (self.clock() + self.ttl_s, answer)
            self._entries.move_to_end(key)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)


class Identity:
    def __init__(self, authorizer: Authorizer) -> None:
        self.authorizer = authorizer
        if authorizer.identity_off:
            log.warning(
                "RAG_AUTH=none: identity is OFF. Anyone who can reach this API reads and writes every document "
                "as the 'anonymous' principal of the 'default' tenant; use it only for throwaway data"
            )

    def principal(
        self,
        headers: list[tuple[str, str]],
        query: dict[str, str],
        where: str,
        cache: CredentialCache | None = None,
    ) -> Principal:
        """The caller (blocking: a key lookup in the documents store, or a JWKS fetch); Unidentified if refused.
        With ``cache``: an API key's answer (Allow, or 403) is reused within its TTL."""
        if self.authorizer.identity_off:
            return anonymous()
        multi: dict[str, list[str]] = {}
        for name, value in headers:
            # HTTP only: the WebSocket subprotocol is not a credential here.
            if name.lower() != "sec-websocket-protocol":
                multi.setdefault(name.lower(), []).append(value)
        credential: str | None = None
        cache_key: str | None = None
        try:
            credential = find_credential(None, multi, query)
            cache_key = cache.key(credential) if cache is not None else None
            cached = cache.get(cache_key) if cache is not None and cache_key is not None else None
            if isinstance(cached, Unidentified):
                log.info("refused %s credential=%s: %s (cached)", where, fingerprint(credential), cached.code)
                raise Unidentified(cached.status, cached.code, cached.message)
            if cached is not None:
                return cached
            found = self.authorizer.authenticate(credential)
            if cache is not None and cache_key is not None:
                cache.put(cache_key, found)
            return found
        except Refused as refused:
            who = fingerprint(credential) if credential is not None else "-"
            log.info("refused %s credential=%s: %s (%d)", where, who, refused.reason, refused.status)
            if refused.reason == "missing_credential":
                raise Unidentified(401, "missing_credentials", MISSING) from None
            if refused.status == 403:
                denied = Unidentified(403, "access_denied", DENIED)
                if cache is not None and cache_key is not None:
                    cache.put(cache_key, denied)  # a Deny is cached, as API Gateway caches it
                raise denied from None
            raise Unidentified(401, "invalid_credentials", INVALID) from None
        except AuthorizerUnavailable as exc:
            log.error("authorizer unavailable for %s: %s", where, type(exc).__name__)
            raise Unidentified(500, "authorizer_error", FAILED) from None

    def of(self, request: web.Request) -> tuple[list[tuple[str, str]], dict[str, str], str]:
        """What principal() needs from a request (read on the event loop, checked in a thread)."""
        return list(request.headers.items()), dict(request.query), f"{request.method} {request.path[:64]}"
