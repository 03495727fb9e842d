"""API keys: ``lrk_<key id>_<secret>``, stored hashed in the documents object store, scoped to a tenant.

A key is shown once, when it is created; the store keeps its id, tenant, name, creation and revocation
times and a hash of the secret, one JSON object per key under ``auth/keys/{key id}.json`` (a local
folder or S3, whichever ``RAG_DOCUMENTS_URI`` is: the object store's whole-object puts make every write
atomic). The secret is 256 random bits (``secrets``), so a single SHA-256 (an HMAC keyed by the key id,
which salts it) is enough: there is nothing to brute-force, unlike a password. Verification compares
with ``hmac.compare_digest``.

Used by the authorizer (``authorizer/``) to check a presented key and by ``localrag keys`` to manage them.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
import stat
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shared.identity import TENANT_RE, Principal
from shared.object_store import ObjectNotFound, ObjectStore

KEY_PREFIX = "lrk_"
KEYS_PREFIX = "auth/keys/"
KEY_ID_BYTES = 8  # 16 hex characters: names the key in lists and logs (not secret)
SECRET_BYTES = 32  # 256 bits
_KEY_ID = r"[0-9a-f]{16}"
_KEY_RE = re.compile(rf"\Alrk_({_KEY_ID})_([A-Za-z0-9_-]{{43}})\Z")
_KEY_ID_RE = re.compile(rf"\A{_KEY_ID}\Z")
MAX_NAME_CHARS = 200

RefusalReason = Literal["malformed_credential", "unknown_key", "revoked_key"]


class KeyRefused(Exception):
    """A presented API key is not accepted. ``reason`` is stable and safe to show; the message names no secret."""

    def __init__(self, reason: RefusalReason, message: str, *, key_id: str | None = None) -> None:
        super().__init__(message)
        self.reason: RefusalReason = reason
        self.key_id = key_id


class UnknownKeyId(KeyError):
    """``revoke``: no key has this id."""


class ApiKey(BaseModel):
    """What anyone may see of a key: never its secret or hash."""

    model_config = ConfigDict(frozen=True)

    key_id: str = Field(pattern=f"^{_KEY_ID}$")
    tenant: str = Field(pattern=TENANT_RE.pattern)
    name: str = Field(max_length=MAX_NAME_CHARS)
    created_at: datetime
    revoked_at: datetime | None = None

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None

    def principal(self) -> Principal:
        return Principal(self.tenant, f"key:{self.key_id}", "api_key")


class StoredKey(ApiKey):
    """The stored object: the public record plus the secret's hash."""

    secret_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")

    def public(self) -> ApiKey:
        return ApiKey.model_validate(self.model_dump(exclude={"secret_sha256"}))


def parse_key(plaintext: str) -> tuple[str, str] | None:
    """``(key id, secret)`` of a well-formed key, else None."""
    m = _KEY_RE.match(plaintext)
    return (m.group(1), m.group(2)) if m else None


def looks_like_key(credential: str) -> bool:
    """Shape only: an API key (``lrk_...``) rather than a JWT (three base64url parts)."""
    return credential.startswith(KEY_PREFIX)


def key_id_of(plaintext: str) -> str | None:
    """The key id of a well-formed key (safe to log), else None."""
    parsed = parse_key(plaintext)
    return parsed[0] if parsed else None


def secret_hash(key_id: str, secret: str) -> str:
    """HMAC-SHA256 of the secret keyed by the key id (the salt); hex."""
    return hmac.new(key_id.encode("ascii"), secret.encode("ascii"), hashlib.sha256).hexdigest()


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


