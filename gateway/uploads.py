"""The local stand-in for a presigned S3 PUT: ``PUT /{stage}/uploads/{id}/{filename}?expires=..&signature=..``.

Used when documents live in a local folder. The ingestion lambda signs (``upload_url``); this checks the
signature and expiry and streams the body into the documents folder's ``uploads/`` (a temporary file,
renamed when complete). Errors are S3's: 403 AccessDenied / SignatureDoesNotMatch, 413 EntityTooLarge.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import time
import uuid
from pathlib import Path
from xml.sax.saxutils import escape

from aiohttp import web

from gateway.keys import SETTINGS
from shared.object_store import UPLOADS_PREFIX, is_upload_key, verify_upload

log = logging.getLogger(__name__)


# The signature is the credential (as for a presigned S3 URL), so any origin may PUT: a browser page
# served from another origin (the web UI on localhost vs 127.0.0.1) can upload with a CORS preflight.
UPLOAD_CORS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "PUT",
    "Access-Control-Allow-Headers": "Content-Type",
    "Access-Control-Expose-Headers": "ETag",
    "Access-Control-Max-Age": "600",
}


def s3_error(status: int, code: str, message: str) -> web.Response:
    """An S3-style XML error body."""
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>{escape(message)}</Message><RequestId>{uuid.uuid4().hex}</RequestId>"
        "</Error>"
    )
    return web.Response(status=status, body=body.encode(), content_type="application/xml", headers=UPLOAD_CORS)


async def upload_preflight(request: web.Request) -> web.Response:
    return web.Response(status=204, headers=UPLOAD_CORS)


class _TooLarge(Exception):
    pass


async def upload_put(request: web.Request) -> web.Response:
    documents = request.app[SETTINGS].documents  # RAG_DOCUMENTS_URI, RAG_UPLOAD_SECRET, RAG_MAX_UPLOAD_BYTES
    folder = documents.local_dir()
    if not documents.upload_secret or folder is None:
        return s3_error(403, "AccessDenied", "Uploads are not enabled on this gateway")
    key = UPLOADS_PREFIX + request.match_info["rest"]
    if not is_upload_key(key):
        return s3_error(400, "InvalidArgument", "Not an upload key")
    try:
        expires = int(request.query["expires"])
        signature = request.query["signature"]
        if not signature:
            raise ValueError("empty signature")
    except (KeyError, ValueError):
        return s3_error(403, "AccessDenied", "Query-string authentication requires expires and signature")
    content_type = request.headers.get("Content-Type", "")
    if not verify_upload(documents.upload_secret, "PUT", key, expires, content_type, signature):
        return s3_error(
            403,
            "SignatureDoesNotMatch",
            "The request signature we calculated does not match the signature you provided "
            "(the key, expiry and Content-Type are signed)",
        )
    if expires < time.time():
        return s3_error(403, "AccessDenied", "Request has expired")
    limit = documents.max_upload_bytes
    if request.content_length is not None and request.content_length > limit:
        return s3_error(413, "EntityTooLarge", f"Your proposed upload exceeds the maximum allowed size ({limit} bytes)")

    path = folder / key
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".part-{uuid.uuid4().hex}"
    md5 = hashlib.md5(usedforsecurity=False)
    total = 0
    try:
        with tmp.open("wb") as f:
            async for block in request.content.iter_chunked(1 << 16):
                total += len(block)
                if total > limit:
                    raise _TooLarge
                f.write(block)
                md5.update(block)
        os.replace(tmp, path)
    except _TooLarge:
        tmp.unlink(missing_ok=True)
        _remove_empty(path.parent)
        return s3_error(413, "EntityTooLarge", f"Your upload exceeds the maximum allowed size ({limit} bytes)")
    except BaseException:
        # The client went away (or the server is stopping): leave nothing half-written.
        tmp.unlink(missing_ok=True)
        _remove_empty(path.parent)
        raise
    log.info("upload %s: %d bytes", key, total)
    return web.Response(status=200, headers={**UPLOAD_CORS, "ETag": f'"{md5.hexdigest()}"'})


def _remove_empty(folder: Path) -> None:
    with contextlib.suppress(OSError):
        folder.rmdir()


def add_upload_routes(app: web.Application, stage: str) -> None:
    """PUT (and its CORS preflight) for /{stage}/uploads/..."""
    path = f"/{stage}/{UPLOADS_PREFIX}{{rest:.+}}"
    app.router.add_put(path, upload_put)
    app.router.add_route("OPTIONS", path, upload_preflight)
