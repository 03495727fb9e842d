"""AWS Signature Version 4 for the stack's internal APIs: sign with botocore, verify by re-signing.

On AWS, the Lambda Invoke API and the API Gateway Management API (@connections) accept only
SigV4-signed requests from IAM principals. The local stand-ins do the same: the caller signs with
botocore (boto3 clients already do), and the server rebuilds the canonical request from what it
received, signs it again with the secret it knows for the caller's access key id, and compares.

Nothing here is hand-written cryptography: canonicalisation and signing are botocore's ``SigV4Auth``.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import urlsplit

from botocore.auth import SIGV4_TIMESTAMP, SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

ALGORITHM = "AWS4-HMAC-SHA256"
# AWS refuses a request whose X-Amz-Date is more than 15 minutes from its own clock; so do we.
MAX_SKEW_S = 15 * 60

_AUTH = re.compile(
    r"^AWS4-HMAC-SHA256\s+Credential=(?P<key>[^/,\s]+)/(?P<date>\d{8})/(?P<region>[^/,\s]+)/"
    r"(?P<service>[^/,\s]+)/aws4_request\s*,\s*SignedHeaders=(?P<headers>[a-z0-9;_.-]+)\s*,\s*"
    r"Signature=(?P<signature>[0-9a-f]{64})$"
)


@dataclass(frozen=True)
class SigningKey:
    """An access key id and its secret (what an IAM user or role session signs with)."""

    access_key_id: str
    secret_access_key: str

    def __repr__(self) -> str:  # never print the secret
        return f"SigningKey(access_key_id={self.access_key_id!r})"


class SignatureError(Exception):
    """The request is not signed, or not signed by a key we know, or the signature does not match.

    ``code`` is stable and safe to return (AWS's own: MissingAuthenticationToken,
    UnrecognizedClientException, InvalidSignatureException); the message names no secret."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def sign(
    method: str,
    url: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    key: SigningKey,
    service: str,
    region: str,
) -> dict[str, str]:
    """The headers to send: ``headers`` plus X-Amz-Date and Authorization (SigV4, payload signed)."""
    request = AWSRequest(method=method, url=url, headers=dict(headers), data=body)
    request.headers["X-Amz-Content-SHA256"] = hashlib.sha256(body).hexdigest()
    SigV4Auth(Credentials(key.access_key_id, key.secret_access_key), service, region).add_auth(request)
    return dict(request.headers.items())


def verify(
    method: str,
    url: str,
    headers: Mapping[str, str | bytes],
    body: bytes,
    *,
    keys: Mapping[str, str],
    service: str,
    now: datetime | None = None,
    max_skew_s: float = MAX_SKEW_S,
) -> str:
    """Check a request's SigV4 signature; return the access key id that signed it.

    ``url`` must be the URL as the client sent it (scheme, Host and the raw, still percent-encoded
    path and query); ``headers`` the received headers; ``keys`` maps access key ids to secrets.
    Raises SignatureError otherwise.
    """
    lower = {k.lower(): v.decode("latin-1") if isinstance(v, bytes) else v for k, v in headers.items()}
    authorization = lower.get("authorization", "")
    if not authorization:
        raise SignatureError("MissingAuthenticationToken", "the request is not signed")
    m = _AUTH.match(authorization.strip())
    if m is None:
        raise SignatureError("IncompleteSignatureException", "the Authorization header is not a SigV4 signature")
    access_key = m["key"]
    secret = keys.get(access_key)
    if secret is None:
        raise SignatureError("UnrecognizedClientException", "the security token included in the request is invalid")
    if m["service"] != service:
        raise SignatureError("InvalidSignatureException", "the credential scope names another service")
    amz_date = lower.get("x-amz-date", "")
    try:
        signed_at = datetime.strptime(amz_date, SIGV4_TIMESTAMP).replace(tzinfo=UTC)
    except ValueError:
        raise SignatureError("IncompleteSignatureException", "X-Amz-Date is missing or malformed") from None
    if amz_date[:8] != m["date"]:
        raise SignatureError("InvalidSignatureException", "the credential scope date is not the request's date")
    skew = abs(((now or datetime.now(UTC)) - signed_at).total_seconds())
    if skew > max_skew_s:
        raise SignatureError("InvalidSignatureException", "the signature has expired")
    signed = m["headers"].split(";")
    if "host" not in signed:
        raise SignatureError("InvalidSignatureException", "the Host header must be signed")
    claimed_payload = lower.get("x-amz-content-sha256")
    if claimed_payload is not None and claimed_payload != hashlib.sha256(body).hexdigest():
        # Also refuses UNSIGNED-PAYLOAD: the internal APIs require the body to be signed.
        raise SignatureError("InvalidSignatureException", "the payload hash does not match the body")
    # Host is part of the URL (the server passes the Host it was reached by); botocore signs it that way too.
    lower.setdefault("host", urlsplit(url).netloc)
    missing = [h for h in signed if h not in lower]
    if missing:
        raise SignatureError("InvalidSignatureException", "a signed header is missing from the request")

    request = AWSRequest(method=method, url=url, headers={h: lower[h] for h in signed}, data=body)
    request.context["timestamp"] = amz_date
    auth = SigV4Auth(Credentials(access_key, secret), m["service"], m["region"])
    canonical = auth.canonical_request(request)
    expected = auth.signature(auth.string_to_sign(request, canonical), request)
    if not hmac.compare_digest(expected, m["signature"]):
        raise SignatureError("InvalidSignatureException", "the request signature does not match")
    return access_key
