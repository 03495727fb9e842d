"""Raw documents in the object store (the source of truth the index can be rebuilt from).

``documents_uri`` is ``s3://bucket/prefix`` (MinIO, S3) or a local folder. Layout under it (keys below
are relative to the folder / prefix; the protocol's upload keys are these relative keys too):

- ``{doc_id}.json``                 the document as ingested (id, title, text, ... and, for files,
                                    ``original``: where its original file is, its name, type and size);
- ``originals/{doc_id}/{filename}`` the original file of a document ingested from an upload, kept so
                                    the index can be rebuilt by parsing it again;
- ``uploads/{32 hex}/{filename}``   files PUT by clients through ``upload_url``, until ``ingest_object``
                                    moves them to ``originals/`` (or deletes them, if they are bad);
- ``inbox/...``                     files dropped into the bucket (S3 event notifications ingest them;
                                    such a file stays where it is and is the document's original).

(``doc_id`` in keys is percent-encoded.) On S3, uploads are PUT with a presigned URL; for a local folder
the gateway stands in for S3 with ``PUT /{stage}/uploads/...?expires=..&signature=..`` whose signature
is ``sign_upload`` below (HMAC-SHA256 with a secret the ingestion lambda and the gateway share).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote, unquote, urlencode

from shared.errors import RagError
from shared.protocol import ErrorCode

UPLOADS_PREFIX = "uploads/"
ORIGINALS_PREFIX = "originals/"
INBOX_PREFIX = "inbox/"
# Local folder: uploads not ingested within a day are removed (on S3: a lifecycle rule on uploads/).
STALE_UPLOAD_S = 24 * 3600.0

# uploads/{32 hex}/{filename}: the only keys ingest_object accepts and the gateway stores.
_UPLOAD_KEY = re.compile(r"\Auploads/[0-9a-f]{32}/[^/\\\x00-\x1f]{1,255}\Z")


class ObjectNotFound(RagError):
    code = ErrorCode.OBJECT_NOT_FOUND


class UploadsNotConfigured(RagError):
    """Local-folder uploads need the secret shared with the gateway."""


def is_upload_key(key: str) -> bool:
    return bool(_UPLOAD_KEY.match(key)) and key.rsplit("/", 1)[1] not in (".", "..")


def _key_name(doc_id: str) -> str:
    return quote(doc_id, safe="") + ".json"


def _id_from_name(name: str) -> str | None:
    """The document id a raw-document object name encodes (``{quoted id}.json``), or None."""
    if not name.endswith(".json") or name.startswith(".") or "/" in name:
        return None
    return unquote(name[: -len(".json")]) or None


def originals_prefix(doc_id: str) -> str:
    return f"{ORIGINALS_PREFIX}{quote(doc_id, safe='')}/"


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
    def put_document(self, doc_id: str, document: dict[str, Any]) -> str: ...
    def get_document(self, doc_id: str) -> dict[str, Any] | None: ...
    def delete_document(self, doc_id: str) -> bool: ...
    def size(self, key: str) -> int | None: ...
    def read(self, key: str) -> bytes: ...
    def copy(self, src: str, dst: str, content_type: str | None = None) -> None: ...
    def delete(self, key: str) -> bool: ...
    def delete_prefix(self, prefix: str, keep: str | None = None) -> int: ...
    def presign_put(self, key: str, content_type: str, expires_in: int, *, gateway_url: str | None = None) -> str:
        """A URL to PUT ``key`` to. ``gateway_url``: the local gateway that stands in for S3 (local folder)."""
        ...

    def in_bucket(self, bucket: str) -> bool: ...
    def relative_key(self, bucket: str, key: str) -> str | None: ...
    def uri(self, key: str) -> str: ...
    def document_ids(self) -> list[str]: ...


class LocalObjectStore:
    def __init__(self, root: str | Path, *, upload_secret: str | None = None) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.upload_secret = upload_secret

    def _path(self, doc_id: str) -> Path:
        return self.root / _key_name(doc_id)

    def _key_path(self, key: str) -> Path:
        return self.root / _safe_key(key)

    def put_document(self, doc_id: str, document: dict[str, Any]) -> str:
        path = self._path(doc_id)
        # Write-then-rename: a reader never sees a half-written object.
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".tmp-")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(document, f, ensure_ascii=False)
        os.replace(tmp, path)
        return str(path)

    def document_ids(self) -> list[str]:
        """Ids of the raw documents (the ``*.json`` files directly in the folder), sorted."""
        ids = (_id_from_name(p.name) for p in self.root.iterdir() if p.is_file())
        return sorted(i for i in ids if i is not None)

    def get_document(self, doc_id: str) -> dict[str, Any] | None:
        path = self._path(doc_id)
        if not path.exists():
            return None
        result: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        return result

    def delete_document(self, doc_id: str) -> bool:
        path = self._path(doc_id)
        if path.exists():
            path.unlink()
            return True
        return False

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

    def prune_uploads(self, max_age_s: float = STALE_UPLOAD_S) -> int:
        """Remove uploads never ingested (S3 does this with a lifecycle rule on uploads/)."""
        folder, removed = self.root / UPLOADS_PREFIX.rstrip("/"), 0
        if not folder.is_dir():
            return 0
        cutoff = time.time() - max_age_s
        try:
            # Another process may remove the emptied folder at any moment (ingest_object deletes its upload
            # and prunes empty parents): a folder that is gone has nothing to prune.
            entries = list(folder.iterdir())
        except FileNotFoundError:
            return 0
        for entry in entries:
            try:
                if entry.is_dir() and entry.stat().st_mtime < cutoff:
                    shutil.rmtree(entry)
                    removed += 1
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

    def _key(self, doc_id: str) -> str:
        return self._full(_key_name(doc_id))

    def put_document(self, doc_id: str, document: dict[str, Any]) -> str:
        key = self._key(doc_id)
        self.client.put_object(
            Bucket=self.bucket,
            Key=key,
            Body=json.dumps(document, ensure_ascii=False).encode("utf-8"),
            ContentType="application/json",
        )
        return f"s3://{self.bucket}/{key}"

    def document_ids(self) -> list[str]:
        """Ids of the raw documents (the ``*.json`` objects directly under the prefix), sorted."""
        prefix = f"{self.prefix}/" if self.prefix else ""
        ids: list[str] = []
        for page in self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=prefix, Delimiter="/"
        ):
            for obj in page.get("Contents", []):
                doc_id = _id_from_name(obj["Key"][len(prefix) :])
                if doc_id is not None:
                    ids.append(doc_id)
        return sorted(ids)

    def get_document(self, doc_id: str) -> dict[str, Any] | None:
        try:
            obj = self.client.get_object(Bucket=self.bucket, Key=self._key(doc_id))
        except self.client.exceptions.NoSuchKey:
            return None
        result: dict[str, Any] = json.loads(obj["Body"].read())
        return result

    def delete_document(self, doc_id: str) -> bool:
        return self.delete(_key_name(doc_id))

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
