"""Raw documents in the object store (the source of truth the index can be rebuilt from).

``documents_uri`` is ``s3://bucket/prefix`` (MinIO, S3) or a local folder. Layout under it (keys below
are relative to the folder / prefix; the protocol's upload keys are these relative keys too):

- ``{doc_id}.json``                 the document as ingested (id, title, text, ... and, for files,
                                    ``original``: where its original file is, its name, type and size);
- ``originals/{doc_id}/{filename}`` the original file of a document ingested from an upload, kept so
                                    the index can be rebuilt by parsing it again;
- ``uploads/{tenant}/{32 hex}/{filename}``  files PUT by clients through ``upload_url``, until
                                    ``ingest_object`` moves them to ``originals/`` (or deletes them, if
                                    they are bad); the tenant is in the key, and only that tenant may
                                    ingest it (``uploads/{32 hex}/{filename}``: the default tenant's,
                                    as written before tenants existed);
- ``inbox/...``                     files dropped into the bucket (S3 event notifications ingest them;
                                    such a file stays where it is and is the document's original).

Tenants: that layout is the ``default`` tenant's (so a store written before tenants existed is the
default tenant's, unchanged); every other tenant has the same layout under ``tenants/{tenant}/``
(``tenants/{tenant}/{doc_id}.json``, ``.../originals/``, ``.../inbox/``), except uploads, which all live
under ``uploads/`` (one S3 lifecycle rule, one gateway route) with the tenant in their key. Services never
use the store's keys directly: ``TenantObjects(store, tenant)`` is one tenant's view, whose keys are
relative to the tenant's folder and which refuses another tenant's upload (as a missing one) and, for the
default tenant, the ``tenants/`` and ``auth/`` folders.

``doc_id`` in keys is its *name* (``doc_name``): the id percent-encoded (UTF-8) when that fits a file name
(at most 250 bytes, so ``{name}.json`` fits the 255-byte limit of file systems); a longer one is cut to
its first 150 bytes (at an escape) plus ``+`` and 32 hex digits of the id's SHA-256 -- ``+`` never occurs
in an encoded id, so such a name is known as hashed, and its id is read from the raw document (whose
``id`` field every raw document has). Names that are not hashed are what stores have always held.

On S3, uploads are PUT with a presigned URL; for a local folder
the gateway stands in for S3 with ``PUT /{stage}/uploads/...?expires=..&signature=..`` whose signature
is ``sign_upload`` below (HMAC-SHA256 with a secret the ingestion lambda and the gateway share).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import json
import os
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote, unquote, urlencode

from botocore.exceptions import ClientError

from shared.errors import RagError
from shared.identity import DEFAULT_TENANT, valid_tenant
from shared.protocol import ErrorCode

UPLOADS_PREFIX = "uploads/"
ORIGINALS_PREFIX = "originals/"
INBOX_PREFIX = "inbox/"
TENANTS_PREFIX = "tenants/"
# Folders of the store that belong to no tenant's documents (API keys: shared/api_keys.py).
RESERVED_PREFIXES = (TENANTS_PREFIX, "auth/")
_UPLOAD_DIR = re.compile(r"\A[0-9a-f]{32}\Z")
# Local folder: uploads not ingested within a day are removed (on S3: a lifecycle rule on uploads/).
STALE_UPLOAD_S = 24 * 3600.0

# uploads/{tenant}/{32 hex}/{filename} (or, the default tenant's as before tenants, uploads/{32 hex}/{filename}):
# the only keys ingest_object accepts and the gateway stores.
_UPLOAD_KEY = re.compile(
    r"\Auploads/(?:(?P<tenant>[a-z0-9][a-z0-9_-]{0,62})/)?[0-9a-f]{32}/(?P<name>[^/\\\x00-\x1f]{1,255})\Z"
)


class ObjectNotFound(RagError):
    code = ErrorCode.OBJECT_NOT_FOUND


class UploadsNotConfigured(RagError):
    """Local-folder uploads need the secret shared with the gateway."""


def is_upload_key(key: str) -> bool:
    return upload_key_tenant(key) is not None


def upload_key_tenant(key: str) -> str | None:
    """The tenant an upload key belongs to, or None when ``key`` is not an upload key."""
    m = _UPLOAD_KEY.match(key)
    if m is None or m["name"] in (".", ".."):
        return None
    return m["tenant"] or DEFAULT_TENANT


def new_upload_key(tenant: str, filename: str) -> str:
    """A fresh upload key of ``tenant`` for a (safe) file name."""
    key = f"{UPLOADS_PREFIX}{tenant}/{uuid.uuid4().hex}/{filename}"
    if upload_key_tenant(key) != tenant:
        raise ValueError("not a valid tenant or file name for an upload key")
    return key


def tenant_prefix(tenant: str) -> str:
    """The folder of a tenant's objects: the store's root for the default tenant, else tenants/{tenant}/."""
    if not valid_tenant(tenant):
        raise ValueError("invalid tenant id")
    return "" if tenant == DEFAULT_TENANT else f"{TENANTS_PREFIX}{tenant}/"


def split_tenant_key(key: str) -> tuple[str, str] | None:
    """A store key as (tenant, key relative to the tenant's folder); None for a key in no tenant's folder
    (``tenants/`` itself, an invalid tenant name, ``auth/``)."""
    if key.startswith(TENANTS_PREFIX):
        tenant, sep, rest = key[len(TENANTS_PREFIX) :].partition("/")
        if not sep or not rest or not valid_tenant(tenant) or tenant == DEFAULT_TENANT:
            return None
        return tenant, rest
    if key.startswith(RESERVED_PREFIXES):
        return None
    return DEFAULT_TENANT, key


# The longest document name kept as the encoded id itself (``{name}.json`` is then at most 255 bytes); a
# longer one is hashed: its first _HASHED_HEAD bytes, "+", _HASH_HEX hex digits of the id's SHA-256.
MAX_PLAIN_NAME_BYTES = 250
_HASHED_HEAD = 150
_HASH_HEX = 32
HASH_MARK = "+"  # quote(safe="") always escapes "+", so only a hashed name holds one


def _plain_name(doc_id: str) -> str:
    return quote(doc_id, safe="")


def doc_name(doc_id: str) -> str:
    """The name of a document in keys (``{name}.json``, ``originals/{name}/``): within a file name's limit
    whatever the id's length or script; the same id always has the same name, two ids never share one."""
    plain = _plain_name(doc_id)
    if len(plain) <= MAX_PLAIN_NAME_BYTES:
        return plain
    head = plain[:_HASHED_HEAD]
    if "%" in head[-2:]:  # do not cut an escape in half
        head = head[: head.rindex("%")]
    return f"{head}{HASH_MARK}{hashlib.sha256(doc_id.encode('utf-8')).hexdigest()[:_HASH_HEX]}"


def _key_name(doc_id: str) -> str:
    return doc_name(doc_id) + ".json"


def _id_from_name(name: str) -> str | None:
    """The document id a raw-document object name encodes (``{name}.json``), or None when the name is not
    a raw document's or is hashed (then the id is in the document). Names starting with "." are ids
    starting with "." (temporary files never end in .json)."""
    if not name.endswith(".json") or "/" in name:
        return None
    stem = name[: -len(".json")]
    if not stem or HASH_MARK in stem:
        return None
    return unquote(stem)


def originals_prefix(doc_id: str) -> str:
    name = doc_name(doc_id)
    if name in (".", ".."):  # a folder name paths give a meaning to
        name = name.replace(".", "%2E")
    return f"{ORIGINALS_PREFIX}{name}/"


def _safe_key(key: str) -> str:
    parts = key.split("/")
    if not key or key.startswith("/") or "\\" in key or any(p in ("", ".", "..") for p in parts[:-1] + parts[-1:]):
        raise ValueError(f"unsafe object key {key!r}")
    return key


# ---------------------------------------------------------------------- local upload signatures


def sign_upload(secret: str, method: str, key: str, expires: int, content_type: str) -> str:
    """HMAC-SHA256 over method, key, expiry (Unix seconds) and content type: the local presigned PUT."""
    msg = f"{method.upper()}\n{key}\n{int(expires)}\n{content_type}".encode()
    return hmac.new(secret.encode("utf-8"), msg, hashlib.sha256).hexdigest()


def verify_upload(secret: str, method: str, key: str, expires: int, content_type: str, signature: str) -> bool:
    return hmac.compare_digest(sign_upload(secret, method, key, expires, content_type), signature)


def local_upload_url(base_url: str, secret: str, key: str, content_type: str, expires_in: int) -> str:
    """``{base_url}/{key}?expires=..&signature=..`` (base_url = the gateway's http://host:port/{stage})."""
    expires = int(time.time()) + expires_in
    sig = sign_upload(secret, "PUT", key, expires, content_type)
    return f"{base_url.rstrip('/')}/{quote(key, safe='/')}?{urlencode({'expires': expires, 'signature': sig})}"


# ---------------------------------------------------------------------- stores


class ObjectStore(Protocol):
    """The whole store, by key (relative to its folder / prefix). Service code uses a tenant's view of it
    (TenantObjects) instead."""

    def put_json(self, key: str, document: dict[str, Any]) -> str:
        """Store a JSON object at ``key`` (a reader never sees half of it); returns where it is."""
        ...

    def get_json(self, key: str) -> dict[str, Any] | None: ...
    def json_names(self, prefix: str) -> list[str]:
        """The names of the ``*.json`` objects directly in the folder ``prefix`` ("" or ending in /)."""
        ...

    def folder_names(self, prefix: str) -> list[str]:
        """The names of the folders directly in the folder ``prefix`` ("" or ending in /), sorted."""
        ...

    def size(self, key: str) -> int | None: ...
    def read(self, key: str) -> bytes: ...
    def copy(self, src: str, dst: str, content_type: str | None = None) -> None: ...
    def delete(self, key: str) -> bool: ...
    def delete_prefix(self, prefix: str, keep: str | None = None) -> int: ...
    def write(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        """Store a whole object at ``key`` (atomically: a reader sees the old or the new bytes)."""
        ...

    def keys(self, prefix: str) -> list[str]:
        """The keys of the objects under ``prefix`` (a folder, ending in /), sorted."""
        ...

    def presign_put(self, key: str, content_type: str, expires_in: int, *, gateway_url: str | None = None) -> str:
        """A URL to PUT ``key`` to. ``gateway_url``: the local gateway that stands in for S3 (local folder)."""
        ...

    def in_bucket(self, bucket: str) -> bool: ...
    def relative_key(self, bucket: str, key: str) -> str | None: ...
    def uri(self, key: str) -> str: ...


class LocalObjectStore:
    def __init__(self, root: str | Path, *, upload_secret: str | None = None) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.upload_secret = upload_secret

    def _key_path(self, key: str) -> Path:
        return self.root / _safe_key(key)

    def _folder(self, prefix: str) -> Path:
        return self._key_path(prefix.rstrip("/")) if prefix else self.root

    def put_json(self, key: str, document: dict[str, Any]) -> str:
        path = self._key_path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        # Write-then-rename: a reader never sees a half-written object.
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(document, f, ensure_ascii=False)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return str(path)

    def get_json(self, key: str) -> dict[str, Any] | None:
        path = self._key_path(key)
        try:
            text = path.read_text(encoding="utf-8")
        except (FileNotFoundError, IsADirectoryError):  # IsADirectoryError: "{name}.json" is no object
            return None
        result: dict[str, Any] = json.loads(text)
        return result

    def json_names(self, prefix: str) -> list[str]:
        folder = self._folder(prefix)
        if not folder.is_dir():
            return []
        return sorted(p.name for p in folder.iterdir() if p.is_file() and p.name.endswith(".json"))

    def folder_names(self, prefix: str) -> list[str]:
        folder = self._folder(prefix)
        if not folder.is_dir():
            return []
        return sorted(p.name for p in folder.iterdir() if p.is_dir())

    def size(self, key: str) -> int | None:
        path = self._key_path(key)
        return path.stat().st_size if path.is_file() else None

    def read(self, key: str) -> bytes:
        path = self._key_path(key)
        try:
            return path.read_bytes()
        except (FileNotFoundError, IsADirectoryError):
            raise ObjectNotFound(f"no uploaded object {key!r}") from None

    def copy(self, src: str, dst: str, content_type: str | None = None) -> None:
        source, target = self._key_path(src), self._key_path(dst)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as out, source.open("rb") as inp:
                while block := inp.read(1 << 20):
                    out.write(block)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def _prune(self, directory: Path) -> None:
        """Remove empty folders left behind, up to (not including) the store's root."""
        while directory != self.root and self.root in directory.parents:
            try:
                directory.rmdir()
            except OSError:
                return
            directory = directory.parent

    def delete(self, key: str) -> bool:
        path = self._key_path(key)
        if not path.is_file():
            return False
        path.unlink()
        self._prune(path.parent)
        return True

    def delete_prefix(self, prefix: str, keep: str | None = None) -> int:
        folder = self._key_path(prefix.rstrip("/"))
        if not folder.is_dir():
            return 0
        n = 0
        try:
            paths = sorted(folder.rglob("*"), reverse=True)
        except FileNotFoundError:  # removed by another process since the check above
            return 0
        for path in paths:
            rel = path.relative_to(self.root).as_posix()
            if path.is_file() and rel != keep:
                with contextlib.suppress(FileNotFoundError):  # deleted concurrently: gone either way
                    path.unlink()
                    n += 1
            elif path.is_dir():
                self._prune(path)
        self._prune(folder)
        return n

    def write(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        target = self._key_path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def keys(self, prefix: str) -> list[str]:
        folder = self._key_path(prefix.rstrip("/"))
        if not folder.is_dir():
            return []
        found = (p.relative_to(self.root).as_posix() for p in folder.rglob("*") if p.is_file())
        return sorted(k for k in found if not k.rsplit("/", 1)[-1].startswith(".tmp-"))

    def prune_uploads(self, max_age_s: float = STALE_UPLOAD_S) -> int:
        """Remove uploads never ingested (S3 does this with a lifecycle rule on uploads/)."""
        folder, removed = self.root / UPLOADS_PREFIX.rstrip("/"), 0
        if not folder.is_dir():
            return 0
        cutoff = time.time() - max_age_s
        try:
            # Another process may remove an emptied folder at any moment (ingest_object deletes its upload
            # and prunes empty parents): a folder that is gone has nothing to prune.
            # uploads/{tenant}/{32 hex}/ (and uploads/{32 hex}/, as written before tenants)
            top = list(folder.iterdir())
        except FileNotFoundError:
            return 0
        uploads = [e for e in top if _UPLOAD_DIR.match(e.name)]
        for tenant_dir in top:
            if valid_tenant(tenant_dir.name) and tenant_dir.is_dir():
                with contextlib.suppress(OSError):
                    uploads.extend(e for e in tenant_dir.iterdir() if _UPLOAD_DIR.match(e.name))
        for entry in uploads:
            try:
                if entry.is_dir() and entry.stat().st_mtime < cutoff:
                    shutil.rmtree(entry)
                    removed += 1
                    self._prune(entry.parent)
            except OSError:
                continue
        return removed

    def presign_put(self, key: str, content_type: str, expires_in: int, *, gateway_url: str | None = None) -> str:
        """A URL on the gateway (``gateway_url``, http://host:port/{stage}) signed with the secret it shares."""
        self.prune_uploads()
        if not self.upload_secret or not gateway_url:
            raise UploadsNotConfigured(
                "uploads to a local documents folder are not configured (RAG_UPLOAD_SECRET)"
                if gateway_url
                else "uploads to a local documents folder go through the local gateway",
                ErrorCode.INTERNAL_ERROR,
            )
        return local_upload_url(gateway_url, self.upload_secret, _safe_key(key), content_type, expires_in)

    def in_bucket(self, bucket: str) -> bool:
        return True  # no buckets here: a notification's key is taken relative to the folder

    def relative_key(self, bucket: str, key: str) -> str | None:
        return key

    def uri(self, key: str) -> str:
        return str(self.root / key)


class S3ObjectStore:
    def __init__(self, client: Any, uri: str, presign_client: Any | None = None) -> None:
        bucket, _, prefix = uri.removeprefix("s3://").partition("/")
        self.client = client
        self.presign_client = presign_client or client
        self.bucket = bucket
        self.prefix = prefix.strip("/")

    def _full(self, rel: str) -> str:
        return f"{self.prefix}/{rel}" if self.prefix else rel

    def put_json(self, key: str, document: dict[str, Any]) -> str:
        key = self._full(_safe_key(key))
        self.client.put_object(
            Bucket=self.bucket,
            Key=key,
            Body=json.dumps(document, ensure_ascii=False).encode("utf-8"),
            ContentType="application/json",
        )
        return f"s3://{self.bucket}/{key}"

    def _list(self, prefix: str) -> tuple[list[str], list[str]]:
        """The object names and folder names directly in the folder ``prefix``."""
        full = self._full(_safe_key(prefix.rstrip("/")) + "/") if prefix else self._full("")
        names: list[str] = []
        folders: list[str] = []
        for page in self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=full, Delimiter="/"
        ):
            names.extend(obj["Key"][len(full) :] for obj in page.get("Contents", []))
            folders.extend(p["Prefix"][len(full) :].rstrip("/") for p in page.get("CommonPrefixes", []))
        return names, folders

    def json_names(self, prefix: str) -> list[str]:
        return sorted(n for n in self._list(prefix)[0] if n.endswith(".json"))

    def folder_names(self, prefix: str) -> list[str]:
        return sorted(f for f in self._list(prefix)[1] if f)

    def get_json(self, key: str) -> dict[str, Any] | None:
        try:
            obj = self.client.get_object(Bucket=self.bucket, Key=self._full(_safe_key(key)))
        except self.client.exceptions.NoSuchKey:
            return None
        result: dict[str, Any] = json.loads(obj["Body"].read())
        return result

    def size(self, key: str) -> int | None:
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=self._full(_safe_key(key)))
        except self.client.exceptions.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise
        return int(head["ContentLength"])

    def read(self, key: str) -> bytes:
        try:
            obj = self.client.get_object(Bucket=self.bucket, Key=self._full(_safe_key(key)))
        except self.client.exceptions.NoSuchKey:
            raise ObjectNotFound(f"no uploaded object {key!r}") from None
        data: bytes = obj["Body"].read()
        return data

    def copy(self, src: str, dst: str, content_type: str | None = None) -> None:
        extra: dict[str, Any] = {}
        if content_type:
            extra = {"ContentType": content_type, "MetadataDirective": "REPLACE"}
        self.client.copy_object(
            Bucket=self.bucket,
            Key=self._full(_safe_key(dst)),
            CopySource={"Bucket": self.bucket, "Key": self._full(_safe_key(src))},
            **extra,
        )

    def delete(self, key: str) -> bool:
        if self.size(key) is None:
            return False
        self.client.delete_object(Bucket=self.bucket, Key=self._full(_safe_key(key)))
        return True

    def delete_prefix(self, prefix: str, keep: str | None = None) -> int:
        full_prefix = self._full(_safe_key(prefix.rstrip("/")) + "/")
        keep_full = self._full(keep) if keep else None
        keys: list[str] = []
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=full_prefix):
            keys.extend(o["Key"] for o in page.get("Contents", []) if o["Key"] != keep_full)
        for i in range(0, len(keys), 1000):
            self.client.delete_objects(
                Bucket=self.bucket, Delete={"Objects": [{"Key": k} for k in keys[i : i + 1000]], "Quiet": True}
            )
        return len(keys)

    def write(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        self.client.put_object(Bucket=self.bucket, Key=self._full(_safe_key(key)), Body=data, ContentType=content_type)

    def keys(self, prefix: str) -> list[str]:
        full_prefix = self._full(_safe_key(prefix.rstrip("/")) + "/")
        strip = len(self._full(""))
        found: list[str] = []
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=full_prefix):
            found.extend(o["Key"][strip:] for o in page.get("Contents", []))
        return sorted(found)

    def presign_put(self, key: str, content_type: str, expires_in: int, *, gateway_url: str | None = None) -> str:
        url: str = self.presign_client.generate_presigned_url(
            "put_object",
            Params={"Bucket": self.bucket, "Key": self._full(_safe_key(key)), "ContentType": content_type},
            ExpiresIn=expires_in,
            HttpMethod="PUT",
        )
        return url

    def in_bucket(self, bucket: str) -> bool:
        return bucket == self.bucket

    def relative_key(self, bucket: str, key: str) -> str | None:
        """A notification's bucket/key as a key of this store, or None when it is not in the store."""
        if bucket != self.bucket:
            return None
        if not self.prefix:
            return key
        return key[len(self.prefix) + 1 :] if key.startswith(self.prefix + "/") else None

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._full(key)}"