class KeyStore:
    """API keys in an object store, under ``auth/keys/``."""

    def __init__(self, objects: ObjectStore) -> None:
        self.objects = objects

    @classmethod
    def open(cls, documents_uri: str, *, s3_endpoint_url: str | None, region: str) -> KeyStore:
        """The key store in the documents store at ``documents_uri`` (a folder or s3://bucket/prefix)."""
        from shared.aws_clients import client_config, make_client
        from shared.object_store import open_object_store

        def s3() -> object:
            return make_client(
                "s3", endpoint_url=s3_endpoint_url, region=region, config=client_config(read_timeout=10.0)
            )

        return cls(open_object_store(documents_uri, s3))

    @staticmethod
    def _key(key_id: str) -> str:
        if not _KEY_ID_RE.match(key_id):
            raise UnknownKeyId(key_id)
        return f"{KEYS_PREFIX}{key_id}.json"

    def _put(self, record: StoredKey) -> None:
        data = record.model_dump_json().encode("utf-8")
        self.objects.write(self._key(record.key_id), data, "application/json")

    def _get(self, key_id: str) -> StoredKey | None:
        try:
            raw = self.objects.read(self._key(key_id))
        except ObjectNotFound:
            return None
        try:
            return StoredKey.model_validate_json(raw)
        except ValidationError:
            raise ValueError(f"the stored API key record {key_id} is corrupt") from None

    def create(self, tenant: str, name: str) -> tuple[ApiKey, str]:
        """A new key for ``tenant``: its record and the plaintext key, which is never stored or shown again."""
        if not TENANT_RE.fullmatch(tenant):
            raise ValueError("tenant ids are 1-63 characters of a-z, 0-9, '_' and '-', starting alphanumeric")
        if len(name) > MAX_NAME_CHARS or any(ord(c) < 32 for c in name):
            raise ValueError(f"a key name is at most {MAX_NAME_CHARS} printable characters")
        while True:
            key_id = secrets.token_hex(KEY_ID_BYTES)
            if self._get(key_id) is None:
                break
        secret = secrets.token_urlsafe(SECRET_BYTES)
        record = StoredKey(
            key_id=key_id,
            tenant=tenant,
            name=name,
            created_at=_now(),
            secret_sha256=secret_hash(key_id, secret),
        )
        self._put(record)
        return record.public(), f"{KEY_PREFIX}{key_id}_{secret}"

    def get(self, key_id: str) -> ApiKey | None:
        try:
            record = self._get(key_id)
        except UnknownKeyId:
            return None
        return record.public() if record else None

    def list(self) -> list[ApiKey]:
        """Every key (revoked ones too), oldest first."""
        out: list[ApiKey] = []
        for key in self.objects.keys(KEYS_PREFIX):
            name = key.removeprefix(KEYS_PREFIX)
            if not name.endswith(".json") or not _KEY_ID_RE.match(name[: -len(".json")]):
                continue
            record = self._get(name[: -len(".json")])
            if record is not None:
                out.append(record.public())
        return sorted(out, key=lambda k: (k.created_at, k.key_id))

    def revoke(self, key_id: str) -> ApiKey:
        """Mark the key revoked (from now on it is refused); revoking twice keeps the first time."""
        record = self._get(key_id)
        if record is None:
            raise UnknownKeyId(key_id)
        if record.revoked_at is None:
            record = record.model_copy(update={"revoked_at": _now()})
            self._put(record)
        return record.public()

    def authenticate(self, plaintext: str) -> ApiKey:
        """The record of a valid, unrevoked key; KeyRefused (malformed, unknown or wrong secret, revoked)."""
        parsed = parse_key(plaintext)
        if parsed is None:
            raise KeyRefused("malformed_credential", "the API key is not of the form lrk_<key id>_<secret>")
        key_id, secret = parsed
        record = self._get(key_id)
        # A wrong secret for an existing id is an unknown key: the caller does not hold that key.
        if record is None or not hmac.compare_digest(record.secret_sha256, secret_hash(key_id, secret)):
            raise KeyRefused("unknown_key", "no such API key", key_id=key_id)
        if record.revoked_at is not None:
            raise KeyRefused("revoked_key", "the API key has been revoked", key_id=key_id)
        return record.public()

    def verify(self, plaintext: str) -> ApiKey | None:
        """The record of a valid, unrevoked key, else None."""
        try:
            return self.authenticate(plaintext)
        except KeyRefused:
            return None


def dumps_records(records: list[ApiKey]) -> str:
    """JSON lines for ``localrag keys list --json``."""
    return "\n".join(json.dumps(r.model_dump(mode="json")) for r in records)


# ---------------------------------------------------------------------- the local key file

DEFAULT_KEY_FILE = "data/local-api-key"


class KeyFileError(Exception):
    """The local key file cannot be used (unsafe permissions, unreadable, empty); the message says why."""


def write_key_file(path: str | os.PathLike[str], plaintext: str) -> None:
    """Write a key to ``path`` with mode 0600 (created so: never readable by others, not even briefly)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-key-")  # mkstemp creates it 0600
    try:
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(plaintext + "\n")
        os.chmod(tmp, 0o600)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_key_file(path: str | os.PathLike[str]) -> str:
    """The key in ``path``; KeyFileError if group or others may read it (as ssh does for a private key)."""
    target = Path(path)
    try:
        fd = os.open(target, os.O_RDONLY)
    except OSError as exc:
        raise KeyFileError(f"cannot read the API key file {target}: {exc.strerror or exc}") from None
    with os.fdopen(fd, "r", encoding="utf-8") as f:
        mode = stat.S_IMODE(os.fstat(f.fileno()).st_mode)
        if os.name == "posix" and mode & 0o077:
            raise KeyFileError(
                f"the API key file {target} is readable by group or others (mode {mode:04o}); "
                f"refusing to use it: run `chmod 600 {target}`"
            )
        key = f.read(4096).strip()
    if not key:
        raise KeyFileError(f"the API key file {target} is empty")
    return key
