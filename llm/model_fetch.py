"""Find the GGUF model file the LLM service serves, downloading it once if needed.

``python -m llm.model_fetch`` prints the resolved path (``make up`` runs it before starting services);
on failure it prints what went wrong and how to fix it, and exits 1.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from pydantic import ValidationError

from llm.settings import Settings

log = logging.getLogger(__name__)

GGUF_MAGIC = b"GGUF"
DOWNLOAD_TIMEOUT_S = 30.0
_CHUNK = 1024 * 1024


class ModelFetchError(RuntimeError):
    """The model file is missing and could not be obtained; the message says what to do."""


def _is_gguf(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            return f.read(4) == GGUF_MAGIC
    except OSError:
        return False


def model_file_name(url: str) -> str:
    """The file name a model URL is stored under in models_dir (its last path segment)."""
    name = urllib.parse.unquote(urllib.parse.urlsplit(url).path.rsplit("/", 1)[-1])
    if not name or name in {".", ".."}:
        raise ModelFetchError(
            f"LLM_MODEL_URL={url!r} does not end in a file name; "
            "point it at a .gguf file or set LLM_MODEL_PATH to a local GGUF file"
        )
    return name


def download(url: str, dest: Path, timeout: float = DOWNLOAD_TIMEOUT_S) -> Path:
    """Download ``url`` to ``dest`` through ``dest.part`` with a progress bar; no partial file survives."""
    from tqdm import tqdm

    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    try:
        request = urllib.request.Request(url, headers={"User-Agent": "localrag-llm/0.1"})
        with urllib.request.urlopen(request, timeout=timeout) as resp, part.open("wb") as out:
            total = int(resp.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=dest.name) as bar:
                while chunk := resp.read(_CHUNK):
                    out.write(chunk)
                    bar.update(len(chunk))
        if total is not None and part.stat().st_size != total:
            raise OSError(f"incomplete download: got {part.stat().st_size} of {total} bytes")
        if not _is_gguf(part):
            raise OSError("the downloaded file is not a GGUF model")
        os.replace(part, dest)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            part.unlink()
        if isinstance(exc, KeyboardInterrupt | SystemExit):
            raise
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        raise ModelFetchError(
            f"Could not download the model from {url} ({reason}). "
            f"Download a GGUF model yourself and set LLM_MODEL_PATH to the local GGUF file."
        ) from None
    return dest


def ensure_model(settings: Settings, *, allow_download: bool = True) -> Path:
    """The GGUF file to serve: LLM_MODEL_PATH if set (it must exist), else models_dir/<name from model_url>,
    downloaded first when missing (unless ``allow_download`` is false)."""
    if settings.model_path is not None:
        path = settings.model_path.expanduser()
        if not path.is_file():
            raise ModelFetchError(
                f"LLM_MODEL_PATH={settings.model_path} does not exist or is not a file. "
                "Set LLM_MODEL_PATH to a local GGUF model file, or unset it to download LLM_MODEL_URL."
            )
        if not _is_gguf(path):
            raise ModelFetchError(f"LLM_MODEL_PATH={settings.model_path} is not a GGUF model file.")
        return path
    dest = settings.models_dir.expanduser() / model_file_name(settings.model_url)
    if dest.is_file():
        return dest
    if not allow_download:
        raise ModelFetchError(
            f"Model {dest} is not there yet: run `python -m llm.model_fetch` to download it, "
            "or set LLM_MODEL_PATH to a local GGUF file."
        )
    log.info("downloading %s to %s", settings.model_url, dest)
    return download(settings.model_url, dest)


def main() -> int:
    try:
        path = ensure_model(Settings())
    except ValidationError as exc:
        print(f"error: invalid LLM_* settings: {exc}", file=sys.stderr)
        return 1
    except ModelFetchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(path.resolve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