class TenantObjects:
    """One tenant's view of the store: its raw documents, originals and inbox, and its uploads.

    Keys are relative to the tenant's folder (``tenant_prefix``), so the same service code serves every
    tenant and cannot reach another's objects: upload keys (``uploads/...``) must be this tenant's (another
    tenant's answers ObjectNotFound, as a missing one does), and the default tenant, whose folder is the
    store's root, cannot name ``tenants/`` or ``auth/``.
    """

    def __init__(self, root: ObjectStore, tenant: str) -> None:
        self.root = root
        self.tenant = tenant
        self.prefix = tenant_prefix(tenant)

    def __repr__(self) -> str:
        return f"TenantObjects({self.tenant!r})"

    def key(self, key: str) -> str:
        """A key of this tenant as a key of the store; ObjectNotFound for a key outside its folder."""
        if key.startswith(UPLOADS_PREFIX):
            if upload_key_tenant(key) != self.tenant:
                raise ObjectNotFound(f"no uploaded object {key!r}")
            return key
        if key.startswith(RESERVED_PREFIXES):
            raise ObjectNotFound(f"no object {key!r}")
        return self.prefix + _safe_key(key)

    # -- raw documents

    def put_document(self, doc_id: str, document: dict[str, Any]) -> str:
        """Store the raw document (its ``id`` field is ``doc_id``: a hashed name is listed by it)."""
        where = self.root.put_json(self.prefix + _key_name(doc_id), document)
        legacy = self._legacy_key(doc_id)
        if legacy is not None:
            self._delete_legacy(legacy)  # an S3 store may hold the long name written before names were hashed
        return where

    def get_document(self, doc_id: str) -> dict[str, Any] | None:
        found = self.root.get_json(self.prefix + _key_name(doc_id))
        legacy = self._legacy_key(doc_id) if found is None else None
        if legacy is not None:
            with contextlib.suppress(OSError):  # a local folder cannot even hold that name
                return self.root.get_json(legacy)
        return found

    def delete_document(self, doc_id: str) -> bool:
        deleted = self.root.delete(self.prefix + _key_name(doc_id))
        legacy = self._legacy_key(doc_id)
        return (self._delete_legacy(legacy) if legacy is not None else False) or deleted

    def _legacy_key(self, doc_id: str) -> str | None:
        """Where a store written before names were hashed keeps a long id's raw document (S3 allowed names
        longer than a file system does), or None when its name is not hashed."""
        plain = _plain_name(doc_id)
        return None if len(plain) <= MAX_PLAIN_NAME_BYTES else f"{self.prefix}{plain}.json"

    def _delete_legacy(self, key: str) -> bool:
        try:
            return self.root.delete(key)
        except OSError:  # a local folder: no such name can exist
            return False

    def document_ids(self) -> list[str]:
        """Ids of the tenant's raw documents, sorted (a hashed name's id is read from its document)."""
        ids: set[str] = set()
        for name in self.root.json_names(self.prefix):
            doc_id = _id_from_name(name)
            if doc_id is None and name.endswith(".json") and HASH_MARK in name:
                raw = self.root.get_json(self.prefix + name)  # None: deleted since it was listed
                doc_id = raw.get("id") if raw is not None and isinstance(raw.get("id"), str) else None
                if doc_id is not None and _key_name(doc_id) != name:
                    doc_id = None  # not where that id's document lives
            if doc_id is not None:
                ids.add(doc_id)
        return sorted(ids)

    # -- objects by key (relative to the tenant's folder)

    def size(self, key: str) -> int | None:
        return self.root.size(self.key(key))

    def read(self, key: str) -> bytes:
        return self.root.read(self.key(key))

    def copy(self, src: str, dst: str, content_type: str | None = None) -> None:
        self.root.copy(self.key(src), self.key(dst), content_type)

    def delete(self, key: str) -> bool:
        return self.root.delete(self.key(key))

    def delete_prefix(self, prefix: str, keep: str | None = None) -> int:
        folder = self.key(prefix.rstrip("/")) + "/"
        return self.root.delete_prefix(folder, keep=self.key(keep) if keep else None)

    def presign_put(self, key: str, content_type: str, expires_in: int, *, gateway_url: str | None = None) -> str:
        return self.root.presign_put(self.key(key), content_type, expires_in, gateway_url=gateway_url)

    def uri(self, key: str) -> str:
        return self.root.uri(self.key(key))


