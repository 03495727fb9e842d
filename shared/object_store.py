"""Raw documents in the object store (the source of truth the index can be rebuilt from).

``documents_uri`` is ``s3://bucket/prefix`` (MinIO, S3) or a local folder.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote


class ObjectStore(Protocol):
    def put_document(self, doc_id: str, document: dict[str, Any]) -> str: ...
    def get_document(self, doc_id: str) -> dict[str, Any] | None: ...
    def delete_document(self, doc_id: str) -> bool: ...


def _key_name(doc_id: str) -> str:
    return quote(doc_id, safe="") + ".json"


class LocalObjectStore:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, doc_id: str) -> Path:
        return self.root / _key_name(doc_id)

    def put_document(self, doc_id: str, document: dict[str, Any]) -> str:
        path = self._path(doc_id)
        # Write-then-rename: a reader never sees a half-written object.
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".tmp-")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(document, f, ensure_ascii=False)
        os.replace(tmp, path)
        return str(path)

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


class S3ObjectStore:
    def __init__(self, client: Any, uri: str) -> None:
        bucket, _, prefix = uri.removeprefix("s3://").partition("/")
        self.client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/")

    def _key(self, doc_id: str) -> str:
        return f"{self.prefix}/{_key_name(doc_id)}" if self.prefix else _key_name(doc_id)

    def put_document(self, doc_id: str, document: dict[str, Any]) -> str:
        key = self._key(doc_id)
        self.client.put_object(
            Bucket=self.bucket,
            Key=key,
            Body=json.dumps(document, ensure_ascii=False).encode("utf-8"),
            ContentType="application/json",
        )
        return f"s3://{self.bucket}/{key}"

    def get_document(self, doc_id: str) -> dict[str, Any] | None:
        try:
            obj = self.client.get_object(Bucket=self.bucket, Key=self._key(doc_id))
        except self.client.exceptions.NoSuchKey:
            return None
        result: dict[str, Any] = json.loads(obj["Body"].read())
        return result

    def delete_document(self, doc_id: str) -> bool:
        key = self._key(doc_id)
        try:
            self.client.head_object(Bucket=self.bucket, Key=key)
        except self.client.exceptions.ClientError:
            return False
        self.client.delete_object(Bucket=self.bucket, Key=key)
        return True


def open_object_store(uri: str, s3_client_factory: Any) -> ObjectStore:
    """`s3_client_factory()` is called only for s3:// URIs."""
    if uri.startswith("s3://"):
        return S3ObjectStore(s3_client_factory(), uri)
    return LocalObjectStore(uri.removeprefix("file://"))