def tenants_with_documents(store: ObjectStore) -> list[str]:
    """The default tenant, then every tenant with a folder in the store, sorted."""
    others = [t for t in store.folder_names(TENANTS_PREFIX) if valid_tenant(t) and t != DEFAULT_TENANT]
    return [DEFAULT_TENANT, *others]


def open_object_store(
    uri: str,
    s3_client_factory: Any,
    *,
    presign_client_factory: Any | None = None,
    upload_secret: str | None = None,
) -> ObjectStore:
    """`s3_client_factory()` (and `presign_client_factory()`, for the URLs clients PUT to) are called
    only for s3:// URIs; `upload_secret` signs the local folder's upload URLs."""
    if uri.startswith("s3://"):
        presign = presign_client_factory() if presign_client_factory is not None else None
        return S3ObjectStore(s3_client_factory(), uri, presign)
    return LocalObjectStore(uri.removeprefix("file://"), upload_secret=upload_secret)


# ---------------------------------------------------------------------- conditional JSON objects


class ConditionalJson:
    """Small JSON objects with compare-and-swap, over an object store (S3 or a local folder): ``get`` returns
    an object with its version tag, ``put`` writes only if there is no object yet (``create``) or it is still
    the version read (``if_match``). On S3: PutObject with ``If-None-Match: *`` / ``If-Match: <ETag>`` (412 to
    the loser). In a folder: the same checks under an exclusive ``flock`` of ``<lock_dir>/.lock`` (one
    machine, many processes); the tag is the content's SHA-256."""

    def __init__(self, store: ObjectStore, *, lock_dir: str) -> None:
        self.store = store
        self.lock_dir = lock_dir
        self.s3 = store if isinstance(store, S3ObjectStore) else None
        self.local = store if isinstance(store, LocalObjectStore) else None
        if self.s3 is None and self.local is None:
            raise TypeError(f"no conditional writes on {type(store).__name__}")

    def _s3_key(self, key: str) -> str:
        assert self.s3 is not None
        return f"{self.s3.prefix}/{key}" if self.s3.prefix else key

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        if self.local is None:
            yield
            return
        path = self.local.root / self.lock_dir / ".lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def get(self, key: str) -> tuple[dict[str, Any], str] | None:
        """The object at ``key`` and its version tag (an ETag), or None."""
        if self.s3 is not None:
            try:
                obj = self.s3.client.get_object(Bucket=self.s3.bucket, Key=self._s3_key(key))
            except self.s3.client.exceptions.NoSuchKey:
                return None
            return json.loads(obj["Body"].read()), str(obj["ETag"])
        assert self.local is not None
        try:
            raw = (self.local.root / key).read_bytes()
        except (FileNotFoundError, IsADirectoryError):
            return None
        return json.loads(raw), hashlib.sha256(raw).hexdigest()

    def put(self, key: str, document: dict[str, Any], *, if_match: str | None = None, create: bool = False) -> bool:
        """Write ``document`` at ``key``; with ``create`` only if there is no object there, with ``if_match``
        only if the object is still the version read. False when the condition did not hold."""
        if self.s3 is not None:
            extra: dict[str, str] = {"IfNoneMatch": "*"} if create else {"IfMatch": if_match} if if_match else {}
            try:
                self.s3.client.put_object(
                    Bucket=self.s3.bucket,
                    Key=self._s3_key(key),
                    Body=json.dumps(document).encode("utf-8"),
                    ContentType="application/json",
                    **extra,
                )
            except ClientError as exc:
                error = exc.response.get("Error", {}).get("Code")
                status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
                # 412: the condition failed; 409 ConditionalRequestConflict: a concurrent conditional write
                # won; NoSuchKey: If-Match on an object deleted since.
                if status in (409, 412) or error in ("PreconditionFailed", "ConditionalRequestConflict", "NoSuchKey"):
                    return False
                raise
            return True
        assert self.local is not None
        with self._locked():
            if create or if_match is not None:
                current = self.get(key)
                if (create and current is not None) or (
                    if_match is not None and (current or ({}, None))[1] != if_match
                ):
                    return False
            self.local.put_json(key, document)
        return True

    def delete(self, key: str) -> bool:
        with self._locked():
            return self.store.delete(key)

    def names(self, prefix: str) -> list[str]:
        return self.store.json_names(prefix)
